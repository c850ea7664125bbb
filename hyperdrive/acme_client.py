"""Obtain one certificate over ACME (RFC 8555) with HTTP-01, using certbot's `acme` library.

The library is blocking (requests): `AcmeIssuer.issue` runs it in a thread. Its errors become
CertificateError carrying the ACME server's own problem detail, never a key or a nonce.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hyperdrive.certs import CertStore, new_key
from hyperdrive.errors import CertificateError

if TYPE_CHECKING:
    from acme import client, messages

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 30


@dataclass(frozen=True)
class Issued:
    """A certificate as the ACME server gave it."""

    key_pem: bytes
    chain_pem: bytes


class RateLimited(CertificateError):
    """The ACME server said to slow down; `retry_after` is its own wish, in seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AcmeIssuer:
    """One ACME account (its key kept in the store) that orders certificates for names."""

    def __init__(self, store: CertStore, directory: str, email: str = "", ca: Path | None = None):
        self.store = store
        self.directory = directory
        self.email = email
        self.ca = ca
        self._client: client.ClientV2 | None = None

    async def issue(self, name: str) -> Issued:
        """Order, answer HTTP-01, finalize: the key and chain, or CertificateError."""
        return await asyncio.to_thread(self._issue, name)

    def _issue(self, name: str) -> Issued:
        from acme import errors, messages  # noqa: PLC0415 - ~1 s of imports, on first need

        try:
            return self._order(name)
        except messages.Error as err:
            if err.code == "accountDoesNotExist":  # the server forgot us: register again
                self._client = None
            raise _problem(name, err) from None
        except errors.ValidationError as err:
            raise CertificateError(f"{name}: validation failed: {_failures(err)}") from None
        except (errors.Error, OSError, ValueError) as err:
            self._client = None  # a fresh connection and directory next time
            raise CertificateError(f"{name}: {type(err).__name__}: {err}") from None

    def _order(self, name: str) -> Issued:
        from acme import challenges, crypto_util  # noqa: PLC0415

        acme = self._account()
        key_pem = new_key()
        order = acme.new_order(crypto_util.make_csr(key_pem, [name]))
        published = []
        try:
            for authz in order.authorizations:
                if authz.body.status.name == "valid":
                    continue  # reused by the server
                challenge = _http01(authz, name, challenges.HTTP01)
                response, validation = challenge.response_and_validation(acme.net.key)
                published.append(
                    self.store.write_challenge(challenge.chall.encode("token"), validation)
                )
                acme.answer_challenge(challenge, response)
            done = acme.poll_and_finalize(order)  # polls for at most 90 s
        finally:
            for path in published:
                path.unlink(missing_ok=True)
        return Issued(key_pem, done.fullchain_pem.encode())

    def _account(self) -> client.ClientV2:
        """The ACME client with our account: registered once, found again by its key."""
        if self._client is not None:
            return self._client
        from acme import client, errors, messages  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from josepy.jwa import ES256  # noqa: PLC0415
        from josepy.jwk import JWKEC  # noqa: PLC0415

        key = serialization.load_pem_private_key(self.store.account(), password=None)
        jwk = JWKEC(key=key)
        net = client.ClientNetwork(jwk, alg=ES256, user_agent="hyperdrive", timeout=HTTP_TIMEOUT_S)
        if self.ca is not None:
            net.verify_ssl = str(self.ca)  # type: ignore[assignment] # requests takes a CA path
        acme = client.ClientV2(client.ClientV2.get_directory(self.directory, net), net)
        contact = (f"mailto:{self.email}",) if self.email else ()
        registration = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as found:  # the key has an account already: use it
            acme.net.account = acme.query_registration(
                messages.RegistrationResource(uri=found.location, body=messages.Registration())
            )
        self._client = acme
        return acme


def _http01(authz: messages.AuthorizationResource, name: str, kind: type[Any]) -> Any:
    """The HTTP-01 challenge of an authorization, or CertificateError (e.g. a wildcard)."""
    for challenge in authz.body.challenges:
        if isinstance(challenge.chall, kind):
            return challenge
    raise CertificateError(f"{name}: the ACME server offers no HTTP-01 challenge")


def _problem(name: str, err: messages.Error) -> CertificateError:
    """The ACME problem document as a message; rate limits as RateLimited."""
    text = f"{name}: {err.typ.rsplit(':', 1)[-1]}: {err.detail or err.title or ''}".strip()
    if err.code == "rateLimited":
        return RateLimited(text, retry_after=rate_limit_wait(err.detail or ""))
    return CertificateError(text)


RETRY_AFTER = re.compile(r"retry after (\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)", re.IGNORECASE)
MIN_RATE_LIMIT_WAIT_S = 3600.0


def rate_limit_wait(detail: str, now: dt.datetime | None = None) -> float:
    """Seconds to wait after a `rateLimited` answer: the `retry after <UTC time>` Let's
    Encrypt writes in its detail (the problem document loses the Retry-After header), and
    never less than an hour."""
    found = RETRY_AFTER.search(detail)
    if found is None:
        return MIN_RATE_LIMIT_WAIT_S
    when = dt.datetime.fromisoformat(found[1].replace(" ", "T")).replace(tzinfo=dt.UTC)
    left = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return max(left, MIN_RATE_LIMIT_WAIT_S)


def _failures(err: Any) -> str:
    """What the server said about each failed authorization."""
    said = []
    for authz in err.failed_authzrs:
        for challenge in authz.body.challenges:
            if challenge.error is not None:
                said.append(f"{challenge.error.typ.rsplit(':', 1)[-1]}: {challenge.error.detail}")
    return "; ".join(said) or "no detail"
