"""A local, single-node Apache Kafka broker in KRaft mode, for development, the demo and tests.

The official broker jars (``org.apache.kafka:kafka_2.13``) are resolved from Maven Central with
``mvn`` into a cache directory outside the repository, the storage is formatted with
``kafka.tools.StorageTool``, and ``kafka.Kafka`` runs as a background process in combined
broker+controller mode on 127.0.0.1. Everything lives under ``<data_dir>/kafka``: ``data/``
(the log), ``logs/server.log`` (the broker's own log), ``broker.pid``.

When ``LOYALTY_KAFKA_BOOTSTRAP`` is set the broker is someone else's and nothing here starts it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from config.settings import Settings

logger = logging.getLogger(__name__)

# Log4j 2 binding for the broker's SLF4J 1.x logging; the version Kafka 4.1 is built with.
LOG4J_VERSION = "2.24.3"
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 5.0


class BrokerError(RuntimeError):
    """The local broker cannot be installed, started or stopped; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    managed: bool
    bootstrap: str
    pid: int | None
    detail: str


def _paths(settings: Settings) -> dict[str, Path]:
    root = settings.kafka_dir.resolve()
    return {
        "root": root,
        "data": root / "data",
        "logs": root / "logs",
        "pid": root / "broker.pid",
        "config": root / "server.properties",
        "stdout": root / "logs" / "stdout.log",
        "jars": settings.kafka_cache_dir.expanduser().resolve() / settings.kafka_version / "libs",
    }


# -- prerequisites ---------------------------------------------------------------------------


def check_java(kafka_version: str = "4.x") -> str:
    """Path of a Java 17+ runtime, or a BrokerError that says what to install."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            "Java 17 or newer is needed to run the local Kafka broker and was not found on PATH. "
            "Install it (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless) or set "
            "LOYALTY_KAFKA_BOOTSTRAP to use an existing broker."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    major = int(match.group(1)) if match else 0
    if major < 17:
        raise BrokerError(
            f"Kafka {kafka_version} needs Java 17 or newer; {java} is "
            f"version {match.group(1) if match else 'unknown'}. Install openjdk-17-jre-headless."
        )
    return java


def check_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven is needed once to fetch the Kafka broker jars from Maven Central and was not "
            "found on PATH. Install it (Debian/Ubuntu: apt-get install -y maven)."
        )
    return mvn


def _pom(version: str) -> str:
    deps = [
        ("org.apache.kafka", "kafka_2.13", version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
    ]
    body = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>loyalty-stream</groupId><artifactId>local-kafka-broker</artifactId>"
        f"<version>{version}</version><packaging>pom</packaging><dependencies>{body}</dependencies></project>"
    )


def ensure_jars(settings: Settings) -> Path:
    """Resolve the broker jars into the cache (once); return the directory holding them."""
    jars = _paths(settings)["jars"]
    marker = jars / ".complete"
    if marker.exists():
        return jars
    mvn = check_maven()
    work = jars.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_pom(settings.kafka_version))
    logger.info("fetching Apache Kafka %s broker jars from Maven Central into %s", settings.kafka_version, jars)
    print(f"Fetching Apache Kafka {settings.kafka_version} jars from Maven Central (once) ...", flush=True)
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={jars}", "-DincludeScope=runtime"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0 or not any(jars.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"mvn could not fetch org.apache.kafka:kafka_2.13:{settings.kafka_version}:\n"
            f"{(result.stdout + result.stderr)[-2000:]}"
        )
    marker.write_text(settings.kafka_version)
    return jars


# -- lifecycle -------------------------------------------------------------------------------


def _server_properties(settings: Settings, paths: dict[str, Path], overrides: Mapping[str, str] | None = None) -> str:
    port = settings.local_kafka_port
    listeners = f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{port + 1}"
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    secure: dict[str, str] = {}
    if settings.local_kafka_secure:
        listeners += f",SASL_SSL://127.0.0.1:{port + 2}"
        advertised += f",SASL_SSL://127.0.0.1:{port + 2}"
        protocols += ",SASL_SSL:SASL_SSL"
        secure = {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(paths["root"] / "tls" / "broker.p12"),
            "ssl.keystore.password": KEYSTORE_PASSWORD,
            "ssl.key.password": KEYSTORE_PASSWORD,
        }
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{port + 1}",
        "listeners": listeners,
        "advertised.listeners": advertised,
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": protocols,
        **secure,
        "log.dirs": str(paths["data"]),
        # Single node: every internal topic has one replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # A new group is assigned at once (Kafka waits 3 s for more members): tests start fast.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": str(settings.partitions),
        "message.max.bytes": str(settings.max_message_bytes),
        "replica.fetch.max.bytes": str(max(settings.max_message_bytes, 1_048_576)),
        "log.retention.hours": "168",
        "log.segment.bytes": str(256 * 1024 * 1024),
        **(overrides or {}),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(paths: dict[str, Path]) -> int | None:
    try:
        pid = int(paths["pid"].read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    return host.strip("[]"), int(port)


def broker_answers(settings: Settings, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True when a Kafka client can fetch cluster metadata from the bootstrap servers, within ``timeout``."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        servers = [_host_port(server) for server in settings.bootstrap.split(",")]
    except ValueError:
        return False
    # A refused connection is known at once; the Kafka client would retry it until its timeout.
    if not any(port_open(host, port, timeout=min(timeout, 2.0)) for host, port in servers):
        return False
    try:
        admin = KafkaAdminClient(
            **settings.kafka_python_config(), request_timeout_ms=int(timeout * 1000),
            bootstrap_timeout_ms=int(timeout * 1000), client_id="loyalty-probe",
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def status(settings: Settings) -> BrokerStatus:
    if not settings.uses_local_kafka:
        up = broker_answers(settings)
        return BrokerStatus(up, False, settings.bootstrap, None,
                            "configured broker " + ("answers" if up else "does not answer"))
    paths = _paths(settings)
    pid = _read_pid(paths)
    up = pid is not None and port_open("127.0.0.1", settings.local_kafka_port)
    detail = f"local broker pid {pid}, logs in {paths['logs']}" if up else "local broker is not running"
    return BrokerStatus(up, True, settings.bootstrap, pid if up else None, detail)


def require(settings: Settings) -> None:
    """Raise a BrokerError saying what to do unless the broker answers (within a few seconds)."""
    if settings.uses_local_kafka:
        if not status(settings).running:
            raise BrokerError(f"the local Kafka broker ({settings.bootstrap}) is not running; start it with "
                              "`loyalty kafka start`, or set LOYALTY_KAFKA_BOOTSTRAP to use another broker")
    elif not broker_answers(settings):
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap} (LOYALTY_KAFKA_BOOTSTRAP) within "
                          f"{PROBE_TIMEOUT_SECONDS:g}s; is the broker up and the address right?")


def start(settings: Settings, timeout: float = START_TIMEOUT_SECONDS,
          properties: Mapping[str, str] | None = None) -> BrokerStatus:
    """Start the local broker unless it (or a configured one) is already there. Idempotent.

    ``properties``: broker settings that replace this module's (a benchmark's broker keeping one
    of Kafka's defaults, for instance)."""
    if not settings.uses_local_kafka:
        logger.info("LOYALTY_KAFKA_BOOTSTRAP is set (%s): not starting a local broker", settings.bootstrap)
        return status(settings)
    paths = _paths(settings)
    if _read_pid(paths) is not None:
        _wait_ready(settings, paths, timeout)
        return status(settings)
    if port_open("127.0.0.1", settings.local_kafka_port):
        raise BrokerError(
            f"port {settings.local_kafka_port} is taken by another process; stop it or set "
            "LOYALTY_LOCAL_KAFKA_PORT (or LOYALTY_KAFKA_BOOTSTRAP to use that broker)"
        )
    java = check_java(settings.kafka_version)
    jars = ensure_jars(settings)
    for key in ("data", "logs"):
        paths[key].mkdir(parents=True, exist_ok=True)
    paths["config"].write_text(_server_properties(settings, paths, properties))
    classpath = f"{jars}/*"
    if settings.local_kafka_secure:
        _make_certificate(paths["root"] / "tls")
    if not (paths["data"] / "meta.properties").exists():
        cluster_id = _random_cluster_id()
        scram = []
        if settings.local_kafka_secure:
            if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
                raise BrokerError("LOYALTY_LOCAL_KAFKA_SECURE needs LOYALTY_KAFKA_SASL_USERNAME and _PASSWORD")
            password = settings.kafka_sasl_password.get_secret_value()
            scram = ["--add-scram", f"SCRAM-SHA-512=[name={settings.kafka_sasl_username},password={password}]"]
        result = subprocess.run(
            # "=" form: a cluster id may start with "-", which a separate argument would make an option
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
             "-c", str(paths["config"]), *scram],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
    log4j = resources.files("ops") / "broker_config" / "log4j2.yaml"
    cmd = [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={paths['logs']}", f"-Dlog4j2.configurationFile={log4j}",
        "-cp", classpath, "kafka.Kafka", str(paths["config"]),
    ]
    with open(paths["stdout"], "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    paths["pid"].write_text(str(proc.pid))
    logger.info("started Kafka %s (pid %d) on %s", settings.kafka_version, proc.pid, settings.bootstrap)
    _wait_ready(settings, paths, timeout)
    return status(settings)


KEYSTORE_PASSWORD = "loyalty-local-only"


def _make_certificate(tls: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (keytool, from the JDK) and its PEM for clients."""
    if (tls / "ca.pem").exists():
        return
    keytool = shutil.which("keytool")
    if keytool is None:
        raise BrokerError("keytool (part of the JDK) is needed for LOYALTY_LOCAL_KAFKA_SECURE")
    tls.mkdir(parents=True, exist_ok=True)
    store = str(tls / "broker.p12")
    for args in (
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650",
         "-dname", "CN=127.0.0.1", "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-storetype", "PKCS12"],
        ["-exportcert", "-alias", "broker", "-rfc", "-file", str(tls / "ca.pem")],
    ):
        result = subprocess.run([keytool, *args, "-keystore", store, "-storepass", KEYSTORE_PASSWORD,
                                 "-keypass", KEYSTORE_PASSWORD], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(f"keytool failed: {result.stdout}{result.stderr}")


def certificate_authority(settings: Settings) -> Path:
    """The PEM file clients trust for the local broker's SASL_SSL listener."""
    return _paths(settings)["root"] / "tls" / "ca.pem"


def _random_cluster_id() -> str:
    # KRaft cluster ids are 16 random bytes, URL-safe base64 without padding.
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _wait_ready(settings: Settings, paths: dict[str, Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _read_pid(paths)
        if pid is None:
            raise BrokerError(f"the Kafka broker exited during start-up; see {paths['logs'] / 'server.log'} "
                              f"and {paths['stdout']}")
        if port_open("127.0.0.1", settings.local_kafka_port) and broker_answers(settings):
            return
        time.sleep(0.5)
    raise BrokerError(f"the Kafka broker did not answer within {timeout:.0f}s; see {paths['logs']}")


def stop(settings: Settings, timeout: float = STOP_TIMEOUT_SECONDS, force: bool = False) -> bool:
    """Stop the local broker (SIGTERM, then SIGKILL after ``timeout``). False if it was not running."""
    if not settings.uses_local_kafka:
        logger.info("LOYALTY_KAFKA_BOOTSTRAP is set: the broker is not ours to stop")
        return False
    paths = _paths(settings)
    pid = _read_pid(paths)
    if pid is None:
        paths["pid"].unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if _pid_alive(pid):
        logger.warning("broker pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout)
        os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            _reap(pid)
            time.sleep(0.1)
    paths["pid"].unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    # The broker may be our own child (started by this process): collect it so it is not a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
