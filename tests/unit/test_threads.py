"""Threads named in the kernel (sinks/threads.py): what ``top -H`` and the benchmark's CPU by
thread read."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from sinks.threads import NamedExecutor, name_this_thread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's thread names are Linux's")


def kernel_name() -> str:
    return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()


def test_an_executor_thread_carries_its_name_in_the_kernel() -> None:
    with NamedExecutor("sink-rows") as executor:
        assert executor.submit(kernel_name).result() == "sink-rows"
        assert executor.submit(lambda: threading.current_thread().name).result().startswith("sink-rows")


def test_a_long_name_keeps_its_first_15_bytes_and_other_threads_keep_theirs() -> None:
    before = kernel_name()

    def rename() -> str:
        name_this_thread("a-name-longer-than-fifteen")
        return kernel_name()

    thread_result: list[str] = []
    worker = threading.Thread(target=lambda: thread_result.append(rename()))
    worker.start()
    worker.join()
    assert thread_result == ["a-name-longer-t"]
    assert kernel_name() == before


def test_the_name_comes_back_after_a_task_that_renamed_the_thread() -> None:
    # as the embedded engine does to a thread it has run a query on
    with NamedExecutor("ch-write") as executor:
        assert executor.submit(lambda: (name_this_thread("Unknown"), kernel_name())[1]).result() == "Unknown"
        assert executor.submit(kernel_name).result() == "ch-write"
        assert executor.submit(lambda a, b=0: a + b, 1, b=2).result() == 3
