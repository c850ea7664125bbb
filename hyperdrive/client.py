"""The admin API client: how `hd` and git's post-receive hook talk to the daemon.

Plain http.client over the unix socket: `hd status` must answer in well under 100 ms, and
importing an async HTTP stack alone would cost that.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hyperdrive.errors import DaemonUnavailable, HyperdriveError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("hyperdrive", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.unix_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """HTTP over the daemon's unix socket (`$VAR/hd.sock`)."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def _open(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout: float | None
    ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        conn = _UnixConnection(self.socket, timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as err:
            conn.close()
            raise DaemonUnavailable(
                f"hyperdrive is not running (nothing answers at {self.socket}); start it with "
                "`systemctl start hyperdrive` or `hd serve`"
            ) from err
        except OSError as err:
            conn.close()
            raise DaemonUnavailable(f"cannot reach hyperdrive at {self.socket}: {err}") from err
        if response.status >= 400:
            text = response.read().decode(errors="replace").strip()
            conn.close()
            raise HyperdriveError(text or f"HTTP {response.status}")
        return conn, response

    def get(self, path: str) -> Any:
        return self._json("GET", path, None)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._json("POST", path, body)

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        conn, response = self._open(method, path, body, self.timeout)
        with contextlib.closing(conn):
            return json.loads(response.read())

    def events(
        self,
        *,
        app: str | None = None,
        deploy: str | None = None,
        since: str | None = None,
        follow: bool = False,
        history: int | None = 100,
        fleet: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Stored events that match, then (follow) live ones, as dicts, as they arrive;
        `fleet`: every squadron's, each with its `squadron`."""
        query = {"app": app, "deploy": deploy, "since": since, "follow": "1" if follow else "0"}
        query["fleet"] = "1" if fleet else None
        query["history"] = "all" if history is None else str(history)
        path = "/events?" + urlencode({k: v for k, v in query.items() if v})
        conn, response = self._open("GET", path, None, None if follow else self.timeout)
        with contextlib.closing(conn):
            try:
                for raw in response:
                    if raw.strip():
                        yield json.loads(raw)
            except (OSError, http.client.HTTPException) as err:
                raise DaemonUnavailable(f"lost hyperdrive at {self.socket}: {err}") from err

    def lines(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Iterator[str]:
        """A text answer line by line as it arrives (app output, a one-off command's)."""
        conn, response = self._open(method, path, body, None)
        with contextlib.closing(conn):
            try:
                for raw in response:
                    yield raw.decode("utf-8", "replace").rstrip("\n")
            except (OSError, http.client.HTTPException) as err:
                raise DaemonUnavailable(f"lost hyperdrive at {self.socket}: {err}") from err
