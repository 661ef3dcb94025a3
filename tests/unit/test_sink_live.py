"""The fan-out of stored predictions to the gallery's live streams."""

import pytest

from services.sink.live import LiveHub, TooManyStreams
from tests.sink.records import prediction


async def test_each_stream_gets_what_passes_its_filter() -> None:
    hub = LiveHub(max_subscriptions=5)
    everything = hub.subscribe(None, 0.0)
    cats = hub.subscribe("cats", 0.5)
    hub.publish(prediction("1", tags=(("dogs", 0.9),)))
    hub.publish(prediction("2", tags=(("cats", 0.4),)))
    hub.publish(prediction("3", tags=(("cats", 0.6),)))
    assert [(await cats.next(1))["tweet_id"]] == ["3"]  # type: ignore[index]
    assert await cats.next(0.01) is None
    assert [(await everything.next(1))["tweet_id"] for _ in range(3)] == ["1", "2", "3"]  # type: ignore[index]


async def test_a_stream_that_falls_behind_is_closed_and_the_others_go_on() -> None:
    hub = LiveHub(max_subscriptions=2)
    slow = hub.subscribe(None, 0.0)
    fast = hub.subscribe(None, 0.0)
    backlog = slow.queue.maxsize
    for n in range(backlog + 1):
        hub.publish(prediction(str(n)))
        assert await fast.next(1) is not None
    with pytest.raises(EOFError):
        await slow.next(1)
    hub.publish(prediction("after"))
    assert (await fast.next(1))["tweet_id"] == "after"  # type: ignore[index]
    # Its handler may still be blocked writing to a client that stopped reading: the slot
    # stays taken until the handler ends.
    assert (len(hub), hub.behind()) == (2, 1)
    with pytest.raises(TooManyStreams):
        hub.subscribe(None, 0.0)
    hub.unsubscribe(slow)
    assert (len(hub), hub.behind()) == (1, 0)
    hub.subscribe(None, 0.0)


async def test_the_number_of_streams_is_bounded_and_close_ends_them_all() -> None:
    hub = LiveHub(max_subscriptions=2)
    first, second = hub.subscribe(None, 0.0), hub.subscribe("cats", 0.0)
    with pytest.raises(TooManyStreams):
        hub.subscribe(None, 0.0)
    hub.unsubscribe(second)
    third = hub.subscribe(None, 0.0)
    hub.publish(prediction())
    hub.close()
    for stream in (first, third):
        with pytest.raises(EOFError):
            await stream.next(1)
    with pytest.raises(TooManyStreams):
        hub.subscribe(None, 0.0)
