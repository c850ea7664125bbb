"""Standard Webhooks signatures (standardwebhooks.com): `webhook-signature: v1,<base64
HMAC-SHA256(id.timestamp.body)>` keyed with the secret (`whsec_<base64>` is decoded first) —
the same scheme hooks/webhook.py verifies for GitLab's signed webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac

from hyperdrive.hooks.webhook import standard_webhook_key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(standard_webhook_key(secret.encode()), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a receiver checks (the id stays the same across retries)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }
