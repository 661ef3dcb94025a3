"""The opt-in torch virtualenv's pins (tools/model/requirements-torch.txt) against the project's.

It is installed with `--no-deps`, so every line must pin one version, and a package both
virtualenvs have must be the same version in both: the export code runs in either.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: {line!r} is not one pinned package"
        found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


def test_every_line_pins_one_version_and_shared_packages_agree() -> None:
    torch_pins = pins(ROOT / "tools" / "model" / "requirements-torch.txt")
    project_pins = pins(ROOT / "constraints.txt")
    assert {"torch", "torchvision", "onnx", "onnxruntime", "numpy", "pillow"} <= torch_pins.keys()
    shared = torch_pins.keys() & project_pins.keys()
    assert {"numpy", "onnx", "onnxruntime", "pillow"} <= shared
    assert {name: torch_pins[name] for name in shared} == {name: project_pins[name] for name in shared}
