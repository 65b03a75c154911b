"""VAE presets validate; inconsistent architectures fail naming the field and file."""

import pytest

from components.core.config import ConfigError
from components.vae.config import load_vae_config


def test_presets_load_with_reference_values():
    v12 = load_vae_config("v1.2").model
    assert (v12.hidden_size, v12.hidden_size_mult, v12.z_channels, v12.embed_dim) == (128, [1, 2, 4, 4], 4, 4)
    assert v12.compression == {"t": 4, "h": 8, "w": 8}
    assert v12.scale_factor == 0.18215
    tiny = load_vae_config("tiny").model
    assert tiny.compression == v12.compression
    assert tiny.encoder_downsample == v12.encoder_downsample and tiny.decoder_upsample == v12.decoder_upsample


@pytest.mark.parametrize("override, message", [
    ("model.norm_groups=5", "norm_groups=5"),
    ("model.spatial_compression=16", "spatial_compression=8"),
    ("model.encoder_downsample=['', '', '', '']", "decoder_upsample must undo"),
    ("model.decoder_resnet_blocks=[ResnetBlock3D]", "decoder_resnet_blocks needs one entry per level"),
    ("model.tiling.tile_frames=10", "tile_frames"),
    ("model.tiling.overlap_frames=3", "overlap_frames"),
    ("model.widht=3", "unknown key 'model.widht'"),
])
def test_bad_architecture_names_field_and_file(override, message):
    with pytest.raises(ConfigError) as error:
        load_vae_config("tiny", [override])
    assert message in str(error.value) and "tiny.yaml" in str(error.value)
