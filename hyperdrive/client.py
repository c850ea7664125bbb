"""The admin API client: how `hd` and git's post-receive hook talk to the daemon.

HTTP/1.0 over the unix socket, written here in a few lines: each request is one connection
and each answer runs to its end (its Content-Length, or the daemon closing it, as streamed
events do), so there is no chunking or keep-alive to handle. `hd status` must answer in well
under 100 ms: an async HTTP stack costs that alone, and http.client's imports (its email
parser and ssl) half of what is left.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from hyperdrive.errors import DaemonUnavailable, HyperdriveError

MAX_HEAD_LINE = 65536  # a status or header line longer than this is not the daemon's


class Answer:
    """One answer: its status, then its body, whole or line by line as it arrives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.body: IO[bytes] = sock.makefile("rb")
        self.status, self.length = self._head()

    def _head(self) -> tuple[int, int | None]:
        """The status line's code and the Content-Length, if the daemon gave one."""
        words = self.body.readline(MAX_HEAD_LINE).split(None, 2)
        if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
            raise OSError(f"not an HTTP answer: {b' '.join(words)[:80]!r}")
        length = None
        while (line := self.body.readline(MAX_HEAD_LINE)).strip():
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        return int(words[1]), length

    def read(self) -> bytes:
        return self.body.read() if self.length is None else self.body.read(self.length)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        self.body.close()
        self.sock.close()


class AdminClient:
    """HTTP over the daemon's unix socket (`$VAR/hd.sock`)."""

    def __init__(self, socket_path: Path, timeout: float = 10.0) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def _open(
        self, method: str, path: str, body: Mapping[str, Any] | None, timeout: float | None
    ) -> Answer:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.socket))
            sock.sendall(_request(method, path, body))
            answer = Answer(sock)
        except (FileNotFoundError, ConnectionRefusedError) as err:
            sock.close()
            raise DaemonUnavailable(
                f"hyperdrive is not running (nothing answers at {self.socket}); start it with "
                "`systemctl start hyperdrive` or `hd serve`"
            ) from err
        except OSError as err:
            sock.close()
            raise DaemonUnavailable(f"cannot reach hyperdrive at {self.socket}: {err}") from err
        if answer.status >= 400:
            text = _read(answer).decode(errors="replace").strip()
            answer.close()
            raise HyperdriveError(text or f"HTTP {answer.status}")
        return answer

    def get(self, path: str) -> Any:
        return self._json("GET", path, None)

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        return self._json("POST", path, body)

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None) -> Any:
        answer = self._open(method, path, body, self.timeout)
        with contextlib.closing(answer):
            return json.loads(_read(answer))

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
        answer = self._open("GET", path, None, None if follow else self.timeout)
        with contextlib.closing(answer):
            try:
                for raw in answer:
                    if raw.strip():
                        yield json.loads(raw)
            except OSError as err:
                raise DaemonUnavailable(f"lost hyperdrive at {self.socket}: {err}") from err

    def lines(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Iterator[str]:
        """A text answer line by line as it arrives (app output, a one-off command's)."""
        answer = self._open(method, path, body, None)
        with contextlib.closing(answer):
            try:
                for raw in answer:
                    yield raw.decode("utf-8", "replace").rstrip("\n")
            except OSError as err:
                raise DaemonUnavailable(f"lost hyperdrive at {self.socket}: {err}") from err


def _request(method: str, path: str, body: Mapping[str, Any] | None) -> bytes:
    """An HTTP/1.0 request: the daemon closes the connection once it has answered."""
    head = f"{method} {path} HTTP/1.0\r\nHost: hyperdrive\r\n"
    if body is None:
        return (head + "\r\n").encode()
    payload = json.dumps(body).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def _read(answer: Answer) -> bytes:
    """The whole body; a connection lost on the way is the daemon gone."""
    try:
        return answer.read()
    except OSError as err:
        raise DaemonUnavailable(f"lost hyperdrive while it answered: {err}") from err
