"""What the VAE's stages need before they start: a valid configuration and, for real LPIPS, torchvision's
pretrained backbone weights on disk (lpips would download them on first use; offline that fails deep
inside a stage, after the data stages have run)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from components.core.preflight import load_or_problems, torch_hub_file
from components.vae.config import load_vae_config

# Which function uses which LPIPS settings: (config group, its dotted key) per entry point.
_LPIPS_USERS = {"train_vae": ("train.loss",), "evaluate_vae": ("eval",)}


def _backbone_url(backbone: str) -> str:
    """The torchvision weights lpips loads for `backbone` (`pretrained=True` = IMAGENET1K_V1)."""
    from torchvision import models

    weights = {"vgg": models.VGG16_Weights, "alex": models.AlexNet_Weights,
               "squeeze": models.SqueezeNet1_1_Weights}[backbone]
    return weights.IMAGENET1K_V1.url


def check(preset: str, overrides: Sequence[str] = (), functions: Collection[str] = ()) -> list[str]:
    config, problems = load_or_problems(load_vae_config, preset, overrides)
    if config is None:
        return problems
    for key in sorted({key for function in functions for key in _LPIPS_USERS.get(function, ())}):
        group = config
        for part in key.split("."):
            group = getattr(group, part)
        if group.lpips_random_backbone:
            continue
        url = _backbone_url(group.lpips_backbone)
        path = torch_hub_file(url)
        if not path.is_file():
            problems.append(
                f"vae preset '{preset}': {key}.lpips_backbone '{group.lpips_backbone}' needs torchvision's "
                f"pretrained weights at {path} (from {url}): put the file there, or set "
                f"{key}.lpips_random_backbone=true (--set vae.{key}.lpips_random_backbone=true for a pipeline; "
                f"code-path runs only: the numbers are then not real LPIPS)")
    return problems
