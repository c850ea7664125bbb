"""HTTPS without a network: the orders directive, renewal timing, the certificate store's
handling of bad files, the keeper's one timer and backoff (with an in-memory issuer), the
nginx config it renders, and HQ's refusal of private keys."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hyperdrive import config as configuration
from hyperdrive.acme_client import Issued, RateLimited, rate_limit_wait
from hyperdrive.certs import CertStore, check, renew_at
from hyperdrive.doctor import check_certificates
from hyperdrive.errors import CertificateError, ConfigError, InvalidName, OrdersRejected
from hyperdrive.headquarters.orders import parse_orders
from hyperdrive.headquarters.reader import private_key_files
from hyperdrive.https import MAX_BACKOFF_S, CertificateKeeper, backoff
from hyperdrive.nginx_reload import AppRoute, Tls, render
from hyperdrive.pipeline import events as ev
from hyperdrive.render import certificate_line

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NAME = "www.example.test"


def make_cert(
    name: str,
    start: dt.datetime = T0,
    days: float = 90,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) of a self-signed certificate for `name`."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# -- orders --
@pytest.mark.parametrize("mode", ["on", "off", "only"])
def test_https_directive(mode: str) -> None:
    assert parse_orders(f"https {mode}\n", "web/orders").https == mode


def test_https_defaults_to_on() -> None:
    assert parse_orders("export PORT=8000\n", "web/orders").https == "on"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("https yes\n", "https takes one of on, off, only, got 'yes'"),
        ("https\n", "https takes one of on, off, only, got nothing"),
        ("https on only\n", "got 'on only'"),
        ("https on\nhttps off\n", "duplicate https (first on line 1)"),
    ],
)
def test_bad_https_directive_is_refused_with_its_line(text: str, said: str) -> None:
    with pytest.raises(OrdersRejected) as caught:
        parse_orders(text, "web/orders")
    assert said in str(caught.value)


def test_invalid_servername_is_refused_at_push_time() -> None:
    with pytest.raises(OrdersRejected, match="not a valid DNS name"):
        parse_orders("servername bad_name.example\n", "web/orders")


# -- config --
def test_config_keys() -> None:
    c = configuration.build(
        {
            "HYPERDRIVE_HTTPS_PORT": "8443",
            "HYPERDRIVE_ACME_EMAIL": "ops@example.com",
            "HYPERDRIVE_ACME_CA": "/etc/ssl/private-ca.pem",
            "HYPERDRIVE_API_TLS": "hooks.example.com",
        }
    )
    assert (c.https_port, c.acme_email, str(c.acme_ca)) == (
        8443,
        "ops@example.com",
        "/etc/ssl/private-ca.pem",
    )
    assert c.acme_directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert c.api_name == "hooks.example.com"
    assert c.certs_dir == c.var / "certs"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"HYPERDRIVE_ACME_DIRECTORY": "http://acme.test/dir"}, "HYPERDRIVE_ACME_DIRECTORY"),
        ({"HYPERDRIVE_ACME_EMAIL": "not-an-address"}, "HYPERDRIVE_ACME_EMAIL"),
        ({"HYPERDRIVE_API_TLS": "on"}, "HYPERDRIVE_API_TLS=on needs HYPERDRIVE_DOMAIN"),
        ({"HYPERDRIVE_HTTPS_PORT": "80"}, "must differ"),
        ({"HYPERDRIVE_HTTPS_PORT": "0"}, "HYPERDRIVE_HTTPS_PORT"),
    ],
)
def test_bad_config_names_the_key(values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        configuration.build(values)


# -- renewal timing --
def test_renewal_is_due_when_a_third_of_the_lifetime_is_left() -> None:
    assert renew_at(T0, T0 + dt.timedelta(days=90)) == T0 + dt.timedelta(days=60)
    assert renew_at(T0, T0 + dt.timedelta(seconds=30)) == T0 + dt.timedelta(seconds=20)


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n, 60) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff(40, 60) == MAX_BACKOFF_S


# -- the store --
def test_a_saved_certificate_is_private_and_served(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    store.prepare()
    key, chain = make_cert(NAME)
    saved = store.save(NAME, key, chain, T0)
    assert saved.path.stat().st_mode & 0o777 == 0o600
    assert store.current(NAME, T0 + dt.timedelta(days=1)) == saved
    assert saved.renew_at == T0 + dt.timedelta(days=60)


def test_a_corrupt_certificate_is_set_aside_never_served(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    saved = store.save(NAME, *make_cert(NAME), T0)
    saved.path.write_bytes(saved.path.read_bytes()[:200])  # a torn write
    assert store.current(NAME, T0) is None
    assert not saved.path.exists()
    assert saved.path.with_suffix(".bad").exists()


def test_an_expired_or_mismatched_certificate_is_not_served(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    store.save(NAME, *make_cert(NAME, days=1), T0)
    assert store.current(NAME, T0 + dt.timedelta(days=2)) is None
    other_key, _ = make_cert(NAME)
    _, chain = make_cert(NAME)
    with pytest.raises(CertificateError, match="does not belong"):
        check(NAME, chain, other_key, T0)
    with pytest.raises(CertificateError, match="not for this name"):
        check("other.test", *reversed(make_cert(NAME)), T0)


def test_an_admirals_own_certificate_wins_and_a_bad_one_does_not(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    store.save(NAME, *make_cert(NAME), T0)
    own = tmp_path / "certs" / NAME
    own.mkdir()
    key, chain = make_cert(NAME, days=30)
    (own / "fullchain.pem").write_bytes(chain)
    (own / "privkey.pem").write_bytes(key)
    served = store.current(NAME, T0)
    assert served is not None
    assert served.own
    assert served.path.read_bytes() == key + chain  # a validated copy nginx names
    (own / "privkey.pem").write_bytes(make_cert(NAME)[0])  # the wrong key
    fallback = store.current(NAME, T0)
    assert fallback is not None
    assert not fallback.own


# -- the keeper, with an in-memory ACME server --
@dataclass
class FakeIssuer:
    """Issues `days`-long certificates, or fails while `down` says so."""

    now: list[dt.datetime]
    days: float = 90
    down: Exception | None = None
    orders: list[str] = field(default_factory=list)

    async def issue(self, name: str) -> Issued:
        self.orders.append(name)
        if self.down is not None:
            raise self.down
        key, chain = make_cert(name, self.now[0], self.days)
        return Issued(key, chain)


def keeper_for(
    tmp_path: Path, issuer: FakeIssuer, clock: list[dt.datetime]
) -> tuple[CertificateKeeper, list[ev.Event]]:
    events: list[ev.Event] = []
    keeper = CertificateKeeper(
        CertStore(tmp_path / "certs"),
        issuer,
        events.append,
        retry_s=60,
        now=lambda: clock[0],  # type: ignore[arg-type]
    )
    return keeper, events


async def test_first_issue_then_renewal_at_two_thirds(tmp_path: Path) -> None:
    clock = [T0]
    issuer = FakeIssuer(clock)
    keeper, events = keeper_for(tmp_path, issuer, clock)
    changes: list[int] = []

    async def changed() -> None:
        changes.append(1)

    keeper.changed.append(changed)
    assert keeper.want([NAME, "*.wild.test"]) == {}
    assert keeper.due(NAME, T0) == T0
    assert keeper.due("*.wild.test", T0) is None  # HTTP-01 cannot prove a wildcard
    await keeper._work(NAME)
    assert [type(e) for e in events] == [ev.CertificateIssued]
    assert changes == [1]
    assert keeper.due(NAME, T0) == T0 + dt.timedelta(days=60)
    clock[0] = T0 + dt.timedelta(days=60)
    await keeper._work(NAME)
    assert [type(e) for e in events] == [ev.CertificateIssued, ev.CertificateRenewed]
    assert issuer.orders == [NAME, NAME]
    assert keeper.served[NAME].not_before == T0 + dt.timedelta(days=60)


async def test_failures_back_off_and_rate_limits_wait_longer(tmp_path: Path) -> None:
    clock = [T0]
    issuer = FakeIssuer(clock, down=CertificateError(f"{NAME}: connection refused"))
    keeper, events = keeper_for(tmp_path, issuer, clock)
    keeper.want([NAME])
    await keeper._work(NAME)
    failed = events[-1]
    assert isinstance(failed, ev.CertificateFailed)
    assert failed.message == f"{NAME}: connection refused"
    assert keeper.due(NAME, T0) == T0 + dt.timedelta(seconds=60)
    await keeper._work(NAME)
    assert keeper.due(NAME, T0) == T0 + dt.timedelta(seconds=120)
    issuer.down = RateLimited(f"{NAME}: rateLimited: too many", retry_after=3600)
    await keeper._work(NAME)
    assert keeper.due(NAME, T0) == T0 + dt.timedelta(seconds=3600)
    assert keeper.status()[0]["error"] == f"{NAME}: rateLimited: too many"


async def test_one_timer_sleeps_until_the_earliest_due_name(tmp_path: Path) -> None:
    """run() does the due work at once and then waits: no periodic scan of names."""
    clock = [T0]
    issuer = FakeIssuer(clock)
    keeper, events = keeper_for(tmp_path, issuer, clock)
    keeper.want([NAME, "api.example.test"])
    task = asyncio.create_task(keeper.run())
    try:
        async with asyncio.timeout(10):
            while len(events) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert len(issuer.orders) == 2  # nothing more is due for 60 days
        keeper.want([NAME, "api.example.test", "new.example.test"])  # wakes the timer
        async with asyncio.timeout(10):
            while len(events) < 3:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert sorted(issuer.orders) == sorted([NAME, "api.example.test", "new.example.test"])


# -- nginx config --
def test_https_servers_redirect_and_hsts() -> None:
    path = Path("/var/hd/certs/.hyperdrive/issued/a.test/0123456789ab.pem")
    tls = Tls(8443, Path("/var/hd/certs/.hyperdrive/challenges"), {"a.test": path})
    on = render(
        [AppRoute("a", "10.0.0.1", 20000, ("a.test", "b.test"))],
        prefix=Path("/p"),
        http_port=8080,
        tls=tls,
    )
    hosts = on["hosts.conf"]
    assert "listen 8443 ssl;\n    server_name a.test;" in hosts
    assert f"ssl_certificate {path};" in hosts
    assert "server_name a.test b.test;" in hosts  # both still plain HTTP with `https on`
    assert "Strict-Transport-Security" not in hosts
    assert "ssl_reject_handshake on;" in on["nginx.conf"]
    assert "alias /var/hd/certs/.hyperdrive/challenges/;" in on["nginx.conf"]
    only = render(
        [AppRoute("a", "10.0.0.1", 20000, ("a.test", "b.test"), https="only")],
        prefix=Path("/p"),
        http_port=8080,
        tls=tls,
    )
    hosts = only["hosts.conf"]
    assert "server_name b.test;" in hosts  # no certificate yet: served, not redirected
    assert "return 308 https://$host:8443$request_uri;" in hosts
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in hosts
    assert hosts.count("location ^~ /.well-known/acme-challenge/") == 2
    off = render(
        [AppRoute("a", "10.0.0.1", 20000, ("a.test",), https="off")],
        prefix=Path("/p"),
        http_port=8080,
        tls=tls,
    )
    assert "ssl" not in off["hosts.conf"]


def test_no_certificate_no_https_listener() -> None:
    files = render(
        [AppRoute("a", "10.0.0.1", 20000, ("a.test",))], prefix=Path("/p"), http_port=8080
    )
    assert "ssl" not in files["hosts.conf"]
    assert "ssl_reject_handshake" not in files["nginx.conf"]


@pytest.mark.parametrize("path", ["/x y.pem", "/x;include /etc/passwd", "relative.pem", "/a'b"])
def test_hostile_certificate_paths_never_reach_the_config(path: str) -> None:
    with pytest.raises(InvalidName):
        Tls(443, Path("/w"), {"a.test": Path(path)})


# -- hd doctor --
def test_doctor_warns_at_14_days(tmp_path: Path) -> None:
    config = configuration.build(
        {"HYPERDRIVE_VAR": str(tmp_path / "var"), "HYPERDRIVE_DATA": str(tmp_path / "data")}
    )
    store = CertStore(config.certs_dir)
    store.save(NAME, *make_cert(NAME, days=90), T0)
    assert check_certificates(config, T0 + dt.timedelta(days=70)).ok
    late = check_certificates(config, T0 + dt.timedelta(days=77))
    assert not late.ok
    assert late.detail.startswith(f"{NAME} expires in 13 days")
    assert "CertificateFailed" in late.fix


def test_certificate_events_are_named_after_their_class_and_carry_the_host() -> None:
    record = ev.CertificateFailed(host=NAME, message="boom", retry="2026-12-01T12:01:00Z").record()
    assert record == {
        "event": "CertificateFailed",
        "host": NAME,
        "message": "boom",
        "retry": "2026-12-01T12:01:00Z",
    }


def test_status_line_for_a_certificate() -> None:
    ok = {"name": NAME, "expires": "2027-03-01T12:00:00Z", "issuer": "R11", "own": False}
    assert certificate_line(ok) == f"{NAME} until 2027-03-01T12:00:00Z (R11)"
    own = {**ok, "own": True, "issuer": "Corp CA"}
    assert certificate_line(own) == f"{NAME} until 2027-03-01T12:00:00Z (Corp CA, an admiral's own)"
    failed = {
        "name": NAME,
        "expires": "",
        "error": "connection refused",
        "retry": "2026-12-01T12:01:00Z",
    }
    assert certificate_line(failed) == (
        f"{NAME} no certificate yet; FAILED: connection refused, retry 2026-12-01T12:01:00Z"
    )


def test_an_admirals_wildcard_certificate_covers_the_names_below_it(tmp_path: Path) -> None:
    store = CertStore(tmp_path / "certs")
    folder = tmp_path / "certs" / "*.example.test"
    folder.mkdir(parents=True)
    key, chain = make_cert("*.example.test")
    (folder / "fullchain.pem").write_bytes(chain)
    (folder / "privkey.pem").write_bytes(key)
    served = store.current("web.example.test", T0)
    assert served is not None
    assert served.own
    assert store.current("deeper.web.example.test", T0) is None  # one label only, as in TLS


def test_hq_files_holding_a_private_key_are_found(tmp_path: Path) -> None:
    """What pre-receive refuses: any file with a PEM private key (key files have their own
    check); a certificate (public) is fine."""
    import subprocess  # noqa: PLC0415

    from tests.conftest import GIT_ENV  # noqa: PLC0415

    key, chain = make_cert(NAME)
    files = {
        "web/orders": b"https only\n",
        "web/tls/fullchain.pem": chain,
        "web/tls/privkey.pem": key,
        "deep/a/b/c.txt": b"notes\n" + key,
        "authorized_keys/x.pub": key,  # reported by the admiral key check instead
    }
    for path, data in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    for argv in (["init", "-q", "-b", "master"], ["add", "-A"], ["commit", "-q", "-m", "hq"]):
        subprocess.run(["git", *argv], cwd=tmp_path, env=GIT_ENV, check=True, timeout=30)
    assert private_key_files(tmp_path, "master") == ["deep/a/b/c.txt", "web/tls/privkey.pem"]


def test_a_rate_limit_waits_as_long_as_the_ca_says_and_at_least_an_hour() -> None:
    detail = (
        "too many certificates (5) already issued for this exact set of identifiers in the "
        "last 168h0m0s, retry after 2026-12-03 12:00:00 UTC: see https://letsencrypt.org/x"
    )
    assert rate_limit_wait(detail, T0) == 2 * 86400
    assert rate_limit_wait("retry after 2026-12-01 12:05:00 UTC", T0) == 3600
    assert rate_limit_wait("slow down", T0) == 3600
