"""The gallery in a real headless Chromium, served by a sink process of its own fed through Kafka.

The sink runs as `python -m services.sink` on free ports with its own topic and consumer
group on the shared broker; the images come from a small HTTP server on loopback. The
screenshot goes to test-artifacts/gallery.png.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from PIL import Image, ImageDraw
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect, sync_playwright

from services.common.avro import PREDICTIONS, nest_origin
from services.common.settings import KafkaSettings
from services.common.timeutil import now_ms
from tests.sink.records import prediction

from .processes import ROOT, free_port, fresh_topics, service

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
HOSTILE_TEXT = "<script>window.__pwned = 1</script><b>not bold</b> & <i>not italic</i>"
HOSTILE_NAME = "<img src=x onerror=window.__pwned=2>"
WAIT_MS = 20_000
# A function, not an expression: Playwright polls an expression with the page's eval, which the
# gallery's Content-Security-Policy refuses; a function is called through the debugger.
IMAGES_LOADED = "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"


class ImageServer:
    """PNG squares at /<n>.png on loopback, each a different colour; `requested` lists the paths
    asked for, query strings included."""

    COLOURS = ("#e76f51", "#2a9d8f", "#e9c46a", "#264653", "#8ab17d", "#b5838d", "#6d597a", "#f4a261")

    def __init__(self) -> None:
        images = {f"/{n}.png": self._png(n) for n in range(len(self.COLOURS))}
        self.requested: list[str] = []
        requested = self.requested

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requested.append(self.path)
                body = images.get(self.path.split("?", 1)[0])
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _png(self, n: int) -> bytes:
        image = Image.new("RGB", (320, 320), self.COLOURS[n])
        ImageDraw.Draw(image).ellipse((90, 90, 230, 230), fill="#ffffff")
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Sink:
    url: str
    topic: str
    producer: Producer
    images: str

    def send(self, tweet_id: str, tags: tuple[tuple[str, float], ...], image: int, **fields: Any) -> None:
        now = now_ms()
        record = (
            prediction(
                tweet_id,
                f"3_{tweet_id}",
                tags,
                ts=now - 100,
                image_url=f"{self.images}/{image}.png",
                text=f"post {tweet_id}",
                author_username=f"user{tweet_id}",
                ingest_ts_ms=now - 350,
                fetch_ts_ms=now - 200,
                inference_ms=40.0,
                batch_size=2,
            )
            | fields
        )
        self.producer.produce(self.topic, PREDICTIONS.encode(nest_origin(record)), key=tweet_id)
        assert self.producer.flush(10) == 0

    def stored(self, tweet_id: str) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/predictions/{tweet_id}/3_{tweet_id}", timeout=5):
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def wait_stored(self, *tweet_ids: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        missing = set(tweet_ids)
        while missing and time.monotonic() < deadline:
            missing = {t for t in missing if not self.stored(t)}
            time.sleep(0.2)
        assert not missing, f"the sink did not store {missing}"


@pytest.fixture
def sink(kafka: None, tmp_path: Path) -> Iterator[Sink]:
    """`python -m services.sink` of this test: its own topic, group, ports, SQLite file and image host."""
    (topic,) = fresh_topics("gallery", partitions=1)
    settings = KafkaSettings()
    api_port, metrics_port = free_port(), free_port()
    with ImageServer() as images:
        env = sink_env(topic, api_port, metrics_port, tmp_path / "predictions.db", images.origin)
        try:
            with service("sink", env, tmp_path / "sink.log", metrics_port) as process:
                yield Sink(f"http://127.0.0.1:{api_port}", topic, Producer(settings.client_config()), images.origin)
            assert process.returncode == 0, (tmp_path / "sink.log").read_text()[-3000:]
        finally:
            AdminClient(settings.client_config()).delete_topics([topic, f"{topic}.dlq", f"{topic}.shed"])


def sink_env(topic: str, api_port: int, metrics_port: int, database: Path, images_origin: str) -> dict[str, str]:
    """A sink of a test's own: its topic and group, ports, SQLite file and image host."""
    return {
        "SINK_API_HOST": "127.0.0.1",
        "SINK_API_PORT": str(api_port),
        "SINK_METRICS_PORT": str(metrics_port),
        "SINK_GROUP_ID": topic,
        "SINK_INPUT_TOPIC": topic,
        "SINK_DATABASE_PATH": str(database),
        "SINK_DATABASE_URL": "",
        "SINK_GALLERY_IMAGE_SOURCES": images_origin,
    }


def open_page(context: BrowserContext, problems: list[str]) -> Page:
    """A page of `context` at a desktop size; its page errors, console errors and warnings go
    to `problems`."""
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    return page


def launch_args(profile: Path) -> dict[str, Any]:
    args = [
        "--headless",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return {"user_data_dir": str(profile), "executable_path": CHROMIUM, "headless": True, "args": args}


def cards(page: Page) -> list[dict[str, Any]]:
    """What each card shows, read from the page."""
    result: list[dict[str, Any]] = page.eval_on_selector_all(
        ".card",
        """cards => cards.map(card => ({
            tweet_id: card.dataset.tweetId,
            tags: [...card.querySelectorAll('.tag')].map(t => [
                t.querySelector('.tag-name').textContent, Number(t.querySelector('.tag-score').textContent)]),
            text: card.querySelector('.text').textContent,
            author: card.querySelector('.author').textContent,
            latency: card.querySelector('.latency').textContent,
            image_loaded: card.querySelector('img').complete && card.querySelector('img').naturalWidth > 0,
        }))""",
    )
    return result


def test_the_gallery_shows_filters_and_updates_live(sink: Sink, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    posts = {
        "101": (("cats", 0.93),),
        "102": (("dogs", 0.88), ("cats", 0.55)),
        "103": (("cats", 0.62),),
        "104": (("horse", 0.71),),
        "105": (("cats", 0.86), ("dogs", 0.52)),
    }
    for n, (tweet_id, tags) in enumerate(posts.items()):
        sink.send(tweet_id, tags, image=n)
    sink.send("106", (("dogs", 0.97),), image=5, text=HOSTILE_TEXT, author_username=HOSTILE_NAME)
    sink.wait_stored(*posts, "106")

    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(**launch_args(tmp_path / "profile"))
        try:
            page = open_page(context, problems)
            page.goto(sink.url + "/")

            # The page loads and shows every image with its hashtags, scores and latency.
            grid = page.locator("#grid .card")
            expect(grid).to_have_count(6, timeout=WAIT_MS)
            expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
            page.wait_for_function(
                IMAGES_LOADED,
                timeout=WAIT_MS,
            )
            expect(page.locator("#more")).to_be_hidden()  # everything fits on one page
            expect(page.locator("#empty")).to_be_hidden()
            shown = {card["tweet_id"]: card for card in cards(page)}
            assert list(shown) == ["106", "105", "104", "103", "102", "101"]  # newest first
            for tweet_id, tags in posts.items():
                assert shown[tweet_id]["tags"] == [[f"#{tag}", score] for tag, score in tags]
                assert shown[tweet_id]["author"] == f"@user{tweet_id}"
                assert shown[tweet_id]["latency"].endswith("end to end")
                assert shown[tweet_id]["image_loaded"]

            # Hostile text and user names are shown as text; nothing in them ran or became markup.
            assert shown["106"]["text"] == HOSTILE_TEXT
            assert shown["106"]["author"] == f"@{HOSTILE_NAME}"
            hostile_card = page.locator('.card[data-tweet-id="106"]')
            assert hostile_card.locator(".text script, .text b, .text i, .author img").count() == 0
            assert page.evaluate("window.__pwned") is None

            # The hashtag selector lists the hashtags and narrows the grid.
            options = page.locator("#hashtag option").all_text_contents()
            assert options == ["all hashtags", "#cats (4)", "#dogs (3)", "#horse (1)"]
            page.select_option("#hashtag", "cats")
            expect(grid).to_have_count(4, timeout=WAIT_MS)
            assert [c["tweet_id"] for c in cards(page)] == ["105", "103", "102", "101"]

            # The minimum score narrows it further, on the selected hashtag's score.
            slider = page.locator("#min-score")
            slider.focus()
            for _ in range(16):  # 16 steps of 0.05: 0.80
                page.keyboard.press("ArrowRight")
            expect(page.locator("#min-score-value")).to_have_text("0.80")
            expect(grid).to_have_count(2, timeout=WAIT_MS)
            expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
            assert [c["tweet_id"] for c in cards(page)] == ["105", "101"]

            # New predictions arrive without a reload; the filters apply to them too.
            page.evaluate("window.__sameDocument = true")
            sink.send("107", (("dogs", 0.99),), image=6)
            sink.send("108", (("cats", 0.91),), image=7)
            sink.wait_stored("107", "108")
            expect(grid).to_have_count(3, timeout=WAIT_MS)
            assert [c["tweet_id"] for c in cards(page)] == ["108", "105", "101"]
            assert page.evaluate("window.__sameDocument") is True

            # Back to everything: all eight, then one more live.
            page.select_option("#hashtag", "")
            for _ in range(16):
                slider.press("ArrowLeft")
            expect(grid).to_have_count(8, timeout=WAIT_MS)
            expect(page.locator("#status")).to_have_text("live", timeout=WAIT_MS)
            sink.send("109", (("horse", 0.77), ("cats", 0.4)), image=1)
            expect(page.locator('.card[data-tweet-id="109"]')).to_be_visible(timeout=WAIT_MS)
            assert page.evaluate("window.__sameDocument") is True
            page.wait_for_function(
                IMAGES_LOADED,
                timeout=WAIT_MS,
            )

            # These records say their model has stand-in weights; a newer one from a model that
            # does not say turns the notice from a warning into a caution.
            notice = page.locator("#model-notice")
            expect(notice).to_have_attribute("data-state", "standin")
            sink.send("110", (("cats", 0.5),), image=2, model_name="unlabelled", model_weights_meaningful=None)
            expect(notice).to_have_attribute("data-state", "unknown", timeout=WAIT_MS)
            expect(notice).to_contain_text("unlabelled (version 1) does not say whether its weights are meaningful")
            expect(page.locator('.card[data-tweet-id="110"] .model')).to_have_text("")

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)
        finally:
            context.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert problems == []
