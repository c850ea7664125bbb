"""`hd …`: the command line. Everything but `serve` and `doctor` talks to the daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hyperdrive import __version__
from hyperdrive import config as configuration
from hyperdrive.client import AdminClient
from hyperdrive.config import Config
from hyperdrive.errors import ConfigError, DaemonUnavailable, HyperdriveError
from hyperdrive.render import describe, status_view

if TYPE_CHECKING:  # what only other verbs use loads in them: `hd status` starts with less
    from hyperdrive.triggers import Trigger

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_CONFIG, EXIT_DOWN = 0, 1, 2, 3, 4

FLEET_TIMEOUT_S = 60.0  # starting a node, or reaching another squadron's, takes a moment

Handler = Callable[[argparse.Namespace, Config], int]


def parser(verb: str | None = None) -> argparse.ArgumentParser:
    """`hd`'s parser; given `verb`, only that verb's own parser is built (each costs argparse
    ~0.2 ms of locale lookups: `hd status` builds one, not 25). None builds them all."""
    top = argparse.ArgumentParser(prog="hd", description="Hyperdrive: git push to deploy.")
    top.add_argument("--config", type=Path, help="main.conf to read (default /etc/hyperdrive)")
    verbs = top.add_subparsers(dest="verb", metavar="VERB")
    for name, (about, arguments) in VERBS.items():
        if verb is None or name == verb:
            arguments(verbs.add_parser(name, help=about))
    return top


def _asked_verb(argv: Sequence[str]) -> str | None:
    """The verb of `hd [--config FILE] VERB …` when it is plain to see; None otherwise (help,
    a mistake, an abbreviated option), and the whole parser says what it has to."""
    words = list(argv)
    if words[:1] == ["--config"]:
        words = words[2:]
    elif words[:1] and words[0].startswith("--config="):
        words = words[1:]
    return words[0] if words and words[0] in VERBS else None


def _no_arguments(_: argparse.ArgumentParser) -> None:
    """A verb without arguments of its own."""


def _serve_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("-v", "--verbose", action="store_true")


def _json_flag(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--json", action="store_true")


def _logs_args(logs: argparse.ArgumentParser) -> None:
    logs.add_argument("app", nargs="?")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--json", action="store_true", help="one JSON object a line")
    logs.add_argument("--deploy", help="only this deploy's events")
    logs.add_argument("--since", help="e.g. 10m, 2h, or an ISO time")
    logs.add_argument(
        "--fleet", action="store_true", help="every squadron's events, each line [squadron] …"
    )
    logs.add_argument(
        "-n", "--lines", type=_lines, default=100, help="how many stored events, or 'all'"
    )
    logs.add_argument(
        "--app", dest="output", action="store_true", help="what APP's processes print"
    )


def _ps_args(ps: argparse.ArgumentParser) -> None:
    ps.add_argument("app", nargs="?")
    ps.add_argument("--json", action="store_true")


def _run_args(run: argparse.ArgumentParser) -> None:
    run.add_argument("app")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG…]")


def _deploy_args(deploy: argparse.ArgumentParser) -> None:
    deploy.add_argument("app")
    deploy.add_argument("sha", nargs="?")
    deploy.add_argument("--fleet", action="store_true", help="on every squadron of the fleet")


def _rollback_args(rollback: argparse.ArgumentParser) -> None:
    rollback.add_argument("app")
    rollback.add_argument("--fleet", action="store_true", help="on every squadron of the fleet")


def _app_arg(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("app")


def _assemble_args(assemble: argparse.ArgumentParser) -> None:
    assemble.add_argument("app", nargs="?")
    assemble.add_argument(
        "--fresh", action="store_true", help="Debian from the mirror, not from the kept tree"
    )


def _launch_args(launch: argparse.ArgumentParser) -> None:
    launch.add_argument("ship")


def _token_args(token: argparse.ArgumentParser) -> None:
    token.add_argument("admiral")


def _headquarters_verbs(hq: argparse.ArgumentParser) -> None:
    hq_verbs = hq.add_subparsers(dest="hq_verb", required=True)
    hq_set = hq_verbs.add_parser("set", help="follow a remote HQ repo: URL[#branch]")
    hq_set.add_argument("url")
    hq_set.add_argument("--sync", action="store_true", help="sync it now and show the plan")
    hq_verbs.add_parser("sync", help="read headquarters again now")


def _fleet_verbs(fleet: argparse.ArgumentParser) -> None:
    fleet_verbs = fleet.add_subparsers(dest="fleet_verb", required=True)
    init = fleet_verbs.add_parser("init", help="start a fleet here: run its NATS node")
    init.add_argument("--advertise", default="", help="the address other squadrons reach")
    join = fleet_verbs.add_parser("join", help="join the fleet at URL (what init printed)")
    join.add_argument("url")
    join.add_argument("--secret", required=True, help="the fleet's secret, from init")
    join.add_argument("--advertise", default="", help="the address other nodes reach")
    join.add_argument(
        "--member",
        action="store_true",
        help="a client of the fleet's nodes only (default: run a JetStream node here too)",
    )
    shown = fleet_verbs.add_parser("status", help="the squadrons and each app on each")
    shown.add_argument("--json", action="store_true", help="as JSON")
    leave = fleet_verbs.add_parser("leave", help="leave the fleet: alone again")
    leave.add_argument("--force", action="store_true", help="even if others use the node here")
    forget = fleet_verbs.add_parser("forget", help="drop a squadron gone for good")
    forget.add_argument("name", help="the squadron's HYPERDRIVE_NAME")
    forget.add_argument("--force", action="store_true", help="even if it was seen recently")


Arguments = Callable[[argparse.ArgumentParser], None]
# Each verb: its help line and what adds its arguments, in the order `hd -h` lists them.
VERBS: dict[str, tuple[str, Arguments]] = {
    "serve": ("run the daemon in the foreground", _serve_args),
    "status": ("the squadron and its apps", _json_flag),
    "logs": ("events, optionally following them live", _logs_args),
    "ps": ("each process of each live ship: state, restarts, uptime", _ps_args),
    "run": ("a command in a one-off ship made from APP's live one", _run_args),
    "deploy": ("deploy an app (its branch tip, or SHA)", _deploy_args),
    "rollback": ("back to the newest kept healthy ship", _rollback_args),
    "retire": ("take an app (or a preview) out of service", _app_arg),
    "forge-token": ("keep the forge API token for APP's deliveries (read on stdin)", _app_arg),
    "notify-secret": ("keep the secret for APP's deliveries (read on stdin)", _app_arg),
    "assemble": ("build the hulls, or a ship for APP (no launch)", _assemble_args),
    "launch": ("put an assembled ship in service", _launch_args),
    "enter": ("a shell inside the app's live ship", _app_arg),
    "headquarters": ("where orders come from", _headquarters_verbs),
    "fleet": ("several squadrons following one HQ (docs/fleet.md)", _fleet_verbs),
    "doctor": ("check this machine and say how to fix what is missing", _no_arguments),
    "version": ("print the version", _no_arguments),
    "token": ("make an admiral token for GET /events", _token_args),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser(_asked_verb(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if args.verb is None:
        parser().print_help()
        return EXIT_USAGE
    if args.verb == "version":
        print(f"hyperdrive {__version__}")
        return EXIT_OK
    try:
        config = configuration.load(args.config, environ=os.environ)
    except ConfigError as err:
        print(f"hd: config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return _dispatch(args, config)


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    """Run the verb; errors a user can cause become one line and an exit code."""
    try:
        return HANDLERS[args.verb](args, config)
    except DaemonUnavailable as err:
        print(f"hd: {err}", file=sys.stderr)
        return EXIT_DOWN
    except HyperdriveError as err:
        print(f"hd: {err}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive import httplib  # noqa: PLC0415 - keep `hd status` start-up light

    httplib.load()  # before anything imports aiohttp: its TLS contexts without the CA bundle
    from hyperdrive import server  # noqa: PLC0415

    server.setup_logging(args.verbose)
    server.run(config)
    return EXIT_OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    status = AdminClient(config.socket_path).get("/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    from rich.console import Console, Group  # noqa: PLC0415 - rich costs ~25 ms: only for people

    # one print of the whole view: a print per part cost ~0.05 ms each, 3 parts per app
    Console(highlight=False).print(Group(*status_view(status)))
    return EXIT_OK


def _lines(value: str) -> int | None:
    """`-n N` or `-n all`; argparse turns a refusal into its usage error (exit 2)."""
    from hyperdrive.history import parse_history  # noqa: PLC0415 - not for `hd status`

    try:
        return parse_history(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_logs(args: argparse.Namespace, config: Config) -> int:
    if args.output:
        return _app_output(args, config)
    events = AdminClient(config.socket_path).events(
        app=args.app,
        deploy=args.deploy,
        since=args.since,
        follow=args.follow,
        history=args.lines,
        fleet=args.fleet,
    )
    from hyperdrive.fleet.feed import prefixed  # noqa: PLC0415 - not for `hd status`

    for event in events:
        text = describe(event) if not args.fleet else prefixed(event, describe(event))
        print(json.dumps(event) if args.json else text, flush=True)
    return EXIT_OK


def _app_output(args: argparse.Namespace, config: Config) -> int:
    """`hd logs APP --app [-f]`: what the app's processes print (hyperdrive/applogs.py)."""
    if not args.app:
        print("hd logs --app needs an app: hd logs APP --app", file=sys.stderr)
        return EXIT_USAGE
    lines = 10_000 if args.lines is None else args.lines
    query = urlencode({"lines": lines, "follow": "1" if args.follow else "0"})
    for line in AdminClient(config.socket_path).lines("GET", f"/apps/{args.app}/output?{query}"):
        print(line, flush=True)
    return EXIT_OK


def cmd_ps(args: argparse.Namespace, config: Config) -> int:
    path = "/ps" + (f"?{urlencode({'app': args.app})}" if args.app else "")
    ps = AdminClient(config.socket_path).get(path)
    if args.json:
        print(json.dumps(ps, indent=2))
        return EXIT_OK
    if not ps["processes"]:
        print("no processes: no app has a live ship")
        return EXIT_OK
    from rich.console import Console  # noqa: PLC0415 - rich costs ~25 ms: only for people

    from hyperdrive.procview import ps_table  # noqa: PLC0415 - aiohttp: not for `hd status`

    Console(highlight=False).print(ps_table(ps))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """`hd run APP -- COMMAND`: its output, then its exit status as hd's own."""
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        print("usage: hd run APP -- COMMAND", file=sys.stderr)
        return EXIT_USAGE
    last: str | None = None  # the daemon's last line is the exit status: held back one line
    for line in AdminClient(config.socket_path).lines(
        "POST", f"/apps/{args.app}/run", {"argv": argv}
    ):
        if last is not None:
            print(last, flush=True)
        last = line
    try:
        return int(json.loads(last or "")["exit"])
    except (ValueError, KeyError, TypeError):
        print(last or "", flush=True)
        print("hyperdrive: the command's exit status was not said", file=sys.stderr)
        return EXIT_FAIL


def cmd_doctor(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive import doctor  # noqa: PLC0415 - keep `hd status` start-up light

    results = doctor.run_checks(config)
    from rich.console import Console  # noqa: PLC0415 - rich costs ~25 ms: only for people

    console = Console()
    for result in results:
        mark = "[green]ok[/]  " if result.ok else "[red]FAIL[/]"
        console.print(f"{mark} {result.name}: {result.detail}")
        if not result.ok and result.fix:
            console.print(f"      fix: {result.fix}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_FAIL


def cmd_token(args: argparse.Namespace, config: Config) -> int:
    answer = AdminClient(config.socket_path).post("/tokens", {"admiral": args.admiral})
    print(answer["token"])
    return EXIT_OK


def _follow(client: AdminClient, trigger: Trigger) -> int:
    """Queue a durable trigger, then show its events until its outcome; Ctrl-C leaves it be.

    The exit status is 0 only when the work finished (a deploy: after its drain)."""
    from hyperdrive.follow import follow_client  # noqa: PLC0415 - not for `hd status`

    deploy = client.post("/triggers", trigger.request())["deploy"]  # the daemon's id for it
    print(f"{trigger.kind} {deploy} queued (Ctrl-C stops watching, not the work)", flush=True)
    with _HullProgress() as progress:
        outcome = follow_client(client, deploy, progress.show)
    if (hint := outcome.hint("hd logs")) is not None:
        print(hint, flush=True)
    return EXIT_OK if outcome.ok else EXIT_FAIL


class _HullProgress:
    """A progress bar per hull build on a terminal (HullBuildProgress events); lines otherwise."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _HullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def show(self, event: Mapping[str, Any]) -> None:
        """A hull build's progress as a bar on a terminal; every other event as a log line."""
        if not self.update(event):
            print(describe(event), flush=True)

    def update(self, event: Mapping[str, Any]) -> bool:
        """True when the event was shown as progress (and needs no line of its own)."""
        if event.get("event") != "HullBuildProgress" or not sys.stdout.isatty():
            return False
        if self.bar is None:
            from rich.progress import Progress  # noqa: PLC0415 - only on a terminal

            self.bar = Progress()
            self.bar.start()
        hull = str(event.get("hull", "hull"))
        if hull not in self.tasks:
            self.tasks[hull] = self.bar.add_task(hull, total=100)
        self.bar.update(
            self.tasks[hull],
            completed=event.get("percent", 0),
            description=f"{hull}: {event.get('step', '')}"[:60],
        )
        return True


def cmd_deploy(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    client = AdminClient(config.socket_path)
    if args.fleet:
        _in_a_fleet(client)
    return _follow(client, Trigger.deploy(args.app, args.sha, fleet=args.fleet))


def cmd_rollback(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    client = AdminClient(config.socket_path)
    if args.fleet:
        _in_a_fleet(client)
    return _follow(client, Trigger.rollback(args.app, fleet=args.fleet))


def _in_a_fleet(client: AdminClient) -> None:
    """`--fleet` on a squadron alone is a mistake worth saying, not a local deploy."""
    state = (client.get("/status").get("fleet") or {}).get("state", "alone")
    if state == "alone":
        raise HyperdriveError("--fleet: this squadron is not in a fleet (see `hd fleet init`)")


def cmd_retire(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    return _follow(AdminClient(config.socket_path), Trigger.retire(args.app, "asked to"))


def cmd_secret(args: argparse.Namespace, config: Config) -> int:
    """`hd forge-token APP` / `hd notify-secret APP`: one line on stdin into $VAR/private_keys
    (mode 0600); an empty notify secret makes a fresh `whsec_` one and prints it once."""
    import base64  # noqa: PLC0415 - `hd status` starts without these
    import getpass  # noqa: PLC0415

    from hyperdrive.outbound import keys  # noqa: PLC0415

    tty = sys.stdin.isatty()  # typed: not echoed
    value = getpass.getpass(f"{args.verb} for {args.app}: ") if tty else sys.stdin.readline()
    if args.verb == keys.NOTIFY_SECRET and not value.strip():
        value = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        print(value)
    path = keys.store(config.private_keys_dir, args.app, args.verb, value)
    print(f"kept in {path}", file=sys.stderr)
    return EXIT_OK


def cmd_assemble(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    trigger = Trigger.assemble(args.app, fresh=args.fresh)
    return _follow(AdminClient(config.socket_path), trigger)


def cmd_launch(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    return _follow(AdminClient(config.socket_path), Trigger.launch(args.ship))


def cmd_enter(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.enter import enter_argv  # noqa: PLC0415 - not for `hd status`

    status = AdminClient(config.socket_path).get("/status")
    argv = enter_argv(status, args.app, config.containers_dir)
    os.execvp(argv[0], argv)  # noqa: S606 - replaces hd with the admiral's shell
    return EXIT_FAIL  # not reached


def cmd_headquarters(args: argparse.Namespace, config: Config) -> int:
    from hyperdrive.triggers import Trigger  # noqa: PLC0415 - not for `hd status`

    client = AdminClient(config.socket_path)
    if args.hq_verb == "set":
        _remember_headquarters(config, args.url)
        client.post("/headquarters", {"url": args.url})
        from hyperdrive.gitremote import shown_url  # noqa: PLC0415 - not for `hd status`

        print(f"headquarters: {shown_url(args.url)}")
        if not args.sync:
            return EXIT_OK
    return _follow(client, Trigger.hq_sync("hd headquarters sync"))


def cmd_fleet(args: argparse.Namespace, config: Config) -> int:
    client = AdminClient(config.socket_path, timeout=FLEET_TIMEOUT_S)
    if args.fleet_verb == "status":
        from hyperdrive.fleet.view import render as render_fleet  # noqa: PLC0415 - not for status

        shown = client.get("/fleet")
        print(json.dumps(shown, indent=2) if args.json else render_fleet(shown))
        return EXIT_OK
    body: dict[str, Any] = {"action": args.fleet_verb}
    if args.fleet_verb == "init":
        body["advertise"] = args.advertise
    elif args.fleet_verb == "join":
        body |= {"url": args.url, "secret": args.secret}
        body |= {"advertise": args.advertise, "node": not args.member}
    elif args.fleet_verb == "leave":
        body["force"] = args.force
    elif args.fleet_verb == "forget":
        body |= {"name": args.name, "force": args.force}
    answer = client.post("/fleet", body)
    if args.fleet_verb == "init":
        print(f"fleet started; its NATS node listens on {config.fleet_listen}")
        print("on each other squadron, run:")
        print(f"  {answer['join']}")
    elif args.fleet_verb == "join":
        node = "; a NATS node runs here too" if answer.get("node") else ""
        print(f"joined the fleet at {answer['url']}{node}")
    elif args.fleet_verb == "forget":
        peer = "; its NATS node is out of the cluster" if answer.get("node") else ""
        print(f"forgot squadron {answer['forgot']}{peer}")
    else:
        print("left the fleet: this squadron is alone again")
    return EXIT_OK


def _remember_headquarters(config: Config, url: str) -> None:
    """Write HYPERDRIVE_HEADQUARTERS into main.conf so the choice survives a restart."""
    from hyperdrive.files import write_atomically  # noqa: PLC0415 - not for `hd status`
    from hyperdrive.modes import SECRET_MODE  # noqa: PLC0415 - not for `hd status`

    path = config.source or configuration.DEFAULT_CONFIG
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if not ln.strip().startswith("HYPERDRIVE_HEADQUARTERS=")]
    lines.append(f"HYPERDRIVE_HEADQUARTERS={url}")
    write_atomically(path, "\n".join(lines) + "\n", mode=SECRET_MODE)  # the webhook secret


HANDLERS: dict[str, Handler] = {
    "serve": cmd_serve,
    "status": cmd_status,
    "logs": cmd_logs,
    "ps": cmd_ps,
    "run": cmd_run,
    "doctor": cmd_doctor,
    "token": cmd_token,
    "deploy": cmd_deploy,
    "rollback": cmd_rollback,
    "retire": cmd_retire,
    "forge-token": cmd_secret,
    "notify-secret": cmd_secret,
    "assemble": cmd_assemble,
    "launch": cmd_launch,
    "enter": cmd_enter,
    "headquarters": cmd_headquarters,
    "fleet": cmd_fleet,
}
