"""The helpers every stage shares: steps run together, errors as the stages expect them."""

import asyncio

import pytest

from hyperdrive.errors import ContainerError, DeployError
from hyperdrive.pipeline.job import stage, together


async def test_together_runs_steps_at_once_and_lets_each_finish_before_its_error() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def fails() -> None:
        order.append("fails started")
        await gate.wait()
        raise ContainerError("lxc-copy exited 1")

    async def opens_the_gate() -> None:
        order.append("second started")  # before the first has ended: they run at once
        gate.set()
        await asyncio.sleep(0.01)
        order.append("second finished")

    with pytest.raises(DeployError, match="lxc-copy exited 1") as caught:
        async with stage("assemble"):
            await together(fails(), opens_the_gate())
    assert caught.value.stage == "assemble"
    assert order == ["fails started", "second started", "second finished"]


async def test_together_of_steps_that_succeed_returns() -> None:
    done: list[int] = []

    async def step(n: int) -> None:
        done.append(n)

    await together(step(1), step(2))
    assert sorted(done) == [1, 2]
