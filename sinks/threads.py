"""Executors whose thread carries its name in the kernel as well, where ``top -H``, ``ps -L`` and
``/proc/<pid>/task/*/comm`` show it (Python names its threads for itself only): a sink's CPU can
then be told apart by work, its own Python (rows) from its writes and reads (the embedded
engine's work runs on the thread that calls it) and from the engine's own threads."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

#: prctl's option that names the calling thread (linux/prctl.h); the kernel keeps 15 bytes.
PR_SET_NAME = 15
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (its first 15 bytes) in the kernel; nothing elsewhere."""
    if _libc is not None:
        _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class NamedExecutor(ThreadPoolExecutor):
    """One thread, named ``name`` in Python and in the kernel, and named again after each task:
    the embedded engine renames a thread it has run a query on."""

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name, initializer=name_this_thread, initargs=(name,))
        self.name = name

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(_named_call, self.name, fn, args, kwargs)


def _named_call(name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return fn(*args, **kwargs)
    finally:
        name_this_thread(name)
