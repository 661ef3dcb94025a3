"""`python -m tools.predictions [--follow] [--from-beginning] [--hashtag cats] [--min-score 0.8]`:
the `predictions` topic for people, one JSON line per prediction, in the spirit of kcat.

Each line is `{"partition", "offset", "timestamp_ms", "prediction"}`, the prediction in the
newest schema's shape whichever released version wrote it (the codec's schema resolution). It
reads what is committed only (`read_committed`), with no consumer group: nothing it does moves
anyone's offsets. It starts at the end of the topic, or at its beginning with `--from-beginning`,
and stops at the end, or goes on waiting for more with `--follow`. `--hashtag` and
`--min-score` filter as the sink's API does: a suggested hashtag (that one, when given) scoring
at least that. A record that cannot be read is an error line on stderr, and reading goes on.
Ctrl-C ends it cleanly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.common.avro import PREDICTIONS, AvroDecodeError, Record
from services.common.settings import KafkaSettings
from services.common.stages import stage
from services.sink.store import matches

DEFAULT_TOPIC = stage("classifier").output or "predictions"


def line(message: Message, prediction: Record) -> str:
    """One prediction as a JSON line; a non-finite score (never written by the classifier) is null."""
    return json.dumps(
        {
            "partition": message.partition(),
            "offset": message.offset(),
            "timestamp_ms": message.timestamp()[1],
            "prediction": _finite(prediction),
        },
        ensure_ascii=False,
        allow_nan=False,
    )


def error_line(message: Message, reason: str, detail: str) -> str:
    return json.dumps(
        {"error": reason, "detail": detail, "partition": message.partition(), "offset": message.offset()},
        ensure_ascii=False,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class Reader:
    """Reads the topic's partitions from where it was told, printing what passes the filter."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        hashtag: str | None,
        min_score: float,
        from_beginning: bool,
        follow: bool,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.topic, self.hashtag, self.min_score = topic, hashtag, min_score
        self.from_beginning, self.follow = from_beginning, follow
        self.out, self.err = out, err
        self.stopping = False
        self.consumer = Consumer(
            kafka.client_config()
            | {
                # A group is required by the client; this one never commits.
                "group.id": f"tagstream-predictions-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )

    def run(self) -> int:
        try:
            pending = self._assign()
            while not self.stopping and (self.follow or pending):
                for message in self.consumer.consume(500, 0.5):
                    self._one(message, pending)
        finally:
            self.consumer.close()
        return 0

    def stop(self) -> None:
        self.stopping = True

    def _assign(self) -> set[int]:
        """Assign every partition at its start; return those not yet read to their end."""
        found = self.consumer.list_topics(self.topic, timeout=30).topics.get(self.topic)
        if found is None or found.error is not None:
            raise SystemExit(f"no topic {self.topic}: {found.error if found is not None else 'unknown'}")
        starts = []
        for p in sorted(found.partitions):
            # The end as a number now, not OFFSET_END resolved at some later fetch: what is
            # written once this says it follows is never missed.
            start = OFFSET_BEGINNING
            if not self.from_beginning:
                start = self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)[1]
            starts.append(TopicPartition(self.topic, p, start))
        self.consumer.assign(starts)
        where = "the beginning" if self.from_beginning else "the end"
        print(json.dumps({"reading": self.topic, "partitions": len(starts), "from": where}), file=self.err, flush=True)
        return {tp.partition for tp in starts}

    def _one(self, message: Message, pending: set[int]) -> None:
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                pending.discard(message.partition() or 0)
            else:
                print(json.dumps({"error": "kafka", "detail": str(error)}), file=self.err, flush=True)
            return
        try:
            prediction = PREDICTIONS.decode(message.value())
        except AvroDecodeError as exc:
            print(error_line(message, exc.reason, exc.detail), file=self.err, flush=True)
            return
        if matches(prediction, self.hashtag, self.min_score):
            print(line(message, prediction), file=self.out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.predictions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--follow", action="store_true", help="wait for new predictions at the end (Ctrl-C ends)")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest retained prediction")
    parser.add_argument("--hashtag", help="only predictions suggesting this hashtag ('#' optional)")
    parser.add_argument("--min-score", type=float, default=0.0, help="... with a score of at least this")
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    args = parser.parse_args(argv)
    if not 0.0 <= args.min_score <= 1.0:
        parser.error("--min-score is a score, from 0 to 1")
    reader = Reader(
        KafkaSettings(),
        args.topic,
        hashtag=args.hashtag.lstrip("#") if args.hashtag else None,
        min_score=args.min_score,
        from_beginning=args.from_beginning,
        follow=args.follow,
        out=sys.stdout,
        err=sys.stderr,
    )
    _on_signals(reader.stop)
    try:
        return reader.run()
    except BrokenPipeError:  # `| head` has read enough
        # Python flushes stdout again at exit: point it at nowhere, as its docs advise.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
