"""Keeps a certificate for every name an app is served at: first issue, renewal, retries.

One timer: the keeper sleeps until the earliest moment some name needs work (a name without a
certificate, a third of a lifetime left, a retry after backoff, an expiry) or until the names
change. ACME runs here, beside the deploys: no deploy waits for it. After a certificate
arrives (or one expires) the routes are rendered again and nginx reloads through its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from hyperdrive.acme_client import AcmeIssuer, RateLimited
from hyperdrive.certs import Certificate, CertStore, iso, self_signed, write_private
from hyperdrive.errors import CertificateError, HyperdriveError
from hyperdrive.pipeline import events as ev

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 6 * 3600.0
MAX_SLEEP_S = 24 * 3600.0  # clocks jump: look again at least daily
DER = Encoding.DER


def backoff(failures: int, first: float) -> float:
    """Seconds before the next try after `failures` in a row: doubling, capped at 6 h."""
    return min(first * 2.0 ** max(failures - 1, 0), MAX_BACKOFF_S)


def acme_name(name: str) -> bool:
    """Whether HTTP-01 can prove the name (a wildcard needs an admiral's own certificate)."""
    return not name.startswith("*.")


@dataclass
class _Trouble:
    """A name's failures in a row, when to try again and what went wrong last."""

    failures: int = 0
    retry: dt.datetime | None = None
    message: str = ""


@dataclass
class CertificateKeeper:
    """The certificates for the wanted names, kept current; `changed` re-renders routes."""

    store: CertStore
    issuer: AcmeIssuer | None  # None: ACME off (HYPERDRIVE_ACME_DIRECTORY empty)
    emit: Callable[[ev.Event], None]
    retry_s: float = 60.0
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    changed: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    wanted: dict[str, None] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # names besides the apps' (the API's, HYPERDRIVE_API_TLS)
    trouble: dict[str, _Trouble] = field(default_factory=dict)
    served: dict[str, Certificate] = field(default_factory=dict)
    https_port: int | None = None  # where nginx serves the names: each swap is checked there
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.wanted = dict.fromkeys([*self.wanted, *self.extra])

    def want(self, names: Iterable[str]) -> dict[str, Certificate]:
        """Keep certificates for `names` (and the extra ones); what may be served for them now."""
        self.wanted = dict.fromkeys([*names, *self.extra])
        self.served = self.current(self.wanted)
        self._wake.set()
        return {name: cert for name, cert in self.served.items() if name not in self.extra}

    def current(self, names: Collection[str]) -> dict[str, Certificate]:
        """Each name's servable certificate, for those that have one."""
        now = self.now()
        found = {name: self.store.current(name, now) for name in names}
        return {name: cert for name, cert in found.items() if cert is not None}

    def due(self, name: str, now: dt.datetime) -> dt.datetime | None:
        """When `name` next needs work, or None (an admiral's own, or ACME off)."""
        cert = self.served.get(name)
        if cert is not None and cert.own:
            return cert.not_after  # to drop it from the config once it expires
        if self.issuer is None or not acme_name(name):
            return cert.not_after if cert is not None else None
        moment = cert.renew_at if cert is not None else now
        trouble = self.trouble.get(name)
        if trouble is not None and trouble.retry is not None:
            moment = max(moment, trouble.retry)
        return moment

    async def run(self) -> None:
        """The one timer: sleep until the earliest due name, do its work, again."""
        while True:
            self._wake.clear()
            now = self.now()
            moments = [(m, n) for n in self.wanted if (m := self.due(n, now)) is not None]
            if moments and (first := min(moments))[0] <= now:
                await self._work(first[1])
                continue
            wait = min((m - now).total_seconds() for m, _ in moments) if moments else MAX_SLEEP_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, MAX_SLEEP_S)):
                    await self._wake.wait()

    async def _work(self, name: str) -> None:
        """Issue or renew `name`'s certificate if it still needs it; re-render on any change.
        The event comes once nginx serves the new certificate (or failed to take it)."""
        cert = self.store.current(name, self.now())
        needed = cert is None or (not cert.own and cert.renew_at <= self.now())
        outcome = None
        if needed and self.issuer is not None and acme_name(name):
            outcome = await self._obtain(name, renewal=cert is not None)
        fresh = self.current(self.wanted)
        if {n: c.path for n, c in fresh.items()} != {n: c.path for n, c in self.served.items()}:
            self.served = fresh
            await self._changed()
            if outcome is not None and name in fresh and (why := await self._check(fresh[name])):
                log.warning("%s: nginx does not serve the new certificate: %s", name, why)
                outcome = ev.CertificateFailed(host=name, message=f"{name}: not served: {why}")
        if outcome is not None:
            self.emit(outcome)

    async def _check(self, cert: Certificate) -> str:
        """'' once nginx hands out `cert` for its name; otherwise what it hands out instead."""
        if self.https_port is None or cert.name in self.extra:
            return ""
        return await serves(self.https_port, cert)

    async def _obtain(self, name: str, renewal: bool) -> ev.Event | None:
        """One ACME order for `name`: the event to tell, or None after a failure (told, and
        tried again later)."""
        assert self.issuer is not None
        try:
            issued = await self.issuer.issue(name)
            cert = self.store.save(name, issued.key_pem, issued.chain_pem, self.now())
        except CertificateError as err:
            self._failed(name, err)
            return None
        except OSError as err:  # issued, but not kept (a full disk): ordered again later
            self._failed(name, CertificateError(f"{name}: cannot keep the certificate: {err}"))
            return None
        self.trouble.pop(name, None)
        kind = ev.CertificateRenewed if renewal else ev.CertificateIssued
        return kind(host=name, expires=iso(cert.not_after), issuer=cert.issuer)

    def _failed(self, name: str, err: CertificateError) -> None:
        trouble = self.trouble.setdefault(name, _Trouble())
        trouble.failures += 1
        delay = backoff(trouble.failures, self.retry_s)
        if isinstance(err, RateLimited):
            delay = max(delay, err.retry_after)
        trouble.retry = self.now() + dt.timedelta(seconds=delay)
        trouble.message = str(err)
        log.warning("certificate for %s failed (retry in %.0f s): %s", name, delay, err)
        self.emit(ev.CertificateFailed(host=name, message=str(err), retry=iso(trouble.retry)))

    async def _changed(self) -> None:
        for callback in self.changed:
            try:
                await callback()
            except (HyperdriveError, OSError) as err:  # the old config stays; next change retries
                log.warning("serving the new certificates failed: %s", err)

    def status(self) -> list[dict[str, str | bool]]:
        """Each wanted name's certificate (or the trouble getting one), for `hd status`."""
        rows = []
        for name in self.wanted:
            cert, trouble = self.served.get(name), self.trouble.get(name)
            row: dict[str, str | bool] = {"name": name, "expires": "", "issuer": "", "own": False}
            if cert is not None:
                row.update(cert.to_json())
            if trouble is not None:
                row["error"] = trouble.message
                row["retry"] = iso(trouble.retry) if trouble.retry else ""
            rows.append(row)
        return rows


SERVE_CHECK_S = 5.0


async def serves(port: int, cert: Certificate) -> str:
    """'' when a handshake for `cert.name` on 127.0.0.1:port gets exactly `cert` (asked again
    for up to SERVE_CHECK_S); otherwise what came instead."""
    from cryptography import x509  # noqa: PLC0415 - ~1.5 MB, only with a certificate to check

    want = x509.load_pem_x509_certificates(cert.path.read_bytes())[0].public_bytes(DER)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # compared exactly below
    why = "no answer"
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(SERVE_CHECK_S):
            while True:
                try:
                    got = await _peer_certificate(port, cert.name, context)
                except (OSError, ssl.SSLError) as err:
                    why = f"handshake failed: {err}"
                else:
                    if got == want:
                        return ""
                    why = "another certificate"
                await asyncio.sleep(0.05)
    return why


async def _peer_certificate(port: int, name: str, context: ssl.SSLContext) -> bytes | None:
    """The DER certificate a TLS server on 127.0.0.1:port presents for `name`."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=name, ssl_handshake_timeout=2
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        return tls.getpeercert(binary_form=True) if tls is not None else None
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


class ApiTls:
    """The API port's TLS (HYPERDRIVE_API_TLS): the name's certificate once there, until then
    a self-signed one, so a forge that checks certificates sends no secret before it is real."""

    def __init__(self, keeper: CertificateKeeper, name: str) -> None:
        self.keeper, self.name = keeper, name
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.serving: Path | None = None
        keeper.changed.append(self.reload)

    async def reload(self) -> None:
        """Load the name's current certificate into the context (new handshakes use it)."""
        cert = self.keeper.current([self.name]).get(self.name)
        if cert is not None and cert.path != self.serving:
            self.context.load_cert_chain(cert.path)
            self.serving = cert.path
        elif cert is None and self.serving is None:
            placeholder = self.keeper.store.state / "api-self-signed.pem"
            write_private(placeholder, self_signed(self.name))
            self.context.load_cert_chain(placeholder)
            self.serving = None
