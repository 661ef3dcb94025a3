"""Demo and test data: synthetic photos, hostile files, and a filtered-stream recording that uses them.

No photo can be downloaded here, so the images are drawn: smooth gradients, shapes and noise,
about 1200x800 like a phone photo, so decoding costs what a real JPEG costs.

    python -m tools.demo_data images DIR
    python -m tools.demo_data stream --base-url http://127.0.0.1:8765 --out demo/sample_stream.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

PHOTO_COUNT = 24


@dataclass(frozen=True)
class Broken:
    name: str
    reason: str  # the DLQ reason the fetcher must give


# Files the fetcher must refuse, and why. `missing.jpg` is never written: the server answers 404.
BROKEN = (
    Broken("truncated.jpg", "corrupt_image"),
    Broken("page.jpg", "unsupported_type"),
    Broken("missing.jpg", "http_404"),
)


def photo(index: int, size: tuple[int, int] = (1200, 800)) -> Image.Image:
    rng = random.Random(index)
    width, height = size
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize(size)
    image = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), gradient)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(40, 260)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(2))
    noise = Image.effect_noise(size, 24).convert("RGB")
    return Image.blend(image, noise, 0.15)


def photo_names() -> list[str]:
    kinds = ["jpg"] * 4 + ["png", "webp"]
    return [f"photo-{i:02d}.{kinds[i % len(kinds)]}" for i in range(PHOTO_COUNT)]


def write_images(directory: Path) -> list[str]:
    """Write the photos and the hostile files; return the photo names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = photo_names()
    for i, name in enumerate(names):
        path = directory / name
        if path.exists():
            continue
        image = photo(i)
        if name.endswith(".png"):
            image.convert("RGBA").save(path, "PNG")
        elif name.endswith(".webp"):
            image.save(path, "WEBP", quality=85)
        else:
            image.save(path, "JPEG", quality=88)
    buffer = io.BytesIO()
    photo(99).save(buffer, "JPEG", quality=88)
    (directory / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (directory / "page.jpg").write_bytes(b"<!doctype html><html><body>not an image</body></html>")
    return names


def payloads(base_url: str, id_base: int = 1_700_000_000_000_000_000, url_suffix: str = "") -> Iterator[dict[str, Any]]:
    """Filtered-stream payloads: posts with one or two images (some video previews), hostile
    images, and posts without media."""
    names = photo_names()
    rules = [
        [{"id": "1", "tag": "targeted:cats"}],
        [{"id": "2", "tag": "sample"}],
        [{"id": "1", "tag": "targeted:dogs"}, {"id": "2", "tag": "sample"}],
    ]
    n = 0

    def post(media: list[dict[str, Any]], text: str) -> dict[str, Any]:
        nonlocal n
        n += 1
        tweet_id = str(id_base + n)
        user = {"id": str(1000 + n % 5), "username": f"demo_user_{n % 5}", "name": f"Demo {n % 5}"}
        data: dict[str, Any] = {
            "id": tweet_id,
            "text": text,
            "author_id": user["id"],
            "created_at": "2026-11-23T12:00:00.000Z",
            "lang": "en",
            "edit_history_tweet_ids": [tweet_id],
        }
        if media:
            data["attachments"] = {"media_keys": [m["media_key"] for m in media]}
        return {
            "data": data,
            "includes": {"media": media, "users": [user]} if media else {"users": [user]},
            "matching_rules": rules[n % len(rules)],
        }

    i = 0
    while i < len(names):
        count = 2 if i % 5 == 0 and i + 1 < len(names) else 1
        media = []
        for name in names[i : i + count]:
            key = f"3_{id_base + 1000 + i}"
            url = f"{base_url}/{name}{url_suffix}"
            if i % 7 == 3:
                media.append(
                    {"media_key": key, "type": "video", "preview_image_url": url, "width": 1200, "height": 800}
                )
            else:
                media.append({"media_key": key, "type": "photo", "url": url, "width": 1200, "height": 800})
            i += 1
        yield post(media, f"Look at this #{'cats' if i % 2 else 'dogs'} picture <script>alert({i})</script>")
        if i % 8 == 0:
            yield post([], "A post without any media")
    for broken in BROKEN:
        key = f"3_{id_base + 2000 + len(broken.name)}"
        yield post(
            [{"media_key": key, "type": "photo", "url": f"{base_url}/{broken.name}"}], f"broken: {broken.reason}"
        )


def write_stream(path: Path, base_url: str, id_base: int = 1_700_000_000_000_000_000, url_suffix: str = "") -> None:
    """A replay file; `url_suffix` (a query string) makes its image URLs new to the fetcher's cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for payload in payloads(base_url, id_base, url_suffix):
            f.write(json.dumps(payload) + "\r\n")
            f.write("\r\n")  # the stream's keep-alive
        f.write(cut_line(id_base) + "\r\n")


def cut_line(id_base: int) -> str:
    """A payload cut mid-object: ingest must send it to the dead-letter topic."""
    return f'{{"data": {{"id": "{id_base + 999_999}", "text": "cut'


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.demo_data")
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images")
    images.add_argument("directory", type=Path)
    stream = sub.add_parser("stream")
    stream.add_argument("--base-url", required=True)
    stream.add_argument("--out", type=Path, required=True)
    stream.add_argument("--id-base", type=int, default=1_700_000_000_000_000_000)
    args = parser.parse_args()
    if args.command == "images":
        write_images(args.directory)
    else:
        write_stream(args.out, args.base_url.rstrip("/"), args.id_base)


if __name__ == "__main__":
    main()
