"""Held-out evaluation prompts for the synthetic shapes: balanced, seeded, and unseen in training.

Balanced: each background, object colour and direction appears equally often (within one) across the
prompts, so a reader or a model that always answers the same scores exactly chance, and the shuffled
control means what it says. Held out: the (background, colour, direction) triple of each prompt, the three
attributes the reader scores, is one no training caption has, where the balance allows (swaps between
prompts keep the counts); the full caption is then made unseen by the choice of shape and speed where
possible. How many prompts are held out is reported beside the numbers, never assumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from components.data.synth import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEEDS
from components.eval.adherence import ShapesCaption, parse_caption


@dataclass(frozen=True)
class EvalPrompt:
    text: str
    seed: int  # the sampling seed of this prompt's video
    unseen_triple: bool  # no training caption has its (background, colour, direction)
    unseen_caption: bool  # no training caption is this caption


def _balanced(names: Iterable[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` names, each as often as the others within one, in a seeded order."""
    names = list(names)
    cycled = [names[i % len(names)] for i in range(count)]
    start = [names[i] for i in rng.permutation(len(names))]  # which names get the extra one: seeded too
    cycled = [start[names.index(name)] for name in cycled]
    return [cycled[i] for i in rng.permutation(count)]


def _triple(caption: ShapesCaption) -> tuple[str, str, str]:
    return caption.background, caption.colour, caption.direction


def heldout_prompts(count: int, seed: int, training_captions: Iterable[str]) -> list[EvalPrompt]:
    """`count` balanced shapes prompts, unseen in `training_captions` where possible, with seeds seed + i.

    Training captions that are not shapes captions (photos) are ignored."""
    if count < 1:
        raise ValueError(f"the number of evaluation prompts must be >= 1, got {count}")
    seen: set[ShapesCaption] = set()
    for text in training_captions:
        try:
            seen.add(parse_caption(text))
        except ValueError:
            continue
    seen_triples = {_triple(c) for c in seen}
    rng = np.random.default_rng(seed)
    backgrounds = _balanced(BACKGROUNDS, count, rng)
    colours = _balanced(COLOURS, count, rng)
    directions = _balanced(DIRECTIONS, count, rng)
    _swap_towards_unseen(backgrounds, colours, directions, seen_triples)

    prompts, used = [], set()
    for index, (background, colour, direction) in enumerate(zip(backgrounds, colours, directions, strict=True)):
        # Shape and speed are not scored: pick the first (in a seeded order) that makes the caption new to
        # both the training set and this prompt list.
        options = [ShapesCaption(colour, shape, speed, direction, background)
                   for shape in rng.permutation(SHAPES) for speed in rng.permutation(SPEEDS)]
        caption = next((c for c in options if c not in seen and c not in used), options[0])
        used.add(caption)
        prompts.append(EvalPrompt(text=caption.text(), seed=seed + index,
                                  unseen_triple=(background, colour, direction) not in seen_triples,
                                  unseen_caption=caption not in seen))
    return prompts


def _swap_towards_unseen(backgrounds: list[str], colours: list[str], directions: list[str],
                         seen: set[tuple[str, str, str]]) -> None:
    """Swap colours, then directions, between prompts while that turns a seen triple into an unseen one
    without making the other prompt's triple seen. Swaps keep every attribute's counts (the balance)."""
    count = len(backgrounds)

    def is_seen(i: int) -> bool:
        return (backgrounds[i], colours[i], directions[i]) in seen

    for values in (colours, directions):
        for i in range(count):
            if not is_seen(i):
                continue
            for j in range(count):
                if j == i:
                    continue
                values[i], values[j] = values[j], values[i]
                if not is_seen(i) and not is_seen(j):
                    break
                values[i], values[j] = values[j], values[i]


def heldout_summary(prompts: list[EvalPrompt]) -> dict[str, int]:
    """How many prompts are held out, for the report."""
    return {"prompts": len(prompts), "unseen_triples": sum(p.unseen_triple for p in prompts),
            "unseen_captions": sum(p.unseen_caption for p in prompts)}
