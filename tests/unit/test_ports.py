"""Local ports for child processes (ops.ports), a child's start-up failure named by its log's error
line (ops.workers), and the demo refusing a taken port before it starts anything (ops.demo)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from config.settings import Settings
from ops import ports
from ops.cli import CliError
from ops.demo import start_deployment
from ops.workers import last_error

BIND_FAILURE_LOG = """\
2026-12-03 13:58:56,100 INFO faust.worker: [^Worker]: Starting...
2026-12-03 13:58:56,854 ERROR faust.worker: [^Worker]: Error: OSError(98, "error while attempting to bind")
Traceback (most recent call last):
  File "/x/mode/worker.py", line 264, in execute_from_commandline
    self.loop.run_until_complete(self._starting_fut)
OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 35100): address already in use
2026-12-03 13:58:56,857 INFO streams.offsets: [^--CommittedSeekingConsumer]: Stopping...
"""


def test_free_ports_lie_below_the_ephemeral_range_and_are_free() -> None:
    low = ports.ephemeral_low()
    for _ in range(20):
        first = ports.free_ports(3)
        assert ports.LOWEST <= first and first + 2 < low
        assert all(ports.bindable(first + n) for n in range(3))


def test_a_listening_port_is_not_bindable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not ports.bindable(s.getsockname()[1])


@pytest.mark.parametrize(("text", "expected"), [("60999\t65000\n", 60_999), ("", 32_768), ("x y", 32_768)])
def test_the_ephemeral_range_is_read_or_linux_s_default(tmp_path: Path, text: str, expected: int) -> None:
    path = tmp_path / "range"
    path.write_text(text)
    assert ports.ephemeral_low(path) == expected
    assert ports.ephemeral_low(tmp_path / "missing") == 32_768


@pytest.mark.parametrize(("log", "expected"), [
    (BIND_FAILURE_LOG, ": OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 35100): "
                       "address already in use"),
    ("a\n2026-12-03 10:00:00,000 CRITICAL streams.app: no brokers\nb\n",
     ": 2026-12-03 10:00:00,000 CRITICAL streams.app: no brokers"),
    ("config.settings.SettingsError: LOYALTY_PARTITIONS must be positive\n",
     ": config.settings.SettingsError: LOYALTY_PARTITIONS must be positive"),
    ("INFO only\nStopping...\n", ""),
    ("", ""),
])
def test_the_last_error_line_of_a_log_names_why_a_child_exited(log: str, expected: str) -> None:
    assert last_error(log) == expected


def test_the_demo_refuses_a_taken_port_before_it_starts_a_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        settings = Settings(data_dir=tmp_path, web_port=taken - 2)
        with pytest.raises(CliError) as raised:
            start_deployment(settings, workers=2)
    assert f"port {taken} (state worker 2)" in str(raised.value)
    assert "set LOYALTY_WEB_PORT to the first of 3 free ports" in str(raised.value)
    assert not (tmp_path / "sink.log").exists()
