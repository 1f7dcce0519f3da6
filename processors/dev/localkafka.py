"""A real single-node Apache Kafka broker (KRaft) on the local JVM, no Docker needed.

The broker's classpath comes from Maven Central: ``deploy/kafka/pom.xml`` (shipped in the wheel too) names the
``kafka_2.13`` artifact and ``mvn dependency:build-classpath`` resolves it (cached per pom
hash). Start-up is three steps, each with a clear failure:

1. resolve the classpath (needs ``mvn``; the first run downloads about 40 MB),
2. format the data folder once (``kafka.tools.StorageTool format --standalone``),
3. start ``kafka.Kafka`` detached and wait until it answers a metadata request.

The broker listens on 127.0.0.1 only. With a :class:`SecureListener` it also listens with
SASL_SSL (SCRAM-SHA-512 over TLS, a certificate made with the JDK's ``keytool``) and enforces ACLs
(KRaft's ``StandardAuthorizer``, nothing allowed without an ACL): a secured cluster to test
against. The loopback PLAINTEXT listener stays, for the broker's own traffic and for the set-up
(topics, SCRAM users, ACLs) as ``User:ANONYMOUS``, its super user. Its pid, ports and logs live in the data folder, so
``stop`` works from another process (``make kafka-down``), and ``start`` after ``stop`` restarts the
same broker, with its data and its controller port (a test restarting its broker mid-stream).
The same classpath carries Kafka's command-line tools (:meth:`LocalKafka.tool`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from processors import project

DEPLOY_DIR = project.LOCAL_BROKER
DEFAULT_DATA_DIR = Path(".local/kafka")
DEFAULT_PORT = 9092


class LocalKafkaError(RuntimeError):
    """The local broker could not be set up, started or reached; the message says why."""


@dataclass(frozen=True)
class SecureListener:
    """A SASL_SSL listener on ``port``: SCRAM-SHA-512 over TLS with the key in ``folder/broker.p12``,
    whose self-signed certificate (for 127.0.0.1 and localhost) a client trusts as ``ca.pem``."""

    folder: Path
    port: int
    password: str

    MECHANISM = "SCRAM-SHA-512"

    @classmethod
    def create(cls, folder: Path, port: int | None = None) -> SecureListener:
        """Make the broker's key and certificate in ``folder`` with ``keytool`` (valid two days)."""
        keytool = _require("keytool", "install a Java 17+ JDK (for example `apt-get install openjdk-17-jdk-headless`)")
        folder.mkdir(parents=True, exist_ok=True)
        listener = cls(folder.resolve(), port or free_port(), uuid.uuid4().hex)
        store = ["-keystore", str(listener.keystore), "-storetype", "PKCS12", "-storepass", listener.password]
        for args in (["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048", "-validity", "2",
                      "-dname", "CN=localhost", "-ext", "SAN=IP:127.0.0.1,DNS:localhost", "-keypass", listener.password],
                     ["-exportcert", "-alias", "broker", "-rfc", "-file", str(listener.ca_location)]):
            made = subprocess.run([keytool, *args, *store], capture_output=True, text=True)
            if made.returncode != 0:
                raise LocalKafkaError(f"keytool {args[0]} failed:\n{made.stdout}{made.stderr}")
        return listener

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.p12"

    @property
    def ca_location(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def server_properties(self, plain_port: int, controller_port: int) -> str:
        """What server.properties gets on top (later keys win): the listener, TLS, SASL and the authorizer."""
        return "\n".join([
            "", "# SecureListener: SASL_SSL with SCRAM, ACLs enforced",
            f"listeners=PLAINTEXT://127.0.0.1:{plain_port},SASL_SSL://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{plain_port},SASL_SSL://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            f"sasl.enabled.mechanisms={self.MECHANISM}",
            f"listener.name.sasl_ssl.{self.MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"ssl.keystore.location={self.keystore}", "ssl.keystore.type=PKCS12",
            f"ssl.keystore.password={self.password}", f"ssl.key.password={self.password}",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false", "super.users=User:ANONYMOUS", ""])

    def client_properties(self, user: str, password: str) -> dict[str, str]:
        """What a client of this listener sets (in a properties file or HANDOFF_KAFKA_* variables)."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": self.MECHANISM, "sasl.username": user, "sasl.password": password,
                "ssl.ca.location": str(self.ca_location)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalKafkaError(f"`{tool}` not found on PATH: {hint}")
    return path


def wait_for_broker(bootstrap: str, timeout: float = 60.0) -> None:
    """Block until the broker answers a metadata request, or raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while True:  # first the port, so librdkafka does not log every refusal
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise LocalKafkaError(f"nothing listens at {bootstrap} ({exc})") from None
            time.sleep(0.3)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    while time.monotonic() < deadline:
        try:
            if admin.list_topics(timeout=2).brokers:
                return
        except Exception as exc:  # KafkaException while the broker is still starting
            last = exc
        time.sleep(0.3)
    raise LocalKafkaError(f"no broker answered at {bootstrap} within {timeout:.0f}s ({last})")


@dataclass
class LocalKafka:
    """One broker process; ``data_dir`` holds its log segments, pid file and server.log."""

    data_dir: Path = DEFAULT_DATA_DIR
    port: int = DEFAULT_PORT
    secure: SecureListener | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def classpath(self) -> str:
        _require("java", "install a Java 17+ runtime (for example `apt-get install openjdk-17-jre-headless`)")
        mvn = _require("mvn", "install Apache Maven (for example `apt-get install maven`)")
        pom = DEPLOY_DIR / "pom.xml"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
        cache = Path.home() / ".cache" / "handoff" / f"kafka-classpath-{digest}.txt"
        if cache.exists() and all(Path(p).exists() for p in cache.read_text().split(os.pathsep)):
            return cache.read_text()
        cache.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath", f"-Dmdep.outputFile={cache}"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not cache.exists():
            raise LocalKafkaError(f"maven could not resolve the Kafka classpath:\n{result.stdout}{result.stderr}")
        return cache.read_text()

    def tool(self, main_class: str, *args: str, timeout: float = 120.0) -> str:
        """Run one of Kafka's command-line tools against this broker (``--bootstrap-server`` is added);
        its standard output, or :class:`LocalKafkaError` with what it printed."""
        command = ["java", "-cp", self.classpath(), main_class, "--bootstrap-server", self.bootstrap, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise LocalKafkaError(f"{main_class} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
        return result.stdout

    def _controller_port(self) -> int:
        """Chosen once per data folder: the quorum's voter is recorded with it when formatting."""
        saved = self.data_dir / "controller.port"
        if not saved.exists():
            saved.write_text(str(free_port()))
        return int(saved.read_text())

    def running_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker (or find it already running) and return its bootstrap address."""
        if self.running_pid() is not None:
            self.port = int((self.data_dir / "broker.port").read_text())
            wait_for_broker(self.bootstrap, timeout)
            return self.bootstrap
        cp = self.classpath()
        self.data_dir = self.data_dir.resolve()
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(
            (DEPLOY_DIR / "server.properties")
            .read_text()
            .replace("${port}", str(self.port))
            .replace("${controller_port}", str(self._controller_port()))
            .replace("${data_dir}", str(self.data_dir / "log"))
            + (self.secure.server_properties(self.port, self._controller_port()) if self.secure else "")
        )
        java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dkafka.logs.dir={logs}",
                f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}", "-cp", cp]
        if not (self.data_dir / "log" / "meta.properties").exists():
            # Ids are url-safe base64 and may start with "-": pass it as `--cluster-id=...` so
            # the tool's argument parser does not take it for an option.
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            fmt = subprocess.run(
                [*java, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                 "--config", str(props), "--standalone"],
                capture_output=True, text=True,
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting {self.data_dir} failed:\n{fmt.stdout}{fmt.stderr}")
        with open(logs / "stdout.log", "ab") as out:
            proc = subprocess.Popen([*java, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._pid_file.write_text(str(proc.pid))
        (self.data_dir / "broker.port").write_text(str(self.port))
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise LocalKafkaError(f"the broker exited with {proc.returncode}; see {logs}/stdout.log")
                try:
                    wait_for_broker(self.bootstrap, timeout=2)
                    return self.bootstrap
                except LocalKafkaError:
                    continue
            raise LocalKafkaError(f"the broker did not answer at {self.bootstrap} within {timeout:.0f}s")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the broker with SIGTERM (SIGKILL after ``timeout``); False if none was running."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (tests), else no-op
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)
        return True
