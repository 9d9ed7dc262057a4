"""Generated rows for the encoder trainers' default runs (no data files). Pure data; it imports no trainer.

* ``topic_texts``: ``seq_cls`` rows: a few words of one topic (animals, food, weather, tools) among filler words
  and one word of another topic; the label is the topic (4 classes).
* ``scene_rows``: ``embedding`` / reranker rows: the query asks for a colour, an animal and a place ("find the
  red fox in the barn"); the positive describes that scene in other words and order ("in the barn there is a fox
  that is red"); the hard negatives differ in exactly one of the three. Held-out rows are scenes (triples) that
  never occur in training.
* ``animal_rows``: reranker rows: the query asks for an animal ("which text is about the fox?"); the positive is a
  scene with it, the negatives scenes with other animals (the same colour or place where possible). Held-out
  rows are scenes never trained on.
"""

from __future__ import annotations

import itertools
import random

from raylhf.data.retrieval import LabelledText, RetrievalRow

TOPICS: dict[str, list[str]] = {
    "animals": ["cat", "dog", "fox", "cow", "pig", "owl", "bee", "ant"],
    "food": ["bread", "rice", "soup", "cake", "egg", "milk", "tea", "jam"],
    "weather": ["rain", "snow", "wind", "fog", "sun", "storm", "hail", "cloud"],
    "tools": ["saw", "axe", "drill", "nail", "rope", "pump", "file", "wrench"],
}
FILLER = ["the", "a", "and", "with", "very", "some", "near", "old", "new", "big", "small", "of", "on", "my"]

COLORS = ["red", "blue", "green", "black", "white", "pink", "grey", "gold"]
ANIMALS = ["fox", "cat", "dog", "cow", "pig", "owl", "bee", "hen"]
PLACES = ["barn", "lake", "tree", "road", "park", "cave"]
Scene = tuple[str, str, str]  # (colour, animal, place)
QUERY_FORMS = ["find the {c} {a} in the {p}", "where is the {c} {a} near the {p}", "{c} {a} at the {p}"]
DOC_FORMS = ["in the {p} there is a {a} that is {c}", "a {a} sleeps by the {p}, its fur is {c}",
             "at the {p} you see one {c} {a}", "the {p} hides a {a}; the {a} is {c}"]


def topic_texts(n: int, seed: int) -> list[LabelledText]:
    """``n`` seq_cls rows with labels 0-3 (the index of the topic in ``TOPICS``)."""
    rng = random.Random(seed)
    names = list(TOPICS)
    out: list[LabelledText] = []
    for _ in range(n):
        label = rng.randrange(len(names))
        other = rng.choice([k for k in range(len(names)) if k != label])
        words = [*rng.sample(TOPICS[names[label]], rng.randint(2, 4)), rng.choice(TOPICS[names[other]])]
        words += rng.choices(FILLER, k=rng.randint(2, 4))
        rng.shuffle(words)
        out.append(LabelledText([{"role": "user", "content": " ".join(words)}], label))
    return out


def _scene_text(forms: list[str], scene: Scene, rng: random.Random) -> str:
    c, a, p = scene
    return rng.choice(forms).format(c=c, a=a, p=p)


def _negatives(scene: Scene, rng: random.Random, avoid: set[Scene]) -> list[Scene]:
    """One scene differing in the colour, one in the animal, one in the place; none of them in ``avoid`` (the
    held-out scenes: a held-out query should have one right document among the held-out ones) where the axis
    leaves a choice."""
    c, a, p = scene
    options = [[(x, a, p) for x in COLORS], [(c, x, p) for x in ANIMALS], [(c, a, x) for x in PLACES]]
    return [rng.choice([s for s in opts if s != scene and s not in avoid] or [s for s in opts if s != scene])
            for opts in options]


def scene_rows(num_train: int, num_heldout: int, seed: int) -> tuple[list[RetrievalRow], list[RetrievalRow]]:
    """(train rows, held-out rows): each row a query, its positive and 3 hard negatives; the held-out scenes
    (distinct) never occur in training; training rows repeat scenes with other wordings."""
    rng = random.Random(seed)
    scenes = list(itertools.product(COLORS, ANIMALS, PLACES))
    rng.shuffle(scenes)
    if num_heldout >= len(scenes):
        raise ValueError(f"num_heldout={num_heldout} must be below the {len(scenes)} scenes")
    held, train = scenes[:num_heldout], scenes[num_heldout:]

    avoid = set(held)

    def row(scene: Scene) -> RetrievalRow:
        negatives = [[{"role": "user", "content": _scene_text(DOC_FORMS, s, rng)}]
                     for s in _negatives(scene, rng, avoid)]
        return RetrievalRow([{"role": "user", "content": _scene_text(QUERY_FORMS, scene, rng)}],
                            [[{"role": "user", "content": _scene_text(DOC_FORMS, scene, rng)}]], negatives)

    return [row(rng.choice(train)) for _ in range(num_train)], [row(s) for s in held]


ANIMAL_QUERIES = ["which text is about the {a}?", "find the {a}", "is there a {a}?"]


def animal_rows(num_train: int, num_heldout: int, seed: int, negatives: int = 3
                ) -> tuple[list[RetrievalRow], list[RetrievalRow]]:
    """(train rows, held-out rows) of animal queries; the held-out positives are scenes never trained on."""
    rng = random.Random(seed)
    scenes = list(itertools.product(COLORS, ANIMALS, PLACES))
    rng.shuffle(scenes)
    held, train = scenes[:num_heldout], scenes[num_heldout:]

    def row(scene: Scene) -> RetrievalRow:
        c, a, p = scene
        others = rng.sample([x for x in ANIMALS if x != a], negatives)
        negs = [(rng.choice([c, rng.choice(COLORS)]), x, rng.choice([p, rng.choice(PLACES)])) for x in others]
        return RetrievalRow([{"role": "user", "content": rng.choice(ANIMAL_QUERIES).format(a=a)}],
                            [[{"role": "user", "content": _scene_text(DOC_FORMS, scene, rng)}]],
                            [[{"role": "user", "content": _scene_text(DOC_FORMS, s, rng)}] for s in negs])

    return [row(rng.choice(train)) for _ in range(num_train)], [row(s) for s in held]
