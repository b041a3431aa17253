"""The compiled build (``loyalty compile``) computes what its sources compute, and a compiled module
older than its source never runs.

The model is run twice over the same generated history, in two processes: as this checkout imports
it (compiled when ``loyalty compile`` has run, as CI does) and from the sources alone. The folds
(in shuffled batches over several days, so days are closed on a copy), the scores with a trained
churn model, the day ends, the facts and the alert rules must agree to the last bit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from domain import MANIFEST, SourcesFirst, load_shared, source_of, stale_modules
from ops.compile import COMPILED, clean, extension_of

REPO = Path(__file__).resolve().parents[2]

RUN_MODEL = r"""
import json, random, sys
from domain import SourcesFirst
from ops.compile import COMPILED, loaded_compiled
if sys.argv[1] == "sources":
    sys.meta_path.insert(0, SourcesFirst(COMPILED))
from domain.alerts import DEFAULT_RULES
from domain.alerts.evaluate import alert_facts, evaluate
from domain.model.churn import fit_bgnbd
from domain.model.churn_training import train_churn_model
from domain.model.days import day_end_to_dict, fold_batch
from domain.model.signals import score_customer, signal_to_dict
from domain.relationship import DAY_MS, RelationshipState, facts
from ops.simulate import generate

END = 1_767_225_600_000  # 2026-01-01
events = generate(300, 30, 11, END, history_days=150)
learned = train_churn_model(events, END - 40 * DAY_MS, 30)
assert learned is not None
by_customer = {}
for event in events:
    by_customer.setdefault(event.customer_id, []).append(event)
shuffle = random.Random(5)
states = {cid: RelationshipState(cid) for cid in by_customer}
params = fit_bgnbd([], END)
out, alert_states = [], {}
for rounds in range(3):
    for cid in sorted(by_customer):
        mine = by_customer[cid]
        batch, by_customer[cid] = mine[: max(1, len(mine) // 3)], mine[max(1, len(mine) // 3):]
        if not batch:
            continue
        shuffle.shuffle(batch)
        state = states[cid]
        outcomes, ends = fold_batch(state, [(e, e.occurred_at + 1000) for e in batch], 400 * DAY_MS, params, 30, learned)
        signal = score_customer(state, state.last_seen_at, params, 30, learned)
        result = evaluate(signal, alert_facts(state, signal.as_of, DEFAULT_RULES), alert_states.get(cid), DEFAULT_RULES)
        alert_states[cid] = result.state
        out.append([[o.value for o in outcomes], [day_end_to_dict(e) for e in ends], signal_to_dict(signal),
                    facts(state), [repr(a) for a in result.alerts], result.due_at])
    params = fit_bgnbd(states.values(), END)
print(json.dumps({"compiled": loaded_compiled(), "out": out}, sort_keys=True, default=repr))
"""


def run_model(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN_MODEL, mode], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_the_compiled_model_computes_what_its_sources_compute():
    if not MANIFEST.exists():
        pytest.skip("nothing compiled here (`loyalty compile`); CI compiles before it tests")
    as_imported, sources = run_model("imported"), run_model("sources")
    assert sorted(as_imported["compiled"]) == sorted(COMPILED)
    assert sources["compiled"] == []
    assert len(as_imported["out"]) > 600
    assert any(step[1] for step in as_imported["out"]), "no batch closed an earlier day"
    assert as_imported["out"] == sources["out"]


def test_every_compiled_module_is_built_and_its_source_unchanged():
    if not MANIFEST.exists():
        pytest.skip("nothing compiled here (`loyalty compile`)")
    compiled, changed = stale_modules()
    assert sorted(compiled) == sorted(COMPILED) and changed == []
    assert all(extension_of(name).exists() for name in COMPILED)


def test_the_installed_command_finds_the_compiled_model_from_any_directory(tmp_path: Path):
    """As the ``loyalty`` command runs: the packages found through the install, not the working
    directory, so the shared library (a top-level module in the project's directory) is loaded by
    its path."""
    if not MANIFEST.exists():
        pytest.skip("nothing compiled here (`loyalty compile`)")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c",
                           "import domain.model.signals as m, domain.relationship as r; print(m.__file__, r.__file__)"],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60)
    if "No module named 'domain'" in done.stderr:
        pytest.skip("the project is not installed in this interpreter (`pip install -e .`)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(not name.endswith(".py") for name in done.stdout.split()), done.stdout


def test_a_missing_shared_library_is_named(tmp_path: Path):
    manifest = tmp_path / "compiled.json"
    manifest.write_text(json.dumps({"modules": {}, "shared": ["abc__mypyc.cpython-311-x86_64-linux-gnu.so"]}))
    assert load_shared(manifest, tmp_path) == ["abc__mypyc.cpython-311-x86_64-linux-gnu.so"]
    assert "abc__mypyc" not in sys.modules


def test_a_changed_source_is_stale_and_imported_from_itself(tmp_path: Path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "fast.py"
    source.write_text("VALUE = 1\n")
    manifest = tmp_path / "compiled.json"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest.write_text(json.dumps({"modules": {"pkg.fast": digest}}))
    assert stale_modules(manifest, tmp_path) == (["pkg.fast"], [])
    source.write_text("VALUE = 2\n")
    assert stale_modules(manifest, tmp_path) == (["pkg.fast"], ["pkg.fast"])
    spec = SourcesFirst(["pkg.fast"], tmp_path).find_spec("pkg.fast")
    assert spec is not None and isinstance(spec.loader, SourceFileLoader) and spec.origin == str(source)
    assert SourcesFirst(["pkg.fast"], tmp_path).find_spec("pkg.other") is None


def test_no_manifest_means_nothing_compiled_and_a_corrupt_one_is_an_error(tmp_path: Path):
    assert stale_modules(tmp_path / "compiled.json", tmp_path) == ([], [])
    (tmp_path / "compiled.json").write_text("{not json")
    with pytest.raises(ImportError, match="loyalty compile"):
        stale_modules(tmp_path / "compiled.json", tmp_path)


def test_clean_removes_the_build_and_nothing_else(tmp_path: Path):
    shared = tmp_path / "0123abcd__mypyc.cpython-311-x86_64-linux-gnu.so"
    built = [extension_of(name, tmp_path) for name in COMPILED[:3]] + [shared]
    kept = [source_of(name, tmp_path) for name in COMPILED[:3]] + [tmp_path / "notes.so.txt"]
    for path in built + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    manifest = tmp_path / "domain" / "compiled.json"
    manifest.write_text("{}")
    assert sorted(clean(tmp_path, manifest)) == sorted(built + [manifest])
    assert all(path.exists() for path in kept)
