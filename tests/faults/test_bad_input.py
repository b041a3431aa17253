"""Bad input: bytes that cannot be read, and readable events that break a limit.

Every bad record must be dead-lettered with its topic, partition, offset and a reason (on the
dead-letter topic and in the ``dead_letters`` table), the worker must not crash nor grow without
bound, and the valid events published after the bad ones on the same partitions must land.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource

from config.topics import Topics
from domain.pseudonymise import scrub_bytes
from domain.records import PurchaseItem, event_to_dict
from ops.simulate import encode_event, expected_by_customer, generate
from schemas import Codec, DecodeError, codec, load_schema
from tests.harness import (
    changelog_states,
    dead_letter_count,
    direct,
    direct_query,
    expected_totals,
    landed_events,
    measure_figures,
    process_memory_kb,
    read_records,
    relationship_totals,
    send_raw,
    state_totals,
    wait_drained,
    wait_until,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

DAY_MS = 86_400_000
MEMORY_BOUND_KB = 1_500_000  # 1.5 GB: generous; a worker that buffers what it rejects blows past it
TEN_MB = 10 * 1024 * 1024


def _interleaved(settings, events, bad, seed):
    """Send the valid events in order with the bad records (kind, key, value, _) at random places in
    the first third, so plenty of valid records follow them on their partitions; return the
    metadata of every valid and every bad record."""
    topics = Topics(settings.topic_prefix)
    rng = random.Random(seed)
    slots: dict[int, list[int]] = {}
    for b in range(len(bad)):
        slots.setdefault(rng.randrange(len(events) // 3), []).append(b)
    records, roles = [], []
    for i, event in enumerate(events):
        records.append((topics.for_kind(event.kind), event.customer_id.encode(), encode_event(event), None))
        roles.append(("valid", i))
        for b in slots.get(i, ()):
            kind, key, value, _ = bad[b]
            records.append((topics.for_kind(kind), key, value, None))
            roles.append(("bad", b))
    metadata = send_raw(settings, records, max_request_size=max(len(r[2] or b"") for r in records) + 4096)
    valid_meta = {i: m for (role, i), m in zip(roles, metadata, strict=True) if role == "valid"}
    bad_meta = {i: m for (role, i), m in zip(roles, metadata, strict=True) if role == "bad"}
    return valid_meta, bad_meta


def _check_dead_letters(settings, bad, bad_meta):
    """Every bad record is on the dead-letter topic and in dead_letters, where it was, with a reason."""
    topics = Topics(settings.topic_prefix)
    want = {(m.topic, m.partition, m.offset): bad[b] for b, m in bad_meta.items()}
    letters = [codec("dead_letter").decode(r.value) for r in read_records(settings, topics.dead_letters)]
    got = {(d["source_topic"], d["partition"], d["offset"]): d for d in letters}
    assert len(letters) == len(got) == len(want)
    assert set(got) == set(want)
    for where, (_, key, value, error_type) in want.items():
        letter = got[where]
        assert letter["error_type"] == error_type, (where, letter["reason"])
        assert letter["reason"], where
        assert letter["key"] == key
        assert len(letter["payload"]) <= settings.max_event_bytes
        if letter["stage"] == "decode" and error_type != "TooLarge":
            # unreadable bytes are kept as sent, but for anything shaped like contact details
            assert letter["payload"] == scrub_bytes(value or b"")[: settings.max_event_bytes]
        elif letter["stage"] == "validate":
            # readable events are kept re-encoded, with contact details pseudonymised
            original = next(codec(k).decode(value) for k in ("purchase", "call", "visit") if _reads(k, value))
            kept = next(codec(k).decode(letter["payload"]) for k in ("purchase", "call", "visit")
                        if _reads(k, letter["payload"]))
            assert kept["event_id"] == original["event_id"], where
    rows = direct_query(settings, f"SELECT source_topic, partition, offset, error_type, reason "
                                  f"FROM {settings.clickhouse_database}.dead_letters FINAL")
    assert {(r[0], r[1], r[2]): r[3] for r in rows} == {w: b[3] for w, b in want.items()}
    assert all(r[4] for r in rows)
    return letters


def _reads(kind, value) -> bool:
    try:
        codec(kind).decode(value)
    except DecodeError:
        return False
    return True


def _check_partitions_kept_flowing(settings, bad_meta, valid_meta, events):
    """On every partition that got a bad record, a valid event published after it was stored."""
    stored = {r[0] for t in ("purchases", "calls", "visits")
              for r in direct_query(settings, f"SELECT event_id FROM {settings.clickhouse_database}.{t} FINAL")}
    for meta in bad_meta.values():
        later = [i for i, m in valid_meta.items()
                 if (m.topic, m.partition) == (meta.topic, meta.partition) and m.offset > meta.offset]
        assert later, f"no valid event after the bad record at {meta.topic}[{meta.partition}]@{meta.offset}"
        assert all(events[i].event_id in stored for i in later)


def test_malformed_bytes_are_dead_lettered_and_the_partition_keeps_flowing(make_worker, figures):
    worker = make_worker()
    settings = worker.settings
    events = generate(customers=60, days=1, seed=61, end_ms=int(time.time() * 1000) - 60_000, history_days=10)
    rng = random.Random(61)
    purchases = [e for e in events if e.kind == "purchase"]
    calls = [e for e in events if e.kind == "call"]
    victim = purchases[0]
    whole = encode_event(victim)
    newer = copy.deepcopy(load_schema("purchase"))  # a writer schema version this reader never saw
    newer["fields"].append({"name": "loyalty_card", "type": ["null", "string"], "default": None})
    newer_codec = Codec("purchase", schema=newer)

    # (topic kind, key, value, expected error type)
    bad = [
        ("purchase", victim.customer_id.encode(), whole[: len(whole) // 2], "DecodeError"),  # truncated Avro
        ("purchase", victim.customer_id.encode(), whole[:-1], "DecodeError"),  # one byte short
        ("purchase", victim.customer_id.encode(), b"\x00" + rng.randbytes(120), "DecodeError"),  # random bytes
        ("purchase", victim.customer_id.encode(), whole[:10] + rng.randbytes(80), "DecodeError"),  # header, garbage
        ("purchase", victim.customer_id.encode(), whole + b"\x00", "DecodeError"),  # trailing byte
        ("purchase", victim.customer_id.encode(), b'{"event_id": "x"}', "DecodeError"),  # JSON text
        ("purchase", victim.customer_id.encode(), b"", "EmptyValue"),  # empty value
        # valid Avro of another schema (a call on the purchases topic)
        ("purchase", calls[0].customer_id.encode(), encode_event(calls[0]), "UnknownSchema"),
        # an unknown version of the right schema
        ("purchase", purchases[1].customer_id.encode(),
         newer_codec.encode({**event_to_dict(purchases[1]), "event_id": "unknown-version-1", "loyalty_card": "X"}),
         "UnknownSchema"),
        ("visit", calls[0].customer_id.encode(), rng.randbytes(3), "DecodeError"),
        ("visit", victim.customer_id.encode(), encode_event(victim), "UnknownSchema"),  # a purchase
    ]
    worker.start()
    valid_meta, bad_meta = _interleaved(settings, events, bad, seed=61)
    valid = {(e.customer_id, e.event_id) for e in events}
    wait_drained(worker, len(valid), dead_letters=len(bad), timeout=120)
    assert worker.proc.poll() is None
    worker.stop()

    letters = _check_dead_letters(settings, bad, bad_meta)
    unknown = next(d for d in letters if d["payload"].startswith(newer_codec.encode({**event_to_dict(purchases[1]),
                   "event_id": "unknown-version-1", "loyalty_card": "X"})[:10]))
    assert newer_codec.fingerprint.hex() in unknown["reason"]
    _check_partitions_kept_flowing(settings, bad_meta, valid_meta, events)
    query = direct(settings)
    row = figures(measure_figures("malformed bytes", settings, query, len(events) + len(bad), valid,
                                  note=f"{len(bad)} malformed: truncated, random, wrong schema, unknown version"))
    assert (row.lost, row.duplicates, row.dead_lettered) == (0, 0, len(bad))
    assert row.stored == row.counted == row.counted_ch == len(valid)
    assert relationship_totals(query, settings.clickhouse_database) == expected_totals(expected_by_customer(events))


def test_events_that_break_limits_are_dead_lettered_without_crash_or_unbounded_memory(make_worker, figures):
    worker = make_worker()
    settings = worker.settings
    topics = Topics(settings.topic_prefix)
    now = int(time.time() * 1000)
    events = generate(customers=60, days=1, seed=71, end_ms=now - 60_000, history_days=10)
    purchases = [e for e in events if e.kind == "purchase"]
    visits = [e for e in events if e.kind == "visit"]
    p, v = purchases[0], visits[0]

    def variant(event, n, **changes):
        return dataclasses.replace(event, event_id=f"{event.event_id}-bad{n}", **changes)

    item = PurchaseItem("GROCERIES-001", "groceries", 1, 199)
    invalid = [
        variant(p, 1, amount_minor=-500),
        variant(p, 2, customer_id="not a customer id!"),
        variant(p, 3, items=(item,) * 2_000),  # a huge array, under the byte cap: more than 500 lines
        variant(p, 4, occurred_at=0),
        variant(p, 5, occurred_at=-DAY_MS),
        variant(p, 6, occurred_at=253_402_300_799_000),  # 9999-12-31T23:59:59Z
        variant(p, 7, occurred_at=now + DAY_MS),  # a day in the future
        variant(v, 8, categories_viewed=("c",) * 5_000),
    ]
    # (topic kind, key, value, expected error type)
    bad = [(e.kind, e.customer_id.encode(), encode_event(e), "ValidationError") for e in invalid]
    too_big = [
        variant(p, 9, promo_code="x" * TEN_MB),  # a 10 MB string
        variant(p, 10, items=(item,) * 30_000),  # a huge array over the byte cap (about 0.8 MB)
    ]
    bad += [(e.kind, e.customer_id.encode(), encode_event(e), "TooLarge") for e in too_big]
    bad.append(("purchase", b"C9999999", encode_event(p), "KeyMismatch"))  # keyed for another customer
    # Old but plausible (2001): accepted by policy, counted in the lifetime figures only.
    old = variant(p, 11, occurred_at=978_307_200_000)
    valid_events = [*events, old]
    # Kafka refuses a 10 MB message by default (1 MB): the test lets this topic take it.
    admin = KafkaAdminClient(**settings.kafka_python_config())
    try:
        admin.alter_configs([ConfigResource("TOPIC", topics.purchases,
                                            configs={"max.message.bytes": str(TEN_MB + 1_048_576)})])
    finally:
        admin.close()

    worker.start()
    before = process_memory_kb(worker.proc.pid)
    valid_meta, bad_meta = _interleaved(settings, valid_events, bad, seed=71)
    valid = {(e.customer_id, e.event_id) for e in valid_events}
    wait_drained(worker, len(valid), dead_letters=len(bad), timeout=120)
    after = process_memory_kb(worker.proc.pid)
    assert worker.proc.poll() is None
    worker.stop()

    letters = _check_dead_letters(settings, bad, bad_meta)
    assert all(d["stage"] == "validate" for d in letters if d["error_type"] in ("ValidationError", "KeyMismatch"))
    big = [d for d in letters if d["error_type"] == "TooLarge"]
    assert len(big) == 2 and all("cap" in d["reason"] for d in big)
    _check_partitions_kept_flowing(settings, bad_meta, valid_meta, valid_events)
    query = direct(settings)
    row = figures(measure_figures(
        "events breaking limits", settings, query, len(valid_events) + len(bad), valid,
        note=f"{len(bad)} rejected incl. a 10 MB string; worker RSS {before['VmRSS'] // 1024}->"
             f"{after['VmRSS'] // 1024} MB, peak {after['VmHWM'] // 1024} MB",
    ))
    assert after["VmHWM"] < MEMORY_BOUND_KB, after
    assert (row.lost, row.duplicates, row.dead_lettered) == (0, 0, len(bad))
    assert row.stored == row.counted == row.counted_ch == len(valid)
    expected = expected_totals(expected_by_customer(valid_events))
    assert relationship_totals(query, settings.clickhouse_database) == expected
    assert state_totals(changelog_states(settings)) == expected


def test_a_record_without_value_is_dead_lettered_not_a_poison_pill(make_worker, figures):
    """A null value (a tombstone) once crashed its agent: the topic stalled while /health said ok."""
    worker = make_worker()
    settings = worker.settings
    db = settings.clickhouse_database
    events = generate(customers=40, days=1, seed=75, end_ms=int(time.time() * 1000) - 60_000, history_days=10)
    bad = [("purchase", events[0].customer_id.encode(), None, "EmptyValue")]
    valid = {(e.customer_id, e.event_id) for e in events}

    worker.start()
    valid_meta, bad_meta = _interleaved(settings, events, bad, seed=75)

    def settled() -> bool:
        return "Crashed" in worker.log_tail(100_000) or (
            landed_events(worker.query, db) >= len(valid) and dead_letter_count(worker.query, db) >= 1)

    wait_until(settled, timeout=60, what="the events and the dead letter landed, or an agent crashed")
    assert "Crashed" not in worker.log_tail(100_000), worker.log_tail()
    wait_drained(worker, len(valid), dead_letters=1)
    worker.stop()

    query = direct(settings)
    row = figures(measure_figures("record without a value", settings, query, len(events) + 1, valid,
                                  note="a null value between valid events"))
    assert (row.lost, row.duplicates, row.dead_lettered) == (0, 0, 1)
    assert row.stored == row.counted == row.counted_ch == len(valid)
    _check_dead_letters(settings, bad, bad_meta)
    _check_partitions_kept_flowing(settings, bad_meta, valid_meta, events)
