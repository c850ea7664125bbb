"""The fleet link: one NATS connection, the trigger stream, squadron presence, the outbox.

Loaded only when a fleet is configured (the import of nats lives here). The link never
stops the squadron: while NATS is unreachable it keeps retrying, the spool keeps taking
triggers, and the outbox keeps what the fleet has not acknowledged yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, ObjectMeta, ObjectStoreConfig, StreamConfig
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from hyperdrive.errors import FleetError
from hyperdrive.eventlog import Event, EventSink, Filter, Subscription
from hyperdrive.fleet import bundles, feed, rollout, view
from hyperdrive.fleet.bundles import Bundles
from hyperdrive.fleet.outbox import Outbox
from hyperdrive.fleet.relay import Relay, encode, shared
from hyperdrive.fleet.state import Creds, node_routes, replicas_for
from hyperdrive.spool import FileSpool
from hyperdrive.triggers import Trigger

log = logging.getLogger(__name__)

STREAM = "HD_TRIGGERS"
SUBJECT = "hd.trigger"
PRESENCE = "hd_squadrons"
APPS = "hd_apps"  # KV: `<squadron>.<app>` → that app's sha, ship, health there
TIPS = "hd_tips"  # KV: `<repo>/<ref>` → the newest shared push to it (a joiner's start)
BUNDLES = "hd_bundles"  # object store: `<app>/<sha>` → the git bundle of that push
BUNDLE_STORE_BYTES = 4 * 1024**3  # full: a push's bundle is not stored (the others fail it)
EVENTS = "HD_EVENTS"  # every squadron's events, tagged (feed.py)
EVENTS_MAX_AGE_S = 24 * 3600.0  # one day of the fleet's story; each squadron keeps its own log
EVENTS_MAX_BYTES = 100 * 1024**2
ROLLOUTS = "hd_rollouts"  # KV: `<app>.<deploy digest>` → plan; `….<squadron>` → its result
ROLLOUT_WAIT_S = 3600.0  # a wave not opened within this is held (a squadron never reported)
REPORT_TRY_S = 60.0  # a rollout result is tried this long while NATS is away
WATCH_ALIVE_S = 30.0  # a rollout's watch checks its connection is the same at least this often
NODES = "hd.fleet.nodes"  # request/reply: a squadron joining as a node asks for the routes
RETENTION_S = 7 * 24 * 3600  # as long as the spool remembers done ids
REBASE_AFTER_S = RETENTION_S - 24 * 3600  # a chain this old starts again from a whole history
DEDUPE_WINDOW_S = 3600.0
ACK_WAIT_S = 30.0
FETCH_WAIT_S = 10.0  # a pull waits this long; a pull lost with its consumer leader is retried
CONNECT_TIMEOUT_S = 3
PUBLISH_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 5.0
FETCH_TRIES, FETCH_PAUSE_S = 10, 2.0  # a bundle store that does not answer: ~1 min at most
SERVER_REMOVE = "$JS.API.SERVER.REMOVE"  # the meta leader answers; system account only
NOT_A_MEMBER = 10044  # its error code when the peer is gone already

CONNECTING, CONNECTED, UNREACHABLE, REFUSED = "connecting", "connected", "unreachable", "refused"


class FleetStreamLost(Exception):
    """Connected, yet the stream does not answer: set it up again in a new session."""


@dataclass(frozen=True)
class Identity:
    """Who this squadron is in the fleet: its name and the id of its data folder."""

    name: str
    instance: str
    version: str
    route: str = ""  # a node's cluster URL, as the other nodes reach it ("" for a member)
    client: str = ""  # a node's client URL, as the other squadrons reach it


async def connect(
    urls: tuple[str, ...],
    creds: Creds,
    *,
    name: str,
    retry: bool,
    on_state: Callable[[str, str], None] = lambda state, detail: None,
) -> Client:
    """A NATS connection with the fleet's credentials; `retry` keeps reconnecting forever."""

    async def error(err: Exception) -> None:
        said = str(err) or type(err).__name__
        if isinstance(err, nats.errors.AuthorizationError) or "authoriz" in said.lower():
            on_state(REFUSED, "NATS refused the fleet credentials (wrong secret?)")
        elif client.is_connected:  # one the connection outlived (a callback's, a consumer's):
            log.warning("NATS: %s", said)  # it must not leave a connected link "unreachable"
        else:
            on_state(UNREACHABLE, f"NATS unreachable: {said}")

    async def disconnected() -> None:
        on_state(UNREACHABLE, "NATS connection lost; reconnecting")

    async def reconnected() -> None:
        on_state(CONNECTED, "")

    client = Client()
    try:
        await client.connect(
            list(urls),
            user=creds.user,
            password=creds.password,
            name=f"hyperdrive {name}",
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=retry,
            max_reconnect_attempts=-1 if retry else 0,
            reconnect_time_wait=1,
            error_cb=error,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
    except BaseException:
        await _discard(client)
        raise
    return client


async def _discard(client: Client) -> None:
    """A connection that failed half-way: close what nats-py left open (its socket)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 5)
    transport = getattr(client, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


async def probe(urls: tuple[str, ...], creds: Creds, identity: Identity) -> None:
    """`hd fleet join`: connect once and check the name is free; FleetError says why not."""
    refused: list[str] = []
    try:
        nc = await connect(
            urls, creds, name=identity.name, retry=False, on_state=lambda s, d: refused.append(d)
        )
    except Exception as err:  # noqa: BLE001 - nats-py raises many kinds; each is "not reached"
        why = next((d for d in refused if "credentials" in d), "")
        raise FleetError(why or f"cannot reach the fleet at {', '.join(urls)}: {err}") from None
    try:
        js = nc.jetstream()
        kv = await presence_bucket(js)
        await check_name(kv, identity)
    finally:
        await nc.close()


async def ensure_stream(js: JetStreamContext) -> None:
    """The trigger stream: dedupe by Nats-Msg-Id, kept as long as the spool remembers ids."""
    await _stream(
        js,
        StreamConfig(
            name=STREAM,
            subjects=[f"{SUBJECT}.>"],
            max_age=RETENTION_S,
            duplicate_window=DEDUPE_WINDOW_S,
        ),
    )


async def _stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Make the stream `config` names unless it is there (R3 where the cluster allows)."""
    try:
        await js.stream_info(str(config.name))
        return
    except nats.js.errors.NotFoundError:
        pass
    await _with_replicas(lambda r: js.add_stream(config, num_replicas=r))


async def fit(js: JetStreamContext, nodes: int) -> int:
    """Grow the stream, the KV buckets and the bundle store to R3 once the cluster has three
    nodes, shrink them to R1 when fewer remain; the replicas all have now (the lowest)."""
    target = replicas_for(nodes)
    replicas = target
    for name in (
        STREAM,
        EVENTS,
        f"KV_{PRESENCE}",
        f"KV_{APPS}",
        f"KV_{TIPS}",
        f"KV_{ROLLOUTS}",
        f"OBJ_{BUNDLES}",
    ):
        try:
            info = await js.stream_info(name)
            if (info.config.num_replicas or 1) != target:
                info = await js.update_stream(replace(info.config, num_replicas=target))
            replicas = min(replicas, info.config.num_replicas or 1)
        except (nats.js.errors.Error, nats.errors.Error) as err:
            log.debug("fleet: %s stays at its replicas for now: %s", name, err)
            replicas = 1
    return replicas


async def remove_peer(urls: tuple[str, ...], creds: Creds, server: str) -> None:
    """Take node `server` out of the JetStream meta group (a node that left or was
    forgotten); done when it is out already. FleetError when no meta leader took it."""
    system = creds.system()
    try:
        nc = await connect(urls, system, name=f"{server}-remove", retry=False)
    except Exception as err:  # noqa: BLE001 - nats-py raises many kinds
        raise FleetError(f"cannot reach the fleet's nodes to remove {server}: {err}") from None
    try:
        for _ in range(10):  # a meta leader may be in election just after a node stopped
            with contextlib.suppress(nats.errors.Error, TimeoutError, ValueError):
                answer = json.loads((await nc.request(SERVER_REMOVE, _peer(server), 3)).data)
                error = answer.get("error") or {}
                if answer.get("success") or error.get("err_code") == NOT_A_MEMBER:
                    return
                log.debug("fleet: removing peer %s: %s", server, error)
            await asyncio.sleep(1)
    finally:
        await _discard(nc)
    raise FleetError(f"the fleet's JetStream did not remove the peer {server}")


async def fit_at(urls: tuple[str, ...], creds: Creds, leaving: str) -> None:
    """After a node left: the fleet's replicas fitted to the nodes that remain."""
    nc = await connect(urls, creds, name=f"{leaving}-leaving", retry=False)

    async def fitted() -> bool:
        squadrons = await entries(js)
        nodes = len({n for n in node_routes(squadrons) if n != leaving})
        return await fit(js, nodes) == replicas_for(nodes)

    try:
        js = nc.jetstream()
        await patiently(fitted)
    finally:
        await _discard(nc)


async def patiently(work: Callable[[], Awaitable[bool]], tries: int = 10) -> None:
    """Again until `work` says done: just after a node is lost, the leaders of the meta
    group, the stream and the buckets move, and JetStream requests time out meanwhile."""
    for _ in range(tries - 1):
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            if await work():
                return
        await asyncio.sleep(1)
    if not await work():
        raise FleetError("the fleet's JetStream did not settle")


def _peer(server: str) -> bytes:
    return json.dumps({"peer": server}).encode()


async def ask_for_routes(
    urls: tuple[str, ...], creds: Creds, identity: Identity, route: str
) -> list[str]:
    """`hd fleet join` as a node: a node of the fleet answers with the routes to its peers."""
    nc = await connect(urls, creds, name=identity.name, retry=False)
    try:
        body = json.dumps({"name": identity.name, "route": route}).encode()
        answer = await nc.request(NODES, body, timeout=10)
    except nats.errors.Error as err:
        why = f"no NATS node of the fleet answered ({err}); join without --node"
        raise FleetError(why) from None
    finally:
        await nc.close()
    routes = json.loads(answer.data).get("routes")
    if not isinstance(routes, list) or not routes:
        raise FleetError("the fleet's node gave no routes; join without --node")
    return [str(r) for r in routes]


async def ensure_events(js: JetStreamContext) -> None:
    """The fleet's events: a day of them, at most 100 MB, the oldest dropped first."""
    await _stream(
        js,
        StreamConfig(
            name=EVENTS,
            subjects=[f"{feed.SUBJECT}.>"],
            max_age=EVENTS_MAX_AGE_S,
            max_bytes=EVENTS_MAX_BYTES,
        ),
    )


async def rollout_bucket(js: JetStreamContext) -> KeyValue:
    """Rollout plans and results, kept as long as the triggers they are for."""
    try:
        return await js.key_value(ROLLOUTS)
    except nats.js.errors.BucketNotFoundError:
        pass
    kv: KeyValue = await _with_replicas(
        lambda r: js.create_key_value(bucket=ROLLOUTS, history=1, ttl=RETENTION_S, replicas=r)
    )
    return kv


async def bundle_store(js: JetStreamContext) -> ObjectStore:
    """The pushes' bundles, kept as long as the triggers that name them, R3 where it can."""
    try:
        return await js.object_store(BUNDLES)
    except nats.js.errors.BucketNotFoundError:
        pass

    def config(replicas: int) -> ObjectStoreConfig:
        return ObjectStoreConfig(ttl=RETENTION_S, max_bytes=BUNDLE_STORE_BYTES, replicas=replicas)

    store: ObjectStore = await _with_replicas(
        lambda r: js.create_object_store(BUNDLES, config=config(r))
    )
    return store


async def put_bundle(js: JetStreamContext, code: Bundles, trigger: Trigger) -> bool:
    """The push's bundle into the store; False: try again (NATS did not answer). A bundle
    that cannot be made or stored is said and skipped: the others then fail that deploy."""
    update = trigger.update
    if update is None or update.deleted:
        return True
    repo = bundles.repo_name(trigger)
    try:
        store = await bundle_store(js)
        base = None if update.created else await _chain_base(store, bundles.key(repo, update.old))
        data = await code.make(trigger, whole=base is None)
        said = {"old": "" if base is None else update.old, "base": base or time.time()}
        meta = ObjectMeta(description=json.dumps(said))
        await store.put(bundles.key(repo, update.new), data, meta=meta)
    except (FleetError, nats.js.errors.APIError) as err:
        log.warning("fleet: no bundle of %s in the fleet's store: %s", trigger.id, err)
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as err:
        log.debug("fleet: storing the bundle of %s failed: %s", trigger.id, err)
        return False
    return True


async def _chain_base(store: ObjectStore, name: str) -> float | None:
    """When the whole-history bundle the chain of `name` starts from was stored; None: start
    a new chain (that push's bundle is gone, or the chain's start would expire first)."""
    try:
        info = await store.get_info(name)
    except nats.js.errors.NotFoundError:
        return None
    base = _described(info.description)[1]
    return base if time.time() - base < REBASE_AFTER_S else None


def _described(text: str | None) -> tuple[str, float]:
    """(old, base) from a stored bundle's description."""
    try:
        said = json.loads(text or "{}")
        return str(said.get("old") or ""), float(said.get("base") or 0)
    except (ValueError, TypeError, AttributeError):
        return "", 0.0


async def get_bundle(js: JetStreamContext, name: str) -> tuple[bytes, str] | None:
    """A push's bundle and the `old` its chain goes on with ("" for a whole history); None
    when the store has not got it."""
    store = await bundle_store(js)
    try:
        found = await store.get(name)
    except nats.js.errors.NotFoundError:
        return None
    return bytes(found.data or b""), _described(found.info.description)[0]


async def presence_bucket(js: JetStreamContext, bucket: str = PRESENCE) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    kv: KeyValue = await _with_replicas(
        lambda r: js.create_key_value(bucket=bucket, history=1, replicas=r)
    )
    return kv


async def keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys a bucket holds, deleted ones included (their marker is a message too).

    They come from the stream leader's count per subject, not `KeyValue.keys()`: its
    watcher can say "no more" before the first key arrived (seen while a leader moved), and
    an empty answer would read as "no squadrons" or "no rollouts". Unreachable raises."""
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    return sorted(subject.removeprefix(prefix) for subject in info.state.subjects or {})


async def entries(js: JetStreamContext, bucket: str = PRESENCE) -> dict[str, dict[str, Any]]:
    """Every live key of a small bucket (one entry per squadron) with its JSON value."""
    kv = await presence_bucket(js, bucket)
    found = {}
    for name in await keys(js, bucket):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            value = json.loads((await kv.get(name)).value or b"{}")
            found[name] = value if isinstance(value, dict) else {}
    return found


async def _with_replicas(make: Callable[[int], Awaitable[Any]]) -> Any:
    """R3 where the cluster has three nodes, else R1 (a lone node, or while it grows)."""
    try:
        return await make(3)
    except nats.js.errors.APIError:
        return await make(1)


async def check_name(kv: KeyValue, identity: Identity) -> None:
    """Refuse a name another squadron (another data folder) holds in this fleet."""
    try:
        entry = await kv.get(identity.name)
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
        return
    holder = json.loads(entry.value or b"{}")
    if holder.get("id") != identity.instance:
        raise FleetError(
            f"the squadron name {identity.name!r} is already taken in this fleet "
            f"(by squadron {holder.get('id', '?')}); give this squadron another "
            "HYPERDRIVE_NAME, or run `hd fleet leave` on the other one"
        )


async def claim_name(kv: KeyValue, identity: Identity) -> None:
    """Take this squadron's name, atomically: create, or update our own entry."""
    entry: dict[str, Any] = {"id": identity.instance, "version": identity.version}
    if identity.route:
        entry |= {"route": identity.route, "client": identity.client}
    value = json.dumps({**entry, "seen": time.time()}).encode()
    try:
        await kv.create(identity.name, value)
        return
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    await check_name(kv, identity)
    await kv.put(identity.name, value)


class _MsgDelivery:
    """A JetStream message as the relay's Delivery."""

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    async def ack(self) -> None:
        await self.msg.ack()

    async def in_progress(self) -> None:
        await self.msg.in_progress()

    async def term(self) -> None:
        await self.msg.term()


class _Replayed:
    """A tip replayed for a squadron that just joined: no stream delivery to acknowledge."""

    async def ack(self) -> None:
        return

    async def in_progress(self) -> None:
        return

    async def term(self) -> None:
        return


NodesHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
RoutesHandler = Callable[[dict[str, str]], Awaitable[None]]


class FleetLink:
    """The daemon's side of the fleet: publish the outbox, consume the stream, say its state."""

    def __init__(
        self,
        identity: Identity,
        urls: tuple[str, ...],
        creds: Creds,
        spool: FileSpool,
        outbox: Outbox,
        *,
        answer_nodes: NodesHandler | None = None,
        code: Bundles | None = None,
        app_rows: Callable[[], list[dict[str, Any]]] | None = None,
        events: EventSink | None = None,
        on_routes: RoutesHandler | None = None,
    ) -> None:
        self.events = events  # this squadron's event log, shared with the fleet
        self._feed: Subscription | None = None
        self.board = RolloutBoard(self)
        self.on_routes = on_routes  # a node: the fleet's nodes' routes, to keep in its config
        self.app_rows = app_rows  # this squadron's apps, as `hd status` shows them
        self._outcome = asyncio.Event()  # a deploy here has an outcome: tell the fleet
        self.answer_nodes = answer_nodes  # set where this squadron runs a node
        self.code = code  # the hosted repos pushes' bundles come from and go to
        self.identity = identity
        self.urls = urls
        self.creds = creds
        self.spool = spool
        self.outbox = outbox
        self.relay = Relay(
            spool, outbox, connected=lambda: self.state == CONNECTED, prepare=self._fetch_code
        )
        self.state, self.detail = CONNECTING, ""
        self.connections = 0  # how often it (re)connected: a watch made before is stale
        self.published = 0
        self.replicas = 0  # of the trigger stream, as last seen (0: not yet)
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconnected = asyncio.Event()
        self._discovered: list[str] = []  # the fleet's other nodes, as the last connection knew

    def _set(self, state: str, detail: str) -> None:
        if state == CONNECTED and self.state != CONNECTED:
            self._reconnected.set()
            self.connections += 1
        if self.state == REFUSED and state == UNREACHABLE:
            return  # keep the reason a user can fix
        if (state, detail) != (self.state, self.detail):
            log.info("fleet: %s%s", state, f" ({detail})" if detail else "")
        self.state, self.detail = state, detail

    async def start(self) -> None:
        """Take the spool's triggers from now on; connect in the background (never blocks)."""
        await asyncio.to_thread(self.outbox.load)
        for trigger in self.spool.pending():  # taken just before a crash, not yet in the outbox
            if shared(trigger) and trigger.id not in self.outbox:
                await self.outbox.add(trigger)
        self.spool.listeners.append(self.relay)
        self.spool.listeners.append(self)
        if self.events is not None:  # from now on; kept while NATS is away, up to its queue
            self._feed = self.events.subscribe(Filter())
        self._task = asyncio.create_task(self._run(), name="fleet link")

    # -- the spool's listener: an outcome here is news for `hd fleet status` --
    async def taken(self, trigger: Trigger) -> None:
        return

    async def finished(self, trigger_id: str, outcome: str) -> None:
        self._outcome.set()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.spool.listeners.remove(self)
        with contextlib.suppress(ValueError):
            self.spool.listeners.remove(self.relay)
        if self._task is not None:
            await _cancelled(self._task)
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)
            self._nc = None

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except FleetStreamLost as err:
                log.info("fleet: setting up again (%s)", err)
                backoff = 0.5
            except FleetError as err:
                self._set(REFUSED, str(err))
            except Exception as err:  # noqa: BLE001 - any failure: say it, retry, keep serving
                self._set(UNREACHABLE, f"NATS unreachable: {err or type(err).__name__}")
            await self._close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _close(self) -> None:
        if self._nc is not None:
            # the whole pool, not only what this connection discovered: the nodes a session
            # was given are not "discovered" by it, and would be lost at the one after it
            self._discovered = [u.geturl() for u in self._nc.servers]
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 5)
            self._nc = None

    def _servers(self) -> tuple[str, ...]:
        """The configured URLs first, then the nodes the last connection learned of: a new
        session still finds the fleet when the configured node is the one that is gone."""
        return tuple(dict.fromkeys([*self.urls, *self._discovered]))

    async def _session(self) -> None:
        """Connect, set up, then run until something fails for good."""
        self._nc = await connect(
            self._servers(), self.creds, name=self.identity.name, retry=True, on_state=self._set
        )
        js = self._nc.jetstream()
        await ensure_stream(js)
        self.replicas = (await js.stream_info(STREAM)).config.num_replicas or 1
        presence = await presence_bucket(js)
        await claim_name(presence, self.identity)
        apps = await presence_bucket(js, APPS)
        await presence_bucket(js, TIPS)  # made now, so that it grows to R3 with the others
        await bundle_store(js)  # made now, so that it grows to R3 with the others
        await ensure_events(js)
        await rollout_bucket(js)
        joined = not await _has_consumer(js, self.identity.name)
        sub = await js.pull_subscribe(
            f"{SUBJECT}.>",
            durable=self.identity.name,
            stream=STREAM,
            config=ConsumerConfig(
                ack_wait=ACK_WAIT_S, deliver_policy=DeliverPolicy.NEW, max_ack_pending=10_000
            ),
        )
        if self.answer_nodes is not None:
            await self._nc.subscribe(NODES, queue="hd-nodes", cb=self._nodes_request)
        self._set(CONNECTED, "")
        workers = [self._consume(sub), self._publish(js), self._keep_alive()]
        workers += [self._heartbeat(js, presence, joined), self._report_apps(apps)]
        workers.append(self._share_events())
        tasks = [asyncio.create_task(w) for w in workers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _consume(self, sub: JetStreamContext.PullSubscription) -> None:
        """Every trigger of the stream once per squadron, catch-up first, in order."""
        while True:
            try:
                msgs = await self._fetch(sub)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                await self.relay.received(msg.data, _MsgDelivery(msg))

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        """One pull; a reconnection cuts it short (the server forgot the pending pull), so
        what was published meanwhile arrives at once, not when the pull expires."""
        self._reconnected.clear()
        pull = asyncio.create_task(sub.fetch(batch=256, timeout=FETCH_WAIT_S))
        wake = asyncio.create_task(self._reconnected.wait())
        try:
            await asyncio.wait({pull, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when the session is cancelled: neither task is left behind
            for task in (pull, wake):
                task.cancel()
            outcome = await asyncio.gather(pull, wake, return_exceptions=True)
        if isinstance(outcome[0], asyncio.CancelledError):
            # reconnected, maybe to a node that lost its store (a lone node turned cluster
            # node): set the stream, the name and the consumer up again
            raise FleetStreamLost("reconnected")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return list(outcome[0])

    async def _publish(self, js: JetStreamContext) -> None:
        """The outbox, in order; a trigger leaves it only once the stream has acked it.

        Failing while connected (the stream lost with a node's store, say) ends the session,
        so the next one sets the stream up again. Each session starts with what is unsent: the
        session before may have ended in the middle of a retry, its wake-up already taken."""
        while True:
            for trigger in self.outbox.unsent():
                await self._publish_until_acked(js, trigger)
            await self.outbox.changed.wait()
            self.outbox.changed.clear()

    async def _publish_until_acked(self, js: JetStreamContext, trigger: Any) -> None:
        backoff, failed_connected = 0.2, 0
        while not await self._publish_one(js, trigger):
            connected = self._nc is not None and self._nc.is_connected
            failed_connected = failed_connected + 1 if connected else 0
            if failed_connected >= 5:
                raise FleetStreamLost(f"the trigger stream does not take {trigger.id}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _publish_one(self, js: JetStreamContext, trigger: Any) -> bool:
        subject = f"{SUBJECT}.{trigger.kind}"
        code = self.code if bundles.carries_code(trigger) else None
        if code is not None and not await put_bundle(js, code, trigger):
            return False
        try:
            await js.publish(
                subject,
                encode(trigger),
                timeout=PUBLISH_TIMEOUT_S,
                headers={"Nats-Msg-Id": trigger.id},
            )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as err:
            log.debug("fleet: publishing %s failed: %s", trigger.id, err)
            return False
        self.published += 1
        await self.outbox.sent(trigger.id)
        if code is not None:
            await self._note_tip(js, trigger)
        return True

    async def _note_tip(self, js: JetStreamContext, trigger: Trigger) -> None:
        """The newest push of a hosted repo's ref, for squadrons that join later."""
        update = trigger.update
        if update is None:
            return
        name = bundles.key(bundles.repo_name(trigger), update.ref)
        try:
            tips = await presence_bucket(js, TIPS)
            if update.deleted:
                await tips.delete(name)
            else:
                await tips.put(name, encode(trigger))
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            log.warning("fleet: the newest push of %s not noted: %s", name, err)

    async def _heartbeat(self, js: JetStreamContext, presence: KeyValue, joined: bool) -> None:
        """Say this squadron is there (version, time) every HEARTBEAT_S: its "last seen".
        First, the fleet's nodes into this node's config and, just joined, the tips."""
        await self._note_routes(js)
        if joined:
            await self._take_tips(js)
        while True:
            await asyncio.sleep(view.HEARTBEAT_S)
            await claim_name(presence, self.identity)
            await self._note_routes(js)
            with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
                await self.fit()  # R3 or R1 as the nodes come and go; `replicas` fresh

    async def _note_routes(self, js: JetStreamContext) -> None:
        """Tell this squadron's node where every node of the fleet is (its config keeps
        them all, so a restarted node finds the cluster whichever peers are up)."""
        if self.on_routes is not None:
            await self.on_routes(node_routes(await entries(js)))

    async def _take_tips(self, js: JetStreamContext) -> None:
        """A squadron that just joined: the newest push of every hosted repo (apps first,
        then HQ, whose sync orders them), as if it had come from the stream."""
        tips = await entries(js, TIPS)
        pushes = sorted(tips.values(), key=lambda t: t.get("kind") == "hq")
        for push in pushes:
            log.info("fleet: taking the fleet's newest push %s", push.get("id"))
            await self.relay.received(json.dumps(push).encode(), _Replayed())

    async def _report_apps(self, apps: KeyValue) -> None:
        """Each app's state here into KV: at the start of a session and at each outcome."""
        self._outcome.set()
        while True:
            await self._outcome.wait()
            self._outcome.clear()
            rows = self.app_rows() if self.app_rows is not None else []
            for row in rows:
                state = json.dumps(view.app_state(row)).encode()
                await apps.put(f"{self.identity.name}.{row['app']}", state)

    async def _share_events(self) -> None:
        """This squadron's events into the fleet's stream, as they happen; never waits on
        the fleet (a core publish: a lost connection loses them for the fleet only)."""
        if self._feed is None or self._nc is None:
            return
        nc, me = self._nc, self.identity.name
        async for event in self._feed:
            try:
                await nc.publish(feed.subject(me, event), feed.encode(me, event))
            except (nats.errors.Error, OSError) as err:
                log.debug("fleet: an event not shared: %s", err)

    async def fleet_events(
        self, where: Filter, *, history: int | None = 100, follow: bool = False
    ) -> AsyncIterator[Event]:
        """Every squadron's events that match: the last `history` (None: all the stream
        keeps), then, with `follow`, live ones; each carries its `squadron`. Set up here
        (a FleetError says why not), read as the caller iterates."""
        try:
            js = self._jetstream()
            await ensure_events(js)
            info = await js.stream_info(EVENTS)
            start = _events_start(where, history, info.state.first_seq, info.state.last_seq)
            sub = await js.subscribe(
                feed.app_subject(where.app), stream=EVENTS, ordered_consumer=True, config=start
            )
            backlog = await _backlog(sub)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            raise FleetError(f"the fleet's events are out of reach: {err}") from None
        return _read_events(sub, backlog, where, history, follow)

    async def fleet_view(self) -> dict[str, Any]:
        """`hd fleet status`: the squadrons present, each app on each of them, and the
        newest rollout of each app."""
        js = self._jetstream()
        try:
            squadrons = await entries(js)
            states = await entries(js, APPS)
            rollouts = await self.board.newest(js)
        except (nats.errors.Error, nats.js.errors.Error) as err:
            raise FleetError(f"the fleet's state is out of reach just now: {err}") from None
        rows = []
        for key, state in states.items():
            squadron, _, app = key.partition(".")
            if app and squadron in squadrons:  # a squadron that left: its apps go with it
                rows.append((squadron, app, state))
        shown = view.view(squadrons, rows, time.time(), rollouts)
        return {"squadron": self.identity.name, **shown}

    def up(self, squadrons: dict[str, dict[str, Any]]) -> list[str]:
        """The squadrons seen lately (and this one): those a rollout is frozen over."""
        now = time.time()
        seen = [
            n for n, e in squadrons.items() if now - float(e.get("seen") or 0) <= view.STALE_AFTER_S
        ]
        return sorted({*seen, self.identity.name})

    async def _keep_alive(self) -> None:
        """While deploys run for deliveries, tell the stream so; idle, nothing wakes."""
        while True:
            await self.relay.holding.wait()
            await asyncio.sleep(ACK_WAIT_S / 3)
            await self.relay.keep_alive()

    async def _fetch_code(self, trigger: Trigger) -> Trigger:
        """A push from another squadron: its commits into the repo here first. When they
        cannot be had, the trigger says why and its deploy fails here (only here)."""
        if self.code is None or not bundles.carries_code(trigger):
            return trigger
        try:
            await self._apply_patiently(trigger)
        except Exception as err:  # noqa: BLE001 - whatever it was, this squadron's deploy says it
            why = f"the pushed commits did not reach this squadron: {err}"
            log.warning("fleet: %s: %s", trigger.id, why)
            if trigger.app is not None:  # its deploy fails here: a rollout of it stops here
                with contextlib.suppress(FleetError):
                    await self.board.report(trigger.app, trigger.id, rollout.FAILED, tries=1)
            return replace(trigger, data={**trigger.data, "unfetched": why})
        return trigger

    async def _apply_patiently(self, trigger: Trigger) -> None:
        """The bundles, asked again while the store does not answer (just after a node is
        lost its leader moves); a bundle the store has not got fails at once."""
        assert self.code is not None
        for _ in range(FETCH_TRIES - 1):
            try:
                await self.code.apply(trigger, lambda name: get_bundle(self._jetstream(), name))
                return
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as err:
                log.info("fleet: the bundle store did not answer for %s (%s)", trigger.id, err)
            await asyncio.sleep(FETCH_PAUSE_S)
        await self.code.apply(trigger, lambda name: get_bundle(self._jetstream(), name))

    async def others(self) -> list[str]:
        """The other squadrons present in the fleet (by name)."""
        return sorted(n for n in await entries(self._jetstream()) if n != self.identity.name)

    def _jetstream(self) -> JetStreamContext:
        if self._nc is None or not self._nc.is_connected:
            raise FleetError("NATS is unreachable: the name stays taken until it is back")
        return self._nc.jetstream()

    async def _nodes_request(self, msg: Msg) -> None:
        """Another squadron joins as a node: tell it the routes (this node may then turn
        from a lone node into a cluster)."""
        assert self.answer_nodes is not None
        try:
            body = json.loads(msg.data)
            answer = await self.answer_nodes(body if isinstance(body, dict) else {})
        except (ValueError, FleetError) as err:
            answer = {"error": str(err)}
        with contextlib.suppress(Exception):
            await msg.respond(json.dumps(answer).encode())

    async def fit(self) -> bool:
        """The stream and buckets at the replicas the fleet's nodes allow; True once there."""
        if self._nc is None or not self._nc.is_connected:
            return False
        js = self._nc.jetstream()
        nodes = len(node_routes(await entries(js)))
        self.replicas = await fit(js, nodes)
        return self.replicas == replicas_for(nodes)

    async def node_clients(self) -> tuple[str, ...]:
        """The client URLs of the fleet's other nodes (where to go once this one is off)."""
        squadrons = await entries(self._jetstream())
        others = (e.get("client") for n, e in squadrons.items() if n != self.identity.name)
        return tuple(str(c) for c in others if c)

    async def forget(self, name: str, *, force: bool = False) -> dict[str, Any]:
        """`hd fleet forget NAME`: a squadron gone for good. Its name, consumer and apps go;
        a node's peer leaves the meta group. Refused while it is up, unless `force`."""
        found: dict[str, Any] = {}

        async def dropped() -> bool:
            js = self._jetstream()
            presence = await presence_bucket(js)
            entry = (await entries(js)).get(name)
            view.check_forgettable(name, entry, time.time(), force=force)
            found.update(entry or {})
            await _drop_squadron(js, presence, name)
            return True

        await patiently(dropped)
        if found.get("route"):
            await remove_peer(self._servers(), self.creds, name)
            await patiently(self.fit)
        return {"forgot": name, "node": bool(found.get("route"))}

    async def release_name(self) -> None:
        """`hd fleet leave`: free the name and drop this squadron's consumer."""
        js = self._jetstream()
        kv = await presence_bucket(js)
        await check_name(kv, self.identity)
        await _drop_squadron(js, kv, self.identity.name)

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail,
            "unpublished": len(self.outbox),
            "published": self.published,
            "received": self.relay.received_count,
            "awaiting_outcome": len(self.relay.held),
            "replicas": self.replicas,
        }


def _events_start(where: Filter, history: int | None, first: int, last: int) -> ConsumerConfig:
    """Where a reader of the fleet's events starts: the last `history` of the stream when
    nothing filters them, else where `since` says (or the start) and the newest are kept."""
    unfiltered = where.app is None and where.deploy is None and where.since is None
    if history == 0 or (unfiltered and history is not None):  # 0: live ones only
        begin = max(first, last - (history or 0) + 1, 1)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=begin)
    if where.since is not None:
        at = datetime.fromtimestamp(where.since, UTC)
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=at)
    return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)


async def _read_events(
    sub: JetStreamContext.PushSubscription,
    backlog: int,
    where: Filter,
    history: int | None,
    follow: bool,
) -> AsyncIterator[Event]:
    """The stored events (the newest `history` that match), then live ones with `follow`."""
    kept: deque[Event] = deque(maxlen=history)
    try:
        for _ in range(backlog):
            event = feed.decode((await sub.next_msg(timeout=10)).data)
            if event is not None and where(event):
                kept.append(event)
        for event in kept:
            yield event
        while follow:
            event = feed.decode((await sub.next_msg(timeout=None)).data)
            if event is not None and where(event):
                yield event
    except nats.errors.Error as err:
        raise FleetError(f"the fleet's events stopped: {err}") from None
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _backlog(sub: JetStreamContext.PushSubscription) -> int:
    """How many stored messages the new consumer has for us: delivered so far plus pending."""
    info = await sub.consumer_info()
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return int(delivered or 0) + int(info.num_pending or 0)


class RolloutBoard:
    """The fleet's record of each rollout (pipeline/rollout.py asks it): the plan, frozen by
    the first squadron to take the trigger, and each squadron's result; KV watch, no polling."""

    def __init__(self, link: FleetLink) -> None:
        self.link = link

    async def turn(
        self,
        app: str,
        deploy: str,
        spec: tuple[str, ...],
        waiting: Callable[[rollout.Turn], None],
    ) -> rollout.Turn:
        try:
            kv = await rollout_bucket(self.link._jetstream())
            plan = await self._plan(kv, app, deploy, spec)
            return await self._wait(kv, plan, waiting)
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
            raise FleetError(f"the fleet's rollout record is out of reach: {err}") from None

    async def _plan(
        self, kv: KeyValue, app: str, deploy: str, spec: tuple[str, ...]
    ) -> rollout.Plan:
        """The plan of this deploy: the one stored, or made now from the squadrons up."""
        name = rollout.key(app, deploy)
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return rollout.Plan.from_json(json.loads((await kv.get(name)).value or b"{}"))
        squadrons = await entries(self.link._jetstream())
        plan = rollout.Plan.make(app, deploy, spec, self.link.up(squadrons))
        try:
            await kv.create(name, json.dumps(plan.to_json()).encode())
        except nats.js.errors.KeyWrongLastSequenceError:  # another squadron froze it first
            return rollout.Plan.from_json(json.loads((await kv.get(name)).value or b"{}"))
        await kv.put(f"{app}.latest", json.dumps({"key": name, "at": plan.created}).encode())
        return plan

    async def _wait(
        self, kv: KeyValue, plan: rollout.Plan, waiting: Callable[[rollout.Turn], None]
    ) -> rollout.Turn:
        """Watch the results until this squadron's wave opens or the rollout stops; a lost
        connection watches again once NATS is back (the results are read anew)."""
        said: list[rollout.Turn] = []

        def first(now: rollout.Turn) -> None:
            if not said:
                said.append(now)
                waiting(now)

        try:
            async with asyncio.timeout(ROLLOUT_WAIT_S):
                while (now := await self._watch(kv, plan, first)) is None:
                    await asyncio.sleep(1)  # NATS away: bounded by the rollout's wait
                    with contextlib.suppress(FleetError, nats.errors.Error, nats.js.errors.Error):
                        kv = await rollout_bucket(self.link._jetstream())
                return now
        except TimeoutError:
            why = f"no wave opened in {ROLLOUT_WAIT_S:.0f} s"
            number = plan.wave_of(self.link.identity.name)
            return rollout.Turn(rollout.HELD, number, max(number, len(plan.waves)), why)

    async def _watch(
        self, kv: KeyValue, plan: rollout.Plan, waiting: Callable[[rollout.Turn], None]
    ) -> rollout.Turn | None:
        """One watch of the plan's results: this squadron's turn, or None when the
        connection it was made on is gone."""
        connection = self.link.connections
        try:
            watcher = await kv.watch(f"{rollout.key(plan.app, plan.deploy)}.*")
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
            return None
        results: dict[str, str] = {}
        ready = False
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=WATCH_ALIVE_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    if self.link.connections != connection or self.link.state != CONNECTED:
                        return None
                    continue
                if entry is None:
                    ready = True
                elif entry.value:
                    results[entry.key.rsplit(".", 1)[1]] = _result(entry.value)
                if not ready:
                    continue
                now = rollout.turn(plan, results, self.link.identity.name)
                if now.state != rollout.WAIT:
                    return now
                waiting(now)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def report(
        self, app: str, deploy: str, result: str, *, tries: int = int(REPORT_TRY_S)
    ) -> None:
        """This squadron's outcome in the rollout (the others' watches see it at once);
        NATS away, tried again each second, `tries` times (the later waves wait for it).
        A result with no plan (the app has no rollout) is never read."""
        body = json.dumps({"result": result, "at": time.time()}).encode()
        name = f"{rollout.key(app, deploy)}.{self.link.identity.name}"
        last: Exception | None = None
        for attempt in range(tries):
            try:
                kv = await rollout_bucket(self.link._jetstream())
                await kv.put(name, body)
                return
            except (FleetError, TimeoutError, nats.errors.Error, nats.js.errors.Error) as err:
                last = err
                if attempt + 1 < tries:
                    await asyncio.sleep(1)
        raise FleetError(f"the fleet's rollout record is out of reach: {last}")

    async def newest(self, js: JetStreamContext) -> dict[str, dict[str, Any]]:
        """Each app's newest rollout as `hd fleet status` shows it: only the `<app>.latest`
        pointers, their plans and those plans' results are read, not the whole bucket."""
        kv = await rollout_bucket(js)
        names = await keys(js, ROLLOUTS)
        shown = {}
        for pointer in (n for n in names if n.endswith(".latest")):
            plan_key = str((await _value(kv, pointer)).get("key") or "")
            plan = await _value(kv, plan_key) if plan_key else {}
            if not plan:
                continue
            prefix = f"{plan_key}."
            told = {n[len(prefix) :]: await _value(kv, n) for n in names if n.startswith(prefix)}
            results = {squadron: str(v["result"]) for squadron, v in told.items() if "result" in v}
            shown[pointer.removesuffix(".latest")] = rollout.shown(
                rollout.Plan.from_json(plan), results
            )
        return shown


async def _value(kv: KeyValue, name: str) -> dict[str, Any]:
    """One key's JSON object ({} when it is gone or not an object)."""
    try:
        value = json.loads((await kv.get(name)).value or b"{}")
    except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _result(value: bytes) -> str:
    try:
        return str(json.loads(value).get("result") or "")
    except (ValueError, AttributeError):
        return ""


async def _drop_squadron(js: JetStreamContext, presence: KeyValue, name: str) -> None:
    """A squadron out of the fleet: its durable consumer, its apps' rows, then its name (a
    step that failed half-way is done again by running the same verb again)."""
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(STREAM, name)
    apps = await presence_bucket(js, APPS)
    for key in await entries(js, APPS):
        if key.startswith(f"{name}."):
            await apps.delete(key)
    await presence.delete(name)


async def _has_consumer(js: JetStreamContext, name: str) -> bool:
    """Whether this squadron's durable consumer exists (not: it joins just now)."""
    try:
        await js.consumer_info(STREAM, name)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for its end; cancelled again when something inside swallowed
    the first one (nats-py can, in the middle of a request), at most a few times."""
    for _ in range(5):
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if done:
            return
    log.warning("fleet: the link's task did not stop; left behind")
