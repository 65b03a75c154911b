"""OpenSoraT2V: exact v1.2 size, shapes, masks, RoPE, checkpointing and init (reference notes §2)."""

from __future__ import annotations

import math

import pytest
import torch

from components.dit.config import DiTModelConfig, load_dit_config
from components.dit.model import OpenSoraT2V, num_parameters
from components.dit.rope import RoPE3D, apply_rope
from tests.dit.conftest import make_inputs


def _model(config: DiTModelConfig, seed: int = 0) -> OpenSoraT2V:
    torch.manual_seed(seed)
    return OpenSoraT2V(config).eval()


def test_v12_preset_has_the_reference_size_and_keys():
    config = load_dit_config("v1.2").model
    with torch.device("meta"):
        model = OpenSoraT2V(config)
    state = model.state_dict()
    assert num_parameters(model) == 2_771_907_856  # reference notes §2.8
    assert len(state) == 687
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["pos_embed.proj.weight"] == (2304, 4, 2, 2)
    assert shapes["transformer_blocks.31.scale_shift_table"] == (6, 2304)
    assert shapes["transformer_blocks.0.attn2.to_k.weight"] == (2304, 2304)
    assert shapes["transformer_blocks.0.ff.net.0.proj.weight"] == (9216, 2304)
    assert shapes["transformer_blocks.0.ff.net.2.weight"] == (2304, 9216)
    assert shapes["adaln_single.emb.timestep_embedder.linear_1.weight"] == (2304, 256)
    assert shapes["adaln_single.linear.weight"] == (13824, 2304)
    assert shapes["caption_projection.linear_1.weight"] == (2304, 4096)
    assert shapes["scale_shift_table"] == (2, 2304) and shapes["proj_out.weight"] == (16, 2304)
    assert not any("norm" in key for key in state)  # every LayerNorm is non-affine
    per_block = sum(v.numel() for k, v in state.items() if k.startswith("transformer_blocks.0."))
    assert per_block == 84_978_432


@pytest.mark.parametrize("frames", [1, 3])
def test_forward_keeps_the_latent_shape(small_config, frames):
    inputs = make_inputs(frames=frames)
    output = _model(small_config)(**inputs)
    assert output.shape == inputs["latents"].shape and torch.isfinite(output).all()


def test_caption_layouts_and_scalar_timestep_agree(small_config):
    model, inputs = _model(small_config), make_inputs()
    with torch.no_grad():
        plain = model(**inputs)
        nested = model(inputs["latents"], inputs["timestep"], inputs["text"][:, None], inputs["text_mask"][:, None])
        same_t = model(inputs["latents"], torch.tensor(5), inputs["text"], inputs["text_mask"])
        per_sample = model(inputs["latents"], torch.tensor([5, 5]), inputs["text"], inputs["text_mask"])
    torch.testing.assert_close(nested, plain, rtol=0, atol=0)
    torch.testing.assert_close(same_t, per_sample, rtol=0, atol=0)


def test_padded_text_tokens_contribute_nothing(small_config):
    model, inputs = _model(small_config), make_inputs()
    changed = dict(inputs, text=inputs["text"].clone())
    changed["text"][0, 3:] = 100.0  # sample 0's padding (mask is 0 there)
    with torch.no_grad():
        torch.testing.assert_close(model(**changed), model(**inputs), rtol=0, atol=1e-6)
        # Trimming the caption to its valid length (as the latent cache stores it) gives the same output.
        trimmed = model(inputs["latents"][:1], inputs["timestep"][:1], inputs["text"][:1, :3],
                        inputs["text_mask"][:1, :3])
        torch.testing.assert_close(trimmed, model(**inputs)[:1], rtol=0, atol=1e-5)


def test_latent_padding_masks_keys_only(small_config):
    model, inputs = _model(small_config), make_inputs()
    latent_mask = torch.ones(2, 3, 8, 12, dtype=torch.long)
    latent_mask[1, :, :, 8:] = 0  # the last two token columns of sample 1 are padding
    changed = dict(inputs, latents=inputs["latents"].clone())
    changed["latents"][1, :, :, :, 8:] += 5.0
    with torch.no_grad():
        masked = model(**inputs, latent_mask=latent_mask)
        masked_changed = model(**changed, latent_mask=latent_mask)
        unmasked = model(**inputs)
        all_ones = model(**inputs, latent_mask=torch.ones_like(latent_mask))
    # Valid tokens never attend to padding, so padding content cannot reach them.
    torch.testing.assert_close(masked_changed[1, :, :, :, :8], masked[1, :, :, :, :8], rtol=0, atol=1e-5)
    torch.testing.assert_close(masked[0], unmasked[0], rtol=0, atol=1e-6)
    assert (masked[1] - unmasked[1]).abs().max() > 1e-3
    torch.testing.assert_close(all_ones, unmasked, rtol=0, atol=0)


def test_rope_axes_of_equal_extent_keep_their_own_scale():
    # The reference keys its cache by extent alone, so h and w of a 4x4x4 grid share h's scale (§9.1).
    rope = RoPE3D(head_dim=12, scales=(1.0, 1.5, 2.0))
    cos, _ = rope.tables((4, 4, 4), torch.device("cpu"), torch.float32)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 4, 2).float() / 4)
    token = (1 * 4 + 3) * 4 + 2  # t = 1, row = 3, column = 2
    for axis, (position, scale) in enumerate([(1, 1.0), (3, 1.5), (2, 2.0)]):
        angles = position / scale * inv_freq
        expected = torch.cat([angles, angles]).cos()
        torch.testing.assert_close(cos[token, 4 * axis:4 * axis + 4], expected)


def test_rope_scores_depend_on_position_differences_only():
    rope = RoPE3D(head_dim=12, scales=(1.0, 1.0, 1.0))
    cos, sin = rope.tables((5, 5, 5), torch.device("cpu"), torch.float32)
    q, k = torch.randn(12), torch.randn(12)

    def score(i: int, j: int) -> float:
        x = torch.stack([q, k])[None, :, None, :].expand(1, 2, 1, 12)
        rotated = apply_rope(x, cos[[i, j]], sin[[i, j]], 4)[0, :, 0]
        return float(rotated[0] @ rotated[1])

    index = lambda t, y, x: (t * 5 + y) * 5 + x  # noqa: E731
    assert score(index(0, 1, 2), index(1, 2, 4)) == pytest.approx(score(index(2, 2, 0), index(3, 3, 2)), abs=1e-5)


def test_rope_angles_in_fp32_are_exact_in_bf16_where_the_reference_is_not():
    grid = (1, 1, 81)  # column positions 0..80
    exact = torch.arange(81, dtype=torch.float64)[:, None] * (1.0 / 10000 ** (torch.arange(0, 32, 2) / 32))[None]
    errors = {}
    for mode in ("fp32", "model_dtype"):
        cos, _ = RoPE3D(head_dim=96, scales=(1, 1, 1), angles=mode).tables(grid, torch.device("cpu"), torch.bfloat16)
        errors[mode] = float((cos[:, 64:80].double() - exact.cos()).abs().max())
    assert errors["fp32"] < 0.005  # bf16 rounding of cos only
    assert errors["model_dtype"] > 0.05  # the reference's bf16 angles (§2.6: ~0.1 at position 80)


def test_rope_cache_is_bounded():
    rope = RoPE3D(head_dim=12, scales=(1, 1, 1))
    for frames in range(1, 10):
        rope.tables((frames, 2, 2), torch.device("cpu"), torch.float32)
    assert len(rope._cache) <= 4


def test_gradient_checkpointing_gives_the_same_gradients(small_config):
    grads = []
    for update in ({}, {"gradient_checkpointing": True}, {"gradient_checkpointing": True, "mlp_checkpoint_tokens": 5}):
        model = _model(small_config.model_copy(update=update)).train()
        model(**make_inputs()).square().mean().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        for other in grads[1:]:
            torch.testing.assert_close(other[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_zero_init_starts_at_zero_noise_and_still_learns(small_config):
    model = _model(small_config.model_copy(update={"zero_init": True})).train()
    output = model(**make_inputs())
    assert output.abs().max() == 0
    (output - 1).square().mean().backward()
    assert model.proj_out.weight.grad.abs().max() > 0


def test_default_init_is_the_references(small_config):
    model = _model(small_config)
    dim = small_config.hidden_size
    table = torch.cat([block.scale_shift_table for block in model.transformer_blocks]).detach()
    assert table.std().item() == pytest.approx(1 / math.sqrt(dim), rel=0.25)  # randn / sqrt(D), §2.9
    assert model.proj_out.weight.abs().max() > 0


def test_tiny_preset_fits_a_batch_in_a_few_steps():
    config = load_dit_config("tiny").model
    model = _model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 5, 8, 8, generator=generator)
    target = torch.randn(2, 4, 5, 8, 8, generator=generator)
    text = torch.randn(2, 7, config.caption_channels, generator=generator)
    losses = []
    for _ in range(40):
        loss = (model(latents, torch.tensor([10, 600]), text, torch.ones(2, 7)) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("shape", "field"), [((3, 9, 12), "height"), ((3, 8, 7), "width")])
def test_sizes_off_the_patch_grid_are_clear_errors(small_config, shape, field):
    latents = torch.randn(1, 4, *shape)
    with pytest.raises(ValueError, match=f"latent {field}"):
        _model(small_config)(latents, torch.tensor([1]), torch.randn(1, 2, 16), torch.ones(1, 2))


def test_config_rejects_a_head_width_rope_cannot_split():
    with pytest.raises(ValueError, match="multiple of 6"):
        DiTModelConfig(attention_head_dim=64)


def test_inference_path_equals_the_autograd_path(small_config, monkeypatch):
    # Without autograd RoPE runs in place and the MLP in token chunks: force several chunks.
    import components.dit.model as model_module

    monkeypatch.setattr(model_module, "FF_CHUNK_BYTES", 2 * 4 * small_config.hidden_size * 4 * 7)  # 7 tokens
    model, inputs = _model(small_config), make_inputs()
    with torch.no_grad():
        chunked = model(**inputs)
    torch.testing.assert_close(chunked, model(**inputs).detach(), rtol=0, atol=1e-6)


def test_rope_backward_is_the_transpose_rotation():
    rope = RoPE3D(head_dim=12, scales=(1.0, 1.5, 2.0))
    cos, sin = rope.tables((2, 3, 2), torch.device("cpu"), torch.float64)
    x = torch.randn(2, 12, 3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin, 4), (x,))
