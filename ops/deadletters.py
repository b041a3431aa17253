"""Inspect and re-publish dead letters once their cause is fixed.

A dead letter keeps its source topic, key and payload (pseudonymised, or scrubbed when it could
not be decoded), so re-publishing it sends it through the pipeline again as if it had just
arrived. Event-id deduplication makes a repeated re-publish harmless for events that were
counted the first time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from config.settings import Settings
from config.topics import Topics
from schemas import DecodeError, codec

logger = logging.getLogger(__name__)


@dataclass
class DeadLetterReport:
    read: int = 0
    selected: int = 0
    republished: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)

    def format(self) -> str:
        lines = [f"dead letters read {self.read}, selected {self.selected}, re-published {self.republished}"]
        lines += [f"  {n:>7}  {reason}" for reason, n in self.by_reason.most_common(20)]
        return "\n".join(lines)


def read_dead_letters(settings: Settings, timeout_s: float = 30.0) -> list[dict]:
    """Every dead letter on the topic, oldest first per partition."""
    topic = Topics(settings.topic_prefix).dead_letters
    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False, group_id=None,
                             fetch_max_bytes=settings.max_message_bytes * 4,
                             max_partition_fetch_bytes=settings.max_message_bytes)
    letters: list[dict] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return letters
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        dead_letter_codec = codec("dead_letter")
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        letters.append(dead_letter_codec.decode(record.value))
                    except DecodeError as exc:
                        logger.warning("skipping an unreadable dead letter at %s[%d]@%d: %s",
                                       record.topic, record.partition, record.offset, exc)
    finally:
        consumer.close()
    return letters


def republish(settings: Settings, select: Callable[[dict], bool], dry_run: bool = False) -> DeadLetterReport:
    """Send the selected dead letters' payloads back to their source topics."""
    report = DeadLetterReport()
    letters = read_dead_letters(settings)
    report.read = len(letters)
    inputs = set(Topics(settings.topic_prefix).inputs)
    chosen = [letter for letter in letters if letter["source_topic"] in inputs and letter["payload"] and select(letter)]
    report.selected = len(chosen)
    for letter in chosen:
        report.by_reason[f"{letter['error_type']}: {letter['reason'][:80]}"] += 1
    if dry_run or not chosen:
        return report
    producer = KafkaProducer(**settings.kafka_python_config(), acks="all", max_request_size=settings.max_message_bytes)
    try:
        for letter in chosen:
            producer.send(letter["source_topic"], key=letter["key"], value=letter["payload"])
            report.republished += 1
        producer.flush()
    finally:
        producer.close()
    return report
