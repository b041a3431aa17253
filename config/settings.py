"""All configuration, in one typed object: the only reader of the environment.

Every setting is an environment variable named ``LOYALTY_`` + the field name in upper case, e.g.
``LOYALTY_KAFKA_BOOTSTRAP``. ``loyalty config`` prints the effective values (secrets masked), and
README's configuration table lists them with their defaults.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_time_ms(text: str) -> int:
    """ISO-8601 (UTC when no offset is given) or epoch milliseconds, as epoch milliseconds.

    Raises ValueError naming both accepted forms.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time (e.g. 2024-05-01T12:00:00Z) "
                         "nor epoch milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOYALTY_", frozen=True, extra="ignore")

    # -- Kafka --------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers (host:port[,host:port]). Unset: the project's own "
        "local broker is used and started when needed.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Security protocol for every Kafka connection."
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates.")
    local_kafka_port: int = Field(
        19092, description="Port of the local broker's client listener (its controller uses the next port).")
    local_kafka_secure: bool = Field(
        False, description="Also open a SASL_SSL (SCRAM-SHA-512) listener on the local broker, on the port after the "
        "controller's, with a self-signed certificate and the SASL user/password from these settings (for testing TLS).",
    )
    kafka_version: str = Field(
        "4.1.1", description="Apache Kafka release the local broker runs (org.apache.kafka:kafka_2.13 from Maven Central).")
    kafka_cache_dir: Path = Field(
        Path.home() / ".cache" / "loyalty-stream" / "kafka",
        description="Where the local broker's jars are cached (outside the repository).",
    )
    kafka_session_timeout_seconds: float = Field(
        10.0, ge=6, description="Consumer group session timeout: how soon a dead worker's partitions move to another.")
    topic_prefix: str = Field("loyalty.", description="Prefix of every topic name.")
    partitions: int = Field(4, ge=1, description="Partitions of every topic the project creates.")
    producer_linger_seconds: float = Field(
        0.01, ge=0, description="How long the worker's producer waits to fill a batch of changelog writes, signals "
        "and alerts before sending it.")
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="Largest Kafka message accepted; producers, consumers and topic configs agree on it."
    )
    producer_batch_bytes: int = Field(
        262_144, ge=1024, description="Largest batch of records the worker's producer builds per partition (capped at "
        "LOYALTY_MAX_MESSAGE_BYTES). A changelog record is about 1.4 KB: Kafka's default of 16 KB sends a batch, and "
        "awaits its acknowledgement, for every ten or so.")

    # -- worker -------------------------------------------------------------------------------
    app_id: str = Field("loyalty-stream", description="Faust application id: consumer group and changelog topic prefix.")
    data_dir: Path = Field(Path("var"), description="Root of local data: broker data, table state, embedded ClickHouse.")
    state_path: Path | None = Field(
        None, description="Where this state worker keeps its tables (RocksDB). Unset: <data_dir>/state. Several "
        "state workers sharing one data directory each need their own.")
    web_host: str = Field("127.0.0.1", description="Address the worker's HTTP API listens on.")
    web_port: int = Field(6066, description="Port of the worker's HTTP API.")
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token required by every route of the worker's HTTP API but /health; never logged. "
        "The worker refuses to start on a non-loopback LOYALTY_WEB_HOST without one.",
    )
    batch_max_events: int = Field(
        10_000, ge=1,
        description="Events the state worker takes per batch at most (live traffic makes smaller batches within "
        "LOYALTY_BATCH_MAX_SECONDS; a backlog is caught up in batches of this size).")
    eager_delivery: bool = Field(
        True, description="Hand each fetched input record to the state worker's stream without Faust's four asyncio "
        "tasks per record (streams/delivery.py): about a third of Faust's own cost per record. False: Faust's delivery.")
    batch_max_seconds: float = Field(0.25, gt=0, description="Longest wait of the state worker to fill a batch, seconds.")
    batch_when_caught_up: bool = Field(
        True, description="Hand a batch to the state worker before LOYALTY_BATCH_MAX_SECONDS once it holds every record "
        "on the broker of the input partitions the worker owns (streams/take.py): live events are taken as soon as the "
        "batch before them is written, instead of after a full window. False: full batches or the window only.")
    batch_min_cycle_seconds: float = Field(
        0.05, ge=0, description="Shortest time between two batches handed over because the state worker caught up, "
        "seconds: bounds the batches per second (and their fixed work) when events trickle in.")
    state_cache_customers: int = Field(
        100_000, ge=0,
        description="Customers whose decoded state (and alert state) the worker keeps in memory, least recently used "
        "out; about 8 KB each (state and alert memory). 0: decode from the table every time.")
    dedup_horizon_days: float = Field(
        7.0, gt=0,
        description="How long (in arrival time) a customer's event ids are remembered, so a resend or replay counts once."
    )
    currency: str = Field(
        "EUR", min_length=3, max_length=3, description="Reporting currency; purchases in another currency are dead-lettered.")
    max_event_bytes: int = Field(65_536, ge=256, description="Byte cap on one input event, checked before decoding.")
    future_skew_seconds: int = Field(300, ge=0, description="How far in the future (by the worker's clock) an event time may be.")
    earliest_event_time: str = Field(
        "2000-01-01T00:00:00Z",
        description="Oldest event time accepted (ISO-8601, UTC when no offset is given, or epoch milliseconds); "
        "older events are dead-lettered as a bad clock. Set it earlier to import older purchase history.",
    )
    pseudonymisation_key: SecretStr | None = Field(
        None,
        description="Secret key of the HMAC that pseudonymises e-mail addresses and phone numbers at ingestion. "
        "Unset: a random key kept in <data_dir>/pseudonymisation.key (fine for a laptop, not for production).",
    )
    sink_retry_max_seconds: float = Field(30.0, gt=0, description="Longest back-off between ClickHouse write retries.")
    sink_batch_max_records: int = Field(
        50_000, ge=1, description="Records the ClickHouse sink copies per batch at most (one insert per table per batch).")
    sink_batch_max_seconds: float = Field(
        0.25, gt=0, description="Longest time the ClickHouse sink gathers a batch before inserting it, seconds. Its "
        "consumer's fetches wait for 256 KB of records or half this time, whichever comes first.")
    model_params_check_seconds: float = Field(
        30.0, gt=0,
        description="How often a state worker looks for new BG/NBD parameters and co-purchase tables on the model-params topic.")
    churn_horizon_days: int = Field(
        90, ge=1, le=730, description="Horizon of churn_risk: probability of no purchase within this many days.")
    model_refit_minutes: float = Field(
        60.0, gt=0,
        description="How often the sink refits the BG/NBD population parameters and co-purchase statistics from ClickHouse.",
    )
    alert_score_drop_points: float = Field(15.0, gt=0, description="score_drop fires this many points below the 30-day peak.")
    alert_cooldown_days: float = Field(14.0, ge=0, description="No second alert of a kind for a customer within this many days.")
    alert_quiet_tolerance_gaps: float = Field(
        2.0, ge=0, description="gone_quiet waits this many of the customer's usual gaps (at least 3 days) past the "
        "expected next purchase; see README for the precision/lead-time trade-off.")
    alert_check_seconds: float = Field(30.0, gt=0, description="How often the worker looks for customers gone quiet.")
    alert_live_window_hours: float = Field(
        48.0, ge=0, description="An alert whose event time (raised_at) is more than this many hours before the "
        "worker's clock when it is evaluated is historical (a backfill or replay of old history): stored in "
        "ClickHouse with historical = true, published flagged, and never sent to the webhook.")
    webhook_url: str | None = Field(None, description="Where live alerts are POSTed (Standard Webhooks signing), by the "
                                            "sink process from the alerts topic. Unset: no webhook.")
    webhook_secret: SecretStr | None = Field(None, description="Webhook signing secret (whsec_<base64> or raw); never logged.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one webhook request.")
    webhook_max_attempts: int = Field(10, ge=1, description="Attempts per alert before it is dead-lettered.")
    webhook_backoff_cap_seconds: float = Field(60.0, gt=0, description="Longest wait between webhook retries.")
    sink_factory: str | None = Field(
        None, description="module:function that builds the ClickHouse sink from the settings, instead of the "
        "standard one (the fault tests inject failures this way). Unset: the standard sink.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    pipeline_factory: str | None = Field(
        None, description="module:class of the state worker's pipeline (a subclass of streams.app.Pipeline), instead "
        "of the standard one (the fault tests pause a batch between its steps this way). Unset: the standard pipeline.",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    log_level: str = Field("INFO", description="Log level of the worker and commands.")

    # -- ClickHouse ---------------------------------------------------------------------------
    clickhouse_dsn: str | None = Field(
        None,
        description="chdb:///path for the embedded engine, or http(s)://user:password@host:8123/ for a server. "
        "Unset: chdb:///<data_dir>/clickhouse.",
    )
    clickhouse_database: str = Field("loyalty", description="ClickHouse database of every table and view.")
    clickhouse_cluster: str | None = Field(
        None, description="Name of a ClickHouse cluster (a server DSN only): the migrations then create replicated "
        "<table>_local tables ON CLUSTER and a Distributed <table> over them for inserts and reads (docs/scaling.md). "
        "Unset: single-node tables.")
    clickhouse_tiers_now_refresh_seconds: int = Field(
        5, ge=1, le=86_400, description="Seconds between two refreshes of tiers_now, the tier mix v_tiers_now reads "
        "(one signals_current FINAL each time, about 150 ms of CPU per million customers while signals are inserted; "
        "the sink sets it at start). Lower: fresher answers, more CPU.")

    @field_validator("earliest_event_time")
    @classmethod
    def _earliest_event_time_parses(cls, value: str) -> str:
        parse_time_ms(value)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_known(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value

    @model_validator(mode="after")
    def _cluster_needs_a_server(self) -> Settings:
        if self.clickhouse_cluster is not None and self.embedded_clickhouse:
            raise ValueError("LOYALTY_CLICKHOUSE_CLUSTER needs a ClickHouse server (LOYALTY_CLICKHOUSE_DSN=http(s)://...): "
                             "the embedded engine is one process")
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix_chars(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may only contain letters, digits, '.', '_' and '-'")
        return value

    @cached_property
    def bootstrap(self) -> str:
        """Bootstrap servers to use: the configured ones, or the local broker's."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.local_kafka_port}"

    @property
    def uses_local_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def clickhouse_url(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    @property
    def state_dir(self) -> Path:
        return self.state_path or self.data_dir / "state"

    @property
    def kafka_dir(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def alert_live_window_ms(self) -> int:
        return round(self.alert_live_window_hours * 3_600_000)

    @property
    def dedup_horizon_ms(self) -> int:
        return int(self.dedup_horizon_days * 86_400_000)

    @property
    def earliest_event_ms(self) -> int:
        """``earliest_event_time`` in epoch milliseconds."""
        return parse_time_ms(self.earliest_event_time)

    @property
    def web_is_loopback(self) -> bool:
        """True when the HTTP API listens on a loopback address, so only this host can reach it."""
        if self.web_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.web_host).is_loopback
        except ValueError:  # a host name other than localhost may resolve to any address
            return False

    @property
    def web_url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"

    def kafka_python_config(self) -> dict[str, object]:
        """Connection settings in kafka-python's (and aiokafka's) names."""
        config: dict[str, object] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            config["sasl_mechanism"] = self.kafka_sasl_mechanism
            config["sasl_plain_username"] = self.kafka_sasl_username
            config["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        if self.kafka_security_protocol.endswith("SSL") and self.kafka_ssl_cafile:
            config["ssl_cafile"] = str(self.kafka_ssl_cafile)
        return config

    def child_environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The environment that makes a child process load exactly these settings: ``inherited``
        (the parent's environment) without its own ``LOYALTY_*`` variables, plus every set field."""
        env = {k: v for k, v in inherited.items() if not k.startswith("LOYALTY_")}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"LOYALTY_{name.upper()}"] = str(value)
        return env

    def described(self) -> list[tuple[str, str, str]]:
        """(variable, effective value, description) rows, secrets masked."""
        rows = []
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            shown = "***" if isinstance(value, SecretStr) else ("" if value is None else str(value))
            rows.append((f"LOYALTY_{name.upper()}", shown, info.description or ""))
        return rows


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (tests use these)."""
    return Settings(**overrides)  # type: ignore[arg-type]
