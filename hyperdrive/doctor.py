"""`hd doctor`: check what Hyperdrive needs from this machine and say how to fix each gap."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from hyperdrive.certs import CertStore
from hyperdrive.client import AdminClient
from hyperdrive.config import Config, Listen
from hyperdrive.errors import HyperdriveError
from hyperdrive.idmap import FIRST, SIZE, SUBGID, SUBUID, IdMap, blocked, owned, passage_error
from hyperdrive.keyring import parse_keys
from hyperdrive.lxc_async import detect_cgroups
from hyperdrive.modes import ship_passages, too_open
from hyperdrive.network import bridge_address
from hyperdrive.render import fleet_line
from hyperdrive.traffic import Traffic

APT = "apt-get install -y"
MIN_FREE_BYTES = 2 << 30
WARN_BEFORE = dt.timedelta(days=14)  # certificates: a renewal that keeps failing shows here


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check(
        "root",
        ok,
        "running as root" if ok else f"running as uid {os.geteuid()}",
        "run hyperdrive as root (it drives LXC, nginx and nftables)",
    )


def check_program(name: str, package: str) -> Check:
    path = shutil.which(name)
    return Check(name, path is not None, path or "not found", f"{APT} {package}")


def check_cgroups() -> Check:
    root = Path("/sys/fs/cgroup")
    v2 = (root / "cgroup.controllers").exists()
    v1_memory = (root / "memory").is_dir()
    if not (v2 or v1_memory):
        return Check(
            "cgroups",
            False,
            "no cgroup filesystem at /sys/fs/cgroup",
            "mount cgroups (systemd does) so ship limits can apply",
        )
    kinds = ", ".join(k for k, present in (("v2", v2), ("v1 memory", v1_memory)) if present)
    if detect_cgroups(root).pids is None:
        fix = "enable the pids controller (systemd does) so a fork bomb stays in its ship"
        return Check("cgroups", False, f"{kinds}, but no pids controller", fix)
    return Check("cgroups", True, f"{kinds}, pids")


def check_disk(config: Config) -> Check:
    folder = next((p for p in (config.data, *config.data.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(folder).free
    ok = free >= MIN_FREE_BYTES
    return Check(
        "disk",
        ok,
        f"{free / (1 << 30):.1f} GiB free under {folder}",
        "free at least 2 GiB for hulls and ships",
    )


def check_bridge(config: Config) -> Check:
    present = Path("/sys/class/net", config.bridge).exists()
    detail = f"{config.bridge} present" if present else f"{config.bridge} not created yet"
    # The daemon creates the bridge itself on first deploy: absence is not a failure.
    return Check("bridge", True, detail)


def check_ship_dns(config: Config, daemon_up: bool) -> Check:
    """The ships' DNS forwarder answers on the bridge address (once the bridge is there)."""
    address = str(bridge_address(config.subnet))
    if not Path("/sys/class/net", config.bridge).exists():
        return Check("ships' dns", True, f"binds to {address}:53 once {config.bridge} is made")
    if not daemon_up:
        return Check("ships' dns", True, "not running: the daemon is not running")
    import dns.exception  # noqa: PLC0415 - only hd doctor needs them
    import dns.message  # noqa: PLC0415
    import dns.query  # noqa: PLC0415
    import dns.rcode  # noqa: PLC0415

    query = dns.message.make_query(f"{config.name}-doctor.invalid", "A")
    try:
        answer = dns.query.udp(query, address, timeout=3)
    except (dns.exception.DNSException, OSError) as err:
        fix = f"see the daemon's log: something else may hold {address}:53"
        return Check("ships' dns", False, f"no answer from {address}:53 ({err})", fix)
    rcode = dns.rcode.to_text(answer.rcode())
    return Check("ships' dns", True, f"{address}:53 answers ({rcode} for a name that is not)")


def check_forwarding(config: Config) -> Check:
    """No other table's forward chain drops what ships send out (Docker-style hosts)."""
    traffic = Traffic(config.name, f"{bridge_address(config.subnet)}/24", device=config.bridge)
    try:
        drops = asyncio.run(traffic.forward_drops())
    except HyperdriveError as err:
        return Check("forwarding", False, f"cannot list nft chains: {err}", f"{APT} nftables")
    if drops:
        return Check("forwarding", False, f"{drops[0]} drops", traffic.forward_fix(drops[0]))
    return Check("forwarding", True, "no forward chain drops the ships' traffic")


def check_traffic_table(config: Config) -> Check:
    """Our nft table is whole; how often the daemon had to restore it (someone deleted it)."""
    traffic = Traffic(config.name, f"{bridge_address(config.subnet)}/24", device=config.bridge)
    try:
        damage = asyncio.run(traffic.damage())
    except HyperdriveError as err:
        return Check("traffic table", False, f"cannot list nft tables: {err}", f"{APT} nftables")
    if damage and not Path("/sys/class/net", config.bridge).exists():
        return Check("traffic table", True, "made at the first deploy")
    if damage:
        fix = "start hd serve: it makes the table again from the records (TrafficTableRestored)"
        return Check("traffic table", False, damage, fix)
    return Check("traffic table", True, f"whole, {_restores(config)}")


def _restores(config: Config) -> str:
    """How many times the event log says the table was restored, and the last time."""
    times = []
    with contextlib.suppress(OSError), config.events_file.open("rb") as log:
        times = [line[:60] for line in log if b'"TrafficTableRestored"' in line]
    if not times:
        return "never restored"
    last = re.search(rb'"ts":\s*"?([^",]+)', times[-1])
    return f"restored {len(times)}× (last {last.group(1).decode() if last else '?'})"


def _port_free(listen: Listen) -> bool:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError:
            return False
    return True


def check_daemon(config: Config) -> Check:
    try:
        status = AdminClient(config.socket_path, timeout=3).get("/status")
    except HyperdriveError as err:
        return Check("daemon", False, str(err), "start it: systemctl start hyperdrive, or hd serve")
    return Check("daemon", True, f"running, pid {status['pid']}, version {status['version']}")


def _fleet_programs(config: Config) -> list[Check]:
    """nats-server matters only to a squadron that runs the fleet's node."""
    if not (config.nats_dir / "nats.conf").exists():
        return []
    return [check_program("nats-server", "nats-server")]


def check_fleet(config: Config, daemon_up: bool) -> list[Check]:
    """A fleet member says whether it reaches NATS; a squadron alone has nothing to check."""
    if not daemon_up:
        return []
    try:
        fleet = AdminClient(config.socket_path, timeout=3).get("/status").get("fleet") or {}
    except HyperdriveError:
        return []
    state = fleet.get("state", "alone")
    if state == "alone":
        return []
    ok = state == "connected"
    fix = "check that nats-server runs and is reachable (`hd status`), and the fleet secret"
    return [Check("fleet", ok, fleet_line(fleet), fix)]


def check_admirals(config: Config, daemon_up: bool) -> Check:
    """Somebody must be able to log in: the keys in force are HQ's plus the bootstrap file's."""
    count = _live_admirals(config) if daemon_up else None
    where = "in force"
    if count is None:
        count, where = _admirals_on_disk(config), "on disk"
    fix = f"no admiral can log in: add a public key to {config.admiral_keys} (it applies at once)"
    return Check("admirals", count > 0, f"{count} admiral key(s) {where}", fix)


def _live_admirals(config: Config) -> int | None:
    """How many keys the running daemon accepts now (None from a daemon that does not say)."""
    try:
        count = AdminClient(config.socket_path, timeout=3).get("/status").get("admirals")
    except HyperdriveError:
        return None
    return count if isinstance(count, int) else None


def _admirals_on_disk(config: Config) -> int:
    """The bootstrap keys plus the HQ keys materialised in `$VAR/public_keys`."""
    files = [config.admiral_keys, *sorted(config.public_keys_dir.glob("*.pub"))]
    blobs: set[bytes] = set()
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        blobs |= {key.public_data for key in parse_keys(lines, str(path))[0]}
    return len(blobs)


def check_ports(config: Config, daemon_up: bool) -> list[Check]:
    ports = {
        "ssh port": config.ssh_listen,
        "api port": config.api_listen,
        "http port": Listen("0.0.0.0", config.http_port),
        "https port": Listen("0.0.0.0", config.https_port),
    }
    checks = []
    for name, listen in ports.items():
        if daemon_up:
            checks.append(Check(name, True, f"{listen} served by hyperdrive"))
            continue
        free = _port_free(listen)
        state = "free" if free else "taken by another program"
        fix = f"stop what listens on {listen} or change the key in main.conf"
        checks.append(Check(name, free, f"{listen} {state}", fix))
    return checks


def check_modes(config: Config) -> Check:
    """Secrets 0600, data 0640, folders 0750: name what is more open and the chmod that fixes it."""
    problems = too_open(config)
    if not problems:
        return Check("file modes", True, "secrets 0600, data 0640, folders 0750 or tighter")
    shown = "; ".join(str(p) for p in problems[:3])
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    fix = "; ".join(p.fix for p in problems[:3]) + (
        " (restarting the daemon fixes all)" if more else ""
    )
    return Check("file modes", False, f"too open: {shown}{more}", fix)


def check_ship_ids(config: Config, subuid: Path = SUBUID, subgid: Path = SUBGID) -> Check:
    """Ships run unprivileged: root needs an id range, and ships must reach their trees."""
    uid, gid = owned(subuid), owned(subgid)
    if uid is None or gid is None:
        first, last = FIRST, FIRST + SIZE - 1
        fix = f"usermod --add-subuids {first}-{last} --add-subgids {first}-{last} root"
        detail = f"root has no range of {SIZE} ids in {subuid} and {subgid}"
        return Check("ship ids", False, detail, f"{fix} (or start the daemon: it does so)")
    ids = IdMap(uid, gid)
    for folder in ship_passages(config):
        if (why := passage_error(folder, ids)) is not None:
            return Check("ship ids", False, why, f"chmod o+x {blocked(folder, ids)}")
    return Check("ship ids", True, f"ships run as uids {uid}-{uid + SIZE - 1} on this host")


def check_privileged_ships(config: Config) -> Check:
    """Ships made before ships ran unprivileged keep running so until they are replaced."""
    found = []
    with contextlib.suppress(OSError):
        for folder in sorted(config.containers_dir.iterdir()):
            with contextlib.suppress(OSError):
                text = (folder / "config").read_text()
                if "-hull-" not in folder.name and "lxc.idmap" not in text:
                    found.append(folder.name)
    if not found:
        return Check("unprivileged ships", True, "every ship maps its ids")
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    fix = "hd deploy APP for each app they serve (the new ship is unprivileged)"
    detail = f"privileged (made by an older version): {shown}"
    return Check("unprivileged ships", False, detail, fix)


def check_certificates(config: Config, now: dt.datetime | None = None) -> Check:
    """Every certificate on disk has 14 days or more left (ACME renews with a third left)."""
    now = now or dt.datetime.now(dt.UTC)
    found = CertStore(config.certs_dir).survey()
    if not found:
        return Check("certificates", True, "none yet (names get theirs once an app is served)")
    soon = sorted((end, name, own) for name, (end, own) in found.items() if end - now < WARN_BEFORE)
    if not soon:
        first = min(end for end, _ in found.values())
        return Check("certificates", True, f"{len(found)}, the first expires {when_day(first)}")
    end, name, own = soon[0]
    left = "expired" if end <= now else f"expires in {(end - now).days} days"
    more = f" (and {len(soon) - 1} more)" if len(soon) > 1 else ""
    fix = (
        f"put a renewed certificate in {config.certs_dir / name}/"
        if own
        else "see `hd logs` for CertificateFailed: the ACME server's own words"
    )
    return Check("certificates", False, f"{name} {left} ({when_day(end)}){more}", fix)


def when_day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def run_checks(config: Config) -> list[Check]:
    daemon = check_daemon(config)
    checks = [
        check_root(),
        check_program("lxc-start", "lxc"),
        check_program("lxc-create", "lxc"),
        check_program("debootstrap", "debootstrap"),
        check_program("nginx", "nginx"),
        check_program("git", "git"),
        check_program("nft", "nftables"),
        check_program("ip", "iproute2"),
        *_fleet_programs(config),
        check_cgroups(),
        check_disk(config),
        check_bridge(config),
        daemon,
        check_admirals(config, daemon.ok),
        check_ship_dns(config, daemon.ok),
        check_forwarding(config),
        check_traffic_table(config),
        check_modes(config),
        check_ship_ids(config),
        check_privileged_ships(config),
        check_certificates(config),
    ]
    return checks + check_fleet(config, daemon.ok) + check_ports(config, daemon.ok)
