"""HTTPS against a real ACME server: pebble on loopback, a real nginx master, the real keeper
and Routes, an app behind nginx on 127.0.0.1; every served chain is checked against pebble's
own root (its management API)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.server
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from hyperdrive.acme_client import AcmeIssuer
from hyperdrive.certs import CertStore
from hyperdrive.https import CertificateKeeper
from hyperdrive.nginx_reload import AppRoute, Nginx, Routes
from hyperdrive.pipeline import events as ev
from hyperdrive.proxy import tls_for
from tests.conftest import free_port
from tests.integration.net_fixtures import http_get, unique_tag
from tests.pebble import Pebble, https_get, served_chain

pytestmark = [pytest.mark.nginx, pytest.mark.root, pytest.mark.slow]

WAIT_S = 60.0


class _App(http.server.BaseHTTPRequestHandler):
    """The app: says which scheme nginx told it the client used."""

    def do_GET(self) -> None:
        body = json.dumps({"proto": self.headers.get("X-Forwarded-Proto"), "path": self.path})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def app_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@dataclass
class World:
    """nginx + pebble + the keeper, wired like bootstrap does (NginxProxy minus the nft map)."""

    routes: Routes
    keeper: CertificateKeeper
    pebble: Pebble
    https_port: int
    app_port: int
    events: list[ev.Event] = field(default_factory=list)
    live: list[AppRoute] = field(default_factory=list)

    async def apply(self, *routes: AppRoute) -> None:
        self.live = list(routes)
        await self.refresh()

    async def refresh(self) -> None:
        tls = tls_for(self.keeper, self.live, self.routes.domain, self.https_port)
        await self.routes.apply(self.live, tls=tls)

    def route(self, name: str, https: str = "on") -> AppRoute:
        return AppRoute("web", "127.0.0.1", self.app_port, (name,), https=https)

    async def event(self, kind: type[ev.Event], name: str, after: int = 0) -> ev.Event:
        async with asyncio.timeout(WAIT_S):
            while True:
                for event in self.events[after:]:
                    if isinstance(event, kind) and getattr(event, "host", "") == name:
                        return event
                await asyncio.sleep(0.05)

    def root(self) -> Path:
        return self.pebble.roots_file()


def make_world(tmp_path: Path, app_port: int, validity_s: int | None = None) -> World:
    nginx = Nginx(tmp_path / "nginx")
    routes = Routes(nginx, http_port=free_port(), verify_timeout=2.0, workers="1")
    pebble = Pebble(tmp_path / "pebble", routes.http_port, validity_s).start()
    store = CertStore(tmp_path / "certs")
    store.prepare()
    issuer = AcmeIssuer(store, pebble.directory, "admiral@example.com", pebble.ca_file)
    https_port = free_port()
    world = World(
        routes,
        CertificateKeeper(store, issuer, emit=print, retry_s=1.0, https_port=https_port),
        pebble,
        https_port,
        app_port,
    )
    world.keeper.emit = world.events.append
    world.keeper.changed.append(world.refresh)
    return world


@contextlib.asynccontextmanager
async def running(world: World) -> AsyncIterator[World]:
    task = asyncio.create_task(world.keeper.run())
    try:
        yield world
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await world.routes.nginx.stop()
        world.pebble.close()


@pytest.fixture
async def world(tmp_path: Path, app_port: int) -> AsyncIterator[World]:
    async with running(make_world(tmp_path, app_port)) as w:
        yield w


def name() -> str:
    return f"web.{unique_tag()}.test"


async def test_first_certificate_for_a_servername(world: World) -> None:
    host = name()
    await world.apply(world.route(host))
    issued = await world.event(ev.CertificateIssued, host)
    assert "Pebble" in (issued.issuer or "")  # type: ignore[attr-defined]
    root = world.root()
    leaf = await asyncio.to_thread(served_chain, world.https_port, host, root)
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == [host]
    status, _, body = await asyncio.to_thread(https_get, world.https_port, host, "/hi", root)
    assert (status, json.loads(body)) == (200, {"proto": "https", "path": "/hi"})
    # plain HTTP keeps serving (`https on`), and keys are the owner's alone
    assert json.loads(http_get(world.routes.http_port, "/hi", host)[2])["proto"] == "http"
    for path in world.keeper.store.issued_dir(host).glob("*.pem"):
        assert path.stat().st_mode & 0o777 == 0o600
    assert world.keeper.store.account_key.stat().st_mode & 0o777 == 0o600


async def test_a_name_without_a_certificate_gets_no_handshake(world: World) -> None:
    host, plain = name(), name()
    other = AppRoute("other", "127.0.0.1", world.app_port, (plain,), https="off")
    await world.apply(world.route(host), other)
    await world.event(ev.CertificateIssued, host)
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(served_chain, world.https_port, plain, world.root())
    assert json.loads(http_get(world.routes.http_port, "/", plain)[2])["proto"] == "http"
    assert not [e for e in world.events if getattr(e, "host", "") == plain]  # `https off`


async def test_https_only_redirects_with_308_and_sends_hsts(world: World) -> None:
    host = name()
    await world.apply(world.route(host, https="only"))
    await world.event(ev.CertificateIssued, host)
    status, headers, _ = http_get(world.routes.http_port, "/a/b?c=1", host)
    assert status == 308
    assert headers["Location"] == f"https://{host}:{world.https_port}/a/b?c=1"
    status, headers, _ = await asyncio.to_thread(
        https_get, world.https_port, host, "/", world.root()
    )
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    # challenges still answer on plain HTTP (renewals go through it)
    assert http_get(world.routes.http_port, "/.well-known/acme-challenge/nothing", host)[0] == 404


async def test_acme_down_serves_http_reports_and_retries(world: World) -> None:
    world.pebble.stop_pebble()
    host = name()
    await world.apply(world.route(host))
    failed = await world.event(ev.CertificateFailed, host)
    assert host in (failed.message or "")
    assert failed.retry  # type: ignore[attr-defined]
    assert json.loads(http_get(world.routes.http_port, "/", host)[2])["proto"] == "http"
    world.pebble.start()
    await world.event(ev.CertificateIssued, host)
    await asyncio.to_thread(served_chain, world.https_port, host, world.root())


async def test_an_admirals_own_certificate_is_served_without_acme(
    world: World, tmp_path: Path
) -> None:
    host = name()
    folder = world.keeper.store.root / host
    folder.mkdir()
    ca = own_certificate(folder, host)
    await world.apply(world.route(host))
    leaf = await asyncio.to_thread(served_chain, world.https_port, host, ca)
    assert leaf.issuer.rfc4514_string() == "CN=an admiral's own CA"
    await asyncio.sleep(1.5)
    assert not [e for e in world.events if getattr(e, "host", "") == host]  # no ACME order
    assert world.keeper.status()[0]["own"] is True


def own_certificate(folder: Path, host: str) -> Path:
    """An admiral's CA and a certificate for `host` signed by it, placed as the README says."""
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "an admiral's own CA")])

    def build(subject: x509.Name, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256())

    ca = build(ca_name, ca_key.public_key(), True)
    leaf = build(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]), key.public_key(), False
    )
    pem = serialization.Encoding.PEM
    (folder / "fullchain.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (folder / "privkey.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    return folder / "ca.pem"


async def test_renewal_swaps_the_certificate_with_no_failed_request(
    tmp_path: Path, app_port: int
) -> None:
    """pebble issues 30 s certificates: renewal is due after 20 s, by the one timer."""
    async with running(make_world(tmp_path, app_port, validity_s=30)) as world:
        host = name()
        await world.apply(world.route(host))
        await world.event(ev.CertificateIssued, host)
        root = world.root()
        first = await asyncio.to_thread(served_chain, world.https_port, host, root)
        stop = threading.Event()
        outcomes: list[int | str] = []
        client = asyncio.create_task(
            asyncio.to_thread(_load, world.https_port, host, root, stop, outcomes)
        )
        try:
            await world.event(ev.CertificateRenewed, host)
            await asyncio.sleep(1.0)  # the reload after it, and requests on the new certificate
        finally:
            stop.set()
            await client
        second = await asyncio.to_thread(served_chain, world.https_port, host, root)
        assert second.serial_number != first.serial_number
        assert second.not_valid_after_utc > first.not_valid_after_utc
        assert outcomes, "no request was made during the swap"
        assert set(outcomes) == {200}, [o for o in outcomes if o != 200][:5]


def _load(
    port: int, host: str, root: Path, stop: threading.Event, outcomes: list[int | str]
) -> None:
    """HTTPS GETs on new connections until told to stop; each outcome recorded."""
    while not stop.is_set():
        try:
            outcomes.append(https_get(port, host, "/", root)[0])
        except (OSError, ssl.SSLError) as err:
            outcomes.append(repr(err))


async def test_a_corrupt_certificate_on_disk_is_replaced_never_served(world: World) -> None:
    host = name()
    await world.apply(world.route(host))
    await world.event(ev.CertificateIssued, host)
    issued = next(world.keeper.store.issued_dir(host).glob("*.pem"))
    issued.write_bytes(issued.read_bytes()[:300])  # torn by a crash or a full disk
    seen = len(world.events)
    await world.apply(world.route(host))  # a route change (a deploy, a restart) looks again
    await world.event(ev.CertificateIssued, host, after=seen)  # a new one, not a renewal
    leaf = await asyncio.to_thread(served_chain, world.https_port, host, world.root())
    assert issued.with_suffix(".bad").exists()
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC)
