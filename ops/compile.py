"""``loyalty compile``: the loyalty model's hot modules compiled to C with mypyc, from the same sources.

The state worker's own work per customer (fold, score, alert rules, the facts a signal carries) is
plain Python in :mod:`domain`. mypyc, the compiler mypy's own releases are built with, turns
those type-annotated modules into extension modules that do the same thing with less interpreter
work (``docs/performance.md`` has the measurement). The sources stay the one place to read and
change the model; the extension modules are a build product beside them, never committed.

``domain/compiled.json`` lists what was compiled with a digest of each source: a source changed
afterwards makes every compiled module run from its source again, with a warning (see
:mod:`domain`), until ``loyalty compile`` runs again. ``loyalty compile --clean`` removes them.

It needs mypy (``pip install 'loyalty-stream[compile]'``, also in the ``test`` extra) and a C
compiler (``cc``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

from domain import MANIFEST, ROOT, source_digest, source_of

# The modules of the state worker's per-customer work, compiled together (they call each other
# natively). Everything they import from the domain is in the list.
COMPILED: tuple[str, ...] = (
    "domain.records",
    "domain.validation",
    "domain.relationship",
    "domain.alerts.rules",
    "domain.alerts.state",
    "domain.alerts.evaluate",
    "domain.model.churn",
    "domain.model.churn_learned",
    "domain.model.components",
    "domain.model.days",
    "domain.model.knowme",
    "domain.model.signals",
    "domain.model.suggest",
    "domain.model.tiers",
)


SHARED_GLOB = "*__mypyc.*"


class CompileError(RuntimeError):
    """What keeps the modules from being compiled, in one line."""


def extension_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(sysconfig.get_config_var("EXT_SUFFIX"))


def loaded_compiled() -> list[str]:
    """The modules of :data:`COMPILED` this process runs compiled (imports them)."""
    return [name for name in COMPILED
            if not str(importlib.import_module(name).__file__).endswith(".py")]


def clean(root: Path = ROOT, manifest: Path = MANIFEST) -> list[Path]:
    """Remove the extension modules, the library they share and the manifest; returns what was removed.

    mypyc puts the shared library of a group of modules at the project's top level (named by a
    digest of the group's module names); nothing but this tool puts one there."""
    removed = []
    for path in [extension_of(name, root) for name in COMPILED] + sorted(root.glob(SHARED_GLOB)) + [manifest]:
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def compile_modules(root: Path = ROOT, manifest: Path = MANIFEST, progress: Callable[[str], None] = print) -> dict:
    """Compile :data:`COMPILED` in place and write the manifest; returns it."""
    if importlib.util.find_spec("mypyc") is None:
        raise CompileError("mypyc is not installed: pip install 'loyalty-stream[compile]' (it comes with mypy)")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise CompileError(f"no C compiler found ({compiler}): install one, e.g. apt-get install gcc")
    headers = Path(sysconfig.get_paths()["include"])
    if not (headers / "Python.h").exists():
        raise CompileError(f"the Python headers are missing (no Python.h in {headers}): e.g. apt-get install python3-dev")
    clean(root, manifest)
    digests = {name: source_digest(source_of(name, root)) for name in COMPILED}
    progress(f"compiling {len(COMPILED)} modules with mypyc (about a minute on two cores) ...")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "mypyc", *(str(source_of(n, root).relative_to(root)) for n in COMPILED)],
                          cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CompileError(f"mypyc failed (exit {done.returncode}):\n{tail}")
    missing = [name for name in COMPILED if not extension_of(name, root).exists()]
    if missing:
        raise CompileError(f"mypyc built no extension module for {', '.join(missing)}")
    # The same sources, read again: one edited during the build would otherwise pass for compiled.
    if any(source_digest(source_of(name, root)) != digest for name, digest in digests.items()):
        clean(root, manifest)
        raise CompileError("a source changed while it was compiled: run `loyalty compile` again")
    written = {"modules": digests, "shared": sorted(p.name for p in root.glob(SHARED_GLOB)),
               "python": sys.version.split()[0], "seconds": round(time.monotonic() - started, 1)}
    manifest.write_text(json.dumps(written, indent=1) + "\n")
    progress(f"compiled {len(COMPILED)} modules in {written['seconds']} s; `loyalty compile --clean` runs the sources")
    return written
