"""The local broker's server.properties (ops.broker), written before it starts."""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from ops import broker


def properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    assert len({key for key, _ in pairs}) == len(pairs), "a property written twice"
    return dict(pairs)


def test_the_project_s_broker_assigns_a_new_group_at_once_and_a_caller_may_keep_kafka_s_wait(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    paths = broker._paths(settings)
    written = properties(broker._server_properties(settings, paths))
    assert written["group.initial.rebalance.delay.ms"] == "0"
    assert written["num.partitions"] == str(settings.partitions)

    overridden = properties(broker._server_properties(settings, paths, {"group.initial.rebalance.delay.ms": "3000"}))
    assert overridden["group.initial.rebalance.delay.ms"] == "3000"
    assert {k: v for k, v in overridden.items() if k != "group.initial.rebalance.delay.ms"} == \
        {k: v for k, v in written.items() if k != "group.initial.rebalance.delay.ms"}
