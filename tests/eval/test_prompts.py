from collections import Counter

import pytest

from components.data.synth import BACKGROUNDS, COLOURS, DIRECTIONS
from components.eval.adherence import parse_caption
from components.eval.prompts import heldout_prompts, heldout_summary


def _counts(prompts, name):
    return Counter(getattr(parse_caption(p.text), name) for p in prompts)


def test_prompts_are_balanced_seeded_and_new(synth_clips):
    training = [caption for caption, _, _ in synth_clips] + ["a slow pan left over a photograph of a cat"]
    prompts = heldout_prompts(24, seed=11, training_captions=training)
    assert [p.seed for p in prompts] == list(range(11, 35))
    assert prompts == heldout_prompts(24, seed=11, training_captions=training)
    assert prompts != heldout_prompts(24, seed=12, training_captions=training)
    for name, palette in (("background", BACKGROUNDS), ("colour", COLOURS), ("direction", DIRECTIONS)):
        counts = _counts(prompts, name)
        assert set(counts) == set(palette) and max(counts.values()) - min(counts.values()) <= 1, (name, counts)
    seen = {parse_caption(c) for c in training[:-1]}
    seen_triples = {(c.background, c.colour, c.direction) for c in seen}
    for prompt in prompts:
        caption = parse_caption(prompt.text)
        assert prompt.unseen_caption and caption not in seen
        assert prompt.unseen_triple == ((caption.background, caption.colour, caption.direction) not in seen_triples)
    assert len({p.text for p in prompts}) == 24
    assert heldout_summary(prompts) == {"prompts": 24, "unseen_triples": 24, "unseen_captions": 24}


def test_balance_wins_when_everything_was_seen():
    """Every triple in training: nothing can be held out; the prompts stay balanced and say so."""
    training = [f"a {c} circle moves slowly {d} on a {b} background"
                for b in BACKGROUNDS for c in COLOURS for d in DIRECTIONS]
    prompts = heldout_prompts(12, seed=0, training_captions=training)
    assert heldout_summary(prompts) == {"prompts": 12, "unseen_triples": 0, "unseen_captions": 12}
    counts = _counts(prompts, "background")
    assert max(counts.values()) - min(counts.values()) <= 1


def test_count_must_be_positive():
    with pytest.raises(ValueError, match="evaluation prompts"):
        heldout_prompts(0, seed=0, training_captions=[])


def test_swaps_find_unseen_triples_and_keep_the_balance():
    """Half of all triples seen (a checkerboard over background x colour): swaps make every prompt unseen."""
    training = [f"a {c} circle moves slowly {d} on a {b} background"
                for i, b in enumerate(BACKGROUNDS) for j, c in enumerate(COLOURS) for d in DIRECTIONS
                if (i + j) % 2 == 0]
    prompts = heldout_prompts(24, seed=3, training_captions=training)
    assert heldout_summary(prompts)["unseen_triples"] == 24
    for name in ("background", "colour", "direction"):
        counts = _counts(prompts, name)
        assert max(counts.values()) - min(counts.values()) <= 1
