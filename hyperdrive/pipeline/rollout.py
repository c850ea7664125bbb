"""A fleet's rollout in waves, around the Deploy handler: wait for this squadron's wave,
deploy, report the outcome to the fleet. Alone, or for an app without `rollout` in its
orders, the deploy runs at once as it always did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from hyperdrive.errors import FleetError
from hyperdrive.fleet import rollout
from hyperdrive.fleet.rollout import Turn
from hyperdrive.headquarters import Orders
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.bus import FAILED, Context, Superseded
from hyperdrive.pipeline.commands import Deploy

log = logging.getLogger(__name__)

HELD = "held"  # the bus outcome of a deploy the rollout held back


class RolloutBoard(Protocol):
    """The fleet's record of each rollout (the link's, in KV; a fake in unit tests)."""

    async def turn(
        self, app: str, deploy: str, spec: tuple[str, ...], waiting: Callable[[Turn], None]
    ) -> Turn: ...

    async def report(self, app: str, deploy: str, result: str) -> None: ...


DeployHandler = Callable[[Deploy, Context], Coroutine[Any, Any, str]]


def rolled_out(cmd: Deploy) -> bool:
    """The deploys a fleet shares and rolls out: a push's and a webhook's (not a preview's).
    `hd deploy --fleet`, rollbacks and HQ's own deploys go everywhere at once."""
    shared = cmd.source == "push" or cmd.source.startswith("webhook")
    return shared and cmd.preview_of is None


@dataclass
class Rollouts:
    """The Deploy command's handler in a fleet: the deployer's, gated by the rollout."""

    deploy: DeployHandler
    orders: Callable[[str], Orders]
    board: Callable[[], RolloutBoard | None] = lambda: None  # None: alone, or NATS is down
    _reports: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)

    async def handle(self, cmd: Deploy, ctx: Context) -> str:
        spec = self.orders(cmd.app).rollout
        board = self.board() if spec and rolled_out(cmd) else None
        if board is None:
            return await self.deploy(cmd, ctx)
        now = await self._turn(board, cmd, spec, ctx)
        if now is None:
            return await self.deploy(cmd, ctx)
        if now.state == rollout.HELD:
            _emit(ctx, ev.RolloutHeld, cmd, now, f"held by rollout: {now.why}; the old ship serves")
            await self._report(board, cmd, rollout.HELD)
            return HELD
        _emit(ctx, ev.RolloutWaveOpened, cmd, now, f"rollout of {cmd.app}: {now.why}")
        try:
            outcome = await self.deploy(cmd, ctx)
        except (asyncio.CancelledError, Superseded):
            self._later(board, cmd, rollout.SUPERSEDED)
            raise
        if outcome == FAILED:
            why = f"rollout of {cmd.app} stopped at wave {now.wave}: the deploy failed here"
            _emit(ctx, ev.RolloutStopped, cmd, now, why)
        await self._report(board, cmd, rollout.result_of(outcome))
        return outcome

    async def _turn(
        self, board: RolloutBoard, cmd: Deploy, spec: tuple[str, ...], ctx: Context
    ) -> Turn | None:
        """This squadron's turn; None when the fleet cannot say (NATS down): deploy as alone."""

        def waiting(now: Turn) -> None:
            message = f"rollout of {cmd.app}: wave {now.wave} of {now.waves}, {now.why}"
            _emit(ctx, ev.RolloutWaiting, cmd, now, message)

        try:
            return await board.turn(cmd.app, cmd.deploy, spec, waiting)
        except FleetError as err:
            log.warning("rollout of %s: %s; deploying as alone", cmd.app, err)
            return None

    async def _report(self, board: RolloutBoard, cmd: Deploy, result: str) -> None:
        try:
            await board.report(cmd.app, cmd.deploy, result)
        except FleetError as err:
            log.warning("rollout of %s: %s not reported: %s", cmd.app, result, err)

    def _later(self, board: RolloutBoard, cmd: Deploy, result: str) -> None:
        """Report from a deploy being cancelled: in a task of its own."""
        task = asyncio.create_task(self._report(board, cmd, result))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)


def _emit(ctx: Context, kind: Callable[..., ev.Event], cmd: Deploy, now: Turn, text: str) -> None:
    ctx.emit(kind(app=cmd.app, deploy=cmd.deploy, wave=now.wave, waves=now.waves, message=text))
