"""The configuration reference (docs/configuration.md), rendered from the settings object.

Regenerate after changing a setting:

    python -m config.reference > docs/configuration.md

``tests/unit/test_docs.py`` fails while the page and the settings disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from config.settings import Settings

REGENERATE = "python -m config.reference > docs/configuration.md"

_HEADER = f"""\
# Configuration

Every setting is an environment variable: `LOYALTY_` + the setting's name in upper case.
`loyalty config` prints the effective values, secrets masked.

This page is generated from the settings object (`config/settings.py`); do not edit it by hand.
After changing a setting, regenerate it from the repository root with

    {REGENERATE}

(`tests/unit/test_docs.py` fails while the page is out of date.)

| variable | default | meaning |
| --- | --- | --- |
"""

_FOOTER = """
Tests read two more: `LOYALTY_TEST_KAFKA_PORT` (the test broker's port, default 19192) and
`CLICKHOUSE_URL` (run the ClickHouse tests against a server, each in a database of its own).
"""


def is_secret(info: FieldInfo) -> bool:
    """Whether a field holds a secret (``SecretStr``, optional or not): its value is never shown."""
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def _shown(value: Any) -> str:
    """A default as written in the table; paths under the home directory as ``~/...``, so the
    page does not depend on who generated it."""
    if isinstance(value, Path):
        try:
            value = "~/" + value.relative_to(Path.home()).as_posix()
        except ValueError:
            value = value.as_posix()
    return f"`{value}`"


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "*required*"
    if value is None:
        return "*unset*"
    if is_secret(info):
        return "`***`"  # a secret's value is never written down, as in `loyalty config`
    return _shown(value)


def _cell(text: str) -> str:
    """One table cell: one line, pipes escaped, and ``<name>`` placeholders kept visible (a
    markdown renderer would take them for HTML tags)."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def markdown() -> str:
    """Every field of :class:`Settings` as a markdown table: variable, default, description."""
    rows = [
        f"| `LOYALTY_{name.upper()}` | {_cell(_default(info))} | {_cell(info.description or '')} |\n"
        for name, info in Settings.model_fields.items()
    ]
    return _HEADER + "".join(rows) + _FOOTER


if __name__ == "__main__":
    print(markdown(), end="")
