"""The byte budget: never more than its total out at once, first come first served, nothing leaked."""

from __future__ import annotations

import random

import anyio
import pytest

from async_backup.backup.budget import ByteBudget


async def test_holders_never_exceed_the_budget_and_everything_is_given_back():
    budget = ByteBudget(1000)
    held = 0
    peak = 0
    rng = random.Random(4)

    async def user(n: int) -> None:
        nonlocal held, peak
        async with budget.hold(n):
            held += min(n, 1000)
            peak = max(peak, held)
            await anyio.sleep(rng.random() / 200)
            held -= min(n, 1000)

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(user, rng.choice([1, 50, 300, 999, 5000]))  # 5000: more than the whole budget
    assert peak <= 1000 and budget.free_bytes == 1000


async def test_a_large_request_is_not_starved_by_small_ones():
    budget = ByteBudget(100)
    order: list[str] = []
    first = await budget.acquire(60)

    async def big() -> None:
        async with budget.hold(100):
            order.append("big")

    async def small(i: int) -> None:
        async with budget.hold(10):
            order.append(f"small{i}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(big)
        await anyio.sleep(0.01)
        for i in range(3):
            tg.start_soon(small, i)  # 40 bytes are free, but the big request came first
        await anyio.sleep(0.01)
        assert order == []
        budget.release(first)
    assert order[0] == "big"


async def test_a_cancelled_waiter_takes_nothing():
    budget = ByteBudget(10)
    taken = await budget.acquire(10)
    with anyio.move_on_after(0.01):
        await budget.acquire(5)
    budget.release(taken)
    assert budget.free_bytes == 10


@pytest.mark.parametrize("total", [1, 7])
async def test_zero_and_oversized_requests(total: int):
    budget = ByteBudget(total)
    assert await budget.acquire(0) == 0
    assert await budget.acquire(10**9) == total
