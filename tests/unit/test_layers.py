"""Dependencies point one way: a scan of every module's imports keeps it so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "loyalty_stream"
IO_LIBRARIES = {"faust", "mode", "kafka", "aiokafka", "clickhouse_connect", "chdb", "rocksdict", "aiohttp"}
PURE = ["records.py", "relationship.py", "validation.py", "model"]
CLOCK_CALLS = {("time", "time"), ("time", "monotonic"), ("datetime", "now"), ("datetime", "utcnow"),
               ("date", "today")}


def _modules(entry: str) -> list[Path]:
    path = PACKAGE / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


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


@pytest.mark.parametrize("path", [p for e in PURE for p in _modules(e)], ids=lambda p: p.name)
def test_pure_modules_import_no_io_and_no_project_io(path: Path):
    imports = _imports(path)
    assert not {_top(n) for n in imports} & IO_LIBRARIES, f"{path.name} imports an I/O library"
    project = {n for n in imports if n.startswith("loyalty_stream.")}
    bad = {n for n in project if n.split(".")[1] in {"streams", "sinks", "broker", "admin", "cli", "demo", "simulate"}}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", [p for e in PURE for p in _modules(e)], ids=lambda p: p.name)
def test_pure_modules_never_read_the_clock(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            assert (node.func.value.id, node.func.attr) not in CLOCK_CALLS, f"{path.name}:{node.lineno} reads the clock"


@pytest.mark.parametrize("path", _modules("sinks"), ids=lambda p: p.name)
def test_sinks_know_clickhouse_but_not_faust(path: Path):
    tops = {_top(n) for n in _imports(path)}
    assert not tops & {"faust", "mode", "kafka", "aiokafka"}


def test_only_settings_reads_the_environment():
    readers = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text:
            readers.append(path.relative_to(PACKAGE).as_posix())
    # demo only passes the environment through to the worker process it starts
    assert readers == ["demo.py"]
