"""`make finetune`: train the seed's 13-class head on the stream's own confident predictions.

Input: the CSV `make dataset` writes (`path,url,hashtag,score`), each image downloaded to its
`path` under `--images` (default: the CSV's folder). A row whose hashtag is not one of the
classes counts for `others`. An image that is missing, too large or that the fetcher would
refuse is skipped and counted by reason. Every image goes through the fetcher's own decode and
crop (services/fetcher/imaging.py) and the served model's own normalisation (torchnet), so
the network learns from exactly the pixels it will be given.

Output: a checkpoint (`state_dict`, `classes`, the loss of each epoch) that
`make model FORCE=1 CHECKPOINT=...` exports and Triton serves.

Meaningful hashtags need real weights (`--init imagenet`: torchvision downloads them) and
real photos. From `--init none` on drawn images, as `make verify-export` runs it, only the
mechanics are shown: the loss goes down, the checkpoint exports and serves.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.fetcher.imaging import ImageError, to_model_input

from .export import SEED_CLASSES
from .vocabulary import OTHERS

SIZE = 224
# The fetcher's defaults (FETCHER_MAX_BYTES, FETCHER_MAX_PIXELS): what it would not take, the
# model is not trained on either.
MAX_IMAGE_BYTES = 15 * 1024 * 1024
MAX_PIXELS = 50_000_000
HEADER = ["path", "url", "hashtag", "score"]


@dataclass
class Dataset:
    samples: list[tuple[Path, int]] = field(default_factory=list)  # image file, class index
    skipped: Counter[str] = field(default_factory=Counter)  # reason → rows


def read_dataset(csv_path: Path, images: Path, classes: Sequence[str]) -> Dataset:
    """The rows of `make dataset`'s CSV whose image can be used, each with its class index."""
    if OTHERS not in classes:
        raise ValueError(f"the classes need {OTHERS!r}: every other hashtag counts for it")
    root = images.resolve()
    dataset = Dataset()
    with csv_path.open(newline="") as file:
        reader = csv.reader(file)
        if next(reader, None) != HEADER:
            raise ValueError(f"{csv_path} does not start with the header {','.join(HEADER)}")
        for row in reader:
            if len(row) != len(HEADER):
                dataset.skipped["bad_row"] += 1
                continue
            path = (root / row[0]).resolve()
            if not path.is_relative_to(root):
                dataset.skipped["outside_images"] += 1
            elif not path.is_file():
                dataset.skipped["missing"] += 1
            else:
                hashtag = row[2] if row[2] in classes else OTHERS
                dataset.samples.append((path, list(classes).index(hashtag)))
    return dataset


def model_input(path: Path) -> npt.NDArray[np.uint8]:
    """The image as the fetcher would send it to the model: uint8 RGB [224, 224, 3]."""
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ImageError("too_large", f"{path} is over {MAX_IMAGE_BYTES} bytes")
    decoded = to_model_input(path.read_bytes(), SIZE, MAX_PIXELS)
    return np.frombuffer(decoded.pixels, dtype=np.uint8).reshape(SIZE, SIZE, 3)


def usable(dataset: Dataset) -> Dataset:
    """The samples whose image decodes; the others counted by the fetcher's refusal reason."""
    kept = Dataset(skipped=Counter(dataset.skipped))
    for path, label in dataset.samples:
        try:
            model_input(path)
        except ImageError as exc:
            kept.skipped[exc.reason] += 1
        else:
            kept.samples.append((path, label))
    return kept


def class_weights(labels: Sequence[int], classes: int) -> npt.NDArray[np.float32]:
    """Inverse frequency, so `others` (most of a stream) does not drown the animals; a class
    without samples gets no weight."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(classes, dtype=np.float64)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.astype(np.float32)


def batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[list[int]]:
    order = rng.permutation(count)
    for start in range(0, count, batch_size):
        yield [int(i) for i in order[start : start + batch_size]]


def set_trainable(net: Any, part: str) -> None:
    """Train the head (`head`), the last stage too (`layer4`), or everything (`all`)."""
    for name, parameter in net.named_parameters():
        parameter.requires_grad = part == "all" or name.startswith("fc.") or (part == "layer4" and "layer4." in name)


def train(net: Any, dataset: Dataset, classes: int, epochs: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Mean training loss of each epoch. BatchNorm keeps the statistics it has: batches of a
    few images would only add noise to them. Half the images are flipped left to right; `seed`
    decides which, and the order."""
    import torch

    from . import torchnet

    rng = np.random.default_rng(seed)
    normalise = torchnet.Normalise()
    weights = torch.from_numpy(class_weights([label for _, label in dataset.samples], classes))
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    net.eval()
    losses: list[float] = []
    for epoch in range(epochs):
        total = 0.0
        for indices in batches(len(dataset.samples), batch_size, rng):
            images = np.stack([model_input(dataset.samples[i][0]) for i in indices])
            flip = rng.random(len(indices)) < 0.5
            images[flip] = images[flip, :, ::-1]
            labels = torch.tensor([dataset.samples[i][1] for i in indices])
            logits = net(normalise(torch.from_numpy(images)))
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights, reduction="sum")
            optimiser.zero_grad()
            (loss / len(indices)).backward()
            optimiser.step()
            total += loss.item()
        losses.append(total / len(dataset.samples))
        print(json.dumps({"epoch": epoch + 1, "loss": round(losses[-1], 6)}), file=sys.stderr, flush=True)
    return losses


def save(net: Any, classes: Sequence[str], losses: list[float], init: str, out: Path) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    checkpoint = {"state_dict": net.state_dict(), "classes": list(classes), "init": init, "losses": losses}
    torch.save(checkpoint, partial)
    partial.replace(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m tools.model.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="the CSV `make dataset` writes")
    parser.add_argument("--images", type=Path, help="where the CSV's paths are (default: the CSV's folder)")
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    parser.add_argument("--classes", default=SEED_CLASSES, help="the head's classes, comma-separated")
    parser.add_argument("--init", choices=["imagenet", "none"], default="imagenet", help="the backbone's weights")
    parser.add_argument("--train", choices=["head", "layer4", "all"], default="layer4", help="what is trained")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be at least 1, --lr positive")
    if not args.dataset.is_file():
        parser.error(f"no dataset at {args.dataset} (make dataset writes one)")
    classes = args.classes.split(",")
    try:
        dataset = usable(read_dataset(args.dataset, args.images or args.dataset.parent, classes))
    except ValueError as exc:
        parser.error(str(exc))
    if not dataset.samples:
        parser.error(f"no usable image in {args.dataset}: {dict(dataset.skipped)}")

    import torch

    from . import torchnet

    torch.manual_seed(args.seed)  # the new head's initialisation
    try:
        net = torchnet.resnet50_head(len(classes), args.init)
    except OSError as exc:  # the weights' download (URLError is an OSError)
        raise SystemExit(f"cannot get torchvision's ImageNet weights ({exc}); --init none starts without") from exc
    set_trainable(net, args.train)
    losses = train(net, dataset, len(classes), args.epochs, args.batch_size, args.lr, args.seed)
    save(net, classes, losses, args.init, args.out)
    per_class = Counter(classes[label] for _, label in dataset.samples)
    summary = {
        "out": str(args.out),
        "init": args.init,
        "train": args.train,
        "images": len(dataset.samples),
        "per_class": {c: per_class[c] for c in classes},
        "skipped": dict(dataset.skipped),
        "losses": [round(loss, 6) for loss in losses],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
