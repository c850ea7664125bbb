"""Preview ships: a push of another branch than the one an app follows, with `previews on` in
its orders, deploys that branch as an app of its own, `<app>--<slug>`.

A preview is an ordinary app record (its own ships, route, lane and retention) that says which
app and branch it previews; it runs the app's orders with `PREVIEW=1` and `PREVIEW_BRANCH`, no
servernames or PUBLISH_PORT of the app's, and is never the app's live ship. The commands of a
trigger are routed here before the bus runs them (the Inbox), so a preview's deploy runs in its
own lane and never supersedes the app's own deploy.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from hyperdrive.errors import HyperdriveError, InvalidName
from hyperdrive.headquarters.orders import Orders
from hyperdrive.names import APP_NAME, is_app_name
from hyperdrive.pipeline import events as ev
from hyperdrive.pipeline.commands import Command, Deploy, Retire
from hyperdrive.pipeline.model import App, Records

SEPARATOR = "--"
HASH_LEN = 6
MIN_SLUG = HASH_LEN + 2  # room for at least one character and the hash
MAX_NAME = 39  # an app name's length (names.APP_NAME): ship, host and nginx names stay valid


class PreviewRefused(HyperdriveError):
    """A branch cannot be previewed (the app's name leaves no room for a slug)."""


@dataclass(frozen=True)
class Preview:
    """What a preview's record says: the app it previews and the branch it runs."""

    name: str
    app: str
    branch: str

    @property
    def slug(self) -> str:
        return self.name.removeprefix(self.app + SEPARATOR)


def _short_hash(branch: str) -> str:
    return hashlib.sha256(branch.encode()).hexdigest()[:HASH_LEN]


def slug(branch: str, room: int, hashed: bool = False) -> str:
    """A branch as a DNS-label-safe slug of at most `room` characters: lowercase `[a-z0-9-]`,
    runs of anything else as one `-`; a short hash of the branch is added when the slug had to
    be cut, changed beyond recognition (nothing left), or `hashed` (another branch has it)."""
    if room < MIN_SLUG:
        raise PreviewRefused(f"no room for a preview slug ({room} characters; {MIN_SLUG} needed)")
    ascii_text = unicodedata.normalize("NFKD", branch).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if text and len(text) <= room and not hashed:
        return text
    cut = text[: room - HASH_LEN - 1].rstrip("-")
    return f"{cut}-{_short_hash(branch)}" if cut else f"b-{_short_hash(branch)}"[:room]


def preview_name(app: str, branch: str, hashed: bool = False) -> str:
    """`<app>--<slug>`, within an app name's length; PreviewRefused when there is no room."""
    room = MAX_NAME - len(app) - len(SEPARATOR)
    name = f"{app}{SEPARATOR}{slug(branch, room, hashed)}"
    if not APP_NAME.fullmatch(name):  # slug() never makes one; this is the boundary's check
        raise InvalidName(f"preview name {name!r} is not a valid app name")
    return name


def preview_orders(orders: Orders, preview: Preview, domain: str) -> Orders:
    """The app's orders as its preview runs them: its branch, PREVIEW=1 and PREVIEW_BRANCH,
    served at `<slug>.<app>.<domain>` (when a domain is set) instead of the app's servernames."""
    env = {k: v for k, v in orders.env.items() if k != "PUBLISH_PORT"}
    env |= {"PREVIEW": "1", "PREVIEW_BRANCH": preview.branch}
    names = (f"{preview.slug}.{preview.app}.{domain}",) if domain else ()
    return replace(
        orders, app=preview.name, branch=preview.branch, env=env, servernames=names, previews=0
    )


def previewed(records: Records, name: str) -> Preview | None:
    """The preview an app record is, if it is one."""
    if not records.known(name):
        return None
    record = records.get(name)
    if record.preview_of is None or record.branch is None:
        return None
    return Preview(name, record.preview_of, record.branch)


Branch = Callable[[str, Orders], Awaitable[str]]
Handle = Callable[[Command], Coroutine[Any, Any, str]]


@dataclass(kw_only=True)
class Previews:
    """Routes a trigger's Deploy and Retire of another branch to that branch's preview."""

    records: Records
    orders: Callable[[str], Orders]
    taken: Callable[[str], bool]  # a name HQ orders (an app of its own, not a preview)
    branch: Branch  # the branch an app follows (Planner.branch)
    emit: Callable[[ev.Event], None]
    clock: Callable[[], float]
    handle: Handle | None = None  # the bus's, for retiring the oldest preview over `max`
    tasks: set[asyncio.Task[str]] = field(default_factory=set)
    evicted: set[str] = field(default_factory=set)  # retiring: counted and found no more

    def of(self, app: str) -> list[Preview]:
        """The app's previews, oldest first."""
        found = [p for a in self.records.all() if (p := previewed(self.records, a.name))]
        mine = [p for p in found if p.app == app and p.name not in self.evicted]
        return sorted(mine, key=lambda p: (self.records.get(p.name).created or 0.0, p.name))

    async def route(self, command: Command) -> Command | None:
        """The command itself, the one its preview runs instead, or None (refused, said)."""
        branch = await self._other_branch(command)
        if branch is None:
            return command
        if isinstance(command, Retire):
            return self._retire(command, branch)
        assert isinstance(command, Deploy)
        return self._deploy(command, branch, self.orders(command.app).previews)

    async def _other_branch(self, command: Command) -> str | None:
        """The branch a Deploy or Retire names, if it is not the one its app (with previews
        on) follows."""
        if not isinstance(command, Deploy | Retire) or command.ref is None:
            return None
        if not command.ref.startswith("refs/heads/") or previewed(self.records, command.app):
            return None
        orders = self.orders(command.app)
        if orders.previews == 0:
            return None
        try:
            followed = await self.branch(command.app, orders)
        except HyperdriveError:
            return None  # the plan says why, as it does today
        if command.ref == f"refs/heads/{followed}":
            return None
        return command.ref.removeprefix("refs/heads/")

    def _retire(self, command: Retire, branch: str) -> Command:
        preview = self._find(command.app, branch)
        if preview is None:
            return command  # no preview: the app's own handler says the branch is not its
        return replace(command, app=preview.name, ref=None, reason=f"branch {branch} deleted")

    def _deploy(self, command: Deploy, branch: str, most: int) -> Command | None:
        preview = self._find(command.app, branch)
        if preview is None:
            try:
                preview = self._register(command.app, branch)
            except (PreviewRefused, InvalidName) as err:
                message = f"{branch} not previewed: {err}"
                self.emit(
                    ev.TriggerIgnored(
                        app=command.app, deploy=command.deploy, kind="preview", message=message
                    )
                )
                return None
            self._evict(command.app, most, command.deploy)
        return replace(command, app=preview.name, preview_of=command.app)

    def _retired(self, name: str) -> Callable[[asyncio.Task[str]], None]:
        return lambda _: self.evicted.discard(name)

    def _find(self, app: str, branch: str) -> Preview | None:
        return next((p for p in self.of(app) if p.branch == branch), None)

    def _register(self, app: str, branch: str) -> Preview:
        """A record for a new preview: its plain slug, or with a hash when the name is taken."""
        name = preview_name(app, branch)
        if self._occupied(name):
            name = preview_name(app, branch, hashed=True)
        if self._occupied(name):
            raise PreviewRefused(f"{name} is taken by another app")
        record = App(name, preview_of=app, branch=branch, created=self.clock())
        self.records.save(record)
        return Preview(name, app, branch)

    def _occupied(self, name: str) -> bool:
        return self.taken(name) or self.records.known(name) or not is_app_name(name)

    def _evict(self, app: str, most: int, deploy: str) -> None:
        """Over `max`: the oldest previews are retired, each in its own lane."""
        previews = self.of(app)
        for old in previews[: max(0, len(previews) - most)]:
            self.evicted.add(old.name)
            retire = Retire(
                deploy=f"{deploy}:retire-{old.name}"[:128],
                app=old.name,
                reason=f"more than {most} previews of {app}; {old.branch} is the oldest",
            )
            if self.handle is not None:
                task = asyncio.create_task(self.handle(retire))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                task.add_done_callback(self._retired(old.name))
