"""The main job: broker, workers, a year of simulated history, a live day, and a summary that
answers the product's questions.

The run, with the seconds since it started in front of every progress line:

1. the simulated base (history and live day) is generated in a thread while the broker starts,
   the topics are created and the sink and the state workers start (all at once, not one after
   another);
2. the history is published in bulk (large producer batches), and the run waits until the state
   workers have folded it and ClickHouse holds it, so the live day meets customers the workers
   already know; then the sink refits the model on it (``POST /model/refit``: BG/NBD, the churn
   model, the co-purchase table) and the run waits until every state worker uses it;
3. the live day is published; the run waits until the state workers have committed every input
   and the sink has committed every record they produced (consumer-group lag 0: the sink commits
   only after ClickHouse acknowledged), then checks the deduplicated counts in ClickHouse;
4. the summary: the tier mix, "big audience or loyal base?", the live day's alerts, one returning
   customer's know-me profile from ``GET /customers/{id}``, and where to look next.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from config.topics import Topics
from domain.records import Event
from ops import broker, ports
from ops.admin import consumer_lag, create_topics, worker_get, worker_query
from ops.cli import EXIT_UNREACHABLE, CliError, print_table
from ops.report import AUDIENCE_TIERS, LOYAL_TIERS, SQL, money, percent
from ops.simulate import DAY_MS, Outgoing, generate, publish, to_outgoing
from ops.workers import WorkerProcess

WORKER_START_TIMEOUT = 120.0
LANDING_TIMEOUT = 900.0
POLL_SECONDS = 0.5
"""How often the waits read the consumer groups' committed offsets."""
BACKFILL_STATE = {"batch_max_events": 10_000, "batch_max_seconds": 1.0, "model_params_check_seconds": 1.0}
"""Batching of the demo's state workers, unless set in the environment. A year of history
arrives as a backlog: each customer is scored, evaluated and written once per batch, so batches
of up to 10,000 events (the default is 2,000 within 0.25 s) mean fewer signals, alert
evaluations and state writes for the same events (docs/performance.md: 0.9 to 1.3 ms of a state
worker's CPU per event instead of 2.2 ms). The live day's latency
grows to about a second, which a demo does not notice. The sink keeps its own batching: larger
sink batches held its event loop long enough on a busy machine to miss the group's heartbeats.
The state workers look for a refitted model every second, so the model the demo refits on the
history is in use before the live day is published."""
MODEL_TIMEOUT = 120.0
HISTORY_LINGER_MS = 200
HISTORY_BATCH_BYTES = 1_048_576
"""The history is published with larger producer batches than the live day (kafka-python's
default is 16 KB, lingering 20 ms): fewer, fuller produce requests for the broker and for the
consumers' fetches."""


class Clock:
    """Progress lines with the seconds since the run started; a line that is updated in place on a
    terminal, and printed every few seconds (and at its end) elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.started = time.monotonic()
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_update = 0.0
        self._open = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        self._close()
        print(f"[{self.elapsed():6.1f}s] {text}", file=self.stream, flush=True)

    def update(self, text: str, final: bool = False) -> None:
        """A progress line: rewritten in place on a terminal, else printed at most every 5 s."""
        line = f"[{self.elapsed():6.1f}s] {text}"
        if self.tty:
            print("\r" + line, end="", file=self.stream, flush=True)
            self._open = True
            if final:
                self._close()
        elif final or time.monotonic() - self._last_update >= 5.0:
            print(line, file=self.stream, flush=True)
            self._last_update = time.monotonic()

    def _close(self) -> None:
        if self._open:
            print(file=self.stream, flush=True)
            self._open = False


@dataclass
class Base:
    """The simulated base: the history and the live day, as events and as messages to send."""

    customers: int
    live_start_ms: int
    end_ms: int
    history: list[Outgoing]
    live: list[Outgoing]

    @property
    def events(self) -> int:
        return len(self.history) + len(self.live)

    @property
    def history_customers(self) -> int:
        return len({message.key for message in self.history})


def simulate_base(settings: Settings, customers: int, days: float, history_days: float, seed: int,
                  end_ms: int) -> Base:
    """Generate the base and split it at the start of the live days.

    No ledger is written (for a year of a thousand customers it cost more CPU than generating
    the events): the same events come back from ``loyalty simulate`` with the seed and the end
    time the demo prints."""
    events = generate(customers, days, seed, end_ms, history_days, currency=settings.currency)
    live_start = end_ms - round(days * DAY_MS)
    history = [e for e in events if e.occurred_at < live_start]
    live = [e for e in events if e.occurred_at >= live_start]
    return Base(len({e.customer_id for e in events}), live_start, end_ms, _messages(history), _messages(live))


def _messages(events: Sequence[Event]) -> list[Outgoing]:
    return to_outgoing(events, seed=0)  # no resends, no malformed payloads: the seed is unused


class _Background:
    """A function run in a thread; :meth:`result` joins it and re-raises its error."""

    def __init__(self, work: Callable[[], Base]) -> None:
        self._result: Base | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="demo-generate", daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Base]) -> None:
        try:
            self._result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by result()
            self._error = exc

    def result(self) -> Base:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


# -- the deployment ------------------------------------------------------------------------------


def start_deployment(settings: Settings, workers: int, clock: Clock | None = None) -> list[WorkerProcess]:
    """The ClickHouse sink on the configured web port (reads go there), then ``workers`` state
    workers on the ports after it, each with its own table directory under the data directory.

    All are spawned at once and then waited for: their start-ups (imports, migrations, joining
    the consumer group) overlap."""
    from streams.app import pseudonymisation_key

    pseudonymisation_key(settings)  # created once here, so every process reads the same file
    clock = clock or Clock()
    procs = [WorkerProcess(settings, settings.data_dir / "sink.log", role="sink", name="sink")]
    state = _unless_set(settings, BACKFILL_STATE)
    for n in range(1, workers + 1):
        mine = state.model_copy(update={"web_port": settings.web_port + n,
                                           "state_path": settings.data_dir / "state" / f"worker-{n}"})
        procs.append(WorkerProcess(mine, settings.data_dir / f"state-worker-{n}.log", role="state",
                                   name=f"state worker {n}"))
    taken = [proc for proc in procs if not ports.bindable(proc.settings.web_port, proc.settings.web_host)]
    if taken:
        names = ", ".join(f"{proc.settings.web_port} ({proc.name})" for proc in taken)
        raise CliError(f"in use on {settings.web_host}: port {names}. The demo's sink listens on LOYALTY_WEB_PORT "
                       f"({settings.web_port}) and its state workers on the {workers} port(s) after it: set "
                       f"LOYALTY_WEB_PORT to the first of {workers + 1} free ports")
    try:
        for proc in procs:
            proc.spawn()
        for proc in procs:
            try:
                proc.wait_healthy(WORKER_START_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                first_line = str(exc).splitlines()[0]
                raise CliError(f"{first_line}; see {proc.log_path}", EXIT_UNREACHABLE) from None
            clock.say(f"{proc.name.capitalize()} ({proc.role}) is up at {proc.settings.web_url} (log: {proc.log_path})")
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        raise
    return procs


def _unless_set(settings: Settings, values: dict[str, Any]) -> Settings:
    """``settings`` with ``values`` for the fields the environment did not set."""
    return settings.model_copy(update={k: v for k, v in values.items() if k not in settings.model_fields_set})


def _committed(settings: Settings, group: str) -> int:
    """Input records a consumer group has committed in all: the state workers commit a record once
    its batch's effects were acknowledged, the sink once ClickHouse acknowledged its rows. Read
    from Kafka, so the waits cost the workers and ClickHouse nothing, and a record that two state
    workers process around a rebalance counts once."""
    return sum(figures["committed"] for figures in consumer_lag(settings, group).values())


@dataclass(frozen=True)
class Committed:
    """Input records committed by the state workers and by the sink."""

    processed: int
    landed: int

    @classmethod
    def now(cls, settings: Settings) -> Committed:
        from streams.sink import sink_group_id

        return cls(_committed(settings, settings.app_id), _committed(settings, sink_group_id(settings)))

    def since(self, before: Committed) -> Committed:
        return Committed(self.processed - before.processed, self.landed - before.landed)


def _lag(settings: Settings, group: str, topics: Sequence[str]) -> int:
    return sum(figures["lag"] for figures in consumer_lag(settings, group, topics).values())


def wait_processed(settings: Settings, expected: int, clock: Clock, what: str, before: Committed) -> None:
    """Until the state workers have committed ``expected`` input records more than ``before``."""
    start = time.monotonic()
    done = Committed(0, 0)
    while time.monotonic() - start < LANDING_TIMEOUT:
        done = Committed.now(settings).since(before)
        clock.update(f"{what}: processed {done.processed:,}/{expected:,} events, landed {done.landed:,}")
        if done.processed >= expected:
            clock.update(f"{what}: processed {done.processed:,}/{expected:,} events", final=True)
            return
        time.sleep(POLL_SECONDS)
    raise CliError(f"the state workers processed only {done.processed:,} of {expected:,} events within "
                   f"{LANDING_TIMEOUT:.0f}s; see the logs in {settings.data_dir}", EXIT_UNREACHABLE)


def refit_on_history(settings: Settings, states: Sequence[WorkerProcess], clock: Clock) -> None:
    """Refit the model on the history now (the sink's timer would do it within
    LOYALTY_MODEL_REFIT_MINUTES) and wait until every state worker uses it: the live day is then
    scored with the business's own BG/NBD parameters, churn model and co-purchase table, and the
    returning customer gets suggestions."""
    done = worker_get(settings, "/model/refit", {}, timeout=MODEL_TIMEOUT)
    clock.say(f"Refitted the model on the history: BG/NBD on {done.get('bgnbd_buyers', 0):,} buyers, the churn "
              f"model on {done.get('churn_buyers', 0):,}, co-purchases of {done.get('copurchase_orders', 0):,} orders")
    wanted = done.get("copurchase_orders", 0)
    start = time.monotonic()
    while wanted and time.monotonic() - start < MODEL_TIMEOUT:
        if all(state.get("/status")["model"]["copurchase_orders"] == wanted for state in states):
            return
        time.sleep(POLL_SECONDS)
    if wanted:
        raise CliError(f"the state workers did not take up the refitted model within {MODEL_TIMEOUT:.0f}s; "
                       f"see the logs in {settings.data_dir}", EXIT_UNREACHABLE)


def wait_landed(settings: Settings, expected_events: int, expected_customers: int, clock: Clock,
                before: Committed, events_before: int) -> None:
    """Until everything the run published is in ClickHouse: the state workers have committed every
    input record (which they do after their signals and alerts were acknowledged), then the sink
    has committed every record of its topics (which it does after ClickHouse acknowledged);
    finally the deduplicated counts are checked. ``before`` and ``events_before``: the committed
    offsets and the events ClickHouse held before this run published (a demo run again on the same
    topics and data directory adds to them)."""
    from streams.sink import sink_group_id

    topics = Topics(settings.topic_prefix)
    sink_topics = (*topics.inputs, topics.signals, topics.alerts, topics.dead_letters)
    start = time.monotonic()
    landed = customers = 0
    while time.monotonic() - start < LANDING_TIMEOUT:
        done = Committed.now(settings).since(before)
        clock.update(f"live day and the rest: processed {done.processed:,}/{expected_events:,} events, "
                     f"landed {done.landed:,}/{expected_events:,}")
        if (done.processed >= expected_events and _lag(settings, settings.app_id, topics.inputs) == 0
                and _lag(settings, sink_group_id(settings), sink_topics) == 0):
            events, customers = _landed_exact(settings)
            landed = events - events_before
            if landed >= expected_events and customers >= expected_customers:
                clock.update(f"landed {landed:,}/{expected_events:,} events of {customers:,} customers in "
                             "ClickHouse, with their signals and alerts", final=True)
                return
        time.sleep(POLL_SECONDS)
    raise CliError(f"only {landed:,} of {expected_events:,} events landed within {LANDING_TIMEOUT:.0f}s; "
                   f"see the logs in {settings.data_dir}", EXIT_UNREACHABLE)


def _landed_exact(settings: Settings) -> tuple[int, int]:
    db = settings.clickhouse_database
    rows = worker_query(settings, f"""
        SELECT (SELECT count() FROM {db}.purchases FINAL) + (SELECT count() FROM {db}.calls FINAL)
             + (SELECT count() FROM {db}.visits FINAL), (SELECT count() FROM {db}.relationships FINAL)""")[1]
    return int(rows[0][0]), int(rows[0][1])


def publish_with_progress(settings: Settings, messages: Sequence[Outgoing], clock: Clock, what: str,
                          bulk: bool) -> None:
    def show(sent: int, total: int) -> None:
        clock.update(f"publishing {what}: {sent:,}/{total:,}")

    options = {"linger_ms": HISTORY_LINGER_MS, "batch_bytes": HISTORY_BATCH_BYTES} if bulk else {}
    report = publish(settings, messages, None, show, **options)
    clock.update(f"published {what}: {report.sent:,} messages in {report.elapsed_seconds:.1f}s "
                 f"({report.per_second:,.0f}/s)", final=True)


# -- the summary ---------------------------------------------------------------------------------


Query = Callable[[str], tuple[Sequence[str], Sequence[Sequence[Any]]]]


@dataclass(frozen=True)
class TierMix:
    """The tiers now (``v_tiers_current``): (tier, customers, revenue_365d_minor), largest first."""

    rows: list[tuple[str, int, int]]

    @property
    def customers(self) -> int:
        return sum(n for _, n, _ in self.rows)

    @property
    def revenue(self) -> int:
        return sum(r for _, _, r in self.rows)

    def of(self, tiers: Sequence[str]) -> tuple[int, int]:
        """(customers, revenue_365d_minor) of these tiers together."""
        chosen = [(n, r) for t, n, r in self.rows if t in tiers]
        return sum(n for n, _ in chosen), sum(r for _, r in chosen)


def tier_mix(query: Query, db: str) -> TierMix:
    columns, rows = query(SQL["tiers_now"].format(db=db))
    i = {name: n for n, name in enumerate(columns)}
    return TierMix([(str(r[i["tier"]]), int(r[i["customers"]]), int(r[i["revenue_365d_minor"]])) for r in rows])


def _share(part: int, whole: int) -> str:
    return percent(part / whole) if whole else "-"


def print_tier_mix(mix: TierMix, currency: str) -> None:
    print("Loyalty tiers now (signals_current, as in `loyalty report`):")
    rows = [(t, f"{n:,}", _share(n, mix.customers), money(r, currency), _share(r, mix.revenue))
            for t, n, r in mix.rows]
    print_table(["tier", "customers", "share", "revenue 365d", "revenue share"], rows, indent="  ")


def audience_verdict(mix: TierMix) -> str:
    """"Big audience or loyal base?" in two sentences with the figures."""
    loyal, loyal_revenue = mix.of(LOYAL_TIERS)
    audience, audience_revenue = mix.of(AUDIENCE_TIERS)
    total, revenue = mix.customers, mix.revenue
    figures = (f"{loyal:,} of {total:,} customers ({_share(loyal, total)}) are fiercely loyal or loyal and bring "
               f"{_share(loyal_revenue, revenue)} of the last 365 days' revenue; {audience:,} "
               f"({_share(audience, total)}) are transactional or captive and bring {_share(audience_revenue, revenue)}.")
    if loyal_revenue > audience_revenue:
        verdict = "More of the revenue rests on a loyal base than on a big audience."
    elif audience_revenue > loyal_revenue:
        verdict = "More of the revenue rests on a big audience (buying without loyalty) than on a loyal base."
    else:
        verdict = "The loyal base and the big audience bring the same revenue."
    return f"{figures} {verdict}"


@dataclass(frozen=True)
class AlertCounts:
    """Alerts by origin: live ones raised in the live day by kind, live ones before it, historical ones."""

    live_by_kind: list[tuple[str, int]]
    examples: list[tuple[str, str, str]]  # (kind, customer_id, summary)
    live_before: int  # live by the live window, raised by the history's newest events
    historical: int


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(value: int) -> str:
    return f"fromUnixTimestamp64Milli(toInt64({value}), 'UTC')"


def alert_counts(query: Query, db: str, live_start_ms: int, examples: int = 2) -> AlertCounts:
    since = _ms(live_start_ms)
    _, by_kind = query(f"SELECT kind, count() AS alerts FROM {db}.v_alerts_live WHERE raised_at >= {since} "
                       "GROUP BY kind ORDER BY alerts DESC, kind")
    _, sample = query(f"SELECT kind, customer_id, summary FROM {db}.v_alerts_live WHERE raised_at >= {since} "
                      f"ORDER BY severity = 'high' DESC, raised_at, alert_id LIMIT {examples}")
    _, before = query(f"SELECT count() FROM {db}.v_alerts_live WHERE raised_at < {since}")
    _, historical = query(f"SELECT sum(alerts) FROM {db}.v_alerts_daily_by_origin WHERE origin = 'historical'")
    return AlertCounts([(str(k), int(n)) for k, n in by_kind], [(str(k), str(c), str(s)) for k, c, s in sample],
                       int(before[0][0]), int(historical[0][0] or 0))


def print_alerts(alerts: AlertCounts, live_start_ms: int, live_window_hours: float) -> None:
    live = sum(n for _, n in alerts.live_by_kind)
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in alerts.live_by_kind)
    print(f"Alerts raised in the live day (since {_iso(live_start_ms)}): {live:,}" + (f" ({kinds})" if kinds else ""))
    for kind, customer, summary in alerts.examples:
        print(f"  {kind}, {customer}: {summary}")
    print(f"The history raised {alerts.historical:,} historical alerts (events older than {live_window_hours:g} h "
          "when processed): recorded, nobody paged."
          + (f" {alerts.live_before:,} more came from its last {live_window_hours:g} h, recent enough to count "
             "as live." if alerts.live_before else ""))


def returning_customer(query: Query, db: str, live_start_ms: int) -> tuple[str, str] | None:
    """(customer_id, tier) of a customer who bought in the live day: fiercely loyal first, then
    loyal, then anyone; the highest score, then the smallest id (deterministic)."""
    _, rows = query(f"""
        SELECT customer_id, tier FROM {db}.signals_current FINAL
        WHERE last_purchase_at >= {_ms(live_start_ms)} AND purchases > 1
        ORDER BY multiIf(tier = 'fiercely_loyal', 0, tier = 'loyal', 1, 2), loyalty_score DESC, customer_id
        LIMIT 1""")
    return (str(rows[0][0]), str(rows[0][1])) if rows else None


def print_profile(profile: dict[str, Any], tier: str) -> None:
    know = profile.get("know_me", {})
    print(f"A returning customer, {profile.get('customer_id')} ({tier}), as staff see them "
          f"(GET /customers/{profile.get('customer_id')}):")
    print(f"  greeting: {know.get('greeting_hint', '')}")
    at = know.get("last_purchase_at")
    when = "-" if at is None else datetime.fromtimestamp(int(at) / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = know.get("last_purchase_location_id") or "-"
    print(f"  last purchase: {when}, {', '.join(know.get('last_purchase_categories') or []) or '-'} "
          f"({know.get('last_purchase_channel') or '-'}, {where})")
    print(f"  favourite category: {know.get('favourite_category') or '-'}; preferred channel: "
          f"{know.get('preferred_channel') or '-'}; open issues: {know.get('open_issues', 0)}")
    suggestions = know.get("suggested_categories", profile.get("suggested_categories", [])) or []
    for s in suggestions:
        print(f"  suggest {s.get('category')}: {s.get('reason')} (score {float(s.get('score', 0)):.2f})")


def print_summary(settings: Settings, base: Base, state_worker: WorkerProcess) -> None:
    db = settings.clickhouse_database

    def query(sql: str) -> tuple[Sequence[str], Sequence[Sequence[Any]]]:
        return worker_query(settings, sql)

    print()
    mix = tier_mix(query, db)
    print_tier_mix(mix, settings.currency)
    print()
    print("Big audience or loyal base? " + audience_verdict(mix))
    print()
    print_alerts(alert_counts(query, db, base.live_start_ms), base.live_start_ms, settings.alert_live_window_hours)
    print()
    chosen = returning_customer(query, db, base.live_start_ms)
    if chosen is None:
        print("No customer with earlier purchases bought in the live day.")
    else:
        print_profile(state_worker.get(f"/customers/{chosen[0]}"), chosen[1])
    print()
    report = settings.data_dir / "report.html"
    print("Where to look next (with this run's LOYALTY_* settings):")
    print("  loyalty report                      the key figures, tiers by day, customers at risk, alerts")
    print(f"  loyalty report --html {report}   the same as one page with charts")
    print(f"  loyalty query \"SELECT tier, count() FROM {db}.signals_current FINAL GROUP BY tier\"")
    print("  loyalty status                      consumer lag, events processed, rows in ClickHouse")


# -- the run -------------------------------------------------------------------------------------


def run_demo(settings: Settings, customers: int, days: float, seed: int, once: bool,
             history_days: float = 0.0, workers: int = 1) -> int:
    clock = Clock()
    end_ms = int(time.time()) * 1000  # whole seconds: the live day's start prints exactly

    def simulate() -> Base:
        return simulate_base(settings, customers, days, history_days, seed, end_ms)

    started_broker = False
    if settings.uses_local_kafka:
        generating = _Background(simulate)  # while the broker and the workers start
        was_running = broker.status(settings).running
        st = broker.start(settings)
        started_broker = not was_running
        clock.say(f"Kafka {settings.kafka_version} {'started' if started_broker else 'already running'} "
                  f"at {st.bootstrap}")
    else:
        broker.require(settings)
        generating = _Background(simulate)
        clock.say(f"Using the configured Kafka at {settings.bootstrap}")
    created = create_topics(settings)
    if created:
        clock.say(f"Created topics: {', '.join(created)}")
    procs = start_deployment(settings, workers, clock)
    states = procs[1:]
    try:
        base = generating.result()
        clock.say(f"Simulated {customers:,} customers: {len(base.history):,} events in {history_days:g} days of "
                  f"history, {len(base.live):,} in the live {days:g} day(s) (the same events: loyalty simulate "
                  f"--customers {customers} --history-days {history_days:g} --days {days:g} --seed {seed} "
                  f"--end {_iso(end_ms)} --dry-run --events-out FILE)")
        before, events_before = Committed.now(settings), _landed_exact(settings)[0]
        publish_with_progress(settings, base.history, clock, "the history", bulk=True)
        wait_processed(settings, len(base.history), clock, "history", before)
        wait_landed(settings, len(base.history), base.history_customers, clock, before, events_before)
        refit_on_history(settings, states, clock)
        publish_with_progress(settings, base.live, clock, "the live day", bulk=False)
        wait_landed(settings, base.events, base.customers, clock, before, events_before)
        clock.say("Summary")
        print_summary(settings, base, states[0])
        print(f"\nDone in {clock.elapsed():.0f}s.")
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
