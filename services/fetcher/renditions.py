"""Ask X's image host for the smallest named rendition of a photo that still covers the model's input.

X serves every photo, and the preview image of every video and GIF, in named renditions chosen by
the query: `?format=jpg&name=small` fits the image within 680x680, `medium` within 1200x1200,
`large` within 2048x2048 (X's media documentation: each is "limited to fit within" its box, so an
image already smaller is served at its own size, never enlarged); `thumb` is a 150x150 *crop* and
is never asked for, since a crop loses the edges the model's centre square needs. The URL without
a query is served at `medium` size. What this module relies on, and nothing more: a rendition keeps
the aspect ratio of the original and fits its box; `format=jpg` gives a JPEG whatever was uploaded
(X's own clients ask for JPEG thumbnails of PNG uploads that way); an unknown rendition or path is
answered with a 4xx, which the fetcher answers by fetching the URL as given
(`services/fetcher/pipeline.py`). X's own clients also ask for `360x360` and `900x900`, which no
documentation promises: they are asked for only with `FETCHER_UNDOCUMENTED_RENDITIONS=true`.

The media item's `width` and `height` (from the API) give the original's size, so the rendition
is chosen before the download. When they are absent, `small` is asked for: its short side covers
224 for every photo up to about 3:1 (680 / 3 = 226), and for any photo X did not have to shrink;
only a longer panorama comes back short of the input and is enlarged a little, which costs less
than a second download for every post that lacks the sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

#: (name, side of the box it fits in), smallest first
DOCUMENTED: tuple[tuple[str, int], ...] = (("small", 680), ("medium", 1200), ("large", 2048))
UNDOCUMENTED: tuple[tuple[str, int], ...] = (("360x360", 360), ("900x900", 900))
#: paths of photos and of video and GIF previews; other images of the host (avatars, banners,
#: card images) have other naming schemes and are fetched as given
RENDITION_PATHS = ("/media/", "/ext_tw_video_thumb/", "/amplify_video_thumb/", "/tweet_video_thumb/")
WHEN_SIZE_UNKNOWN = "small"


@dataclass(frozen=True)
class Rendition:
    url: str
    name: str


class RenditionPlanner:
    """`choose(url, width, height)`: the rendition to fetch instead of `url`, or None to fetch it as given."""

    def __init__(self, hosts: Iterable[str], size: int, *, undocumented: bool = False) -> None:
        self.hosts = frozenset(h.lower() for h in hosts)
        self.size = size
        self.boxes = tuple(sorted(DOCUMENTED + (UNDOCUMENTED if undocumented else ()), key=lambda b: b[1]))
        # What a URL of these hosts' photos starts with: most URLs of a post are told apart by
        # this alone, before any parsing.
        self._starts = tuple(f"{scheme}://{host}" for scheme in ("https", "http") for host in self.hosts)

    def choose(self, url: str, width: int | None, height: int | None) -> Rendition | None:
        if not url[:64].lower().startswith(self._starts):
            return None
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return None  # the download refuses it with its own reason
        if (
            (parsed.host or "").lower() not in self.hosts
            or not parsed.path.startswith(RENDITION_PATHS)
            or ":" in parsed.path  # the legacy `name.jpg:large` form: left as given
        ):
            return None
        name = smallest_covering(self.boxes, width, height, self.size)
        if (
            "?" not in url and "#" not in url
        ):  # as the API gives them: no parameters yet (a bare ? or # parses as empty)
            return Rendition(f"{url}?format=jpg&name={name}", name)
        query = [(k, v) for k, v in parsed.query.items() if k not in ("format", "name")]
        return Rendition(str(parsed.with_query([*query, ("format", "jpg"), ("name", name)])), name)


def smallest_covering(boxes: tuple[tuple[str, int], ...], width: int | None, height: int | None, size: int) -> str:
    """The name of the smallest box whose rendition of a `width` x `height` original has a short
    side of at least `size` (or all of the original's, when that is shorter); the largest box
    when none does (a panorama longer than 9:1); `small` when the size is not known."""
    if not width or not height or width < 1 or height < 1:
        return WHEN_SIZE_UNKNOWN
    long_side, short_side = max(width, height), min(width, height)
    needed = min(size, short_side)
    for name, box in boxes:
        if rendition_short_side(long_side, short_side, box) >= needed:
            return name
    return boxes[-1][0]


def rendition_short_side(long_side: int, short_side: int, box: int) -> int:
    """The short side of a rendition fitted within `box` (rounded down: X's rounding is not documented)."""
    if long_side <= box:
        return short_side
    return short_side * box // long_side


def worth_the_url_as_given(reason: str) -> bool:
    """Whether a rendition's refusal calls for fetching the URL as given: only a 4xx answer says
    this host has no such rendition of this image (an old upload, a path that takes no name). A
    timeout, a 5xx or a failed connection would meet the same host again for the original and
    double the time spent on it; 408 and 429 say the same of the server's state, not of the
    rendition; a refused address, a body over the cap or a broken image would be no better in
    the original, which is larger."""
    return reason.startswith("http_4") and reason not in ("http_408", "http_429")
