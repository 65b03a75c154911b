"""The reconstruction grid and video say what they show: input and output rows, PSNR per clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from components.core import storage
from components.core.media import (
    LABEL_HEIGHT,
    LABEL_WIDTH,
    clip_psnr,
    save_reconstruction_grid,
    save_side_by_side_video,
    write_mp4,
)
from components.core.metrics import psnr


def _clips() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    original = torch.rand(2, 3, 5, 32, 48, generator=generator) * 2 - 1  # (B, 3, T, H, W)
    noise = torch.randn(original.shape, generator=generator)
    reconstruction = (original + noise * torch.tensor([0.05, 0.2]).view(2, 1, 1, 1, 1)).clamp(-1, 1)
    return original, reconstruction


def test_clip_psnr_is_the_mean_of_frame_psnr():
    original, reconstruction = _clips()
    per_clip = clip_psnr(original, reconstruction)
    frames = psnr((reconstruction.transpose(1, 2) + 1) / 2, (original.transpose(1, 2) + 1) / 2)  # (B, T)
    assert per_clip == pytest.approx(frames.mean(dim=1).tolist())
    assert per_clip[0] > per_clip[1] + 10  # 4x the noise: 12 dB less


def test_grid_has_a_caption_an_input_row_and_an_output_row_per_clip(tmp_path):
    original, reconstruction = _clips()
    path = save_reconstruction_grid(original, reconstruction, tmp_path / "grid.png", max_frames=3)
    grid = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    block = LABEL_HEIGHT + 2 * 32
    assert grid.shape == (2 * block, LABEL_WIDTH + 3 * 48, 3)  # frames 0, 2, 4 of each clip
    inputs = ((original + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()  # (B, T, H, W, 3)
    outputs = ((reconstruction + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    for clip in range(2):
        top = clip * block
        caption = grid[top: top + LABEL_HEIGHT]
        assert caption.max() > 200 and np.median(caption) == 40  # white text on the dark band
        for row, frames in ((0, inputs), (1, outputs)):
            y = top + LABEL_HEIGHT + row * 32
            label = grid[y: y + 32, :LABEL_WIDTH]
            assert label.max() > 200 and np.median(label) == 40  # "input" / "output"
            for position, frame in enumerate((0, 2, 4)):
                x = LABEL_WIDTH + position * 48
                np.testing.assert_array_equal(grid[y: y + 32, x: x + 48], frames[clip, frame])  # PNG: lossless


def test_video_frames_carry_labels_above_input_and_output(tmp_path):
    import av

    # Flat colours survive H.264's chroma subsampling: red input, blue output.
    original = torch.tensor([0.8, -0.8, -0.8]).view(1, 3, 1, 1, 1).expand(2, 3, 5, 32, 48).contiguous()
    reconstruction = torch.tensor([-0.8, -0.8, 0.8]).view(1, 3, 1, 1, 1).expand(2, 3, 5, 32, 48).contiguous()
    path = save_side_by_side_video(original, reconstruction, tmp_path / "clips.mp4")
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == 2 * 5
    assert frames[0].shape == (2 * LABEL_HEIGHT + 32, 2 * 48, 3)
    bands = frames[0][: 2 * LABEL_HEIGHT].astype(int)
    assert bands.max() > 200 and np.median(bands) < 60  # light text on dark bands (H.264 blurs a little)
    body = frames[0][2 * LABEL_HEIGHT + 4:, :].astype(int)
    left, right = body[:, 4:44].mean(axis=(0, 1)), body[:, 52:92].mean(axis=(0, 1))
    assert left[0] > 180 and left[2] < 60, left  # input on the left
    assert right[2] > 180 and right[0] < 60, right  # output on the right



def test_write_mp4_gives_the_same_file_for_the_same_frames(tmp_path):
    """x264's assembly once gave one of two files for the same frames, by chance (1 encode in 5)."""
    ramp = np.linspace(0, 255, 32 * 48).reshape(32, 48)
    frames = np.stack([np.stack([np.roll(ramp, 3 * t, axis=1), np.flipud(ramp), np.full_like(ramp, 40 * (t % 3))],
                                axis=-1) for t in range(9)]).astype(np.uint8)  # (9, 32, 48, 3)
    files = {storage.sha256_file(write_mp4(frames, tmp_path / f"{i}.mp4", fps=8)) for i in range(12)}
    assert len(files) == 1
    capture = cv2.VideoCapture(str(tmp_path / "0.mp4"))
    decoded = []
    while (read := capture.read())[0]:
        decoded.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    assert np.stack(decoded).shape == frames.shape
    assert np.abs(np.stack(decoded).astype(int) - frames).mean() < 4  # crf 18: close to the input
    with pytest.raises(ValueError, match="frames must be"):
        write_mp4(frames[0], tmp_path / "bad.mp4")
