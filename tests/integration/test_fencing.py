"""streams.fencing against the real broker: a partition's new owner fences the old one, whether
the old one's fence transaction is open or was committed; an owner's fence holds across its
transactions, which the timer commits once they are old."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import Settings
from config.topics import Topics
from ops.admin import create_topics
from streams import fencing
from streams.fencing import Fences

pytestmark = pytest.mark.kafka


def fences(settings: Settings) -> Fences:
    return Fences(settings, Topics(settings.topic_prefix).state_fences)


def test_a_new_owner_fences_the_old_one_with_its_transaction_open(settings: Settings) -> None:
    create_topics(settings)

    async def run() -> None:
        old, new = fences(settings), fences(settings)
        old.assign({0, 1})
        try:
            assert await old.confirm({0, 1}) == {0, 1}
            assert await old.confirm({0, 1}) == {0, 1}  # the same open transaction
            new.assign({0})  # partition 0 moved: the new owner's producer aborts the old one's transaction
            assert await new.confirm({0}) == {0}
            assert await old.confirm({0, 1}) == {1}
            assert old.fenced == 1
            assert await old.confirm({0}) == set()  # discarded: only a new assignment starts another
            assert await new.confirm({0}) == {0}
        finally:
            await old.stop()
            await new.stop()

    asyncio.run(run())


def test_a_new_owner_fences_the_old_one_between_its_transactions(settings: Settings) -> None:
    create_topics(settings)

    async def run() -> None:
        old, new = fences(settings), fences(settings)
        old.assign({2})
        try:
            assert await old.confirm({2}) == {2}
            assert await old.commit_old_transactions(older_than=0) == 1
            assert await old.commit_old_transactions(older_than=0) == 0  # none open
            new.assign({2})
            assert await new.confirm({2}) == {2}
            # The old producer's next transaction is refused as it adds the partition to it.
            assert await old.confirm({2}) == set()
            assert old.fenced == 1
        finally:
            await old.stop()
            await new.stop()

    asyncio.run(run())


def test_an_owner_holds_across_its_transactions(settings: Settings) -> None:
    create_topics(settings)

    async def run() -> None:
        owner = fences(settings)
        owner.assign({0, 1, 2, 3})
        try:
            for _ in range(3):
                assert await owner.confirm({0, 1, 2, 3}) == {0, 1, 2, 3}
                assert await owner.commit_old_transactions(older_than=60) == 0  # too young
                assert await owner.commit_old_transactions(older_than=0) == 4
        finally:
            await owner.stop()
        assert owner.status()["transactions_committed"] == 12
        assert owner.fenced == 0

    asyncio.run(run())


def test_the_timer_commits_a_transaction_once_it_is_old(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    create_topics(settings)
    monkeypatch.setattr(fencing, "FENCE_TRANSACTION_SECONDS", 0.5)
    monkeypatch.setattr(fencing, "FENCE_CHECK_SECONDS", 0.05)

    async def run() -> None:
        owner = fences(settings)
        owner.assign({3})
        timer = asyncio.ensure_future(owner.run())
        try:
            assert await owner.confirm({3}) == {3}
            await asyncio.sleep(0.2)
            assert owner.committed == 0  # still young
            deadline = asyncio.get_running_loop().time() + 10
            while owner.committed == 0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert owner.committed == 1
            assert await owner.confirm({3}) == {3}  # a new transaction
        finally:
            timer.cancel()
            await owner.stop()

    asyncio.run(run())
