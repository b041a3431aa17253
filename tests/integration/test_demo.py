"""``loyalty demo`` end to end against the real broker: its summary against ClickHouse and the HTTP
profile, read while the demo's workers still run (without ``--once``; Ctrl-C stops it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from config.settings import Settings
from ops.admin import worker_get, worker_query
from ops.ports import free_ports
from tests.harness import REPO

pytestmark = pytest.mark.kafka

CUSTOMERS = 150
DEMO_TIMEOUT = 900.0  # a guard against a hung run, not a timed assertion


class Demo:
    """``loyalty demo`` in a subprocess, its output collected line by line."""

    def __init__(self, settings: Settings, *args: str) -> None:
        env = settings.child_environment(os.environ)
        for name in ("BATCH_MAX_EVENTS", "BATCH_MAX_SECONDS", "SINK_BATCH_MAX_SECONDS"):
            env.pop(f"LOYALTY_{name}")  # the demo's own batching for a backfill applies
        self.proc = subprocess.Popen([sys.executable, "-m", "ops.cli", "demo", *args], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + DEMO_TIMEOUT
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return self.output
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"the demo exited with {self.proc.returncode}:\n{self.output}")
            time.sleep(0.5)
        raise AssertionError(f"no {text!r} within {DEMO_TIMEOUT:.0f}s:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(120)
        finally:
            self._reader.join(5)


@pytest.fixture
def demo_settings(settings: Settings, tmp_path: Path) -> Settings:
    # With an API token, so the summary's queries and its profile request must carry it. The
    # gone-quiet timer stays out of the run: a round of it after the summary would add alerts the
    # summary could not have counted.
    # The sink listens on web_port and the demo's one state worker on the port after it.
    return settings.model_copy(update={"api_token": SecretStr("demo-test-token"), "alert_check_seconds": 3600.0,
                                       "web_port": free_ports(2)})


@pytest.fixture
def demo(demo_settings: Settings) -> Iterator[Demo]:
    run = Demo(demo_settings, "--quick", "--customers", str(CUSTOMERS))
    yield run
    if run.proc.poll() is None:
        run.interrupt()


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def _section(output: str, title: str) -> list[str]:
    """The lines of the table under ``title`` (after its header and rule), up to a blank line."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rows.append(line)
    return rows


def test_demo_summary_answers_from_clickhouse_and_the_http_profile(demo: Demo, demo_settings: Settings) -> None:
    output = demo.wait_for("Done in")
    s, db = demo_settings, demo_settings.clickhouse_database

    def rows(sql: str) -> list[list]:
        return worker_query(s, sql)[1]

    # progress lines, with the seconds since the start
    assert re.search(r"^\[\s*\d+\.\ds\] published the history: [\d,]+ messages", output, re.M), output
    assert re.search(r"^\[\s*\d+\.\ds\] history: processed ([\d,]+)/\1 events", output, re.M), output
    assert re.search(r"^\[\s*\d+\.\ds\] landed ([\d,]+)/\1 events of 150 customers in ClickHouse", output, re.M), output

    # 1. the tier mix: customers and revenue per tier, as signals_current FINAL has them
    printed = {}
    for line in _section(output, "Loyalty tiers now"):
        tier, customers, _share, revenue, _currency, _revenue_share = line.split()
        printed[tier] = (_count(customers), revenue)
    direct = {t: (int(n), f"{int(r) / 100:,.2f}") for t, n, r in rows(
        f"SELECT toString(tier), count(), sum(spend_365d_minor) FROM {db}.signals_current FINAL GROUP BY tier")}
    assert printed == direct
    assert sum(n for n, _ in direct.values()) == CUSTOMERS

    # 2. big audience or loyal base: the counts and the revenue shares, recomputed here
    loyal, total, loyal_revenue, audience, audience_revenue, revenue = rows(f"""
        SELECT countIf(tier IN ('fiercely_loyal', 'loyal')), count(),
               sumIf(spend_365d_minor, tier IN ('fiercely_loyal', 'loyal')),
               countIf(tier IN ('transactional', 'captive')),
               sumIf(spend_365d_minor, tier IN ('transactional', 'captive')), sum(spend_365d_minor)
        FROM {db}.signals_current FINAL""")[0]
    match = re.search(r"Big audience or loyal base\? ([\d,]+) of ([\d,]+) customers \([\d.]+%\) are fiercely loyal "
                      r"or loyal and bring ([\d.]+)% .*; ([\d,]+) \([\d.]+%\) are transactional or captive and bring "
                      r"([\d.]+)%", output)
    assert match, output
    assert (_count(match[1]), _count(match[2]), match[3], _count(match[4]), match[5]) == (
        int(loyal), int(total), f"{100 * int(loyal_revenue) / int(revenue):.1f}", int(audience),
        f"{100 * int(audience_revenue) / int(revenue):.1f}")

    # 3. alerts: the live day's, by kind, exclude the historical ones the backfill recorded
    match = re.search(r"Alerts raised in the live day \(since (\S+)\): ([\d,]+)(?: \((.*)\))?$", output, re.M)
    assert match, output
    since = match[1].rstrip("Z").replace("T", " ")
    printed_kinds = dict((k, _count(n)) for k, n in (p.rsplit(" ", 1) for p in match[3].split(", "))) if match[3] else {}
    alerts = f"""(SELECT alert_id, any(kind) AS kind, any(customer_id) AS customer_id, min(raised_at) AS raised_at,
                        argMax(historical, updated_at) AS historical FROM {db}.alerts GROUP BY alert_id)"""
    live_day = dict((str(k), int(n)) for k, n in rows(
        f"SELECT kind, count() FROM {alerts} WHERE NOT historical AND raised_at >= toDateTime64('{since}', 3, 'UTC') "
        "GROUP BY kind"))
    assert printed_kinds == live_day
    assert _count(match[2]) == sum(live_day.values()) > 0
    historical_db, everything = (int(v) for v in rows(f"SELECT countIf(historical), count() FROM {alerts}")[0])
    match = re.search(r"The history raised ([\d,]+) historical alerts", output)
    assert match, output
    assert _count(match[1]) == historical_db > 0
    more = re.search(r"([\d,]+) more came from its last", output)
    before = _count(more[1]) if more else 0
    assert sum(live_day.values()) + before + historical_db == everything  # each alert counted once
    examples = re.findall(r"^  (\w+), (C\d+): ", output, re.M)
    live_pairs = {(str(k), str(c)) for k, c in rows(
        f"SELECT kind, customer_id FROM {alerts} WHERE NOT historical AND raised_at >= toDateTime64('{since}', 3, 'UTC')")}
    assert examples and set(examples) <= live_pairs

    # 4. the returning customer: greeting and last purchase as the state worker's HTTP API answers now
    match = re.search(r"A returning customer, (C\d+) \((\w+)\)", output)
    assert match, output
    customer, tier = match[1], match[2]
    owner = s.model_copy(update={"web_port": s.web_port + 1})  # the first state worker
    profile = worker_get(owner, f"/customers/{customer}")
    assert f"  greeting: {profile['know_me']['greeting_hint']}" in output.splitlines()
    stored_tier, bought_in_live_day = rows(
        f"SELECT toString(tier), last_purchase_at >= toDateTime64('{since}', 3, 'UTC') "
        f"FROM {db}.signals_current FINAL WHERE customer_id = '{customer}'")[0]
    assert (stored_tier, bool(bought_in_live_day)) == (tier, True)
    assert tier in ("fiercely_loyal", "loyal")
    for suggestion in profile["know_me"].get("suggested_categories", []):
        assert f"  suggest {suggestion['category']}: {suggestion['reason']}" in output

    # 5. where to look next
    assert "loyalty report --html" in output and 'loyalty query "SELECT' in output and "loyalty status" in output

    assert demo.interrupt() == 0
