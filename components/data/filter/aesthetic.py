"""Aesthetic scores on a 1-10 scale, pluggable: `opencv` (offline, no weights) or `laion`.

A clip's score is the mean over frames sampled evenly through it (at least first, middle and last). The
scan hands each sampled frame over as a `FrameSample`: a colour image no larger than the scorer's
`input_long_side` (area-filtered from the decoded frame) and a grey centre crop at the video's own
resolution.

`opencv`: a no-reference image-quality score built from classic measures, computed on the frame scaled
so its long side is at most 160 px (cost independent of the video's size):
- sharpness: variance of the Laplacian relative to the grey-level variance (so a low-contrast scene is
  not "blurry"); log-mapped to [0, 1] between 0.02 (heavily blurred) and 0.2 (crisp edges);
- noise: Immerkær's fast noise estimate (1996) over the flattest quarter of a central crop at the
  video's own resolution (texture counts little as noise; downscaling would hide noise); 0 below sigma
  6 grey levels, 1 (fully noisy) at sigma 18 and above;
- contrast: grey standard deviation / 50, capped at 1;
- colourfulness: Hasler and Süsstrunk's metric (2003) / 80, capped at 1 (on the image at half size);
- exposure: 1 minus the share of clipped pixels (<= 4 or >= 251).
score = 1 + 9 · sharpness · (1 − noise) · (0.4 + 0.6 · mean(contrast, colourfulness, exposure)), per
frame, with the clip's largest noise term (compression smooths noise on inter-coded frames).
Sharpness and noise multiply: colour cannot make up for a blurred or noisy frame. The score is not
LAION's scale; its threshold is calibrated on the synthetic set (see presets/tiny.yaml).

`laion`: the LAION "improved aesthetic predictor": the CLIP ViT-L/14 image embedding, L2-normalised
(forgetting this gives scores above 10), then a small MLP head. The head's layer layout matches the public
predictor's state dict (`layers.{0,2,4,6,7}`), so its released weights load as they are. Weights come from
a local folder or a hub id named in the config and are never downloaded unless `allow_download` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

ANALYSIS_SIZE = 160  # long side of the image the opencv score looks at
NOISE_CROP = 128  # side of the centre crop the noise is measured on, at the video's own resolution
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


@dataclass(frozen=True)
class FrameSample:
    """One sampled frame as the scorers see it."""

    image: np.ndarray      # (h, w, 3) BGR uint8, long side at most the scorer's `input_long_side`
    luma_crop: np.ndarray  # (<=128, <=128) uint8 full-range grey: the frame's centre at the video's own size


class AestheticScorer(Protocol):
    input_long_side: int | None  # the largest image the scorer needs (None: the frame as decoded)

    def __call__(self, samples: Sequence[FrameSample]) -> float:
        """Mean aesthetic score of a clip's sampled frames."""


# --------------------------------------------------------------------------- opencv


def _unit(value: float) -> float:
    return min(max(float(value), 0.0), 1.0)


def _noise_sigma(luma_crop: np.ndarray) -> float:
    """Immerkær: sigma = sqrt(pi/2) / 6 · mean |I * N|, over the flattest quarter of the crop.

    Measured at the video's own resolution (the crop): noise is a per-pixel property that downscaling
    averages away (heavy noise on a 720p frame is invisible at 160 px). "Flat" is judged by the gradient
    of a smoothed copy at half resolution (Gaussian pyramid step, then Sobel: about a sigma-2 smoothing
    at full size), so texture and edges are left out, and a pixel's own noise barely moves its rank."""
    if min(luma_crop.shape) < 4:
        return 0.0
    response = np.abs(cv2.filter2D(luma_crop, cv2.CV_16S, _IMMERKAER))  # (h, w) exact: integer kernel
    smooth = cv2.pyrDown(luma_crop.astype(np.float32))  # (h/2, w/2)
    gradient = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))
    # The quartile from a histogram of the gradient in steps of 1/2 grey level (saturating at 127.5), not
    # a sort: several times cheaper, and only pixels tied with the boundary step can differ.
    steps = cv2.convertScaleAbs(gradient, alpha=2.0)  # (h/2, w/2) uint8
    counts = np.cumsum(cv2.calcHist([steps], [0], None, [256], [0, 256]).ravel())
    flat = cv2.compare(steps, int(np.searchsorted(counts, steps.size // 4 + 1)), cv2.CMP_LE)  # 255 where flat
    flat = cv2.resize(flat, response.shape[::-1], interpolation=cv2.INTER_NEAREST)  # (h, w)
    flat[[0, -1], :] = flat[:, [0, -1]] = 0  # the filter's border pixels see a mirrored image
    return float(np.sqrt(np.pi / 2) / 6 * cv2.mean(response, mask=flat)[0])


def quality_terms(sample: FrameSample) -> dict[str, float]:
    """The opencv score's terms for one sampled frame, each in [0, 1] (noise: 1 = very noisy)."""
    image = sample.image
    assert max(image.shape[:2]) <= ANALYSIS_SIZE, f"image {image.shape} larger than the analysis size"
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    grey_std = float(cv2.meanStdDev(grey)[1][0, 0])
    laplacian_std = float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))[1][0, 0])  # exact for uint8 input
    relative_sharpness = laplacian_std**2 / (grey_std**2 + 1.0)
    sharpness = _unit(np.log(max(relative_sharpness, 1e-6) / 0.02) / np.log(0.2 / 0.02))

    # Colour at half size: video carries colour at half resolution (4:2:0) anyway.
    half = cv2.resize(image, (max(1, image.shape[1] // 2), max(1, image.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    blue, green, red = cv2.split(half)
    rg = cv2.subtract(red, green, dtype=cv2.CV_16S)  # R - G
    yb2 = cv2.subtract(cv2.add(red, green, dtype=cv2.CV_16S), cv2.add(blue, blue, dtype=cv2.CV_16S))  # 2 (yb)
    (rg_mean, rg_std), (yb2_mean, yb2_std) = ([float(v[0, 0]) for v in cv2.meanStdDev(c)] for c in (rg, yb2))
    colourfulness = np.hypot(rg_std, yb2_std / 2) + 0.3 * np.hypot(rg_mean, yb2_mean / 2)
    clipped = 1.0 - cv2.countNonZero(cv2.inRange(grey, 5, 250)) / grey.size  # share <= 4 or >= 251
    return {"sharpness": sharpness, "noise": _unit((_noise_sigma(sample.luma_crop) - 6.0) / 12.0),
            "contrast": _unit(grey_std / 50.0), "colourfulness": _unit(colourfulness / 80.0),
            "exposure": 1.0 - clipped}


def opencv_score(terms: dict[str, float], noise: float) -> float:
    appeal = (terms["contrast"] + terms["colourfulness"] + terms["exposure"]) / 3
    return 1.0 + 9.0 * terms["sharpness"] * (1.0 - noise) * (0.4 + 0.6 * appeal)


class OpenCVAesthetic:
    input_long_side = ANALYSIS_SIZE

    def __call__(self, samples: Sequence[FrameSample]) -> float:
        assert samples, "no frames to score"
        terms = [quality_terms(s) for s in samples]
        # Noise is a property of the clip: inter-coded frames smooth it away (measured: sigma 23 on a key
        # frame, 12 on the next sample of the same noisy clip), so every frame gets the clip's worst.
        noise = max(t["noise"] for t in terms)
        return float(np.mean([opencv_score(t, noise) for t in terms]))


# --------------------------------------------------------------------------- laion


def aesthetic_head(embedding_dim: int = 768):
    """The predictor's MLP head (layer indices match the public state dict: layers.0/2/4/6/7)."""
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(embedding_dim, 1024), nn.Dropout(0.2),
                nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, embedding):  # (N, D) L2-normalised -> (N,)
            return self.layers(embedding).squeeze(-1)

    return AestheticHead()


def _load_head_state(path: str):
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class LaionAesthetic:
    """CLIP image embedding -> L2 normalise -> MLP head. Loaded once per process."""

    input_long_side = None  # CLIP's processor resizes the frame itself

    def __init__(self, clip_model: str, head_weights: str, allow_download: bool = False, device: str = "cpu"):
        import torch
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        if not clip_model or not head_weights:
            raise ValueError("filter.aesthetic.laion needs clip_model (folder or hub id) and head_weights (file)")
        if not Path(head_weights).is_file():
            raise ValueError(f"filter.aesthetic.laion.head_weights: no file at {head_weights}")
        try:
            self.processor = CLIPImageProcessor.from_pretrained(clip_model, local_files_only=not allow_download)
            self.model = CLIPVisionModelWithProjection.from_pretrained(
                clip_model, local_files_only=not allow_download).eval().to(device)
        except OSError as exc:
            hint = "" if allow_download else " (downloads are off: set filter.aesthetic.laion.allow_download=true)"
            raise ValueError(f"filter.aesthetic.laion.clip_model: cannot load {clip_model}{hint}: {exc}") from None
        self.head = aesthetic_head(self.model.config.projection_dim)
        self.head.load_state_dict(_load_head_state(head_weights))
        self.head.eval().to(device)
        self.device = device
        self._torch = torch

    def embed(self, frames: Sequence[np.ndarray]):
        rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"].to(self.device)  # (N, 3, S, S)
        embedding = self.model(pixel_values=pixels).image_embeds  # (N, D)
        return embedding / embedding.norm(dim=-1, keepdim=True)  # the predictor was trained on unit vectors

    def __call__(self, samples: Sequence[FrameSample]) -> float:
        with self._torch.inference_mode():
            return float(self.head(self.embed([s.image for s in samples])).mean())


def build_scorer(config) -> AestheticScorer:
    """The scorer named by `config` (a FilterConfig.aesthetic group)."""
    if config.scorer == "opencv":
        return OpenCVAesthetic()
    laion = config.laion
    return LaionAesthetic(laion.clip_model, laion.head_weights, laion.allow_download, laion.device)
