"""Push checks: everything that refuses an HQ change, one `file[:line]: message` per problem.

pre-receive runs them on a hosted push; a remote HQ's sync runs the same before it applies.
"""

from __future__ import annotations

from collections.abc import Mapping

from hyperdrive.errors import OrdersRejected
from hyperdrive.headquarters.admirals import KEYS_DIR
from hyperdrive.headquarters.orders import Orders
from hyperdrive.headquarters.reader import Headquarters


def describe(err: OrdersRejected) -> str:
    """`file:line: message`, or `file: message` when the whole file is at fault."""
    return f"{err.path}:{err.line}: {err.message}" if err.line else f"{err.path}: {err.message}"


def check(
    hq: Headquarters,
    *,
    bootstrap_keys_present: bool,
    reserved_ports: Mapping[int, str] | None = None,
    domain: str = "",
) -> list[str]:
    """Everything that should refuse an HQ push, one `file[:line]: message` per problem.

    Lockout rule: bootstrap keys (HYPERDRIVE_ADMIRAL_KEYS) stay valid while HQ has no key
    of its own, so an HQ with zero valid admiral keys is refused only when no bootstrap key
    is present either — then nobody could ever push to HQ again. Key files with errors are
    refused too, so a private key committed by mistake never lands.
    """
    problems = [describe(err) for err in hq.rejected.values()]
    problems += hq.key_errors
    problems += _port_collisions(hq, reserved_ports or {})
    problems += _servername_collisions(hq, domain)
    if hq.key_count() == 0 and not bootstrap_keys_present:
        problems.append(
            f"{KEYS_DIR}/: no valid admiral key would be left and there is no bootstrap key; "
            "refused so nobody is locked out"
        )
    return problems


def _port_collisions(hq: Headquarters, reserved: Mapping[int, str]) -> list[str]:
    """PUBLISH_PORTs claimed twice, or claimed from a port Hyperdrive itself uses."""
    problems: list[str] = []
    owners: dict[int, Orders] = {}
    for app in sorted(hq.apps):
        orders = hq.apps[app]
        port = orders.publish_port
        if port is None:
            continue
        where = orders.where("export PUBLISH_PORT")
        if port in reserved:
            problems.append(f"{where}: PUBLISH_PORT {port} is {reserved[port]}")
        elif port in owners:
            first = owners[port]
            problems.append(
                f"{where}: PUBLISH_PORT {port} is already published by {first.app} "
                f"({first.where('export PUBLISH_PORT')})"
            )
        else:
            owners[port] = orders
    return problems


def _servername_collisions(hq: Headquarters, domain: str) -> list[str]:
    """Host names two apps claim, including the implicit `<app>.<domain>`."""
    owners = {f"{app}.{domain}".lower(): (app, "") for app in hq.apps} if domain else {}
    problems: list[str] = []
    for app in sorted(hq.apps):
        orders = hq.apps[app]
        for host in orders.servernames:
            owner = owners.get(host)
            if owner is not None and owner[0] != app:
                first = f" ({owner[1]})" if owner[1] else " (its own name under the domain)"
                problems.append(
                    f"{orders.where(f'servername {host}')}: servername {host} is already "
                    f"served by {owner[0]}{first}"
                )
            elif owner is None:
                owners[host] = (app, orders.where(f"servername {host}"))
    return problems
