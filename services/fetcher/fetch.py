"""Download untrusted URLs with one pooled aiohttp session, within size, time and address limits.

Every request waits for a slot of its host (`HostLimiter`) before it starts, so its connect,
read and total timeouts measure the server, not the queue. The total timeout is one deadline
per URL (`TimeBudget`): its redirects, retries and the backoff between them all spend from it.
A body is read in chunks against
`FETCHER_MAX_BYTES` (the `Content-Length` is checked first) and against a byte budget shared by
all downloads, held until the body is decoded, so memory does not grow with the number of
downloads in flight; a server trickling a byte per second holds a few bytes until the total
timeout ends it. Timeouts and 5xx answers are retried with exponential backoff and full jitter;
nothing else is.
"""

from __future__ import annotations

import asyncio
import random
from types import TracebackType

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from services.common.errors import RecordError

from . import metrics
from .limits import Allowance, ByteBudget, HostLimiter, TimeBudget
from .netguard import (
    BLOCKED_MARKER,
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    allow_all,
    check_literal_host,
    guarded_socket_factory,
    is_public,
)
from .settings import FetcherSettings

REDIRECT_STATUSES = {301, 302, 303, 307, 308}
CHUNK_BYTES = 256 * 1024
# Refusals that may be different a moment later; all others are final for a URL.
TRANSIENT_REASONS = {"timeout", "connect_error", "http_error"}


class FetchError(RecordError):
    """Why a URL gave no image; `reason` is a short code for the DLQ header and metric label."""


def is_retryable(reason: str) -> bool:
    """Only timeouts and server errors (5xx) are worth another try."""
    return reason == "timeout" or (reason.startswith("http_5") and len(reason) == len("http_500"))


def is_transient(reason: str) -> bool:
    return is_retryable(reason) or reason in TRANSIENT_REASONS


def backoff_delay(attempt: int, initial_s: float, max_s: float, draw: float) -> float:
    """Seconds before retry number `attempt` (0-based): full jitter, `draw` uniform in [0, 1)."""
    return draw * min(max_s, initial_s * 2.0**attempt)


class Body:
    """A downloaded body and its share of the memory budget, given back by `release()` or `with`."""

    __slots__ = ("_allowance", "data")

    def __init__(self, data: bytes, allowance: Allowance) -> None:
        self.data = data
        self._allowance = allowance

    def release(self) -> None:
        self._allowance.release()
        self.data = b""  # whoever still holds the Body (a frame in a traceback) holds no bytes

    def __enter__(self) -> Body:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.release()


class Fetcher:
    """`fetch(url)` → a `Body`, or FetchError with the reason.

    `address_policy` says which addresses may be dialled: by default public unicast only, or
    everything with `FETCHER_ALLOW_PRIVATE_NETWORKS=true`. `resolver` replaces aiohttp's
    default DNS resolver; either way its answers pass the policy before they are used.
    """

    def __init__(
        self,
        settings: FetcherSettings,
        *,
        address_policy: AddressPolicy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.settings = settings
        if address_policy is None:
            address_policy = allow_all if settings.allow_private_networks else is_public
        self.address_policy = address_policy
        self._inner_resolver = resolver
        self.resolver: GuardedResolver | None = None
        self.limiter = HostLimiter(settings.max_connections_per_host, settings.max_connections)
        self.budget = ByteBudget(settings.max_buffered_bytes)
        #: estimated memory of the decodes under way (services/fetcher/imaging.py), shared by all
        self.decode_budget = ByteBudget(settings.max_decode_memory_bytes)
        self._random = random.Random()  # noqa: S311 - retry jitter, not a secret
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        s = self.settings
        self.resolver = GuardedResolver(self.address_policy, self._inner_resolver)
        connector = aiohttp.TCPConnector(
            limit=s.max_connections,
            limit_per_host=s.max_connections_per_host,
            use_dns_cache=s.dns_cache_ttl_s > 0,
            ttl_dns_cache=s.dns_cache_ttl_s,
            resolver=self.resolver,
            socket_factory=guarded_socket_factory(self.address_policy),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s),
            # identity: a compressed body could inflate past the cap inside the client
            headers={"User-Agent": s.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
            auto_decompress=False,
            read_bufsize=CHUNK_BYTES,
            trust_env=False,
        )
        metrics.BUFFERED_BYTES.set_function(lambda: self.budget.used)
        metrics.DECODE_MEMORY_BYTES.set_function(lambda: self.decode_budget.used)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.resolver is not None:
            await self.resolver.close()

    async def fetch(self, url: str) -> Body:
        """The body at `url`; timeouts and 5xx are retried up to `max_retries` times, all within
        `total_timeout_s` for the URL."""
        s = self.settings
        deadline = TimeBudget(s.total_timeout_s)
        attempt = 0
        while True:
            try:
                return await self._follow(url, deadline)
            except FetchError as exc:
                if attempt >= s.max_retries or not is_retryable(exc.reason):
                    raise
                delay = backoff_delay(attempt, s.retry_backoff_s, s.retry_backoff_max_s, self._random.random())
                if delay >= deadline.left:  # no time left for another try: this one's answer stands
                    raise
                metrics.FETCH_RETRIES.labels(exc.reason).inc()
            with deadline.spending():
                await asyncio.sleep(delay)
            attempt += 1

    async def _follow(self, url: str, deadline: TimeBudget) -> Body:
        """Follow at most `max_redirects` redirects, each target checked again."""
        target = _parse(url)
        for _ in range(self.settings.max_redirects + 1):
            host = target.host or ""
            try:
                check_literal_host(host, self.address_policy)
            except BlockedAddressError as exc:
                raise FetchError("blocked_address", str(exc)) from exc
            async with self.limiter.hold(host):
                with deadline.spending():
                    body, location = await self._get(target, deadline.left)
            if body is not None:
                return body
            assert location is not None
            try:
                next_url = str(target.join(URL(location)))
            except (ValueError, TypeError) as exc:
                raise FetchError("bad_redirect", f"unusable Location {location[:200]!r}") from exc
            target = _parse(next_url)
        raise FetchError("too_many_redirects", f"more than {self.settings.max_redirects} redirects")

    async def _get(self, target: URL, seconds: float) -> tuple[Body | None, str | None]:
        """One request within `seconds`: (body, None), or (None, the redirect's location)."""
        assert self._session is not None, "use Fetcher as an async context manager"
        try:
            # The total timeout is ours, not aiohttp's: it also bounds the waits for the byte
            # budget, which happen outside aiohttp's own timer.
            async with (
                asyncio.timeout(max(seconds, 0.0)),
                self._session.get(target, allow_redirects=False) as response,
            ):
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError("bad_redirect", f"{response.status} without Location")
                    return None, location
                if response.status != 200:
                    raise FetchError(f"http_{response.status}", f"{target} answered {response.status}")
                return await self._read_capped(response), None
        except FetchError:
            raise
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, BlockedAddressError) or BLOCKED_MARKER in str(exc.os_error):
                raise FetchError("blocked_address", str(exc.os_error)) from exc
            raise FetchError("connect_error", str(exc)) from exc
        except TimeoutError as exc:
            raise FetchError(
                "timeout", f"no complete answer from {target.host} within {self.settings.total_timeout_s} s for the URL"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise FetchError("bad_url", str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise FetchError("http_error", f"{type(exc).__name__}: {exc}") from exc

    async def _read_capped(self, response: aiohttp.ClientResponse) -> Body:
        limit = self.settings.max_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise FetchError("too_large", f"Content-Length {declared} exceeds {limit}")
        # Counted as bytes arrive, not as declared: a slow server announcing a large body holds
        # nothing it has not sent.
        allowance = self.budget.allowance()
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise FetchError("too_large", f"body exceeds {limit} bytes")
                await allowance.take(len(chunk))
                chunks.append(chunk)
            data = b"".join(chunks)
        except BaseException:
            chunks.clear()  # a traceback keeps this frame, and would keep the partial body with it
            allowance.release()
            raise
        return Body(data, allowance)


def _parse(url: str) -> URL:
    try:
        target = URL(url)
    except (ValueError, TypeError) as exc:
        raise FetchError("bad_url", str(exc)) from exc
    if target.scheme not in ("http", "https") or not target.host:
        raise FetchError("bad_url", f"{url!r} is not an absolute http(s) URL")
    return target
