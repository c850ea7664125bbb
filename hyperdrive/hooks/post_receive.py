"""What bin/post-receive runs: hand each pushed ref to the spool, then show the deploy.

The refs are already updated when git runs this, so it always exits 0. The trigger files are
written first, durably, before any output: a pusher who hangs up (Ctrl-C) cancels nothing.
Unless the push said `-o nowait`, the deploy's events are then streamed back to the pusher,
whose git prints them as `remote:` lines, until each deploy ends or WAIT_S passes. In a
fleet, the other squadrons' deploys of the push follow as `[sq-b] …` lines, until each
squadron up has an outcome or FLEET_WAIT_S passes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from hyperdrive.errors import DaemonUnavailable, HyperdriveError
from hyperdrive.heads import adopt_pushed_branch
from hyperdrive.names import HEADQUARTERS, repo_name
from hyperdrive.render import clean as _clean
from hyperdrive.render import pushed
from hyperdrive.triggers import RefUpdate, Trigger, write_incoming

if TYPE_CHECKING:  # the follow machinery (http.client, ~45 ms) loads once the triggers are on disk
    from hyperdrive.client import AdminClient
    from hyperdrive.follow import Outcome

WAIT_S = 30 * 60.0
FLEET_WAIT_S = 10 * 60.0  # how long a pusher waits for the other squadrons' outcomes
FLEET_SINCE_S = 600.0  # their events are read from this long before the push (clock skew)
QUEUED = "queued: the deploy starts when hyperdrive is running"
FOLLOW_NICE = 10  # added to the hook's nice value once its triggers are written


def parse_updates(lines: Iterable[str], out: TextIO) -> list[RefUpdate]:
    """`<old> <new> <ref>` lines from git; lines that are not branch or tag updates are skipped."""
    updates = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            updates.append(RefUpdate(parts[2], old=parts[0], new=parts[1]))
        except HyperdriveError:
            why = "only branches and tags deploy"
            if parts[2].startswith(("refs/heads/", "refs/tags/")):  # unicode, `..`, too long
                why = "names Hyperdrive deploys are ASCII letters, digits and ._/+- (no `..`)"
            _say(out, f"-----> ignored {_clean(parts[2])}: {why}")
    return updates


def make_trigger(app: str, admiral: str, update: RefUpdate) -> Trigger:
    """One trigger per ref; the HQ repo's pushes are `hq` triggers without an app."""
    if app == HEADQUARTERS:
        return Trigger.hq_push(update, admiral)
    return Trigger.push(app, update, admiral)


def push_options(env: Mapping[str, str]) -> list[str]:
    """What the pusher passed with `git push -o …`."""
    count = env.get("GIT_PUSH_OPTION_COUNT", "0")
    total = int(count) if count.isdigit() else 0
    return [env.get(f"GIT_PUSH_OPTION_{n}", "") for n in range(min(total, 100))]


def app_of(env: Mapping[str, str]) -> str:
    """The app: HYPERDRIVE_APP from the server, else the repo folder git runs us in."""
    return repo_name(env.get("HYPERDRIVE_APP") or Path.cwd().name)


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


class _Printer:
    """Serialises output from the follower threads; remembers when the pusher hung up."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.gone = False
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                _say(self.out, text)
            except (BrokenPipeError, ValueError):  # ValueError: stdout already closed
                self.gone = True


def _follow_one(client: AdminClient, deploy: str, printer: _Printer) -> Outcome:
    from hyperdrive.follow import Outcome, follow_client  # noqa: PLC0415 - see TYPE_CHECKING

    """Print one deploy's events until its outcome; the daemon being gone is not an error."""

    def show(event: Mapping[str, Any]) -> None:
        if printer.gone:
            raise _HungUp
        if (text := pushed(event)) is not None:
            printer.say(text)

    try:
        outcome = follow_client(client, deploy, show)
    except _HungUp:
        return Outcome(deploy)
    except DaemonUnavailable:
        printer.say(f"-----> {QUEUED}")
        return Outcome(deploy)
    except HyperdriveError as err:
        printer.say(f" !     cannot follow deploy {deploy}: {_clean(str(err))}")
        return Outcome(deploy)
    if (hint := outcome.hint("ssh … logs")) is not None:
        printer.say(f"-----> {hint}")
    return outcome


class _HungUp(Exception):
    """The pusher went away: stop following (the deploy goes on)."""


def follow(triggers: list[Trigger], client: AdminClient, out: TextIO, wait_s: float) -> bool:
    """Stream every trigger's deploy until each ends or `wait_s` passes; False if hung up.

    A superseded push ends here, naming the deploy that took over: the pusher's commit is not
    what goes live, so following the newer one would tell a story about someone else's push.
    """
    printer = _Printer(out)
    ids = [t.id for t in triggers]
    from hyperdrive.follow import follow_many  # noqa: PLC0415 - see TYPE_CHECKING

    fleet = _fleet_follower(client, triggers, printer)
    followed = follow_many(lambda deploy: _follow_one(client, deploy, printer), ids, wait_s)
    if len(followed) < len(ids):
        printer.say("-----> still deploying; follow it with `hd logs -f`")
    if fleet is not None:
        fleet.join(min(wait_s, FLEET_WAIT_S))
        if fleet.is_alive():
            printer.say("-----> other squadrons still deploying; `hd logs -f --fleet`")
    return not printer.gone


def _fleet_follower(
    client: AdminClient, triggers: list[Trigger], printer: _Printer
) -> threading.Thread | None:
    """In a fleet, a thread showing the other squadrons' deploys of these triggers."""
    try:
        shown = client.get("/fleet")
    except HyperdriveError:  # alone, or the fleet out of reach: the local deploy only
        return None
    me = shown.get("squadron")
    up = {s["name"] for s in shown.get("squadrons", []) if s.get("state") == "up"} - {me}
    if not up:
        return None
    apps = {t.app for t in triggers}
    app = apps.pop() if len(apps) == 1 else None
    since = str(time.time() - FLEET_SINCE_S)  # no deploy of this push is older than it
    events = client.events(app=app, since=since, follow=True, history=None, fleet=True)
    work = {(t.id, name) for t in triggers for name in up}

    def run() -> None:
        try:
            _follow_fleet(events, work, printer)
        except HyperdriveError as err:
            printer.say(f" !     lost the fleet's events: {_clean(str(err))}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _follow_fleet(
    events: Iterable[Mapping[str, Any]], work: set[tuple[str, str]], printer: _Printer
) -> None:
    """Print each other squadron's events of these deploys, `[sq-b] …`, until each
    (deploy, squadron) in `work` has an outcome."""
    from hyperdrive.fleet.feed import prefixed  # noqa: PLC0415 - see TYPE_CHECKING
    from hyperdrive.follow import outcome_of  # noqa: PLC0415

    for event in events:
        deploy, squadron = str(event.get("deploy")), str(event.get("squadron"))
        if (deploy, squadron) not in work or printer.gone:
            continue
        if (text := pushed(event)) is not None:
            printer.say(prefixed(event, text))
        if outcome_of(deploy, event) is not None:
            work.discard((deploy, squadron))
            if not work or printer.gone:
                return


def _announce(trigger: Trigger, out: TextIO) -> None:
    update = trigger.update
    assert update is not None  # every push trigger has one
    what = trigger.app or HEADQUARTERS
    verb = "deletion of" if update.deleted else f"{update.new[:7]} on"
    _say(out, f"-----> queued {verb} {update.ref} for {what} (deploy {trigger.id})")


def step_aside() -> None:
    """The pusher's view of the deploy never takes CPU from the deploy itself: the follower's
    imports and output run at a lower priority (every event is replayed from the log anyway)."""
    os.nice(FOLLOW_NICE)


def run(
    lines: Iterable[str],
    out: TextIO,
    env: Mapping[str, str],
    wait_s: float = WAIT_S,
    before_follow: Callable[[], None] = lambda: None,
) -> int:
    """The hook's whole job; returns 0 because the refs are updated whatever happens here.
    `before_follow` runs once the triggers are on disk, before following (main: step_aside)."""
    spool = env.get("HYPERDRIVE_SPOOL")
    if not spool:
        _say(out, " !     HYPERDRIVE_SPOOL is not set: nothing queued; run `hd deploy`")
        return 0
    try:
        app = app_of(env)
        updates = parse_updates(lines, out)
        # Before any trigger: a repo whose HEAD names no branch yet takes the first one
        # pushed as its default, so the deploy that follows reads the branch it was made with.
        adopt_pushed_branch(Path(env.get("GIT_DIR") or "."), [(u.ref, u.new) for u in updates])
        triggers = [make_trigger(app, env.get("HYPERDRIVE_ADMIRAL", ""), u) for u in updates]
        for trigger in triggers:
            write_incoming(Path(spool), trigger)
            _announce(trigger, out)
    except (HyperdriveError, OSError) as err:
        _say(out, f" !     could not queue the deploy: {err}; run `hd deploy`")
        return 0
    socket_path = env.get("HYPERDRIVE_SOCKET", "")
    if not triggers or "nowait" in push_options(env):
        return 0
    if not socket_path or not Path(socket_path).exists():
        _say(out, f"-----> {QUEUED}")
    else:
        before_follow()
        from hyperdrive.client import AdminClient  # noqa: PLC0415 - see TYPE_CHECKING

        if not follow(triggers, AdminClient(Path(socket_path)), out, wait_s):
            raise BrokenPipeError("the pusher hung up")
    return 0


def main() -> int:
    """Entry point; a pusher who hung up (EPIPE, Ctrl-C) ends it quietly with 0."""
    try:
        return run(sys.stdin, sys.stdout, os.environ, before_follow=step_aside)
    except (BrokenPipeError, KeyboardInterrupt):
        # Python would complain again when flushing stdout at exit: point it nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
