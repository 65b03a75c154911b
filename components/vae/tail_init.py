"""Tail initialisation of a CausalVAE from a 2D Stable Diffusion VAE (reference notes §1.8).

Every bias and GroupNorm parameter is copied; a 3D kernel (Cout, Cin, kt, kh, kw) becomes zeros with
the 2D kernel in its LAST temporal slice, the slice that sees the current frame under front-replicate
causal padding; kt = 1 kernels get the 2D kernel unsqueezed; 2D modules copy directly. The result
reproduces the 2D VAE frame by frame on images (T = 1), up to the upsampler interpolation (see
`VAEModelConfig.upsample_interpolation`).

The source is an LDM-layout state dict (safetensors / torch checkpoint file) or a diffusers
`AutoencoderKL` (folder or hub id), whose keys we rename to the LDM layout ourselves.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from components.vae.config import TailInitConfig
from components.vae.model import CausalConv3d, CausalVAE

_STATE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def diffusers_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers `AutoencoderKL` keys to the CompVis/LDM layout (which CausalVAE's names follow)."""
    up_indices = [int(m.group(1)) for key in state if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", key))]
    num_levels = max(up_indices) + 1 if up_indices else 0
    converted = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        # diffusers lists decoder levels coarse -> fine; LDM indexes them fine -> coarse.
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{num_levels - 1 - int(m.group(1))}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{num_levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
        attention = re.match(r"(.*)mid_block\.attentions\.0\.(.+)\.(weight|bias)$", new)
        if attention:
            prefix, name, kind = attention.groups()
            new = f"{prefix}mid.attn_1.{_ATTENTION_NAMES[name]}.{kind}"
            if kind == "weight" and value.dim() == 2:
                value = value[:, :, None, None]  # linear (C, C) -> 1x1 conv (C, C, 1, 1)
        converted[new] = value
    return converted


def load_2d_vae_state(config: TailInitConfig) -> dict[str, torch.Tensor]:
    """The 2D VAE's weights in LDM layout, from a state-dict file or a diffusers AutoencoderKL."""
    if config.source is None:
        raise ValueError("init.source is not set: name a diffusers AutoencoderKL folder/hub id or an LDM weights file")
    path = Path(config.source)
    if path.is_file() and path.name.endswith(_STATE_FILE_SUFFIXES):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
        # A full LDM checkpoint nests the VAE under `first_stage_model.`.
        if any(key.startswith("first_stage_model.") for key in state):
            state = {key.removeprefix("first_stage_model."): value for key, value in state.items()
                     if key.startswith("first_stage_model.")}
    else:
        from diffusers import AutoencoderKL

        # local_files_only unless downloads are explicitly allowed: no implicit network access.
        vae_2d = AutoencoderKL.from_pretrained(config.source, subfolder=config.subfolder,
                                               local_files_only=not config.allow_download)
        state = vae_2d.state_dict()
    if any(".down_blocks." in key or ".up_blocks." in key for key in state):
        state = diffusers_to_ldm(state)
    return {key: value for key, value in state.items() if "loss" not in key}


def inflate_kernel(kernel_2d: torch.Tensor, shape_3d: torch.Size) -> torch.Tensor:
    """2D kernel (Cout, Cin, kh, kw) -> 3D (Cout, Cin, kt, kh, kw), zero except the last temporal slice."""
    kernel = kernel_2d.new_zeros(shape_3d)
    kernel[:, :, -1] = kernel_2d
    return kernel


@torch.no_grad()
def tail_init(model: CausalVAE, state_2d: dict[str, torch.Tensor], source: str = "2D VAE") -> None:
    """Initialise every parameter of `model` from the LDM-layout 2D VAE weights `state_2d` (in place)."""
    causal_convs = {name for name, module in model.named_modules() if isinstance(module, CausalConv3d)}
    used = set()
    for name, param in model.named_parameters():
        module_name, _, kind = name.rpartition(".")
        owner = module_name.removesuffix(".conv")
        key_2d = f"{owner}.{kind}" if owner in causal_convs else name
        if key_2d not in state_2d:
            raise ValueError(f"{source}: no weight '{key_2d}' for '{name}'; is the 2D VAE's layout the same?")
        value = state_2d[key_2d].to(param.dtype)
        used.add(key_2d)
        if value.shape == param.shape:
            param.copy_(value)
        elif param.dim() == 5 and value.dim() == 4 and param.shape[:2] + param.shape[3:] == value.shape:
            param.copy_(inflate_kernel(value, param.shape))  # kt = 1 is the same as an unsqueeze
        else:
            raise ValueError(f"{source}: '{key_2d}' has shape {tuple(value.shape)}, "
                             f"which does not fit '{name}' {tuple(param.shape)}")
    unused = sorted(set(state_2d) - used)
    if unused:
        raise ValueError(f"{source}: {len(unused)} weights have no place in the CausalVAE, e.g. {unused[:5]}")


@torch.no_grad()
def image_kernels_to_tail(model: CausalVAE) -> int:
    """Put each causal 3D kernel's sum over time in its last slice (the current frame), zeros elsewhere.

    Trained on images alone (phase 1 on 1-frame crops), a causal kernel learns only its sum over time: the
    padding shows every tap the same frame. How that sum is split over the taps is what the random init
    left, so on video each conv mixes the frame with the ones before it, and the mix compounds over the
    layers: decoded frames lag, more with every frame (the tiny demo VAE: 23.5 dB at frame 0, 17.8 at
    frame 8). With the sum on the current frame, as tail init from a 2D VAE does, the VAE computes the
    same function on images and a per-frame one on video, where phase 2 starts learning motion. Returns
    how many kernels changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, CausalConv3d) and module.kernel_frames > 1:
            weight = module.conv.weight
            weight.copy_(inflate_kernel(weight.sum(2), weight.shape))
            changed += 1
    return changed


def tail_init_from_config(model: CausalVAE, config: TailInitConfig) -> CausalVAE:
    tail_init(model, load_2d_vae_state(config), source=str(config.source))
    return model
