"""KeyPartitions: the default partitioner's choice for a key, remembered."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.batches import KeyPartitions


def murmur(key: bytes, count: int) -> int:
    partitions = list(range(count))
    return int(DefaultPartitioner()(key, partitions, partitions))


def test_a_key_gets_the_default_partitioners_partition_for_each_count():
    homes = KeyPartitions()
    keys = [f"C{i:06d}".encode() for i in range(2000)]
    for count in (1, 4, 12):
        assert [homes(key, count) for key in keys] == [murmur(key, count) for key in keys]
        assert [homes(key, count) for key in keys] == [murmur(key, count) for key in keys]  # remembered
    assert len({homes(key, 12) for key in keys}) == 12


def test_a_full_memory_is_forgotten_and_answers_stay_right():
    homes = KeyPartitions(max_keys=10)
    keys = [f"c-{i}".encode() for i in range(95)]
    assert [homes(key, 8) for key in keys * 2] == [murmur(key, 8) for key in keys * 2]


def test_a_record_without_a_key_gets_some_partition_of_the_topic():
    homes = KeyPartitions()
    assert {homes(None, 3) for _ in range(200)} <= {0, 1, 2}
    with pytest.raises(ValueError):
        KeyPartitions(max_keys=0)
