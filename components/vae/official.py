"""Load and save VAE model folders: the official Open-Sora Plan v1.2 layout and our own.

Official folder (reference notes §8.1): `config.json` with the reference's `__init__` argument names
(§1.1) and `checkpoint.ckpt` (a `torch.save` dict) or a safetensors file holding the same keys.
Our folder: `config.json` = {"format": "t2v-causal-vae", "model": VAEModelConfig dump} plus
`model.safetensors`, written and read through `components.core.model_folder`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors_file

from components.core import model_folder, storage
from components.vae.config import VAEModelConfig
from components.vae.model import CausalVAE

FORMAT = "t2v-causal-vae"
OFFICIAL_CHECKPOINTS = ("checkpoint.ckpt", "checkpoint.safetensors", "model.safetensors",
                        "diffusion_pytorch_model.safetensors")

# Reference config fields that map 1:1 onto ours.
_SAME_NAME = ("hidden_size", "hidden_size_mult", "z_channels", "embed_dim", "num_res_blocks", "dropout",
              "encoder_conv_in", "encoder_resnet_blocks", "decoder_resnet_blocks", "use_quant_layer")
_RENAMED = {"encoder_spatial_downsample": "encoder_downsample", "decoder_spatial_upsample": "decoder_upsample"}
# Fields whose only supported value is the v1.2 one (other values select modules we do not build).
_FIXED = {
    "q_conv": "CausalConv3d",
    "encoder_conv_out": "CausalConv3d",
    "encoder_attention": "AttnBlock3DFix",
    "encoder_mid_resnet": "ResnetBlock3D",
    "decoder_conv_in": "CausalConv3d",
    "decoder_conv_out": "CausalConv3d",
    "decoder_attention": "AttnBlock3DFix",
    "decoder_mid_resnet": "ResnetBlock3D",
    "attn_resolutions": [],
    "double_z": True,
}
# Metadata and training extras the model does not use (§8.1).
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "resolution", "loss_type", "loss_params",
            "lr", "in_channels", "out_channels"}


def official_to_config(raw: dict[str, Any], source: str = "config.json") -> VAEModelConfig:
    """Map a reference `config.json` onto VAEModelConfig; unsupported fields raise a ValueError naming them."""
    def fail(field: str, why: str) -> ValueError:
        return ValueError(f"{source}: field '{field}' {why}")

    fields: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SAME_NAME:
            fields[key] = value
        elif key in _RENAMED:
            fields[_RENAMED[key]] = value
        elif key in _FIXED:
            if value != _FIXED[key]:
                raise fail(key, f"= {value!r} is not supported (only {_FIXED[key]!r}, as in v1.2)")
        elif key in ("encoder_temporal_downsample", "decoder_temporal_upsample"):
            if any(value):
                raise fail(key, f"= {value!r} is not supported (v1.1 temporal modules; v1.2 uses only '')")
        elif key not in _IGNORED:
            raise fail(key, "is not a known Open-Sora Plan CausalVAE setting")
    for channels_key in ("in_channels", "out_channels"):
        if raw.get(channels_key, 3) != 3:
            raise fail(channels_key, f"= {raw[channels_key]!r} is not supported (RGB only)")
    # Compression follows from the block kinds; derive it so the validator accepts any consistent layout.
    downs = fields.get("encoder_downsample", VAEModelConfig().encoder_downsample)
    fields["spatial_compression"] = 2 ** sum(kind != "" for kind in downs)
    fields["temporal_compression"] = 2 ** sum(kind == "Spatial2xTime2x3DDownsample" for kind in downs)
    try:
        return VAEModelConfig.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        reverse = {ours: theirs for theirs, ours in _RENAMED.items()}
        loc = [reverse.get(str(error["loc"][0]), str(error["loc"][0])), *map(str, error["loc"][1:])] if error["loc"] else []
        raise fail(".".join(loc) or "<architecture>", f"is invalid: {error['msg']}") from None


def config_to_official(config: VAEModelConfig) -> dict[str, Any]:
    """The reference `config.json` for `config` (used to write official-format folders, e.g. in tests)."""
    raw: dict[str, Any] = {"_class_name": "CausalVAEModel"}
    raw.update({key: getattr(config, key) for key in _SAME_NAME})
    raw.update({theirs: getattr(config, ours) for theirs, ours in _RENAMED.items()})
    raw.update(_FIXED)
    raw["encoder_temporal_downsample"] = [""] * config.num_levels
    raw["decoder_temporal_upsample"] = [""] * config.num_levels
    return raw


def select_official_weights(checkpoint: dict[str, Any], weights: Literal["ema", "model"] = "ema",
                            source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Pick the generator weights from a reference training checkpoint (reference notes §8.1, §9.11).

    `weights="ema"` takes `ema_state_dict` when present and non-empty, else the model weights;
    `weights="model"` never takes the EMA copy. `module.` prefixes are stripped; keys containing
    `loss` (perceptual/discriminator state) are dropped.
    """
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model', got {weights!r}")
    state = None
    if weights == "ema" and checkpoint.get("ema_state_dict"):
        state = checkpoint["ema_state_dict"]
    elif "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        if isinstance(state.get("gen_model"), dict):
            state = state["gen_model"]
    elif all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        state = checkpoint  # a bare state dict (e.g. from safetensors)
    if state is None:
        raise ValueError(f"{source}: no 'ema_state_dict' or 'state_dict' with VAE weights")
    return {key.removeprefix("module."): value for key, value in state.items() if "loss" not in key}


def build_with_weights(config: VAEModelConfig, state: dict[str, torch.Tensor], source: str) -> CausalVAE:
    """The model with `state` as its parameters, in eval mode. Built on the meta device and assigned, so
    the ~1 GB of v1.2 weights exist once while loading (no random init, no copy into fresh parameters)."""
    with torch.device("meta"):
        model = CausalVAE(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{source}: weights do not match the configured architecture; "
                         f"missing {result.missing_keys[:5]} ({len(result.missing_keys)}), "
                         f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})")
    return model.float().eval()  # float: half-precision checkpoints load as fp32, like copying into parameters


def official_weights_file(folder: Path) -> Path:
    for name in OFFICIAL_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no VAE weights (looked for {', '.join(OFFICIAL_CHECKPOINTS)})")


def is_our_format(raw_config: dict[str, Any]) -> bool:
    return raw_config.get("format") == FORMAT


def load_official(folder: str | Path, weights: Literal["ema", "model"] = "ema") -> CausalVAE:
    """Build and load a CausalVAE from a local official Open-Sora Plan v1.2 VAE folder."""
    folder = Path(folder)
    config_path = folder / model_folder.CONFIG_FILE
    config = official_to_config(storage.read_json(config_path), source=str(config_path))
    weights_path = official_weights_file(folder)
    if weights_path.suffix == ".safetensors":
        try:
            checkpoint: dict[str, Any] = load_safetensors_file(weights_path)
        except SafetensorError as exc:
            raise ValueError(f"{weights_path}: not a readable safetensors file (truncated or damaged): {exc}") from None
    else:
        # weights_only: a checkpoint can never run code; mmap: no second copy of ~1 GB in memory.
        try:
            checkpoint = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(f"{weights_path}: holds objects other than tensors and plain containers, which we "
                             f"refuse to unpickle; convert its weights to safetensors once ({exc})") from None
    return build_with_weights(config, select_official_weights(checkpoint, weights, source=str(weights_path)),
                              str(weights_path))


def save_vae(folder: str | Path, model: CausalVAE) -> dict[str, str]:
    """Write our model folder (`config.json` last); returns the sha256 of each file."""
    config = {"format": FORMAT, "model": model.config.model_dump(mode="json")}
    return model_folder.save_model_folder(folder, model.state_dict(), config)


def load_ours(folder: str | Path, expected: dict[str, str] | None = None) -> CausalVAE:
    raw, state = model_folder.load_model_folder(folder, expected)
    source = storage.join(folder, model_folder.CONFIG_FILE)
    if raw.get("format") != FORMAT:
        raise ValueError(f"{source}: field 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    unknown = sorted(set(raw) - {"format", "model"})
    if unknown:
        raise ValueError(f"{source}: field '{unknown[0]}' is not a setting of a {FORMAT} folder (only 'format', 'model')")
    try:
        config = VAEModelConfig.model_validate(raw.get("model"))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(["model", *(str(part) for part in error["loc"])])
        raise ValueError(f"{source}: field '{field}' is invalid: {error['msg']}") from None
    return build_with_weights(config, state, storage.join(folder, model_folder.WEIGHTS_FILE))

