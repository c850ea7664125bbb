"""The exception tree: every error Hyperdrive raises on purpose is a HyperdriveError."""

from hyperdrive.credentials import strip_userinfo


class HyperdriveError(Exception):
    """Base of every error Hyperdrive raises on purpose."""


class ConfigError(HyperdriveError):
    """main.conf or the environment holds a value Hyperdrive cannot run with."""


class InvalidName(HyperdriveError):
    """An app, ship, hull or ref name failed validation at the boundary."""


class SpoolError(HyperdriveError):
    """The durable inbox could not take or read a trigger."""


class SpoolFull(SpoolError):
    """The data disk has no room for a trigger: refused before anything is written."""


class AlreadyRunning(HyperdriveError):
    """Another `hd serve` holds the lock on this data folder."""


class DaemonUnavailable(HyperdriveError):
    """The CLI could not reach the daemon's admin socket."""


class OrdersRejected(HyperdriveError):
    """An orders file could not be parsed; carries file and line."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class CommandFailed(HyperdriveError):
    """An external program exited non-zero or timed out; carries its own output."""

    def __init__(self, argv: list[str], returncode: int | None, output: str) -> None:
        shown = " ".join(argv[:4]) + (" …" if len(argv) > 4 else "")
        status = "timed out" if returncode is None else f"exited {returncode}"
        said = strip_userinfo(output.strip()[-2000:])  # git echoes a URL with its token
        super().__init__(strip_userinfo(f"{shown} {status}: {said}"))
        self.argv = argv
        self.returncode = returncode
        self.output = output


class ContainerError(HyperdriveError):
    """An lxc-* program failed; the message carries its log tail."""


class ProxyError(HyperdriveError):
    """nginx or nftables refused a change; the message carries their own words."""


class CertificateError(HyperdriveError):
    """A certificate could not be obtained or loaded (the ACME server's own words inside)."""


class DeployError(HyperdriveError):
    """A deploy stage failed; the old ship keeps serving."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class NetworkError(HyperdriveError):
    """The ships' bridge or address records could not be set up, or the subnet is full."""


class AttachTimedOut(ContainerError):
    """A command run in a ship with lxc-attach outlived its timeout and was killed."""

    def __init__(self, ship: str, timeout: float, output_tail: str) -> None:
        super().__init__(f"{ship}: command killed after {timeout:g} s: {output_tail[-2000:]}")
        self.ship = ship
        self.timeout = timeout
        self.output_tail = output_tail


class FleetError(HyperdriveError):
    """A fleet action that cannot be done (already a member, a name clash, wrong secret, …)."""
