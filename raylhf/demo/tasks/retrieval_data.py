"""Generated rows for the encoder trainers' default runs (no data files). Pure data; it imports no trainer.

* ``topic_texts``: ``seq_cls`` rows: a few words of one topic (animals, food, weather, tools) among filler words
  and one word of another topic; the label is the topic (4 classes).
* ``scene_rows``: ``embedding`` / reranker rows: the query asks for a colour, an animal and a place ("find the
  red fox in the barn"); the positive describes that scene in other words and order ("in the barn there is a fox
  that is red"); the hard negatives differ in exactly one of the three. Held-out rows are scenes (triples) that
  never occur in training.
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


def _scene_text(forms: list[str], scene: tuple[str, str, str], rng: random.Random) -> str:
    c, a, p = scene
    return rng.choice(forms).format(c=c, a=a, p=p)


def _negatives(scene: tuple[str, str, str], rng: random.Random) -> list[tuple[str, str, str]]:
    c, a, p = scene
    return [(rng.choice([x for x in COLORS if x != c]), a, p), (c, rng.choice([x for x in ANIMALS if x != a]), p),
            (c, a, rng.choice([x for x in PLACES if x != p]))]


def scene_rows(num_train: int, num_heldout: int, seed: int) -> tuple[list[RetrievalRow], list[RetrievalRow]]:
    """(train rows, held-out rows): each row a query, its positive and 3 hard negatives; the held-out scenes
    (distinct) never occur in training; training rows repeat scenes with other wordings."""
    rng = random.Random(seed)
    scenes = list(itertools.product(COLORS, ANIMALS, PLACES))
    rng.shuffle(scenes)
    if num_heldout >= len(scenes):
        raise ValueError(f"num_heldout={num_heldout} must be below the {len(scenes)} scenes")
    held, train = scenes[:num_heldout], scenes[num_heldout:]

    def row(scene: tuple[str, str, str]) -> RetrievalRow:
        negatives = [[{"role": "user", "content": _scene_text(DOC_FORMS, s, rng)}] for s in _negatives(scene, rng)]
        return RetrievalRow([{"role": "user", "content": _scene_text(QUERY_FORMS, scene, rng)}],
                            [[{"role": "user", "content": _scene_text(DOC_FORMS, scene, rng)}]], negatives)

    return [row(rng.choice(train)) for _ in range(num_train)], [row(s) for s in held]
