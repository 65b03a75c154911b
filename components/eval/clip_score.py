"""CLIP score of generated videos against their prompts (transformers' CLIPModel), for real data.

Convention (torchmetrics' `CLIPScore`, applied per frame): score = 100 · max(cos(image, text), 0) for
each frame and its prompt, averaged over the video's frames, then over the videos. Frames go through the
model's own CLIPProcessor (resize, centre crop, normalisation); prompts are truncated to the text model's
length. The model is a local folder or a hub id, read from the local Hugging Face cache only unless
`allow_download` is set: nothing is downloaded by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

CONVENTION = "100 * max(cos(image, text), 0) per frame (torchmetrics CLIPScore), mean over frames, then videos"


class ClipScorer:
    """A CLIP model and its processor, loaded once."""

    def __init__(self, source: str, allow_download: bool = False, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        if source.startswith(("/", ".", "~")) and not Path(source).expanduser().is_dir():
            raise ValueError(f"clip.model: no CLIP folder at {source}")
        try:
            self.processor = CLIPProcessor.from_pretrained(source, local_files_only=not allow_download)
            self.model = CLIPModel.from_pretrained(source, local_files_only=not allow_download).eval().to(device)
        except (OSError, ValueError) as exc:  # not in the local cache, or not a valid hub id
            hint = "" if allow_download else " (downloads are off: set clip.allow_download=true)"
            raise ValueError(f"clip.model: cannot load {source}{hint}: {exc}") from None
        self.source = source
        self.device = torch.device(device)

    @torch.inference_mode()
    def score_video(self, frames: np.ndarray, prompt: str) -> float:
        """The mean over frames (T, H, W, 3) RGB uint8 of 100 · max(cos, 0) against `prompt`."""
        text = self.processor.tokenizer([prompt], padding=True, truncation=True, return_tensors="pt")
        pixels = self.processor.image_processor(images=list(frames), return_tensors="pt")["pixel_values"]
        outputs = self.model(**text.to(self.device), pixel_values=pixels.to(self.device))
        # text_embeds (1, D) and image_embeds (T, D), projected and L2-normalised by the model
        cosine = (outputs.image_embeds @ outputs.text_embeds.T)[:, 0]  # (T,)
        return float((100 * cosine.clamp(min=0)).mean())

    def score(self, videos: Sequence[np.ndarray], prompts: Sequence[str]) -> dict:
        """{"mean", "per_video", "convention", "model"} for videos and their prompts."""
        if len(videos) != len(prompts) or not videos:
            raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts")
        per_video = [self.score_video(v, p) for v, p in zip(videos, prompts, strict=True)]
        return {"mean": float(np.mean(per_video)), "per_video": per_video, "convention": CONVENTION,
                "model": self.source}
