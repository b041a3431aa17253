"""The framework's ceiling: a Faust agent that reads the input topics and does nothing else.

Run by ``bench/pipeline.py`` as a child process (F in its report); standalone::

    .venv/bin/python bench/faust_ceiling.py --bootstrap 127.0.0.1:19092 --expected 30000 \\
        --result var/f.json bench1234.purchases bench1234.calls bench1234.visits

One agent over the given topics, raw keys and values, an in-memory store, no web server, a
consumer group of its own (``--group``, a fresh one each run; a new group starts at the earliest
offset), batches as the worker takes them (``take_events`` with the defaults of
``LOYALTY_BATCH_MAX_EVENTS`` and ``LOYALTY_BATCH_MAX_SECONDS``) and an empty loop body.
When ``--expected`` records have been read it writes the result file: records, the moment
the first batch arrived and the last one ended (wall clock), the process's CPU seconds (every
thread, from /proc) and its peak memory at both moments. The caller stops the process.

``--eager``: the consumer hands each record to the stream eagerly (:mod:`streams.delivery`, as the
state worker reads its input topics), instead of through four asyncio tasks per record.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust

from config.settings import Settings


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread) so far, from /proc."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_memory_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def build_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.group,
        broker=[f"kafka://{server}" for server in args.bootstrap.split(",")],
        store="memory://",
        # Faust's data directory (empty with an in-memory store) under var/, not the working directory.
        datadir=str(Path(__file__).resolve().parents[1] / "var" / "bench" / f"{args.group}-data"),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        logging_config=None,
    )
    if args.eager:
        from streams.delivery import EagerDelivery

        transport: Any = app.transport
        transport.Consumer = type("EagerConsumer", (EagerDelivery, transport.Consumer), {})
    topic = app.topic(*args.topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen: dict[str, Any] = {"records": 0}

    @app.agent(topic, name="read_only")
    async def read_only(stream: faust.StreamT) -> None:
        async for events in stream.take_events(args.batch, within=args.within):
            if not seen["records"]:
                seen.update(first_at=time.time(), first_cpu=cpu_seconds(), first_batch=len(events))
            seen["records"] += len(events)
            if seen["records"] >= args.expected and "last_at" not in seen:
                seen.update(last_at=time.time(), last_cpu=cpu_seconds(), peak_memory_mb=peak_memory_mb())
                draft = args.result.with_suffix(".tmp")
                draft.write_text(json.dumps(seen))
                draft.replace(args.result)  # the caller waits for the file: it appears whole

    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Faust's ceiling: read topics in batches, do nothing.")
    parser.add_argument("topics", nargs="+")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--group", default=f"bench-faust-ceiling-{os.getpid()}-{int(time.time())}")
    parser.add_argument("--expected", type=int, required=True, help="records to read before writing the result")
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch", type=int, default=Settings.model_fields["batch_max_events"].default)
    parser.add_argument("--within", type=float, default=Settings.model_fields["batch_max_seconds"].default)
    parser.add_argument("--eager", action="store_true", help="deliver records eagerly (streams/delivery.py)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    app = build_app(args)
    worker = faust.Worker(app, loglevel="warning", quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
