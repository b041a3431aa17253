"""Dependencies point one way: a scan of every module's imports keeps it so.

    domain  <-  config  <-  schemas, sinks  <-  streams  <-  ops

``domain`` (events, state, validation, pseudonyms, the model, the alert rules) is pure Python;
``sinks`` knows ClickHouse and webhooks but not Faust or Kafka; ``streams`` wires Kafka to the
domain; ``ops`` holds the operator tools and may use everything.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("domain", "config", "schemas", "sinks", "streams", "ops")
IO_LIBRARIES = {"faust", "mode", "kafka", "aiokafka", "clickhouse_connect", "chdb", "rocksdict", "aiohttp",
                "asyncio", "socket", "urllib", "subprocess", "os", "random"}
KAFKA_LIBRARIES = {"faust", "mode", "kafka", "aiokafka"}
# Which project packages each package may import.
ALLOWED = {
    "domain": {"domain"},
    "config": {"config", "domain"},
    "schemas": {"schemas"},
    "sinks": {"sinks", "config", "domain", "schemas"},
    "streams": {"streams", "config", "domain", "schemas", "sinks"},
    "ops": set(PACKAGES),
}
CLOCK_CALLS = {("time", "time"), ("time", "time_ns"), ("time", "monotonic"), ("datetime", "now"),
               ("datetime", "utcnow"), ("date", "today")}


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(name: str) -> str:
    return name.split(".")[0]


def _id(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def test_every_package_has_modules():
    for package in PACKAGES:
        assert _modules(package), f"no modules under {package}/"


@pytest.mark.parametrize("path", [p for pkg in PACKAGES for p in _modules(pkg)], ids=_id)
def test_imports_point_one_way(path: Path):
    package = path.relative_to(REPO).parts[0]
    used = {_top(n) for n in _imports(path)} & set(PACKAGES)
    assert used <= ALLOWED[package], f"{_id(path)} imports {sorted(used - ALLOWED[package])}"


@pytest.mark.parametrize("path", _modules("domain"), ids=_id)
def test_domain_is_pure(path: Path):
    tops = {_top(n) for n in _imports(path)}
    assert not tops & IO_LIBRARIES, f"{_id(path)} imports {sorted(tops & IO_LIBRARIES)}"


@pytest.mark.parametrize("path", _modules("domain"), ids=_id)
def test_domain_never_reads_the_clock(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            assert (node.func.value.id, node.func.attr) not in CLOCK_CALLS, f"{_id(path)}:{node.lineno} reads the clock"


@pytest.mark.parametrize("path", _modules("sinks") + _modules("schemas"), ids=_id)
def test_sinks_and_schemas_know_no_kafka_framework(path: Path):
    tops = {_top(n) for n in _imports(path)}
    assert not tops & KAFKA_LIBRARIES, f"{_id(path)} imports {sorted(tops & KAFKA_LIBRARIES)}"


def test_webhook_verify_needs_only_the_standard_library():
    tops = {_top(n) for n in _imports(REPO / "sinks" / "webhook_verify.py")}
    assert tops <= set(sys.stdlib_module_names) | {"__future__"}


def test_only_settings_reads_the_environment():
    readers = []
    for package in PACKAGES:
        for path in _modules(package):
            text = path.read_text()
            if "os.environ" in text or "os.getenv" in text:
                readers.append(_id(path))
    # the worker processes get the parent's environment passed through (with the settings' values)
    assert readers == ["ops/workers.py"]


# Private attributes of the module's own classes, reached on another instance of that class.
OWN_PRIVATE = {("domain/relationship.py", "_windows"), ("domain/relationship.py", "_rhythm"),
               ("domain/relationship.py", "_purchase_days"), ("sinks/clickhouse.py", "_rows")}
NAMED_TUPLE_API = {"_replace", "_asdict", "_fields", "_make"}


def test_no_private_attribute_of_another_object_is_used():
    """Frameworks through their public APIs only: no ``x._name`` where ``x`` is not ``self``,
    ``cls`` or ``super()`` (a subclass extending its own method), except the listed uses of a
    module's own classes and the named-tuple API."""
    found = []
    for package in PACKAGES:
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                        and not (isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                                 and node.value.func.id == "super" and not node.value.args)
                        and node.attr not in NAMED_TUPLE_API and (_id(path), node.attr) not in OWN_PRIVATE):
                    found.append(f"{_id(path)}:{node.lineno} .{node.attr}")
    assert found == [], found
