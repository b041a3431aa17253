"""Sign and verify webhooks the Standard Webhooks way (https://www.standardwebhooks.com/).

Standard library only, so a receiver can copy this file as it is.

A request carries three headers:

* ``webhook-id``: the message id; the same across retries (deduplicate on it);
* ``webhook-timestamp``: unix seconds when this attempt was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; several
  space-separated signatures may be sent (e.g. while a secret is rotated), one match suffices.

The secret is either ``whsec_<base64>`` (the spec's form: the key is the decoded bytes) or any
other string, whose UTF-8 bytes are the key ("raw"). Receiver side::

    from webhook_verify import verify, WebhookVerificationError
    try:
        alert = verify(SECRET, request.headers, body_bytes)
    except WebhookVerificationError:
        return 401
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(ValueError):
    """The request is not a valid, fresh, correctly signed webhook."""


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key: base64-decoded for ``whsec_...``, the UTF-8 bytes of any other string."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except binascii.Error as exc:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from exc
    if not secret:
        raise ValueError("the webhook secret is empty")
    return secret.encode()


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` header value: ``v1,<base64 signature>``."""
    payload = body.encode() if isinstance(body, str) else body
    to_sign = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_key(secret), to_sign, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Check the headers and signature of a request; return the JSON body.

    Raises :class:`WebhookVerificationError` on a missing header, a timestamp that is not an
    integer or is more than ``tolerance_seconds`` from ``now`` (default: the clock), or no
    matching signature (compared in constant time).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    signatures = lower.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if timestamp > current + tolerance_seconds:
        raise WebhookVerificationError("webhook-timestamp is too far in the future")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1].encode()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(value.encode(), expected):
            break
    else:
        raise WebhookVerificationError("no matching signature")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookVerificationError(f"body is not JSON: {exc}") from exc
