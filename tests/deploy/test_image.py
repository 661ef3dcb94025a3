"""The container image, checked without a container engine: what the Dockerfile installs,
what the build context holds, which user it runs as, and that the installed package
carries every data file the services read at run time."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path, PurePosixPath

from .manifests import ROOT, Obj, container, pod_spec, workload_named

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_multi_stage_build_installs_the_project_with_its_pins_and_no_extras() -> None:
    steps = _instructions()
    stages = [args for word, args in steps if word == "FROM"]
    assert len(stages) == 2, stages
    assert len({s.split()[0] for s in stages}) == 1, "one base, the name scripts/image.sh makes when offline"
    assert all("slim" in s for s in stages), stages
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    # The dependencies (pyproject's list, pinned), then the project alone, after the code is copied.
    assert len(installs) == 2, installs
    dependencies, project = (args.split("pip install", 1)[1].split("&&")[0].split() for args in installs)
    for words in (dependencies, project):
        assert "--constraint" in words
        assert words[words.index("--constraint") + 1] == "constraints.txt"
    assert "--requirement" in dependencies
    assert "['project']['dependencies']" in installs[0]
    assert project[-1] == ".", f"install the project itself, without extras: {project[-1]}"
    assert "--no-deps" in project
    assert "pip check" in installs[1]
    copies = [args for word, args in steps if word == "COPY" and not args.startswith("--from")]
    order = [word + args for word, args in steps]
    assert order.index("RUN" + installs[0]) < order.index("COPY" + copies[-1]) < order.index("RUN" + installs[1])
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(f"[{extra}" in install for install in installs for extra in extras)
    copies_from_build = [args for word, args in steps if word == "COPY" and args.startswith("--from=build")]
    assert copies_from_build, "the runtime stage takes only the built environment"


def test_runs_as_the_unprivileged_user_the_pods_name(rendered: dict[str, list[Obj]]) -> None:
    users = [args for word, args in _instructions() if word == "USER"]
    assert users == ["10001:10001"]
    for service in ("ingest", "fetcher", "classifier", "sink"):
        ctx = container(workload_named(rendered["gpu"], service))["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (10001, 10001)
        assert pod_spec(workload_named(rendered["gpu"], service))["securityContext"]["runAsUser"] == 10001
    entrypoint = [args for word, args in _instructions() if word == "ENTRYPOINT"]
    assert entrypoint == ['["python", "-m"]']


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        in_prefix = any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes
        )
        in_any_dir = pattern.startswith("**/") and any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        if in_prefix or in_any_dir:
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for word, args in _instructions():
        if word == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources, "nothing copied from the build context"
    for source in sources:
        assert (ROOT / source).exists(), source
        files = (
            [source]
            if (ROOT / source).is_file()
            else [
                str(p.relative_to(ROOT))
                for p in (ROOT / source).rglob("*")
                if p.is_file() and "__pycache__" not in p.parts
            ]
        )
        kept = [f for f in files if not _ignored(f, patterns)]
        assert kept == files, f"{source}: .dockerignore drops {sorted(set(files) - set(kept))[:5]}"
    assert _ignored(".venv/bin/python", patterns)
    assert _ignored("tests/deploy/test_image.py", patterns)
    assert _ignored("services/common/__pycache__/kafka.cpython-311.pyc", patterns)


def test_installed_package_carries_every_data_file_of_the_services() -> None:
    """`pip install .` copies only the files pyproject's package-data names: a data file a
    service reads but pyproject leaves out is missing from the image."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_data: dict[str, list[str]] = setuptools.get("package-data", {})
    missing = []
    for path in sorted((ROOT / "services").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        if not _covered(path, package_data):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def _covered(path: Path, package_data: dict[str, list[str]]) -> bool:
    package_dir = path.parent
    while not (package_dir / "__init__.py").exists():
        package_dir = package_dir.parent
    while package_dir != ROOT:
        package = ".".join(package_dir.relative_to(ROOT).parts)
        relative = PurePosixPath(path.relative_to(package_dir).as_posix())
        for key in (package, "*", ""):
            if any(
                relative.match(pattern) and len(relative.parts) == len(PurePosixPath(pattern).parts)
                for pattern in package_data.get(key, [])
            ):
                return True
        package_dir = package_dir.parent
    return False
