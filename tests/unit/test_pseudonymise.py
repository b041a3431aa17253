"""Pseudonyms for contact details: keyed, stable, normalised, irreversible without the key."""

from __future__ import annotations

import pytest

from domain.pseudonymise import pseudonym, pseudonymise_datum, scrub_bytes, scrub_text

KEY = b"k" * 32


def test_same_address_same_pseudonym_after_normalisation():
    assert pseudonym(KEY, "email", " Alice@Example.COM ") == pseudonym(KEY, "email", "alice@example.com")
    assert pseudonym(KEY, "phone", "+44 (20) 7946-0958") == pseudonym(KEY, "phone", "+442079460958")


def test_pseudonym_depends_on_the_key_and_hides_the_value():
    a = pseudonym(KEY, "email", "alice@example.com")
    b = pseudonym(b"other-key", "email", "alice@example.com")
    assert a != b and a.startswith("pii:email:") and len(a) == len("pii:email:") + 32
    assert "alice" not in a


def test_known_vector():
    # HMAC-SHA256(key=b"k"*32, "email:alice@example.com"), first 32 hex digits, computed with openssl:
    # printf 'email:alice@example.com' | openssl dgst -sha256 -hmac kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk
    import hashlib
    import hmac

    expected = hmac.new(KEY, b"email:alice@example.com", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(KEY, "email", "alice@example.com") == f"pii:email:{expected}"


def test_pseudonymising_twice_changes_nothing():
    once = pseudonym(KEY, "phone", "+15551234567")
    assert pseudonym(KEY, "phone", once) == once


def test_datum_fields_by_event_kind():
    datum = {"event_id": "e", "contact_email": "bob@example.org", "contact_phone": None, "amount_minor": 5}
    out = pseudonymise_datum(KEY, "purchase", datum)
    assert out["contact_email"] == pseudonym(KEY, "email", "bob@example.org")
    assert out["contact_phone"] is None and out["amount_minor"] == 5
    assert datum["contact_email"] == "bob@example.org"  # a copy, not in place
    assert pseudonymise_datum(KEY, "call", {"caller_phone": "0301234567"})["caller_phone"].startswith("pii:phone:")
    visit = {"event_id": "v"}
    assert pseudonymise_datum(KEY, "visit", visit) is visit


@pytest.mark.parametrize("raw, kept", [
    (b"\x00\x01bob@example.org\x02", b"\x00\x01<email>\x02"),
    (b"call +44 20 7946 0958 now", b"call <phone> now"),
    (b"order 12345 of 3 items", b"order 12345 of 3 items"),  # short numbers are not phones
])
def test_scrubbing_undecodable_bytes(raw, kept):
    assert scrub_bytes(raw) == kept


def test_scrubbing_text():
    assert scrub_text("bad value bob@example.org at +1 555 123 4567") == "bad value <email> at <phone>"
