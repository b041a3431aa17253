"""Keyed pseudonyms for contact details (e-mail addresses, phone numbers). Pure.

A contact detail is replaced at ingestion by ``pii:<kind>:<hex>``, the HMAC-SHA256 of its
normalised form under a secret key: the same address always gives the same pseudonym (so it
still links a customer's channels), but it cannot be reversed or guessed without the key.
Bytes that cannot be decoded are scrubbed by pattern before they are kept anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re

PREFIX = "pii:"
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,255}\.[A-Za-z]{2,24}")
# Runs of 7+ digits, optionally with a leading + and common separators: phone-number shaped.
PHONE = re.compile(rb"\+?\d[\d ()./-]{5,22}\d")
CONTACT_FIELDS = {
    "purchase": {"contact_email": "email", "contact_phone": "phone"},
    "call": {"caller_phone": "phone"},
    "visit": {},
}


def normalise(kind: str, value: str) -> str:
    if kind == "email":
        return value.strip().lower()
    if kind == "phone":
        digits = re.sub(r"\D", "", value)
        return ("+" if value.strip().startswith("+") else "") + digits
    raise ValueError(f"unknown contact kind {kind!r}")


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """``pii:<kind>:<32 hex>``; a value that already is a pseudonym is returned unchanged."""
    if value.startswith(PREFIX):
        return value
    digest = hmac.new(key, f"{kind}:{normalise(kind, value)}".encode(), hashlib.sha256).hexdigest()
    return f"{PREFIX}{kind}:{digest[:32]}"


def pseudonymise_datum(key: bytes, event_kind: str, datum: dict) -> dict:
    """The datum with every contact field of its kind replaced by its pseudonym (a copy)."""
    fields = CONTACT_FIELDS.get(event_kind, {})
    if not any(datum.get(name) for name in fields):
        return datum
    out = dict(datum)
    for name, kind in fields.items():
        if out.get(name):
            out[name] = pseudonym(key, kind, out[name])
    return out


def scrub_bytes(data: bytes) -> bytes:
    """Mask anything shaped like an e-mail address or a phone number in undecodable bytes."""
    data = EMAIL.sub(lambda m: b"<email>", data)
    return PHONE.sub(lambda m: b"<phone>", data)


def scrub_text(text: str) -> str:
    return scrub_bytes(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
