"""README is the front door: its configuration table lists every setting, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_table_lists_every_setting():
    text = README.read_text()
    section = text[text.index("## Configuration"):text.index("## Topics")]
    documented = set(re.findall(r"^\| `(LOYALTY_[A-Z0-9_]+)` \|", section, flags=re.M))
    assert documented == {f"LOYALTY_{name.upper()}" for name in Settings.model_fields}


def test_the_two_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./loyalty demo" in text and "./loyalty test" in text
    assert "\n./loyalty test\n" in ci
