"""A local stand-in for a forge and a team's webhook receiver, for tests only: no forge is
reachable from here. It is a real aiohttp server on loopback that checks every request against
the forge's documented API and refuses (400/401) what a real forge would refuse:

* GitHub commit statuses (docs.github.com/en/rest/commits/statuses): `POST
  /repos/{owner}/{repo}/statuses/{sha}` with a 40-hex sha, `Authorization: Bearer <token>`,
  JSON `state` in pending/success/failure/error, `target_url` (http URL), `description`
  (≤ 140 characters), `context`; answers 201.
* Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp` within 5 minutes,
  `webhook-signature: v1,<base64 HMAC-SHA256(id.timestamp.body)>` with the shared secret.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fixtures.webhooks.forge import standard_signature

GITHUB_STATES = {"pending", "success", "failure", "error"}
STATUS_PATH = re.compile(r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/statuses/(?P<sha>[0-9a-f]{40})")


@dataclass
class FakeForge:
    """GitHub's statuses API and a notify receiver on 127.0.0.1, in a thread of its own."""

    token: str
    secret: str
    fail_first: int = 0  # answer this many first status requests with 500
    hang_first: int = 0  # leave this many first status requests unanswered for a minute
    hanging: int = 0  # status requests held open now
    statuses: list[dict[str, Any]] = field(default_factory=list)  # accepted, in order
    answered: list[int] = field(default_factory=list)  # every status request's answer
    notified: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> FakeForge:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(10), "the fake forge did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self, started: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/repos/{owner}/{repo}/statuses/{sha}", self._status)
        app.router.add_post("/notify", self._notify)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        started.set()
        loop.run_forever()
        left = asyncio.all_tasks(loop)  # a request still held open by hang_first
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def _refuse(self, status: int, why: str) -> web.Response:
        self.refusals.append(why)
        self.answered.append(status)
        return web.json_response({"message": why}, status=status)

    async def _status(self, request: web.Request) -> web.Response:
        if not STATUS_PATH.fullmatch(request.path):
            return self._refuse(404, f"not a statuses path: {request.path}")
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._refuse(401, "Bad credentials")
        if request.headers.get("Accept") != "application/vnd.github+json":
            return self._refuse(400, "Accept is not application/vnd.github+json")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._refuse(400, "Problems parsing JSON")
        if problem := _status_problem(body):
            return self._refuse(422, problem)
        if self.hang_first > 0:
            self.hang_first -= 1
            self.hanging += 1
            try:
                await asyncio.sleep(60)
            finally:
                self.hanging -= 1
        if self.fail_first > 0:
            self.fail_first -= 1
            self.answered.append(500)
            return web.json_response({"message": "Server Error"}, status=500)
        self.answered.append(201)
        self.statuses.append({**body, "sha": request.match_info["sha"]})
        return web.json_response({"id": len(self.statuses), **body}, status=201)

    async def _notify(self, request: web.Request) -> web.Response:
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        stamp = request.headers.get("webhook-timestamp", "")
        signature = request.headers.get("webhook-signature", "")
        if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
            return self._refuse(400, "webhook-id or webhook-timestamp missing or stale")
        if standard_signature(self.secret, msg_id, stamp, body) not in signature.split():
            return self._refuse(401, "webhook-signature does not match")
        self.notified.append({"id": msg_id, **json.loads(body)})
        return web.Response(status=204)


def _status_problem(body: Any) -> str | None:
    """What GitHub would answer 422 for in a status body, or None."""
    if not isinstance(body, dict) or body.get("state") not in GITHUB_STATES:
        return "state is missing or not one of pending, success, failure, error"
    target = body.get("target_url")
    if not isinstance(target, str) or not target.startswith(("http://", "https://")):
        return "target_url is not a URL"
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 140:
        return "description is longer than 140 characters"
    if not isinstance(body.get("context", ""), str):
        return "context is not text"
    return None
