"""Reconstruction metrics for videos: PSNR, SSIM, LPIPS per frame, and their aggregation.

Model-agnostic and pure torch, in core because VAE training (the LPIPS loss), VAE evaluation and the
eval component all use them. The definitions follow the reference evaluation protocol (reference notes
§1.11): PSNR and SSIM on [0, 1] frames, LPIPS on [-1, 1] frames with a spatial mean; per-frame values
are averaged per timestep over the videos of a batch, then over timesteps and batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.error import URLError

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0  # reported when the frames are identical (MSE < 1e-10), as the reference does
_MSE_FLOOR = 1e-10
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2  # (K1 · L)² with L = 1 for [0, 1] data
SSIM_C2 = 0.03**2


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if prediction.dim() < 3:
        raise ValueError(f"frames must be (..., C, H, W); got shape {tuple(prediction.shape)}")


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame of (..., C, H, W) tensors in [0, 1]; returns (...)."""
    _check_pair(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).mean(dim=(-3, -2, -1))  # (...)
    value = -10.0 * torch.log10(mse.clamp_min(_MSE_FLOOR))  # = 20·log10(1/√MSE) for peak 1
    return torch.where(mse < _MSE_FLOOR, torch.full_like(value, PSNR_CAP_DB), value).float()


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 2-D Gaussian window (size, size)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel_1d = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel_1d = kernel_1d / kernel_1d.sum()
    return torch.outer(kernel_1d, kernel_1d)


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per frame of (..., C, H, W) tensors in [0, 1]; returns (...).

    Gaussian 11×11 window with σ = 1.5 over the valid region only (no padding), C1 = 0.01², C2 = 0.03²,
    the SSIM map averaged per channel and then over channels (reference notes §1.11). One conv2d over all
    frames and channels at once.
    """
    _check_pair(prediction, target)
    *batch_shape, channels, height, width = prediction.shape
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW}; got {height}×{width}")
    x = prediction.reshape(-1, 1, height, width).double()  # (N·C, 1, H, W)
    y = target.reshape(-1, 1, height, width).double()  # (N·C, 1, H, W)
    window = gaussian_window().to(x.device)[None, None]  # (1, 1, 11, 11)
    # Five local moments in one pass: stack the maps along the batch axis.
    stacked = torch.cat([x, y, x * x, y * y, x * y])  # (5·N·C, 1, H, W)
    moments = F.conv2d(stacked, window).chunk(5)  # 5 × (N·C, 1, H-10, W-10)
    mu_x, mu_y, e_xx, e_yy, e_xy = moments
    var_x = e_xx - mu_x**2
    var_y = e_yy - mu_y**2
    cov_xy = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov_xy + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )  # (N·C, 1, H-10, W-10)
    per_channel = ssim_map.mean(dim=(-3, -2, -1)).reshape(*batch_shape, channels)  # (..., C)
    return per_channel.mean(dim=-1).float()


def build_lpips(backbone: str, random_backbone: bool, spatial: bool, seed: int = 0) -> torch.nn.Module:
    """A frozen `lpips.LPIPS` network; a random backbone is seeded so every run builds the same one."""
    if backbone not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"unknown LPIPS backbone '{backbone}': use alex, vgg or squeeze")
    import lpips  # optional dependency of the vae and eval extras

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = lpips.LPIPS(net=backbone, pnet_rand=random_backbone, pretrained=True, spatial=spatial,
                              verbose=False)
        except URLError as exc:  # torchvision tried to download the backbone weights and could not
            raise ValueError(
                f"LPIPS-{backbone} needs torchvision's pretrained {backbone} weights in "
                f"{torch.hub.get_dir()}/checkpoints and they could not be downloaded ({exc.reason}); put them "
                f"there, or set the config's lpips random-backbone field to true (code-path tests only)") from None
    return net.eval().requires_grad_(False)


class LPIPSMetric(torch.nn.Module):
    """LPIPS per frame (spatial mean) from the `lpips` package, inputs in [-1, 1].

    `lpips` ships only its small linear heads; the backbone (AlexNet or VGG16) comes from torchvision's
    pretrained weights in `$TORCH_HOME/hub/checkpoints`, which an offline machine does not have. With
    `random_backbone=True` the backbone is randomly initialised (seeded): the code path is exercised but
    the numbers are not comparable to published LPIPS. Reports must record which one was used.
    """

    def __init__(self, backbone: str = "alex", random_backbone: bool = False, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.random_backbone = random_backbone
        self.net = build_lpips(backbone, random_backbone, spatial=True, seed=seed)

    def describe(self) -> dict[str, object]:
        return {"backbone": self.backbone, "random_backbone": self.random_backbone,
                "comparable_to_published": not self.random_backbone}

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) in [-1, 1] -> (...)."""
        _check_pair(prediction, target)
        *batch_shape, channels, height, width = prediction.shape
        spatial = self.net(prediction.reshape(-1, channels, height, width).float(),
                           target.reshape(-1, channels, height, width).float())  # (N, 1, H, W)
        return spatial.mean(dim=(-3, -2, -1)).reshape(batch_shape)


def video_metrics(prediction: torch.Tensor, target: torch.Tensor,
                  lpips_metric: LPIPSMetric | None = None) -> dict[str, torch.Tensor]:
    """Per-frame metrics of (B, 3, T, H, W) videos in [-1, 1]; each value is (B, T)."""
    if prediction.dim() != 5:
        raise ValueError(f"videos must be (B, C, T, H, W); got shape {tuple(prediction.shape)}")
    pred_frames = prediction.transpose(1, 2).float()  # (B, T, C, H, W)
    target_frames = target.transpose(1, 2).float()  # (B, T, C, H, W)
    pred_01 = ((pred_frames + 1) / 2).clamp(0, 1)
    target_01 = ((target_frames + 1) / 2).clamp(0, 1)
    values = {"psnr": psnr(pred_01, target_01), "ssim": ssim(pred_01, target_01)}
    if lpips_metric is not None:
        with torch.no_grad():
            values["lpips"] = lpips_metric(pred_frames.clamp(-1, 1), target_frames)
    return values


@dataclass
class MetricAggregator:
    """Reference aggregation (§1.11): per batch, the mean over videos per timestep, then over timesteps;
    the result is the mean over batches. Also keeps the per-timestep curve across batches."""

    batch_means: dict[str, list[float]] = field(default_factory=dict)
    timestep_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    timestep_counts: dict[str, int] = field(default_factory=dict)

    def update(self, values: dict[str, torch.Tensor]) -> None:
        for name, per_frame in values.items():  # per_frame: (B, T)
            per_timestep = per_frame.detach().double().cpu().mean(dim=0)  # (T,)
            self.batch_means.setdefault(name, []).append(float(per_timestep.mean()))
            if name not in self.timestep_sums:
                self.timestep_sums[name] = torch.zeros_like(per_timestep)
                self.timestep_counts[name] = 0
            if self.timestep_sums[name].shape != per_timestep.shape:
                raise ValueError(f"metric '{name}': batches of {len(self.timestep_sums[name])} and "
                                 f"{len(per_timestep)} frames cannot share a per-timestep curve")
            self.timestep_sums[name] += per_timestep
            self.timestep_counts[name] += 1

    def result(self) -> dict[str, float]:
        return {name: sum(means) / len(means) for name, means in self.batch_means.items()}

    def per_timestep(self) -> dict[str, list[float]]:
        return {name: (total / self.timestep_counts[name]).tolist() for name, total in self.timestep_sums.items()}

    @property
    def num_batches(self) -> int:
        return max((len(m) for m in self.batch_means.values()), default=0)

