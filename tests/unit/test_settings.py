"""Settings handed to a child process through its environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config.settings import Settings


def test_a_child_environment_loads_exactly_the_same_settings(monkeypatch: pytest.MonkeyPatch):
    parent = Settings(data_dir=Path("/tmp/x"), batch_max_events=123, webhook_url="http://127.0.0.1:9/h",
                      webhook_secret="whsec_c2VjcmV0")
    env = parent.child_environment({"PATH": "/bin", "LOYALTY_PARTITIONS": "9"})
    assert env["PATH"] == "/bin" and env["LOYALTY_PARTITIONS"] == str(parent.partitions)
    assert env["LOYALTY_WEBHOOK_SECRET"] == "whsec_c2VjcmV0"  # the child needs the secret itself
    assert "LOYALTY_PSEUDONYMISATION_KEY" not in env  # unset stays unset
    for name in list(os.environ):
        if name.startswith("LOYALTY_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("LOYALTY_"):
            monkeypatch.setenv(name, value)
    assert Settings() == parent
