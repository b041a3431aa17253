"""Public purchase histories for the churn backtest, fetched from PyPI into a cache directory.

The datasets are not in this repository: each is a file inside a package on PyPI, downloaded once
with ``pip download --no-deps`` (the ordinary client, so proxies and indexes configured for pip
apply) and converted to the project's purchase events.

* ``cdnow``: CDNOW_master.txt, shipped by ``lifetimes`` 0.11.3 (``lifetimes/datasets/``): the
  transactions of the 23,570 customers who made their first purchase at the CD retailer CDNOW in
  the first quarter of 1997, through June 1998 (Fader and Hardie's classic BG/NBD data). One line
  per purchase: customer id, date (YYYYMMDD), number of CDs, amount in dollars; several lines of
  one customer on one day are separate purchases.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from domain.records import PurchaseEvent, PurchaseItem


class DatasetError(RuntimeError):
    """A dataset could not be fetched or read; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    package: str  # pip requirement
    member: str  # path of the file inside the wheel
    description: str


DATASETS = {
    "cdnow": Dataset("cdnow", "lifetimes==0.11.3", "lifetimes/datasets/CDNOW_master.txt",
                     "CDNOW master: 23,570 customers, 69,659 purchases, 1997-01-01 to 1998-06-30"),
}


def cache_dir() -> Path:
    """``~/.cache/loyalty-stream/datasets``."""
    return Path.home() / ".cache" / "loyalty-stream" / "datasets"


def fetch(name: str, cache: Path | None = None) -> Path:
    """The dataset file, downloading its package from PyPI into the cache the first time."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    dataset = DATASETS[name]
    cache = cache or cache_dir()
    target = cache / name / Path(dataset.member).name
    if target.exists():
        return target
    wheels = cache / name / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    print(f"fetching {dataset.package} from PyPI into {wheels} ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
         "--dest", str(wheels), dataset.package],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DatasetError(f"could not download {dataset.package} for dataset {name}: {last}")
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise DatasetError(f"pip downloaded no wheel of {dataset.package} into {wheels}")
    try:
        with zipfile.ZipFile(found[-1]) as wheel:
            data = wheel.read(dataset.member)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{found[-1].name} has no readable {dataset.member}: {exc}") from exc
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    print(f"dataset {name}: {dataset.description} -> {target}", file=sys.stderr, flush=True)
    return target


def cdnow_events(path: Path) -> list[PurchaseEvent]:
    """The purchases of CDNOW_master.txt, at noon UTC of their day, in US dollars.

    Lines of zero dollars (a few exist) are kept as purchases of 0.00: they are transactions.
    """
    events: list[PurchaseEvent] = []
    with open(path, encoding="ascii") as handle:
        for line_no, line in enumerate(handle, start=1):
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue  # the header line
            try:
                customer, day, cds, dollars = parts
                when = datetime.strptime(day, "%Y%m%d").replace(hour=12, tzinfo=UTC)
                amount = int((Decimal(dollars) * 100).to_integral_value())
                quantity = int(cds)
            except (ValueError, InvalidOperation) as exc:
                raise DatasetError(f"{path}:{line_no}: not a CDNOW line ({exc}): {line.strip()!r}") from exc
            event_id = f"cdnow-{line_no}"
            events.append(PurchaseEvent(
                event_id=event_id, customer_id=f"cdnow-{int(customer):05d}",
                occurred_at=int(when.timestamp() * 1000), channel="web", order_id=event_id,
                amount_minor=amount, currency="USD",
                items=(PurchaseItem(sku="cd", category="music", quantity=max(1, quantity),
                                    unit_price_minor=amount // max(1, quantity)),),
            ))
    return events


def load_events(name: str, cache: Path | None = None) -> list[PurchaseEvent]:
    """The purchase events of a named dataset (fetched if needed)."""
    path = fetch(name, cache)
    if name == "cdnow":
        return cdnow_events(path)
    raise DatasetError(f"no converter for dataset {name!r}")  # unreachable while DATASETS has one
