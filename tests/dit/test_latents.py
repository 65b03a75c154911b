"""The trainer's latent loader: cached and online batches agree, text padding and mask, exact resume."""

from __future__ import annotations

import pytest
import torch

from components.data.loader import LoaderConfig
from components.dit.latents import open_latents

CONFIG = LoaderConfig(batch_tokens=64, max_batch_size=3, seed=5)
FP16, BF16 = 2**-11, 2**-8  # relative rounding of the stored latents (fp16) and text embeddings (bf16)


def _close(stored: torch.Tensor, computed: torch.Tensor, what: str, rtol: float = FP16) -> None:
    torch.testing.assert_close(stored, computed, rtol=rtol, atol=1e-5, msg=what)


def test_cached_and_online_give_the_same_batches(cached_latents, online_latents):
    cached, online = open_latents(cached_latents[0], CONFIG), open_latents(online_latents[0], CONFIG)
    assert cached.scale_factor == online.scale_factor and len(cached) == len(online) > 3
    _close(cached.empty_text, online.empty_text, "empty caption", BF16)
    assert torch.equal(cached.empty_mask, online.empty_mask) and cached.empty_mask.shape == (1,)
    assert cached.empty_text.shape == (1, 64)  # "" is `</s>` alone
    for epoch in range(2):  # a new caption of a two-caption clip is picked in epoch 1, alike in both
        for a, b in zip(cached, online, strict=True):
            assert (a["bucket"], a["key"], a["caption"], a["step"]) == (b["bucket"], b["key"], b["caption"], b["step"])
            frames, height, width = a["bucket"]
            assert a["latent_mean"].shape == (len(a["key"]), 4, (frames - 1) // 4 + 1, height // 8, width // 8)
            assert a["latent_mean"].dtype == a["text"].dtype == torch.float32
            _close(a["latent_mean"], b["latent_mean"], f"mean {a['key']}")
            _close(a["latent_logvar"], b["latent_logvar"], f"logvar {a['key']}")
            assert torch.equal(a["text_mask"], b["text_mask"])
            assert a["text"].shape[1] == int(a["text_mask"].sum(dim=1).max())  # padded to the longest caption only
            _close(a["text"], b["text"], f"text {a['key']}", BF16)
            assert not a["text"][a["text_mask"] == 0].any()  # zero beyond each caption's valid tokens
        assert cached.epoch == online.epoch == epoch + 1


@pytest.mark.parametrize("stop_after", [1, 4])
def test_exact_resume(cached_latents, stop_after):
    full = [(b["key"], b["latent_mean"], b["text"]) for b in open_latents(cached_latents[0], CONFIG)]
    first = open_latents(cached_latents[0], CONFIG)
    iterator = iter(first)
    for _ in range(stop_after):
        next(iterator)
    state = first.state_dict()
    resumed = open_latents(cached_latents[0], CONFIG)
    resumed.load_state_dict(state)
    rest = [(b["key"], b["latent_mean"], b["text"]) for b in resumed]
    assert len(rest) == len(full) - stop_after
    for (key, mean, text), (key2, mean2, text2) in zip(full[stop_after:], rest, strict=True):
        assert key == key2 and torch.equal(mean, mean2) and torch.equal(text, text2)


def test_bucket_selection_and_val(cached_latents):
    images = open_latents(cached_latents[0], LoaderConfig(batch_tokens=64, max_frames=1))
    assert {b["bucket"][0] for b in images} == {1}
    chosen = open_latents(cached_latents[0], LoaderConfig(batch_tokens=64, buckets=["9x32x32"]))
    assert {b["bucket"] for b in chosen} == {(9, 32, 32)}
    val = open_latents(cached_latents[0] / "val", CONFIG)
    keys = [key for batch in val for key in batch["key"]]
    train = [key for batch in open_latents(cached_latents[0], CONFIG) for key in batch["key"]]
    assert keys and not set(keys) & set(train)
    assert val.scale_factor == open_latents(cached_latents[0], CONFIG).scale_factor


def test_reader_processes_give_the_same_batches(cached_latents):
    def epoch(workers: int) -> list:
        config = CONFIG.model_copy(update={"num_workers": workers})
        return [(b["key"], b["latent_mean"], b["text"]) for b in open_latents(cached_latents[0], config)]

    for (key, mean, text), (key2, mean2, text2) in zip(epoch(0), epoch(1), strict=True):
        assert key == key2 and torch.equal(mean, mean2) and torch.equal(text, text2)
