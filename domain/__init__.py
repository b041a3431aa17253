"""The pure domain: events, relationship state, validation, pseudonyms, the loyalty model and the alert rules.

No Faust, Kafka or ClickHouse here, and no clock: time is always an argument.

The model's hot modules may also be compiled to C from these same sources (``loyalty compile``,
:mod:`ops.compile`): the extension modules sit beside the sources, and Python imports them first.
``compiled.json`` lists them with a digest of the source each was built from. When a source has
changed since, every compiled module is imported from its source instead (they call each other
directly, so it is all of them or none), with a warning; nothing runs code older than its source.

Value classes. ``@dataclass`` generates ``__init__`` as Python source, which stays interpreted in a
compiled module, and ``frozen=True`` makes it set each field through ``object.__setattr__``: about
1 us for a handful of fields, and the model makes several such values per event. So the values it
makes per event or per customer (the scores' parts, signals, day ends, alert facts) are plain
dataclasses with ``unsafe_hash=True`` (the hash ``frozen`` gave) and a written-out ``__init__``,
compiled to native code (about 0.1 us), whose parameters are the fields in order with the
fields' defaults (``None`` standing for a default factory's empty container). They are still values: nothing assigns their
fields after ``__init__``. (``Final`` fields would have mypy and the compiled classes refuse such
assignments, but mypyc 2.4 compiled them wrongly here: a signal's ``components`` read back as
another object.) The per-event mutable classes (``Tally``, ``Episode``, ...) have a written-out
``__init__`` too. ``tests/unit/test_dataclass_inits.py`` holds every written-out ``__init__`` to
its fields.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(__file__).resolve().parent / "compiled.json"


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def read_manifest(manifest: Path = MANIFEST) -> dict[str, Any] | None:
    """What ``loyalty compile`` built: ``modules`` (name: digest of its source) and ``shared`` (the
    file names of the library they share); None when nothing was compiled."""
    try:
        written: dict[str, Any] = json.loads(manifest.read_text())
        if not isinstance(written["modules"], dict) or not isinstance(written.get("shared", []), list):
            raise TypeError("modules must be a mapping and shared a list")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ImportError(f"{manifest} is unreadable ({exc}): run `loyalty compile` or `loyalty compile --clean`") from exc
    return written


def stale_modules(manifest: Path = MANIFEST, root: Path = ROOT,
                  written: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(compiled modules, those whose source changed since) per ``manifest`` (or its content
    ``written``, already read); ([], []) without one."""
    written = read_manifest(manifest) if written is None else written
    if written is None:
        return [], []
    modules: dict[str, str] = written["modules"]
    return list(modules), [name for name, digest in modules.items() if source_digest(source_of(name, root)) != digest]


def load_shared(manifest: Path = MANIFEST, root: Path = ROOT, written: dict[str, Any] | None = None) -> list[str]:
    """Import the compiled modules' shared library from ``root`` by its path: it is a top-level
    module, which the installed ``loyalty`` command could not find by name (an editable install
    maps the packages, not the project's directory). Returns the files missing."""
    written = read_manifest(manifest) if written is None else written
    missing = []
    for file_name in [] if written is None else written.get("shared", []):
        name, path = file_name.split(".", 1)[0], root / file_name
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None or not path.exists():
            missing.append(file_name)
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return missing


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Imports the named modules from their ``.py`` sources even where an extension module sits beside them."""

    def __init__(self, modules: Sequence[str], root: Path = ROOT) -> None:
        self.modules = frozenset(modules)
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname, self.root))


def _use_sources_when_stale() -> None:
    written = read_manifest()
    compiled, changed = stale_modules(written=written)
    if not compiled:
        return
    if changed:
        why = f"compiled modules are older than their sources ({', '.join(changed)})"
    elif missing := load_shared(written=written):
        why = f"the compiled modules' shared library is missing ({', '.join(missing)})"
    else:
        return
    warnings.warn(f"{why}: running the sources of all of them; `loyalty compile` builds them again",
                  RuntimeWarning, stacklevel=2)
    sys.meta_path.insert(0, SourcesFirst(compiled))


_use_sources_when_stale()
