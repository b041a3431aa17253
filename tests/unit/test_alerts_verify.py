"""Webhook signing and the receivers' verify helper."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random

import pytest

from sinks.webhook import WebhookConfig, WebhookDelivery, classify, encode_body, parse_retry_after
from sinks.webhook_verify import WebhookVerificationError, secret_key, sign, verify

# The Standard Webhooks specification's published test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(sig: str = SPEC_SIGNATURE, ts: int | str = SPEC_TS, msg_id: str = SPEC_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def test_sign_reproduces_the_spec_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY.encode()) == SPEC_SIGNATURE


def test_raw_and_whsec_secrets() -> None:
    assert secret_key(SPEC_SECRET) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert secret_key("plain-secret") == b"plain-secret"
    raw = base64.b64encode(hmac.new(b"plain-secret", b"id.1.{}", hashlib.sha256).digest()).decode()
    assert sign("plain-secret", "id", 1, "{}") == f"v1,{raw}"
    with pytest.raises(ValueError):
        secret_key("whsec_not*base64")
    with pytest.raises(ValueError):
        secret_key("")


def test_verify_accepts_the_spec_vector_and_returns_the_body() -> None:
    assert verify(SPEC_SECRET, headers(), SPEC_BODY, now=SPEC_TS + 10) == {"test": 2432232314}
    upper = {k.upper(): v for k, v in headers().items()}  # header names are case-insensitive
    assert verify(SPEC_SECRET, upper, SPEC_BODY.encode(), now=SPEC_TS) == {"test": 2432232314}


def test_verify_accepts_any_of_several_signatures() -> None:
    several = f"v1,Zm9v {SPEC_SIGNATURE} v2,bar"
    assert verify(SPEC_SECRET, headers(several), SPEC_BODY, now=SPEC_TS) == {"test": 2432232314}


@pytest.mark.parametrize("hdrs, body, now, message", [
    ({"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TS)}, SPEC_BODY, SPEC_TS, "missing"),
    (headers(ts="soon"), SPEC_BODY, SPEC_TS, "not an integer"),
    (headers(), SPEC_BODY, SPEC_TS + 301, "too old"),
    (headers(), SPEC_BODY, SPEC_TS - 301, "too far in the future"),
    (headers(), '{"test": 2432232315}', SPEC_TS, "no matching signature"),  # tampered body
    (headers(SPEC_SIGNATURE[:-2] + "A="), SPEC_BODY, SPEC_TS, "no matching signature"),  # tampered signature
    (headers(msg_id="msg_other"), SPEC_BODY, SPEC_TS, "no matching signature"),  # replayed under another id
    (headers("v2," + SPEC_SIGNATURE[3:]), SPEC_BODY, SPEC_TS, "no matching signature"),  # wrong version
])
def test_verify_rejects(hdrs: dict[str, str], body: str, now: int, message: str) -> None:
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SPEC_SECRET, hdrs, body, now=now)


def test_verify_rejects_a_wrong_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify("whsec_" + base64.b64encode(b"another key").decode(), headers(), SPEC_BODY, now=SPEC_TS)


def test_verify_tolerance_is_configurable() -> None:
    assert verify(SPEC_SECRET, headers(), SPEC_BODY, tolerance_seconds=1000, now=SPEC_TS + 900) == {"test": 2432232314}


# ---------------------------------------------------------------------------------------------
# The sink's pure parts


def test_config_masks_the_secret() -> None:
    config = WebhookConfig("https://user:pw@hooks.example.com:8443/alerts?token=abc", "s3cr3t-value")
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in str(config)
    assert "pw" not in repr(config) and "token" not in repr(config)
    assert config.safe_url == "https://hooks.example.com:8443/alerts"


def test_config_takes_a_secretstr() -> None:
    from pydantic import SecretStr

    config = WebhookConfig("http://127.0.0.1/x", SecretStr("s3cr3t-value"))  # type: ignore[arg-type]
    assert config.secret == "s3cr3t-value"
    with pytest.raises(ValueError):
        WebhookConfig("ftp://127.0.0.1/x", "s")


@pytest.mark.parametrize("status, kind", [
    (200, "delivered"), (204, "delivered"), (400, "give_up"), (401, "give_up"), (404, "give_up"), (410, "give_up"),
    (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry"), (301, "give_up"),
])
def test_classify(status: int, kind: str) -> None:
    assert classify(status, "why", None).status == kind


def test_classify_reason_carries_the_body() -> None:
    assert classify(400, "bad payload", None).reason == "HTTP 400: bad payload"
    assert classify(503, "", 7.0).retry_after == 7.0


def test_retry_after() -> None:
    assert parse_retry_after("12", now=0) == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon", now=0) is None
    assert parse_retry_after(None, now=0) is None


class EdgeRandom(random.Random):
    """uniform() at the low or the high end of its range."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def test_backoff_is_exponential_capped_and_jittered() -> None:
    config = WebhookConfig("http://127.0.0.1/x", "s", backoff_base_seconds=1.0, backoff_cap_seconds=10.0,
                           retry_after_cap_seconds=30.0)

    async def ignore(alert: dict, reason: str) -> None:
        return None

    low, high = (WebhookDelivery(config, ignore, rng=EdgeRandom(h)) for h in (False, True))

    def delays(attempt: int, retry_after: float | None) -> tuple[float, float]:
        return low.backoff(attempt, retry_after), high.backoff(attempt, retry_after)

    assert delays(1, None) == (0.5, 1.0)
    assert delays(3, None) == (2.0, 4.0)
    assert delays(10, None) == (5.0, 10.0)  # capped
    assert delays(2, 7.0) == (7.0, 7.0)  # Retry-After honoured
    assert delays(2, 100.0) == (30.0, 30.0)  # and capped


def test_encode_body_is_compact_json_in_field_order() -> None:
    assert encode_body({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'.encode()
    assert json.loads(encode_body({"x": [1.5, None]})) == {"x": [1.5, None]}
