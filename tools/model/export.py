"""`make model`: ResNet50 as ONNX for Triton, from the best weights this machine has.

Sources, in the order `--source auto` tries them:

1. `checkpoint`: a fine-tuned torchvision ResNet50 state dict (`--checkpoint PATH`) whose
   head has one class per name in `--classes` (default: the seed's 12 animals + others);
2. `imagenet`: torchvision's ImageNet-1k weights (downloaded by torchvision, or from its
   cache), its 1000 classes mapped onto the hashtags by `imagenet_hashtags.toml`;
3. `standin`: deterministic stand-in weights, with a loud notice: predictions mean nothing.

Every form takes uint8 RGB [N,224,224,3] and returns one score per hashtag of
`model_repository/gpu/resnet50/labels.txt`. The torch sources are checked against PyTorch
on the same inputs. The file is written for the GPU repository and linked into the CPU one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from . import standin
from .vocabulary import REPOSITORY, checkpoint_groups, imagenet_groups, mapping_matrix, vocabulary

GPU_MODEL = Path("gpu") / "resnet50" / "1" / "model.onnx"  # in a model repository
CPU_MODEL = Path("cpu") / "resnet50" / "1" / "model.onnx"
# Triton's config of each form: its `weights_meaningful` parameter says what the weights are
# worth, so whoever serves the repository serves that fact with the weights.
CONFIGS = tuple(model.parents[1] / "config.pbtxt" for model in (GPU_MODEL, CPU_MODEL))
WEIGHTS_PARAMETER = re.compile(
    r'parameters\s*\{\s*key:\s*"weights_meaningful"\s*value:\s*\{\s*string_value:\s*"[^"]*"\s*\}\s*\}'
)
# The opt-in virtualenv with torch (`make torch-venv`): the torch sources run there when the
# interpreter at hand has no torch, so `make model FORCE=1 CHECKPOINT=...` works as written.
TORCH_PYTHON = REPOSITORY.parent / ".venv-torch" / "bin" / "python"
SEED_CLASSES = "butterfly,cats,cow,dogs,elephants,hen,horse,monkey,panda,sheep,spider,squirrel,others"
MAX_ABS_DIFF = 1e-4
# torch.onnx's exporter writes opset 18 at the lowest (it converts down only for some graphs).
TORCH_OPSET = 18

NOTICE = """\
************************************************************************
*  STAND-IN WEIGHTS: this ResNet50 has random (seeded) weights.        *
*  Its predictions MEAN NOTHING. Use it only to build and measure the  *
*  serving stack. For real hashtags run `make model` where torchvision *
*  can download its weights, or pass a fine-tuned checkpoint:          *
*    make model FORCE=1 CHECKPOINT=path/to/state_dict.pt               *
************************************************************************"""


class SourceUnavailable(RuntimeError):
    """This source cannot be used on this machine (no torch, no download)."""


def export(
    source: str, out: Path, checkpoint: Path | None, classes: list[str], imagenet_pretrained: bool = True
) -> dict[str, Any]:
    """Export the first usable source to `out`. `imagenet_pretrained=False` takes the ImageNet
    architecture with weights=None: `make verify-export` runs this path where the weights
    cannot be downloaded."""
    hashtags = vocabulary()
    order = ["checkpoint", "imagenet", "standin"] if source == "auto" else [source]
    if source == "auto" and checkpoint is None:
        order.remove("checkpoint")
    for candidate in order:
        try:
            if candidate == "checkpoint":
                if checkpoint is None:
                    raise SourceUnavailable("--checkpoint is required for the checkpoint source")
                net, init = load_checkpoint(checkpoint, classes)
                groups = checkpoint_groups(classes, hashtags)
                info = export_torch(net, classes, groups, hashtags, out, f"checkpoint {checkpoint}")
                return info | {"meaningful": init != "none"}
            if candidate == "imagenet":
                net, categories = load_imagenet(imagenet_pretrained)
                description = "torchvision ImageNet-1k" if imagenet_pretrained else "ImageNet-1k, weights=None"
                info = export_torch(net, categories, imagenet_groups(), hashtags, out, description)
                return info | {"meaningful": imagenet_pretrained}
            return export_standin(hashtags, out)
        except SourceUnavailable as exc:
            print(f"model source {candidate} unavailable: {exc}", file=sys.stderr)
    raise SystemExit("no model source could be used")


def export_standin(hashtags: tuple[str, ...], out: Path) -> dict[str, Any]:
    print(NOTICE, file=sys.stderr)
    model = standin.build_model(hashtags, calibration=calibration_images())
    onnx.checker.check_model(model, full_check=True)
    write_atomically(model, out)
    check_onnx(out, len(hashtags))
    return {"source": "standin", "seed": standin.SEED, "meaningful": False}


def drawn_photos(count: int, first: int) -> npt.NDArray[np.uint8]:
    """Drawn photos (tools/demo_data.py) cropped to the model input as the fetcher does."""
    from PIL import ImageOps

    from tools import demo_data

    return np.stack(
        [np.asarray(ImageOps.fit(demo_data.photo(first + i), (224, 224)), dtype=np.uint8) for i in range(count)]
    )


def calibration_images(count: int = 16) -> npt.NDArray[np.uint8]:
    """Photos, not the demo's own, that set the stand-in head's feature statistics."""
    return drawn_photos(count, first=1000)


def load_imagenet(pretrained: bool = True) -> tuple[Any, list[str]]:
    try:
        from . import torchnet
    except ImportError as exc:
        raise SourceUnavailable(f"torch/torchvision are not installed ({exc})") from exc
    try:
        return torchnet.imagenet_resnet50(pretrained)
    except Exception as exc:  # any download failure means: not on this machine
        raise SourceUnavailable(f"cannot get {torchnet.IMAGENET_WEIGHTS}: {exc}") from exc


def load_checkpoint(path: Path, classes: list[str]) -> tuple[Any, str | None]:
    """A torchvision ResNet50 state dict with a `len(classes)` head, bare or as `make finetune`
    writes it: with the class names it was trained on (which must then be `classes`) and the
    backbone it started from (`imagenet`, or `none`: a checkpoint whose scores mean nothing)."""
    try:
        import torch
        from torchvision.models import resnet50
    except ImportError as exc:
        raise SourceUnavailable(f"torch/torchvision are not installed ({exc})") from exc
    state = torch.load(path, map_location="cpu", weights_only=True)
    init = None
    if isinstance(state, dict) and "state_dict" in state:
        init = state.get("init")
        trained_on = state.get("classes")
        if trained_on is not None and list(trained_on) != classes:
            raise SystemExit(f"{path} was trained on the classes {trained_on}, not {classes} (see --classes)")
        state = state["state_dict"]
    net = resnet50(num_classes=len(classes))
    net.load_state_dict(state)
    return net, init


def export_torch(
    net: Any,
    categories: list[str],
    groups: dict[str, list[str]],
    hashtags: tuple[str, ...],
    out: Path,
    description: str,
) -> dict[str, Any]:
    """Wrap the network (uint8 NHWC in, hashtag scores out), export it and compare with PyTorch."""
    import torch

    from . import torchnet

    module = torchnet.Served(net, mapping_matrix(categories, groups, hashtags)).eval()
    example = torch.from_numpy(sample_images(2))
    out.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(
        module,
        (example,),
        input_names=["image"],
        output_names=["scores"],
        dynamic_shapes={"image": {0: torch.export.Dim("N", min=1, max=1024)}},
        opset_version=TORCH_OPSET,
        dynamo=True,
    )
    model = program.model_proto
    onnx.checker.check_model(model, full_check=True)
    write_atomically(model, out)
    images = sample_images(4, seed=1)
    expected = torchnet.scores(module, images)
    got = check_onnx(out, len(hashtags), images)
    alone = check_onnx(out, len(hashtags), images[:1], distinct=False)  # a batch of one, as Triton may send
    diff = max(float(np.abs(expected - got).max()), float(np.abs(expected[:1] - alone).max()))
    if diff > MAX_ABS_DIFF:
        out.unlink()
        raise SystemExit(f"ONNX and PyTorch disagree by {diff:.2e} (> {MAX_ABS_DIFF}): export refused")
    print(f"ONNX matches PyTorch on {len(images)} images (max abs diff {diff:.2e})", file=sys.stderr)
    return {"source": description, "meaningful": True, "onnx_vs_torch_max_abs_diff": diff}


def sample_images(n: int, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 224, 224, 3), dtype=np.uint8)


def check_onnx(
    path: Path, classes: int, images: npt.NDArray[np.uint8] | None = None, distinct: bool = True
) -> npt.NDArray[np.float32]:
    """Run the file with onnxruntime: finite scores, one row per image, summing to one, and
    (`distinct`) not the same for the first two images."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = drawn_photos(2, first=2000) if images is None else images
    (scores,) = session.run(["scores"], {"image": batch})
    if scores.shape != (len(batch), classes) or not np.isfinite(scores).all():
        raise SystemExit(f"bad output from {path}: shape {scores.shape}")
    if not np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        raise SystemExit(f"scores of {path} do not sum to one: {scores.sum(axis=1)}")
    if distinct and np.abs(scores[0] - scores[1]).max() < 1e-7:
        raise SystemExit(f"{path} gives the same scores for different images")
    return np.asarray(scores, dtype=np.float32)


def write_atomically(model: onnx.ModelProto, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save_model(model, str(tmp))
    tmp.replace(out)


def with_weights_parameter(config: str, meaningful: bool) -> str:
    """A Triton model config declaring whether its weights are meaningful (the classifier
    reads the parameter and carries it into every prediction), replacing any declaration."""
    block = (
        'parameters {\n  key: "weights_meaningful"\n'
        f'  value: {{ string_value: "{"true" if meaningful else "false"}" }}\n}}'
    )
    if WEIGHTS_PARAMETER.search(config):
        return WEIGHTS_PARAMETER.sub(block, config, count=1)
    return f"{config.rstrip()}\n\n# Written by tools/model/export.py with the weights.\n{block}\n"


def declare_weights(repository: Path, meaningful: bool) -> None:
    """Write the weights' worth into the configs of the repository's forms (those it has)."""
    for path in (repository / config for config in CONFIGS):
        if path.exists():
            text = path.read_text()
            declared = with_weights_parameter(text, meaningful)
            if declared != text:
                path.write_text(declared)


def link_into(source: Path, target: Path) -> None:
    """The CPU repository serves the very same file: a hard link, or a copy across devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.model.export", description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["auto", "checkpoint", "imagenet", "standin"], default="auto")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--classes", default=SEED_CLASSES, help="the checkpoint head's classes, comma-separated")
    parser.add_argument("--force", action="store_true", help="export again even if the model exists")
    parser.add_argument("--repository", type=Path, default=REPOSITORY, help="the model repository to write into")
    args = parser.parse_args(argv)
    gpu_model, cpu_model = args.repository / GPU_MODEL, args.repository / CPU_MODEL
    info_path = gpu_model.with_name("model.json")
    if gpu_model.exists() and cpu_model.exists() and not args.force:
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        print(f"{gpu_model} exists ({info.get('source', 'unknown source')}); --force to export again", file=sys.stderr)
        if "meaningful" in info:  # the configs say what model.json says, whatever edited them since
            declare_weights(args.repository, bool(info["meaningful"]))
        if not info.get("meaningful", False):
            print(NOTICE, file=sys.stderr)
        return 0
    wants_torch = args.source in ("checkpoint", "imagenet") or (args.source == "auto" and args.checkpoint is not None)
    in_torch_venv = Path(sys.prefix).resolve() == TORCH_PYTHON.parents[1].resolve()
    if wants_torch and importlib.util.find_spec("torch") is None and TORCH_PYTHON.exists() and not in_torch_venv:
        print(f"no torch here: exporting with {TORCH_PYTHON}", file=sys.stderr)
        command = [str(TORCH_PYTHON), "-m", "tools.model.export", *(sys.argv[1:] if argv is None else argv)]
        os.execve(TORCH_PYTHON, command, {**os.environ, "PYTHONPATH": str(REPOSITORY.parent)})
    info = export(args.source, gpu_model, args.checkpoint, args.classes.split(","))
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    link_into(gpu_model, cpu_model)
    declare_weights(args.repository, bool(info["meaningful"]))
    print(
        f"wrote {gpu_model} and {cpu_model} ({gpu_model.stat().st_size / 1e6:.1f} MB): {info['source']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
