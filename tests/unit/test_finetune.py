"""What `make finetune` trains on: the rows of `make dataset`'s CSV it can use, and how.

The training itself needs torch and runs in `make verify-export`; the choice of images and
labels is plain Python and is tested here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from tools import demo_data
from tools.model.finetune import batches, class_weights, model_input, read_dataset, usable

CLASSES = ["cats", "dogs", "others"]


def write_csv(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """`make dataset`'s format; `rows` are (path, hashtag)."""
    lines = ["path,url,hashtag,score"] + [f"{path},https://pbs.example/{path},{tag},0.9" for path, tag in rows]
    csv_path = folder / "dataset.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def draw(folder: Path, path: str, index: int = 0) -> None:
    (folder / path).parent.mkdir(parents=True, exist_ok=True)
    demo_data.photo(index, (300, 200)).save(folder / path, "JPEG")


def test_rows_get_their_class_and_other_hashtags_count_for_others(tmp_path: Path) -> None:
    for path in ("cats/1.jpg", "dogs/2.jpg", "birds/3.jpg", "others/4.jpg"):
        draw(tmp_path, path)
    csv_path = write_csv(
        tmp_path, [("cats/1.jpg", "cats"), ("dogs/2.jpg", "dogs"), ("birds/3.jpg", "birds"), ("others/4.jpg", "others")]
    )
    dataset = read_dataset(csv_path, tmp_path, CLASSES)
    assert [(p.relative_to(tmp_path).as_posix(), label) for p, label in dataset.samples] == [
        ("cats/1.jpg", 0),
        ("dogs/2.jpg", 1),
        ("birds/3.jpg", 2),
        ("others/4.jpg", 2),
    ]
    assert not dataset.skipped


def test_missing_escaping_and_malformed_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    images = tmp_path / "images"
    draw(images, "cats/1.jpg")
    draw(tmp_path, "secret.jpg")
    csv_path = write_csv(tmp_path, [("cats/1.jpg", "cats"), ("cats/gone.jpg", "cats"), ("../secret.jpg", "cats")])
    with csv_path.open("a") as file:
        file.write("cats/1.jpg,only-two-fields\n")
    dataset = read_dataset(csv_path, images, CLASSES)
    assert [p.name for p, _ in dataset.samples] == ["1.jpg"]
    assert dataset.skipped == {"missing": 1, "outside_images": 1, "bad_row": 1}


def test_images_the_fetcher_would_refuse_are_skipped_with_its_reason(tmp_path: Path) -> None:
    draw(tmp_path, "cats/good.jpg")
    (tmp_path / "cats" / "page.jpg").write_bytes(b"<html>not an image</html>")
    data = (tmp_path / "cats" / "good.jpg").read_bytes()
    (tmp_path / "cats" / "cut.jpg").write_bytes(data[: len(data) // 2])
    rows = [("cats/good.jpg", "cats"), ("cats/page.jpg", "cats"), ("cats/cut.jpg", "cats")]
    dataset = usable(read_dataset(write_csv(tmp_path, rows), tmp_path, CLASSES))
    assert [p.name for p, _ in dataset.samples] == ["good.jpg"]
    assert dataset.skipped == {"unsupported_type": 1, "corrupt_image": 1}


def test_an_image_becomes_the_pixels_the_fetcher_sends(tmp_path: Path) -> None:
    draw(tmp_path, "a.jpg", index=3)
    pixels = model_input(tmp_path / "a.jpg")
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8
    assert pixels.std() > 1  # a picture, not a blank


def test_a_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    csv_path = tmp_path / "dataset.csv"
    csv_path.write_text("cats/1.jpg,https://x,cats,0.9\n")
    with pytest.raises(ValueError, match="header"):
        read_dataset(csv_path, tmp_path, CLASSES)


def test_the_classes_must_include_others(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="others"):
        read_dataset(write_csv(tmp_path, []), tmp_path, ["cats", "dogs"])


def test_class_weights_balance_the_classes_present() -> None:
    weights = class_weights([2, 2, 2, 2, 2, 2, 0, 0], classes=3)
    # each present class then weighs the same in the loss as a whole: weight x count
    assert weights[0] * 2 == pytest.approx(weights[2] * 6)
    assert weights[1] == 0  # no sample of class 1
    assert weights[0] * 2 + weights[2] * 6 == pytest.approx(8)


def test_an_epoch_visits_every_sample_once_in_batches_of_the_size() -> None:
    seed = random.randrange(2**32)
    rng = np.random.default_rng(seed)
    parts = list(batches(23, 5, rng))
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3], f"seed {seed}"
    assert sorted(i for p in parts for i in p) == list(range(23)), f"seed {seed}"
