"""A squadron built by `bootstrap.build` on the in-memory fakes of pipeline/fakes.py.

The outside world (containers, git, nginx + nftables, the bridge, HTTP, time) is a set of
fakes that outlive a daemon, so a test can 'crash' one daemon in any stage and start another
over the same world and the same files (records, spool, event log under tmp_path).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hyperdrive import bootstrap
from hyperdrive.config import Config, Guard
from hyperdrive.pipeline.commands import Command, Deploy
from hyperdrive.pipeline.fakes import (
    FakeClock,
    FakeGit,
    FakeHullBuilder,
    FakeNetwork,
    FakeProbe,
    FakeProxy,
    FakeRequests,
    FakeRuntime,
    Holds,
)
from hyperdrive.pipeline.model import App

STATIC = {"index.html": "hello\n"}
PYTHON = {"requirements.txt": "flask\n", "app.py": "print('hi')\n"}


@dataclass
class World:
    """The fakes, shared by every daemon a test builds over them."""

    root: Path
    holds: Holds = field(default_factory=Holds)
    clock: FakeClock = field(default_factory=FakeClock)
    git: FakeGit = field(default_factory=FakeGit)
    proxy: FakeProxy = field(default_factory=FakeProxy)
    network: FakeNetwork = field(default_factory=FakeNetwork)
    requests: FakeRequests = field(default_factory=FakeRequests)
    runtime: FakeRuntime = field(init=False)
    probe: FakeProbe = field(init=False)
    hull_builder: FakeHullBuilder = field(init=False)
    commits: int = 0
    daemons: list[bootstrap.Daemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime(holds=self.holds)
        self.probe = FakeProbe(self.runtime, self.network, self.proxy, holds=self.holds)
        self.hull_builder = FakeHullBuilder(self.runtime, self.root / "data" / "lxc", self.holds)

    def config(self, **changes: Any) -> Config:
        base = Config(
            name="hd",
            data=self.root / "data",
            var=self.root / "var",
            admiral_keys=self.root / "admirals.pub",
            hull="busybox",
            drain_seconds=0.0,
            guard=Guard(seconds=0),  # tests/unit/test_guard.py turns it on
        )
        return replace(base, **changes)

    def daemon(self, **changes: Any) -> Squadron:
        """A daemon over this world, its records loaded and its event log open (not started)."""
        daemon = bootstrap.build(
            self.config(**changes),
            runtime=self.runtime,
            git=self.git,
            proxy=self.proxy,
            clock=self.clock,
            network=self.network,
            probe=self.probe,
            hull_builder=self.hull_builder,
            requests=self.requests,
        )
        daemon.eventlog.open()
        daemon.core.records.load()
        self.daemons.append(daemon)
        return Squadron(self, daemon)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.eventlog.close()

    def commit(self, app: str, files: dict[str, str], branch: str = "main") -> str:
        self.commits += 1
        sha = hashlib.sha1(f"{app} {self.commits}".encode()).hexdigest()
        return self.git.commit(app, sha, files, branch)

    def serving(self, app: str) -> tuple[str, int] | None:
        """Where the app's traffic goes now (ship address and port)."""
        return self.proxy.pointed.get(app)


@dataclass
class Squadron:
    """One daemon over a World."""

    world: World
    daemon: bootstrap.Daemon
    counter: int = 0

    def app(self, name: str) -> App:
        return self.daemon.core.records.get(name)

    def events(self, deploy: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        found = list(self.daemon.eventlog.stored())
        if deploy is not None:
            found = [e for e in found if e.get("deploy") == deploy]
        return [e for e in found if name is None or e["event"] == name]

    def names(self, deploy: str) -> list[str]:
        return [e["event"] for e in self.events(deploy)]

    def outcome(self, deploy: str) -> dict[str, Any]:
        ends = ("DeployFinished", "DeployFailed", "DeploySuperseded", "TriggerIgnored")
        return [e for e in self.events(deploy) if e["event"] in ends][-1]

    def next_id(self) -> str:
        self.counter += 1
        return f"t-{self.counter}"

    async def run(self, command: Command) -> str:
        return await asyncio.wait_for(self.daemon.bus.handle(command), 10)

    async def deploy(self, app: str, files: dict[str, str] | None = None, **kw: Any) -> str:
        """Commit `files` (default: a static site) and deploy its sha; the deploy id."""
        sha = self.world.commit(app, files or STATIC)
        deploy = kw.pop("deploy", None) or self.next_id()
        await self.run(
            Deploy(deploy=deploy, app=app, sha=sha, ref="refs/heads/main", source="push", **kw)
        )
        return deploy

    def live_ship_address(self, app: str) -> tuple[str, int] | None:
        ship = self.app(app).live_ship
        return (ship.ip, ship.port) if ship else None
