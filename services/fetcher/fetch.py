"""Download untrusted URLs with one pooled aiohttp session, within size, time and address limits."""

from __future__ import annotations

import aiohttp
from yarl import URL

from .netguard import BlockedAddressError, GuardedResolver, check_literal_host
from .settings import FetcherSettings

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
CHUNK_BYTES = 64 * 1024


class FetchError(Exception):
    """Why a URL gave no image; `reason` is a short code for the DLQ header and metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Fetcher:
    def __init__(self, settings: FetcherSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            limit_per_host=s.max_connections_per_host,
            ttl_dns_cache=300,
            resolver=None if s.allow_private_networks else GuardedResolver(),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.total_timeout_s, connect=s.connect_timeout_s),
            headers={"User-Agent": s.user_agent, "Accept": "image/*"},
            trust_env=False,
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, url: str) -> bytes:
        """The body at `url`, following at most `max_redirects` redirects, each one checked again."""
        target = _parse(url)
        for _ in range(self.settings.max_redirects + 1):
            if not self.settings.allow_private_networks:
                try:
                    check_literal_host(target.host or "")
                except BlockedAddressError as exc:
                    raise FetchError("blocked_address", str(exc)) from exc
            body, location = await self._get(target)
            if location is None:
                return body
            target = _parse(str(target.join(URL(location))))
        raise FetchError("too_many_redirects", f"more than {self.settings.max_redirects} redirects")

    async def _get(self, target: URL) -> tuple[bytes, str | None]:
        """One request: (body, None), or (b"", the redirect's location)."""
        assert self._session is not None, "use Fetcher as an async context manager"
        try:
            async with self._session.get(target, allow_redirects=False) as response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError("bad_redirect", f"{response.status} without Location")
                    return b"", location
                if response.status != 200:
                    raise FetchError(f"http_{response.status}", f"{target} answered {response.status}")
                return await self._read_capped(response), None
        except FetchError:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddressError) or isinstance(exc.__cause__, BlockedAddressError):
                raise FetchError("blocked_address", str(exc.os_error)) from exc
            raise FetchError("connect_error", str(exc)) from exc
        except TimeoutError as exc:
            raise FetchError("timeout", f"no complete answer from {target.host} in time") from exc
        except aiohttp.ClientError as exc:
            raise FetchError("http_error", f"{type(exc).__name__}: {exc}") from exc

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.settings.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise FetchError("too_large", f"Content-Length {response.content_length} exceeds {limit}")
        body = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > limit:
                raise FetchError("too_large", f"body exceeds {limit} bytes")
        return bytes(body)


def _parse(url: str) -> URL:
    try:
        target = URL(url)
    except (ValueError, TypeError) as exc:
        raise FetchError("bad_url", str(exc)) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise FetchError("bad_url", f"{url!r} is not an absolute http(s) URL")
    return target
