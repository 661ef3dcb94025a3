"""`make redrive TOPIC=images.dlq [REASON=timeout] [SINCE=2h] [DRY_RUN=1]`: put dead letters back
where they came from, after a fix.

A stage's dead letter carries its input unchanged and the headers of services/common/deadletters.py;
`source_topic` names the topic it was read from, and the copy goes back there, with its key and
its envelope (`priority`, `ingest_ts_ms`), marked `redriven_from=<dlq>/<partition>/<offset>` and
`redriven_reason=<its error>`. If it fails again, the stage dead-letters the copy, whose source
position leads to those headers. One image of a post (headers `media_key`, `url`) goes back as the
post with that image only, so the images that did not fail are not fetched again.

Ingest's own dead letters in `tweets.dlq` have no source topic: they are stream lines that were
not a post. Re-driving one means ingesting it again with today's parser: a post goes to ingest's
output topic (`INGEST_OUTPUT_TOPIC`) with a fresh envelope; a line that still fails becomes a new
dead letter, marked `redriven_from` too; a post without images is left. A line cut to fit
(`value_truncated`) cannot be recovered, nor can any truncated dead letter: they are left.

Never twice: the tool has its own consumer group (`--group`, default `tagstream-redrive`), and
each batch's copies and the group's progress are one Kafka transaction, so a crash between the
write and the commit aborts both and the next run does the batch again; a second run started
while one is going fences it (same transactional id), and the fenced one ends with an error.
Progress is kept per reason, in the committed offset's metadata: a run covers the reasons asked
for (all by default) and settles every dead letter of those reasons up to the topic's end when it
started, moving those written since `--since` and leaving the older ones for good; dead letters
of other reasons stay for a later run. A fresh `--group` starts over.

`--dry-run` reads and counts what a run would move, and writes and commits nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from services.common import logs
from services.common.avro import TWEETS, AvroDecodeError
from services.common.deadletters import dead_letter
from services.common.envelope import Envelope, from_headers
from services.common.kafka import Outgoing, producer_config
from services.common.settings import KafkaSettings
from services.common.stages import DLQ_SUFFIX, SHED_SUFFIX
from services.common.timeutil import now_ms
from services.ingest.payload import PayloadError

log = logging.getLogger("tools.redrive")

DEFAULT_GROUP = "tagstream-redrive"
REDRIVEN_FROM = "redriven_from"
REDRIVEN_REASON = "redriven_reason"
#: a reason code as the stages write them; anything else in `--reason` is a typo
REASON_PATTERN = re.compile(r"[a-z0-9_]{1,64}")
#: what a dead letter without an `error` header is counted as
NO_REASON = "no_reason"
INGEST_STAGE = "ingest"

Headers = list[tuple[str, bytes]]


# --- what to re-drive ------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The dead letters a run covers: these reasons (None: every reason), written since `since_ms`."""

    reasons: frozenset[str] | None = None
    since_ms: int | None = None

    def covers(self, reason: str) -> bool:
        return self.reasons is None or reason in self.reasons


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str, now: int) -> int:
    """Epoch milliseconds of `text`: a duration back from `now` (`90m`, `2h`, `7d`), an ISO-8601
    time (UTC unless it says otherwise), or epoch milliseconds."""
    text = text.strip()
    if match := _DURATION.fullmatch(text):
        return now - int(match.group(1)) * _UNIT_MS[match.group(2)]
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"SINCE {text!r} is none of: a duration (90m, 2h, 7d), an ISO-8601 time, epoch ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_reasons(texts: Iterable[str]) -> frozenset[str] | None:
    """The reasons of `--reason` (each may be a comma-separated list); None when none is given."""
    reasons = frozenset(r.strip() for text in texts for r in text.split(",") if r.strip())
    bad = sorted(r for r in reasons if not REASON_PATTERN.fullmatch(r))
    if bad:
        raise ValueError(f"not reason codes (lower case, digits, '_'): {bad}")
    return reasons or None


# --- progress: one partition's, per reason ------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """How far one partition of the dead-letter topic is settled: below `base` for every reason,
    below `frontiers[reason]` for the reasons a filtered run covered. Committed as the group's
    offset (`base`) with the frontiers as the offset's metadata."""

    base: int
    frontiers: Mapping[str, int] = field(default_factory=dict)

    def frontier(self, reason: str) -> int:
        return max(self.base, self.frontiers.get(reason, self.base))

    def start(self, selection: Selection) -> int:
        """Where a run with `selection` starts reading: nothing it covers is unsettled before."""
        if selection.reasons is None:
            return self.base
        return min(self.frontier(reason) for reason in selection.reasons)

    def settled(self, selection: Selection, upto: int) -> Progress:
        """After a run with `selection` has decided every record before `upto`."""
        if selection.reasons is None:
            base = max(self.base, upto)
            return Progress(base, {r: f for r, f in self.frontiers.items() if f > base})
        frontiers = dict(self.frontiers)
        for reason in selection.reasons:
            frontiers[reason] = max(self.frontier(reason), upto)
        return Progress(self.base, {r: f for r, f in sorted(frontiers.items()) if f > self.base})

    def metadata(self) -> str:
        return json.dumps({"v": 1, "frontiers": dict(self.frontiers)}, separators=(",", ":"))

    @classmethod
    def committed(cls, offset: int, metadata: str | None, earliest: int) -> Progress:
        """From the group's committed offset and metadata; `earliest` is the partition's first
        retained offset (the start when nothing was committed, or what was is gone)."""
        base = max(offset, earliest) if offset >= 0 else earliest
        frontiers: dict[str, int] = {}
        if metadata:
            try:
                stored = json.loads(metadata)["frontiers"]
                frontiers = {str(r): int(f) for r, f in stored.items() if int(f) > base}
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("unreadable progress metadata ignored", extra={"fields": {"metadata": metadata[:200]}})
        return cls(base, frontiers)


# --- one dead letter, and what to do with it ---------------------------------------------------


@dataclass(frozen=True)
class Letter:
    """A dead letter as read from its topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | bytes | None
    value: bytes
    headers: Headers

    @classmethod
    def of(cls, message: Message) -> Letter:
        raw = message.headers() or []
        if isinstance(raw, dict):
            raw = list(raw.items())
        headers = [(name, value if isinstance(value, bytes) else (value or "").encode()) for name, value in raw]
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        return cls(topic, partition, offset, message.timestamp()[1], message.key(), message.value() or b"", headers)

    def header(self, name: str) -> str | None:
        return _header(self.headers, name)

    @property
    def reason(self) -> str:
        return self.header("error") or NO_REASON

    @property
    def position(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    def marks(self) -> Headers:
        return [(REDRIVEN_FROM, self.position.encode()), (REDRIVEN_REASON, self.reason.encode())]


@dataclass(frozen=True)
class Move:
    """Write `record`; `outcome` is `moved` (back on its topic) or `failed_again` (a line that is
    still not a post, dead-lettered anew)."""

    record: Outgoing
    outcome: str = "moved"


@dataclass(frozen=True)
class Leave:
    """Write nothing; `why` is counted."""

    why: str


Decision = Move | Leave
#: a stream line to its `tweets` record (None: no images); raises PayloadError or UnicodeDecodeError
Reingest = Callable[[bytes], dict[str, Any] | None]


@dataclass(frozen=True)
class Destinations:
    """Where ingest's lines go when ingested again, and how."""

    ingest_output: str
    reingest: Reingest


def decide(letter: Letter, selection: Selection, progress: Progress, where: Callable[[], Destinations]) -> Decision:
    """What to do with one dead letter; `where` is asked only for one of ingest's own."""
    reason = letter.reason
    if not selection.covers(reason):
        return Leave("not_selected")
    if letter.offset < progress.frontier(reason):
        return Leave("already_redriven")
    if selection.since_ms is not None and letter.timestamp_ms < selection.since_ms:
        return Leave("before_since")
    if letter.header("value_truncated") is not None:
        return Leave("truncated")
    source = letter.header("source_topic")
    if source is not None:
        if not source or source == letter.topic or source.endswith((DLQ_SUFFIX, SHED_SUFFIX)):
            return Leave("bad_source")
        return Move(back_to_source(letter, source))
    if letter.header("stage") == INGEST_STAGE:
        return ingest_again(letter, where)
    return Leave("no_source")


def back_to_source(letter: Letter, source: str) -> Outgoing:
    envelope = from_headers(letter.headers)
    headers: Headers = envelope.headers() if envelope is not None else []
    return Outgoing(source, only_failed_image(letter), letter.key, [*headers, *letter.marks()])


def only_failed_image(letter: Letter) -> bytes:
    """The post with only the image its dead letter is about, when it is about one."""
    media_key = letter.header("media_key")
    if media_key is None:
        return letter.value
    try:
        post = TWEETS.decode(letter.value)
    except AvroDecodeError:
        return letter.value  # as it was: the stage will say again what is wrong with it
    media = [m for m in post["media"] if m["media_key"] == media_key]
    return TWEETS.encode({**post, "media": media}) if media else letter.value


def ingest_again(letter: Letter, where: Callable[[], Destinations]) -> Decision:
    """One of ingest's own dead letters (a stream line) through today's parser."""
    ingest = where()
    try:
        post = ingest.reingest(letter.value)
    except (PayloadError, UnicodeDecodeError) as exc:
        reason = exc.reason if isinstance(exc, PayloadError) else "bad_encoding"
        extra = [(name, value.decode()) for name, value in letter.marks()]
        again = dead_letter(
            stage=INGEST_STAGE,
            topic=letter.topic,
            value=letter.value,
            key=None,
            reason=reason,
            detail=str(exc),
            extra=extra,
        )
        return Move(again, outcome="failed_again")
    if post is None:
        return Leave("without_images")
    envelope = Envelope(post["priority"], post["ingest_ts_ms"])
    headers = [*envelope.headers(), *letter.marks()]
    return Move(Outgoing(ingest.ingest_output, TWEETS.encode(post), post["tweet_id"], headers))


def ingest_destinations() -> Destinations:
    """Ingest's output topic and parser, with its settings and rules."""
    from services.ingest.payload import parse_line, to_tweet_record
    from services.ingest.service import priorities
    from services.ingest.settings import IngestSettings

    settings = IngestSettings()
    by_rule = priorities(settings)

    def reingest(line: bytes) -> dict[str, Any] | None:
        payload = parse_line(line)
        if payload is None:
            return None
        return to_tweet_record(
            payload, priorities=by_rule, default_priority=settings.default_priority, ingest_ts_ms=now_ms()
        )

    return Destinations(settings.output_topic, reingest)


# --- a run ------------------------------------------------------------------------------------


@dataclass
class Summary:
    topic: str
    group: str
    dry_run: bool
    reasons: list[str] | None
    since_ms: int | None
    #: dead letters put back (or, in a dry run, that would be), by reason
    moved: Counter[str] = field(default_factory=Counter)
    #: ... by the topic they went to
    moved_to: Counter[str] = field(default_factory=Counter)
    #: ingest lines still not a post, dead-lettered anew, by their new reason
    failed_again: Counter[str] = field(default_factory=Counter)
    #: dead letters read and left, by why
    left: Counter[str] = field(default_factory=Counter)
    read: int = 0
    transactions: int = 0

    def count(self, letter: Letter, decision: Decision) -> None:
        self.read += 1
        if isinstance(decision, Leave):
            self.left[decision.why] += 1
        elif decision.outcome == "moved":
            self.moved[letter.reason] += 1
            self.moved_to[decision.record.topic] += 1
        else:
            self.failed_again[_header(decision.record.headers, "error") or NO_REASON] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group": self.group,
            "dry_run": self.dry_run,
            "reasons": self.reasons,
            "since_ms": self.since_ms,
            "read": self.read,
            "moved": dict(sorted(self.moved.items())),
            "moved_total": sum(self.moved.values()),
            "moved_to": dict(sorted(self.moved_to.items())),
            "failed_again": dict(sorted(self.failed_again.items())),
            "left": dict(sorted(self.left.items())),
            "transactions": self.transactions,
        }


class RedriveError(RuntimeError):
    """The run stopped; what it committed before stays done, the rest is for the next run."""


def redrive(
    kafka: KafkaSettings,
    topic: str,
    selection: Selection,
    *,
    group: str = DEFAULT_GROUP,
    dry_run: bool = False,
    batch_size: int = 500,
    destinations: Callable[[], Destinations] = ingest_destinations,
    idle_timeout_s: float = 60.0,
) -> Summary:
    """Re-drive the dead letters of `topic` that `selection` covers, as far as the topic goes now."""
    summary = Summary(
        topic, group, dry_run, sorted(selection.reasons) if selection.reasons else None, selection.since_ms
    )
    transactions = None if dry_run else Transactions(kafka, group, topic)
    consumer = Consumer(_consumer_config(kafka, group))
    where = _once(destinations)
    try:
        # After the fencing above: a run still going has had its open batch aborted, so what
        # is read here is all that was ever committed.
        progress, ends = _progress(consumer, topic)
        positions = {p: progress[p].start(selection) for p in progress}
        todo = {p for p in positions if positions[p] < ends[p]}
        consumer.assign([TopicPartition(topic, p, positions[p]) for p in sorted(todo)])
        idle_since = time.monotonic()
        while todo:
            batch: list[Outgoing] = []
            touched: set[int] = set()
            for message in consumer.consume(batch_size, 1.0):
                p = message.partition()
                assert p is not None
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise RedriveError(f"reading {topic}: {error}")
                    # The end of what is committed now: offsets up to here held only
                    # transaction markers or aborted records.
                    positions[p] = max(positions[p], message.offset() or 0)
                    touched.add(p)
                    todo.discard(p)
                    continue
                if p not in todo:
                    continue
                offset = message.offset()
                assert offset is not None
                if offset >= ends[p]:  # written after the run started: the next run's
                    todo.discard(p)
                    continue
                letter = Letter.of(message)
                decision = decide(letter, selection, progress[p], where)
                summary.count(letter, decision)
                if isinstance(decision, Move):
                    batch.append(decision.record)
                positions[p] = offset + 1
                touched.add(p)
                if positions[p] >= ends[p]:
                    todo.discard(p)
            if not touched:
                if time.monotonic() - idle_since > idle_timeout_s:
                    raise RedriveError(
                        f"nothing read from {topic} for {idle_timeout_s:.0f} s, {len(todo)} partitions short"
                    )
                continue
            idle_since = time.monotonic()
            settled = {p: progress[p].settled(selection, positions[p]) for p in touched}
            if transactions is not None:
                transactions.commit(batch, topic, settled, consumer)
                summary.transactions += 1
                where_now = {str(p): positions[p] for p in sorted(touched)}
                log.info("batch committed", extra={"fields": {"topic": topic, "written": len(batch), "at": where_now}})
            progress.update(settled)
    finally:
        # No flush: a committed transaction has delivered its records, an unfinished one is aborted.
        consumer.close()
    return summary


class Transactions:
    """One transaction per batch: its copies and the group's progress, committed together."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.what = f"redrive of {topic} (group {group})"
        config = producer_config(kafka, "tagstream-redrive") | {
            # One id per group and topic: a second run of the same fences the first.
            "transactional.id": f"{group}.{topic}",
            "transaction.timeout.ms": 60_000,
        }
        self.producer = Producer(config)
        self._call(self.producer.init_transactions, self.timeout_s)

    def commit(
        self, records: Sequence[Outgoing], topic: str, settled: Mapping[int, Progress], consumer: Consumer
    ) -> None:
        self._call(self.producer.begin_transaction)
        for record in records:
            self._produce(record)
        offsets = [TopicPartition(topic, p, s.base, metadata=s.metadata()) for p, s in sorted(settled.items())]
        self._call(
            self.producer.send_offsets_to_transaction, offsets, consumer.consumer_group_metadata(), self.timeout_s
        )
        while True:
            try:
                self.producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.retriable():
                    continue
                if error.txn_requires_abort():
                    self.producer.abort_transaction(self.timeout_s)
                    raise RedriveError(f"{self.what}: batch aborted, nothing of it written: {error}") from exc
                raise self._failed(error) from exc

    def _produce(self, record: Outgoing) -> None:
        while True:
            try:
                self.producer.produce(record.topic, record.value, key=record.key, headers=list(record.headers))
                return
            except BufferError:
                self.producer.poll(0.1)  # the local queue is full: let deliveries drain it

    def _call(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except KafkaException as exc:
            raise self._failed(exc.args[0]) from exc

    def _failed(self, error: KafkaError) -> RedriveError:
        if error.fatal() and error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED):
            return RedriveError(f"{self.what}: another run of it started and took over: {error}")
        return RedriveError(f"{self.what}: {error}")


def _consumer_config(kafka: KafkaSettings, group: str) -> dict[str, Any]:
    return kafka.client_config() | {
        "group.id": group,
        "client.id": "tagstream-redrive",
        # Only dead letters a stage committed; progress goes with the transactions.
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    }


def _progress(consumer: Consumer, topic: str) -> tuple[dict[int, Progress], dict[int, int]]:
    """Each partition's committed progress and its end now."""
    metadata = consumer.list_topics(topic, timeout=30)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise RedriveError(f"no topic {topic}: {found.error if found is not None else 'unknown'}")
    partitions = [TopicPartition(topic, p) for p in sorted(found.partitions)]
    committed = consumer.committed(partitions, timeout=30)
    progress, ends = {}, {}
    for position in committed:
        if position.error is not None:
            raise RedriveError(f"reading the progress of {topic}/{position.partition}: {position.error}")
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, position.partition), timeout=30)
        offset = position.offset if position.offset != OFFSET_INVALID else -1
        progress[position.partition] = Progress.committed(offset, position.metadata, low)
        ends[position.partition] = high
    return progress, ends


def _once(factory: Callable[[], Destinations]) -> Callable[[], Destinations]:
    made: list[Destinations] = []

    def get() -> Destinations:
        if not made:
            made.append(factory())
        return made[0]

    return get


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    value = next((v for n, v in headers if n == name), None)
    return None if value is None else value.decode(errors="replace")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.redrive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", required=True, help="the dead-letter topic, e.g. images.dlq")
    parser.add_argument("--reason", action="append", default=[], help="only these reasons (repeat, or a,b)")
    parser.add_argument("--since", help="only dead letters written since: 90m, 2h, 7d, an ISO-8601 time, epoch ms")
    parser.add_argument("--dry-run", action="store_true", help="count what would be moved; write nothing")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="the consumer group keeping progress")
    parser.add_argument("--batch-size", type=int, default=500, help="dead letters per transaction")
    args = parser.parse_args(argv)
    logs.configure("INFO")
    try:
        selection = Selection(parse_reasons(args.reason), parse_since(args.since, now_ms()) if args.since else None)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = redrive(
            KafkaSettings(), args.topic, selection, group=args.group, dry_run=args.dry_run, batch_size=args.batch_size
        )
    except RedriveError as exc:
        log.error("redrive stopped", extra={"fields": {"topic": args.topic, "error": str(exc)}})
        print(f"redrive: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
