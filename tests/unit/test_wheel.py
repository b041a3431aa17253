"""The wheel carries every package and the files read at run time: .avsc schemas, SQL migrations
and roles, the broker's configuration, the simulator's personas."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("domain", "config", "schemas", "sinks", "streams", "ops")
DATA_FILES = (
    "schemas/*.avsc",
    "schemas/history/*/*.avsc",
    "sinks/migrations/*.sql",
    "sinks/roles/*.sql",
    "ops/broker_config/*",
    "ops/simulate/*.toml",
)


def _setuptools_builds_offline() -> bool:
    """The setuptools installed here can build the wheel without fetching anything."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    # pyproject asks for 68+; before 70.1 setuptools needs the separate `wheel` package to build one
    return (major, minor) >= (68, 0) and ((major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None)


def _index_reachable() -> bool:
    index = urlparse(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/"))
    try:
        socket.create_connection((index.hostname or "pypi.org", index.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def _source_files(pattern: str) -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in REPO.glob(pattern) if p.is_file())


def test_the_wheel_holds_every_package_and_data_file(tmp_path: Path) -> None:
    offline = _setuptools_builds_offline()
    if not offline and not _index_reachable():
        pytest.skip("no setuptools able to build a wheel here, and no package index to fetch one from")
    # build from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(tmp_path / "dist")]
    built = subprocess.run([*command, *(["--no-build-isolation"] if offline else [])],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("loyalty_stream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    for pattern in DATA_FILES:
        expected = _source_files(pattern)
        assert expected, f"nothing matches {pattern} in the source tree"
        assert set(expected) <= names, f"missing from the wheel: {sorted(set(expected) - names)}"
    for package in PACKAGES:
        modules = _source_files(f"{package}/**/*.py")
        assert f"{package}/__init__.py" in modules
        assert set(modules) <= names, f"missing from the wheel: {sorted(set(modules) - names)}"
