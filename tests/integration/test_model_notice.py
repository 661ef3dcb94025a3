"""The gallery tells whether the served model's hashtags mean anything, and stays right when
the model is swapped.

Everything is real and this test's own: a Triton on free ports serving a model whose config
declares `weights_meaningful` as `make model` writes it, a classifier and a sink process on
fresh topics, the sink's API and the gallery in headless Chromium. The swap is what an operator
does: export other weights (here only the declaration changes, through the export's own
function), restart Triton, restart the classifier. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from playwright.sync_api import Page, expect, sync_playwright

from services.common.settings import KafkaSettings
from tools.model.export import with_weights_parameter

from .processes import ROOT, Triton, free_port, fresh_topics, service, wait_until
from .test_classifier import classifier_env, image_record, photo_pixels, produce
from .test_gallery import ARTIFACTS, CHROMIUM, WAIT_MS, ImageServer, launch_args, open_page, sink_env

pytestmark = pytest.mark.integration

MODEL = "tagger"


def declare(repository: Path, meaningful: bool) -> None:
    config = repository / MODEL / "config.pbtxt"
    config.write_text(with_weights_parameter(config.read_text(), meaningful))


@pytest.fixture
def model_repository(tmp_path: Path) -> Path:
    """The do-nothing model under a name of its own, declared stand-in as `make model` would."""
    repository = tmp_path / "models"
    shutil.copytree(
        ROOT / "model_repository" / "cpu" / "noop", repository / MODEL, ignore=shutil.ignore_patterns("__pycache__")
    )
    config = repository / MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "noop"', f'name: "{MODEL}"', 1))
    declare(repository, False)
    return repository


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def stored(api: str, tweet_id: str) -> bool:
    return any(item["tweet_id"] == tweet_id for item in get_json(f"{api}/api/predictions?limit=500")["items"])


def badges(page: Page) -> dict[str, str]:
    """Each card's model mark, by tweet id."""
    result: dict[str, str] = page.eval_on_selector_all(
        ".card",
        "cards => Object.fromEntries(cards.map(c => [c.dataset.tweetId, c.querySelector('.model').textContent]))",
    )
    return result


@pytest.fixture
def topics() -> Iterator[list[str]]:
    names = fresh_topics("images", "predictions", partitions=1)
    yield names
    AdminClient(KafkaSettings().client_config()).delete_topics([*names, *(f"{t}.dlq" for t in names)])


def test_the_gallery_and_the_api_say_when_the_hashtags_mean_nothing_and_follow_a_model_swap(
    kafka: None, model_repository: Path, topics: list[str], tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    triton = Triton(tmp_path / "triton-run", model_repository, ready_model=MODEL)
    pixels = photo_pixels(1)[0]
    api_port, sink_metrics = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    problems: list[str] = []
    with ImageServer() as images:

        def post(n: int) -> dict[str, Any]:
            return image_record(str(70_000 + n), pixels) | {"image_url": f"{images.origin}/{n}.png"}

        sink = sink_env(topics[1], api_port, sink_metrics, tmp_path / "predictions.db", images.origin)
        triton.start()
        try:
            with (
                service("sink", sink, tmp_path / "sink.log", sink_metrics),
                sync_playwright() as playwright,
            ):
                assert get_json(f"{api}/api/model") == {"model": None}

                # Stand-in weights: the classifier reads the declaration, every prediction carries it.
                port = free_port()
                classifier = classifier_env(topics, triton.grpc_url, MODEL, port)
                with service("classifier", classifier, tmp_path / "c1.log", port):
                    produce(topics[0], [post(n) for n in range(3)])
                    wait_until("three stand-in predictions stored", lambda: stored(api, "70002"), 120)
                served = get_json(f"{api}/api/model")["model"]
                assert (served["name"], served["version"], served["weights_meaningful"]) == (MODEL, "1", False)

                context = playwright.chromium.launch_persistent_context(**launch_args(tmp_path / "profile"))
                try:
                    page = open_page(context, problems)
                    page.goto(api + "/")
                    notice = page.locator("#model-notice")
                    expect(page.locator("#grid .card")).to_have_count(3, timeout=WAIT_MS)
                    expect(notice).to_be_visible(timeout=WAIT_MS)
                    expect(notice).to_have_attribute("data-state", "standin")
                    expect(notice).to_contain_text(f"{MODEL} (version 1) has stand-in weights")
                    expect(notice).to_contain_text("mean nothing")
                    assert badges(page) == {f"7000{n}": "stand-in model" for n in range(3)}
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "gallery-stand-in.png"), full_page=True)

                    # The swap: weights declared meaningful, Triton and the classifier restarted.
                    page.evaluate("window.__sameDocument = true")
                    triton.stop()
                    declare(model_repository, True)
                    triton.start()
                    # The same classifier restarted: its group goes on where the first left off.
                    port = free_port()
                    classifier |= {"CLASSIFIER_METRICS_PORT": str(port)}
                    with service("classifier", classifier, tmp_path / "c2.log", port):
                        produce(topics[0], [post(n) for n in range(3, 5)])
                        wait_until("two predictions of the new weights", lambda: stored(api, "70004"), 120)

                    # The page follows live: no notice now, and only the stand-in's cards keep their mark.
                    expect(page.locator("#grid .card")).to_have_count(5, timeout=WAIT_MS)
                    expect(notice).to_be_hidden(timeout=WAIT_MS)
                    assert badges(page) == {f"7000{n}": "stand-in model" if n < 3 else "" for n in range(5)}
                    assert page.evaluate("window.__sameDocument") is True
                    page.screenshot(path=str(ARTIFACTS / "gallery-meaningful.png"), full_page=True)

                    # A fresh page agrees.
                    page.reload()
                    expect(page.locator("#grid .card")).to_have_count(5, timeout=WAIT_MS)
                    expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
                    expect(notice).to_be_hidden()
                finally:
                    context.close()
                served = get_json(f"{api}/api/model")["model"]
                assert (served["name"], served["weights_meaningful"]) == (MODEL, True)
                earlier = get_json(f"{api}/api/predictions/70000/3_70000")
                assert earlier["model_weights_meaningful"] is False
        finally:
            triton.stop()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert problems == []
