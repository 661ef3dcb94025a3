"""`make dataset` (tools/dataset.py) run as a command over each store."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.sink.postgres_store import PostgresStore
from services.sink.sqlite_store import SqliteStore
from services.sink.store import DatasetRow, Store
from tools.dataset import image_path

from .conftest import ROOT
from .records import prediction


async def fill(store: Store) -> None:
    await store.upsert(prediction("1", "3_1", tags=(("cats", 0.91),), image_url="https://pbs.example/a.png"))
    await store.upsert(prediction("2", "3_2", tags=(("dogs", 0.95), ("cats", 0.97))))
    await store.upsert(prediction("3", "3_3", tags=(("dogs", 0.6),)))
    await store.upsert(prediction("4", "3_4", tags=(("cats", 0.85),)))


def run(env: dict[str, str], *args: str) -> tuple[dict[str, object], list[dict[str, str]], Path]:
    out = Path(env["OUT_DIR"]) / "set" / "dataset.csv"
    done = subprocess.run(
        [sys.executable, "-m", "tools.dataset", "--out", str(out), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return json.loads(done.stdout), rows, out


def expected_rows() -> list[dict[str, str]]:
    return [
        {"path": "cats/2_3_2.jpg", "url": "https://pbs.example/2_3_2.jpg", "hashtag": "cats", "score": "0.9700"},
        {"path": "cats/1_3_1.png", "url": "https://pbs.example/a.png", "hashtag": "cats", "score": "0.9100"},
        {"path": "cats/4_3_4.jpg", "url": "https://pbs.example/4_3_4.jpg", "hashtag": "cats", "score": "0.8500"},
        {"path": "dogs/2_3_2.jpg", "url": "https://pbs.example/2_3_2.jpg", "hashtag": "dogs", "score": "0.9500"},
    ]


async def test_export_from_sqlite(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    await fill(store)
    await store.close()
    env = {"SINK_DATABASE_PATH": str(tmp_path / "p.db"), "OUT_DIR": str(tmp_path)}

    summary, rows, out = run(env, "--threshold", "0.8")
    assert rows == expected_rows()
    assert summary == {"out": str(out), "threshold": 0.8, "rows": 4, "per_hashtag": {"cats": 3, "dogs": 1}}
    assert list(out.parent.iterdir()) == [out]  # no partial file left

    _, rows, _ = run(env, "--threshold", "0.8", "--hashtag", "cats", "--max-per-hashtag", "2")
    assert rows == expected_rows()[:2]


@pytest.mark.integration
async def test_export_from_postgresql(postgres_schema_url: str, tmp_path: Path) -> None:
    store = await PostgresStore.open(postgres_schema_url, pool_size=1)
    await fill(store)
    await store.close()
    _, rows, _ = run({"SINK_DATABASE_URL": postgres_schema_url, "OUT_DIR": str(tmp_path)}, "--threshold", "0.8")
    assert rows == expected_rows()


def test_a_missing_store_is_an_error_not_an_empty_dataset(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.dataset", "--out", str(tmp_path / "d.csv")],
        cwd=ROOT,
        env={**os.environ, "SINK_DATABASE_PATH": str(tmp_path / "absent.db")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "no predictions store" in done.stderr
    assert not (tmp_path / "d.csv").exists()


def test_paths_stay_inside_their_class_folder() -> None:
    hostile = DatasetRow("../../etc", "passwd/x", "https://h/a.PNG?x=1", "../cats", 0.9)
    assert image_path(hostile) == "cats/_etc_passwd_x.png"
    assert image_path(DatasetRow("1", "3_1", "https://h/a", "..", 0.9)) == "_/1_3_1.jpg"
