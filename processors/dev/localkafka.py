"""A real single-node Apache Kafka broker (KRaft) on the local JVM, no Docker needed.

The broker's classpath comes from Maven Central: ``deploy/kafka/pom.xml`` (shipped in the wheel too) names the
``kafka_2.13`` artifact and ``mvn dependency:build-classpath`` resolves it (cached per pom
hash). Start-up is three steps, each with a clear failure:

1. resolve the classpath (needs ``mvn``; the first run downloads about 40 MB),
2. format the data folder once (``kafka.tools.StorageTool format --standalone``),
3. start ``kafka.Kafka`` detached and wait until it answers a metadata request.

The broker listens on 127.0.0.1 only. Its pid, ports and logs live in the data folder, so
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
