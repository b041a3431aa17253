"""Kafka topic set-up and consumer-lag figures, through kafka-python's admin client."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from config.settings import Settings
from config.topics import Topics

logger = logging.getLogger(__name__)


def create_topics(settings: Settings) -> list[str]:
    """Create the input and output topics that do not exist yet; return those created."""
    topics = Topics(settings.topic_prefix)
    admin = KafkaAdminClient(**settings.kafka_python_config(), client_id="loyalty-admin")
    try:
        existing = set(admin.list_topics())
        config = {"max.message.bytes": str(settings.max_message_bytes)}
        compacted = {**config, "cleanup.policy": "compact"}
        wanted = [
            NewTopic(name, 1 if name == topics.model_params else settings.partitions, 1,
                     topic_configs=compacted if name == topics.state_fences else config)
            for name in topics.all() if name not in existing
        ]
        # The tables' changelogs too: a worker that starts before the broker's metadata lists a
        # changelog Faust has just created would find it with 0 partitions and crash its agents.
        wanted += [
            NewTopic(name, settings.partitions, 1, topic_configs=compacted)
            for name in changelog_topics(settings) if name not in existing
        ]
        created = []
        for topic in wanted:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def start_groups_at_the_beginning(settings: Settings, groups: tuple[str, ...]) -> dict[str, int]:
    """Commit the log start offset for every input partition on which a consumer group has no
    committed offset yet; return how many partitions were set per group.

    A partition without a committed offset is where records can slip through a rebalance: a
    worker that fetched its first records and then lost or changed its assignment skips them as
    stale, and seeking "to the committed offset" then leaves its position where it was, so the
    next records acked make Kafka consider the skipped ones consumed. With an explicit starting
    offset, every assignment seeks back to it. Only an empty group accepts these commits: for a
    group already running this is a no-op (its members committed when they started).
    """
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    topics = Topics(settings.topic_prefix)
    done: dict[str, int] = {}
    for group in groups:
        consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=group, enable_auto_commit=False,
                                 client_id="loyalty-admin-offsets")
        try:
            tps = [TopicPartition(name, p) for name in (*topics.inputs, topics.alert_due)
                   for p in sorted(consumer.partitions_for_topic(name) or ())]
            missing = [tp for tp in tps if consumer.committed(tp) is None]
            if not missing:
                done[group] = 0
                continue
            starts = consumer.beginning_offsets(missing)
            try:
                consumer.commit({tp: OffsetAndMetadata(starts[tp], "", -1) for tp in missing})
                done[group] = len(missing)
            except KafkaError as exc:
                logger.info("consumer group %s is running already (%s): its offsets stay as they are", group, exc)
                done[group] = 0
        finally:
            consumer.close()
    return done


def changelog_topics(settings: Settings) -> tuple[str, ...]:
    """The changelog topics of the worker's tables (Faust names them <app_id>-<table>-changelog)."""
    return tuple(f"{settings.app_id}-{table}-changelog" for table in ("relationships", "due_times"))


def consumer_lag(settings: Settings, group: str | None = None,
                 topics: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    """Per topic (by default the input topics): end offsets, committed offsets of a consumer group
    (by default the state workers'), and the lag."""
    names = Topics(settings.topic_prefix).inputs if topics is None else tuple(topics)
    consumer = KafkaConsumer(**settings.kafka_python_config(), group_id=group or settings.app_id,
                             enable_auto_commit=False, client_id="loyalty-status")
    try:
        report: dict[str, dict[str, int]] = {}
        for name in names:
            partitions = consumer.partitions_for_topic(name) or set()
            tps = [TopicPartition(name, p) for p in sorted(partitions)]
            if not tps:
                continue
            ends = consumer.end_offsets(tps)
            committed = {tp: consumer.committed(tp) or 0 for tp in tps}
            end = sum(ends.values())
            done = sum(committed.values())
            report[name] = {"end": end, "committed": done, "lag": end - done}
        return report
    finally:
        consumer.close()


class WorkerError(RuntimeError):
    """The worker answered with an error status; the message is the error it reported."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def worker_get(settings: Settings, path: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """Call the running worker's HTTP API; raises URLError when no worker answers, WorkerError when
    it answers with an error."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    request = urllib.request.Request(settings.web_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = str(json.loads(detail)["error"])
        except (ValueError, KeyError, TypeError):
            pass  # not the API's {"error": ...}: report the body as it came
        raise WorkerError(exc.code, f"the worker answered {exc.code}: {detail}") from exc


def worker_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    result = worker_get(settings, "/clickhouse/query", {"sql": sql})
    return result["columns"], result["rows"]
