"""The pure domain: events, relationship state, validation, pseudonyms, the loyalty model and the alert rules.

No Faust, Kafka or ClickHouse here, and no clock: time is always an argument.

The model's hot modules may also be compiled to C from these same sources (``loyalty compile``,
:mod:`ops.compile`): the extension modules sit beside the sources, and Python imports them first.
``compiled.json`` lists them with a digest of the source each was built from. When a source has
changed since, every compiled module is imported from its source instead (they call each other
directly, so it is all of them or none), with a warning; nothing runs code older than its source.
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

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = Path(__file__).resolve().parent / "compiled.json"


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def stale_modules(manifest: Path = MANIFEST, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(compiled modules, those whose source changed since) per ``manifest``; ([], []) without one."""
    try:
        modules: dict[str, str] = json.loads(manifest.read_text())["modules"]
    except FileNotFoundError:
        return [], []
    except (ValueError, KeyError, TypeError) as exc:
        raise ImportError(f"{manifest} is unreadable ({exc}): run `loyalty compile` or `loyalty compile --clean`") from exc
    return list(modules), [name for name, digest in modules.items() if source_digest(source_of(name, root)) != digest]


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
    compiled, changed = stale_modules()
    if changed:
        warnings.warn(f"compiled modules are older than their sources ({', '.join(changed)}): running the sources "
                      "of all of them; `loyalty compile` builds them again", RuntimeWarning, stacklevel=2)
        sys.meta_path.insert(0, SourcesFirst(compiled))


_use_sources_when_stale()
