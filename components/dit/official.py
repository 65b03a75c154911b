"""DiT model folders: the diffusers layout of Open-Sora Plan v1.2, which is also ours.

A folder holds `config.json` (the reference's `OpenSoraT2V.__init__` arguments, reference notes §8.2)
and `diffusion_pytorch_model.safetensors` (keys exactly as the reference's `state_dict()`), or diffusers'
sharded variant (`diffusion_pytorch_model.safetensors.index.json` + shards). Our own folders add one
private key, `_t2v`, with the settings the reference does not have (diffusers ignores keys starting with
an underscore), so our checkpoints load in diffusers-based tools and theirs in ours. Weights are only ever
read from safetensors: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from components.core import storage
from components.dit.config import DiTModelConfig
from components.dit.model import OpenSoraT2V

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
CLASS_NAME = "OpenSoraT2V"
OURS_KEY = "_t2v"  # our extra settings; diffusers skips underscore keys when it builds a model

# Reference config fields that map 1:1 onto ours.
_SAME_NAME = ("in_channels", "out_channels", "num_layers", "num_attention_heads", "attention_head_dim",
              "caption_channels", "patch_size", "patch_size_t", "norm_eps", "dropout", "sample_size_t",
              "sample_size", "interpolation_scale_t", "interpolation_scale_h", "interpolation_scale_w")
# Fields whose only supported value is the v1.2 one (others select modules v1.2 does not use).
_FIXED: dict[str, Any] = {
    "norm_type": "ada_norm_single",
    "use_rope": True,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "norm_elementwise_affine": False,
    "downsampler": None,
    "only_cross_attention": False,
    "double_self_attention": False,
    "upcast_attention": False,
    "attention_type": "default",
    "num_vector_embeds": None,
}
# Read by the reference but without effect on v1.2's outputs (§2.1, §8.2), or EMA bookkeeping that
# released configs carry (§8.2): accepted and ignored.
_IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "attention_mode", "use_stable_fp32",
            "norm_num_groups", "num_embeds_ada_norm", "use_additional_conditions", "use_linear_projection",
            "decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step",
            "use_ema_warmup"}
_OURS = ("rope_angles", "zero_init", "gradient_checkpointing", "sublayer_checkpointing", "mlp_checkpoint_tokens")


def _default_scales(raw: dict[str, Any]) -> dict[str, float]:
    """The reference's interpolation scales when its config leaves them null (modeling_opensora.py,
    `_init_patched_inputs`): t from the latent frame count, h and w relative to a 30x40 token grid."""
    frames = raw.get("sample_size_t") or 1
    height, width = _pair(raw.get("sample_size") or (30, 40))
    return {"interpolation_scale_t": (frames - 1) // 16 + 1 if frames % 2 == 1 else frames / 16,
            "interpolation_scale_h": height / 30, "interpolation_scale_w": width / 40}


def _pair(value: Any) -> tuple[Any, Any]:
    return (value, value) if isinstance(value, int | float) else tuple(value)


def official_to_config(raw: dict[str, Any], source: str = CONFIG_FILE) -> DiTModelConfig:
    """Map a reference (or our) `config.json` onto DiTModelConfig; ValueError names any unsupported field."""
    def fail(field: str, why: str) -> ValueError:
        return ValueError(f"{source}: field '{field}' {why}")

    if raw.get("_class_name", CLASS_NAME) != CLASS_NAME:
        raise fail("_class_name", f"= {raw['_class_name']!r}: not an {CLASS_NAME} (Open-Sora Plan DiT) config")
    fields: dict[str, Any] = {}
    defaults = _default_scales(raw)
    for key, value in raw.items():
        if key in _SAME_NAME:
            fields[key] = defaults[key] if value is None and key in defaults else value
        elif key in _FIXED:
            if value != _FIXED[key]:
                raise fail(key, f"= {value!r} is not supported (only {_FIXED[key]!r}, as in v1.2)")
        elif key == "cross_attention_dim":
            pass  # checked against the width below: the text is projected to it before attention
        elif key == OURS_KEY:
            if not isinstance(value, dict) or set(value) - set(_OURS):
                raise fail(OURS_KEY, f"must be a mapping with keys among {', '.join(_OURS)}")
            fields.update(value)
        elif key not in _IGNORED and not key.startswith("_"):  # `_…`: diffusers' metadata (e.g. _use_default_values)
            raise fail(key, "is not a known Open-Sora Plan OpenSoraT2V setting")
    for key in ("interpolation_scale_t", "interpolation_scale_h", "interpolation_scale_w"):
        fields.setdefault(key, defaults[key])
    if fields.get("out_channels") is None and "in_channels" in fields:
        fields["out_channels"] = fields["in_channels"]  # the reference's default for a null out_channels
    if fields.get("sample_size") is not None:
        fields["sample_size"] = _pair(fields["sample_size"])
    try:
        config = DiTModelConfig.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise fail(".".join(map(str, error["loc"])) or "<architecture>", f"is invalid: {error['msg']}") from None
    cross = raw.get("cross_attention_dim", config.hidden_size)
    if cross != config.hidden_size:
        raise fail("cross_attention_dim", f"= {cross!r} must equal num_attention_heads x attention_head_dim "
                                          f"({config.hidden_size}): text is projected to the model width")
    return config


def config_to_official(config: DiTModelConfig) -> dict[str, Any]:
    """The `config.json` of a folder holding `config`: the reference's fields, plus ours under `_t2v`."""
    import diffusers

    raw: dict[str, Any] = {"_class_name": CLASS_NAME, "_diffusers_version": diffusers.__version__}
    raw.update({key: getattr(config, key) for key in _SAME_NAME})
    raw["sample_size"] = list(config.sample_size)
    raw.update(_FIXED)
    raw.update({"cross_attention_dim": config.hidden_size, "attention_mode": "xformers", "norm_num_groups": 32,
                "num_embeds_ada_norm": 1000, "use_additional_conditions": None, "use_linear_projection": False,
                "use_stable_fp32": False})
    raw[OURS_KEY] = {key: getattr(config, key) for key in _OURS}
    return raw


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a local folder's safetensors weights (single file or diffusers shards), memory-mapped."""
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{index}: not a diffusers weight index ({exc})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = f"; found {', '.join(pickled)}, which we do not unpickle: convert it to safetensors once" if pickled else ""
        raise FileNotFoundError(f"{folder}: no DiT weights (looked for {WEIGHTS_FILE} and {WEIGHTS_INDEX_FILE}){hint}")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    state[key] = handle.get_tensor(key)
        except (OSError, SafetensorError) as exc:  # a truncated file or a bad header
            raise ValueError(f"{path}: unreadable safetensors file ({exc})") from None
    return state


def build_with_weights(config: DiTModelConfig, state: dict[str, torch.Tensor], source: str,
                       dtype: torch.dtype = torch.float32) -> OpenSoraT2V:
    """The model with exactly `state` as its parameters (strict: every key, every shape), in eval mode.
    Built on the meta device and assigned, so the weights exist once while loading."""
    with torch.device("meta"):
        model = OpenSoraT2V(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the configured architecture; "
                         f"missing {len(missing)} keys {missing[:5]}, unexpected {len(unexpected)} keys {unexpected[:5]}")
    wrong = [f"{key} {tuple(state[key].shape)} (expected {shape})" for key, shape in expected.items()
             if tuple(state[key].shape) != shape]
    if wrong:
        raise ValueError(f"{source}: {len(wrong)} weights have the wrong shape: {'; '.join(wrong[:3])}")
    model.load_state_dict({key: value.to(dtype) for key, value in state.items()}, strict=True, assign=True)
    return model.eval()


def load_folder(folder: Path, dtype: torch.dtype = torch.float32) -> OpenSoraT2V:
    """Build and load an OpenSoraT2V from a local folder in the diffusers layout (official or ours)."""
    config_path = folder / CONFIG_FILE
    config = official_to_config(storage.read_json(config_path), source=str(config_path))
    return build_with_weights(config, read_weights(folder), str(folder), dtype)


def save_folder(folder: str | Path, model: OpenSoraT2V) -> dict[str, str]:
    """Write a model folder (weights first, `config.json` last: a folder with a config is complete).
    Returns the sha256 of each file. The weights go through a local file, never a second copy in memory."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    storage.delete(storage.join(folder, CONFIG_FILE))  # overwriting: never pair an old config with new weights
    with storage.staging_dir("t2v-dit-save-") as staging:
        local = Path(staging) / WEIGHTS_FILE
        save_file(tensors, str(local), metadata={"format": "pt"})
        weights_sha = storage.put_file(local, storage.join(folder, WEIGHTS_FILE))
    config_sha = storage.write_json(storage.join(folder, CONFIG_FILE), config_to_official(model.config))
    return {WEIGHTS_FILE: weights_sha, CONFIG_FILE: config_sha}
