"""The main job: broker, worker, a simulated day of interactions, and a summary of what landed."""

from __future__ import annotations

import sys
import time

from config.settings import Settings
from ops import broker
from ops.admin import create_topics, worker_query
from ops.cli import EXIT_UNREACHABLE, CliError, print_table
from ops.simulate import simulate_main
from ops.workers import WorkerProcess

WORKER_START_TIMEOUT = 120.0
LANDING_TIMEOUT = 600.0


def _start(settings: Settings, role: str, name: str) -> WorkerProcess:
    """Start ``loyalty worker --role <role>`` with ``settings`` and wait until its HTTP API answers."""
    process = WorkerProcess(settings, settings.data_dir / f"{name.replace(' ', '-')}.log", role=role, name=name)
    try:
        process.start(WORKER_START_TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        process.stop()
        first_line = str(exc).splitlines()[0]
        raise CliError(f"{first_line}; see {process.log_path}", EXIT_UNREACHABLE) from None
    print(f"{name.capitalize()} ({role}) is up at {settings.web_url} (log: {process.log_path})", flush=True)
    return process


def start_deployment(settings: Settings, workers: int) -> list[WorkerProcess]:
    """The ClickHouse sink on the configured web port (reads go there), then ``workers`` state
    workers on the ports after it, each with its own table directory under the data directory."""
    from streams.app import pseudonymisation_key

    pseudonymisation_key(settings)  # created once here, so every process reads the same file
    procs = [_start(settings, "sink", "sink")]
    try:
        for n in range(1, workers + 1):
            mine = settings.model_copy(update={"web_port": settings.web_port + n,
                                               "state_path": settings.data_dir / "state" / f"worker-{n}"})
            procs.append(_start(mine, "state", f"state worker {n}"))
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs


def _scalar(settings: Settings, sql: str) -> int:
    return int(worker_query(settings, sql)[1][0][0])


def _wait_landed(settings: Settings, expected_events: int, expected_customers: int) -> float:
    db = settings.clickhouse_database
    sql = (f"SELECT (SELECT count() FROM {db}.purchases FINAL) + (SELECT count() FROM {db}.calls FINAL)"
           f" + (SELECT count() FROM {db}.visits FINAL)")
    start = time.monotonic()
    landed = 0
    while time.monotonic() - start < LANDING_TIMEOUT:
        landed = _scalar(settings, sql)
        customers = _scalar(settings, f"SELECT count() FROM {db}.relationships FINAL")
        print(f"\rLanded in ClickHouse: {landed:,}/{expected_events:,} events, "
              f"{customers:,}/{expected_customers:,} customers", end="", flush=True)
        if landed >= expected_events and customers >= expected_customers:
            print()
            return time.monotonic() - start
        time.sleep(1.0)
    print()
    raise CliError(f"only {landed:,} of {expected_events:,} events landed within {LANDING_TIMEOUT:.0f}s; "
                   f"see the logs in {settings.data_dir}", EXIT_UNREACHABLE)


def print_summary(settings: Settings) -> None:
    db = settings.clickhouse_database
    print("\nWhat landed in ClickHouse")
    cols, rows = worker_query(settings, f"""
        SELECT 'purchases' AS kind, count() AS events, uniqExact(customer_id) AS customers FROM {db}.purchases FINAL
        UNION ALL SELECT 'calls', count(), uniqExact(customer_id) FROM {db}.calls FINAL
        UNION ALL SELECT 'visits', count(), uniqExact(customer_id) FROM {db}.visits FINAL
        UNION ALL SELECT 'dead letters', count(), 0 FROM {db}.dead_letters FINAL""")
    print_table(cols, rows, indent="  ")
    customers = _scalar(settings, f"SELECT count() FROM {db}.relationships FINAL")
    print(f"\nCustomers with relationship state: {customers:,}")
    cols, rows = worker_query(settings, f"""
        SELECT tier, count() AS customers, round(avg(loyalty_score), 1) AS avg_score,
               round(avg(churn_risk), 3) AS avg_churn_risk
        FROM {db}.signals_current FINAL GROUP BY tier ORDER BY customers DESC""")
    print("Loyalty tiers now (a short history leaves most customers 'new'; try --history-days 180):")
    print_table(cols, rows, indent="  ")
    cols, rows = worker_query(settings, f"""
        SELECT customer_id, events, purchases_lifetime AS purchases, spend_lifetime_minor / 100 AS spend,
               round(discounted_spend_lifetime_minor / greatest(spend_lifetime_minor, 1), 2) AS discounted_share,
               calls_lifetime AS calls, complaints_lifetime AS complaints, visits_lifetime AS visits,
               recognized_visits_lifetime AS recognised, preferred_channel, favourite_category,
               round(mean_gap_days, 1) AS gap_days
        FROM {db}.relationships FINAL ORDER BY events DESC, customer_id LIMIT 5""")
    print("A few customers' relationship state (most active first):")
    print_table(cols, rows, indent="  ")


def run_demo(settings: Settings, customers: int, days: float, seed: int, once: bool,
             history_days: float = 0.0, workers: int = 1) -> int:
    started_broker = False
    if settings.uses_local_kafka:
        was_running = broker.status(settings).running
        st = broker.start(settings)
        started_broker = not was_running
        print(f"Kafka {settings.kafka_version} {'started' if started_broker else 'already running'} "
              f"at {st.bootstrap}", flush=True)
    else:
        print(f"Using the configured Kafka at {settings.bootstrap}", flush=True)
        broker.require(settings)
    created = create_topics(settings)
    if created:
        print(f"Created topics: {', '.join(created)}")
    procs = start_deployment(settings, workers)
    try:
        ledger = settings.data_dir / "ledger.jsonl"
        print(f"Publishing a simulated {days:g} day(s) of {customers:,} customers (seed {seed}) ...", flush=True)
        simulate_main(settings, customers=customers, days=days, seed=seed, rate=None,
                      ledger_path=ledger, history_days=history_days, stream=sys.stdout)
        print(f"Ledger of what was sent: {ledger}", flush=True)
        from ops.simulate import read_ledger

        entries = [e for e in read_ledger(ledger) if e.event is not None]
        unique = {e.event_id for e in entries}
        people = {e.customer_id for e in entries}
        took = _wait_landed(settings, len(unique), len(people))
        print(f"All {len(unique):,} events landed {took:.1f}s after publishing ended.")
        print_summary(settings)
        if once:
            return 0
        print(f"\nThe sink keeps running at {settings.web_url} and the state workers on the ports after it "
              "(try `loyalty status`). Ctrl-C stops them.")
        while all(p.proc is not None and p.proc.poll() is None for p in procs):
            time.sleep(1.0)
        return next(p.proc.returncode for p in procs if p.proc is not None and p.proc.poll() is not None) or 0
    except KeyboardInterrupt:
        print("\nStopping ...")
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        if started_broker and once:
            broker.stop(settings)
            print("Stopped the Kafka broker this run started.")
        elif started_broker:
            print("The local Kafka broker is still running; `loyalty kafka stop` stops it.")


