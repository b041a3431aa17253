"""``loyalty worker --role <role>`` as a child process: started, waited for, asked over HTTP,
stopped and killed. The demo, the test harness and the benchmark all start their workers here."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from config.settings import Settings

ERROR_LINE = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b.*|.* (ERROR|CRITICAL) .*")


def last_error(log: str) -> str:
    """``": <line>"`` for the log's last line that reports an error (a raised exception's own
    line, or a line logged at ERROR or CRITICAL); empty when there is none."""
    for line in reversed(log.splitlines()):
        if ERROR_LINE.fullmatch(line.strip()):
            return f": {line.strip()}"
    return ""


class WorkerProcess:
    """One worker process of a deployment, with the settings it runs with."""

    def __init__(self, settings: Settings, log_path: Path, role: str = "all", name: str | None = None,
                 profile_path: Path | None = None, cwd: Path | None = None) -> None:
        self.settings = settings
        self.log_path = log_path
        self.role = role
        self.name = name or f"{role} worker"
        self.profile_path = profile_path  # run under cProfile, writing here
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        """Start the process (without waiting for it)."""
        command = [sys.executable]
        if self.profile_path is not None:
            command += ["-m", "cProfile", "-o", str(self.profile_path)]
        command += ["-m", "ops.cli", "worker", "--role", self.role]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, env=self.settings.child_environment(os.environ), cwd=self.cwd,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def start(self, timeout: float = 120.0) -> None:
        """Start the process and wait until its HTTP API answers."""
        self.spawn()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float) -> None:
        """Wait until GET /health answers; RuntimeError if the process exits, TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_tail()
                raise RuntimeError(f"the {self.name} exited with code {self.proc.returncode}{last_error(tail)}\n"
                                   f"the end of {self.log_path}:\n{tail}")
            try:
                self.get("/health", timeout=2)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"the {self.name} did not answer within {timeout:.0f}s\n"
                           f"the end of {self.log_path}:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def get(self, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """GET (or POST ``body`` as JSON) on the process's HTTP API, with the API token when one is set."""
        headers = {"Content-Type": "application/json"}
        if self.settings.api_token is not None:
            headers["Authorization"] = f"Bearer {self.settings.api_token.get_secret_value()}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.settings.web_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"the {self.name} answered {exc.code} to {path}: "
                               f"{exc.read().decode(errors='replace')}") from exc

    def query(self, sql: str) -> list[list[Any]]:
        """A read query through the process's query route (a sink, or an ``all`` worker)."""
        rows: list[list[Any]] = self.get("/clickhouse/query", {"sql": sql})["rows"]
        return rows

    def scalar(self, sql: str) -> Any:
        return self.query(sql)[0][0]

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if never started)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the process freezes (no heartbeats, no I/O) until :meth:`resume`, as a long GC
        pause or a suspended VM would freeze it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a process frozen with :meth:`pause` runs on from where it stopped."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
