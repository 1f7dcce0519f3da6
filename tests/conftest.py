"""One real Kafka broker per test session (and, for the view tests, one real PostgreSQL server).

Where it comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka
module if a Docker engine answers; else the local JVM broker (``processors.dev.localkafka``) in a
temporary folder. A test that needs Kafka never skips: if no broker can be had, it fails and
says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import orjson
import pytest

from processors.avro.serde import AvroSerde
from processors.dev.localkafka import LocalKafka, LocalKafkaError, free_port, wait_for_broker
from processors.dev.receiver import WebhookReceiver
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import apply
from processors.project import EXAMPLES
from processors.records import PersonRole
from processors.runtime.options import Guarantee, RuntimeOptions
from processors.runtime.runtime import StageRuntime
from processors.signing import IDENTITY_ENV, ROLES_ENV, SIGNING_KEY_ENV, SIGNING_KEYS_ENV, Signer
from processors.views.store import VIEWS_URL_ENV
from processors.workflow.workflow import ModelRetries, Workflow, load_workflow

WORKFLOWS = EXAMPLES / "workflows"
# `handoff run` serves metrics by default on one port: processes started by tests take any free one
os.environ.setdefault("HANDOFF_METRICS_PORT", "0")
# one signing key for the session, for anyone and every role: the review commands, the control commands and
# the stages (`handoff run` subprocesses inherit it) sign and verify verdicts and control changes with it
os.environ[SIGNING_KEY_ENV] = f"tests:{uuid.uuid4().hex}"
for unset in (SIGNING_KEYS_ENV, ROLES_ENV, IDENTITY_ENV):
    os.environ.pop(unset, None)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


SLOW_FIRST = ("test_liveness.py", "test_recovery.py", "test_security.py", "test_approval_recovery.py",
              "test_views.py", "test_state.py")
"""Run first, so that under xdist (``make test``: two workers, whole modules each) the longest modules
start at once rather than last, and the two workers end together."""


_BROKER = pytest.StashKey[tuple]()


def pytest_configure(config):
    """Under xdist, the controller starts the one local broker every worker shares (workers inherit
    ``KAFKA_BOOTSTRAP_SERVERS``; each test's topics live in a namespace of its own)."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        return
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _docker_answers():
        return
    folder = Path(tempfile.mkdtemp(prefix="handoff-kafka-"))
    broker = LocalKafka(folder, free_port())
    try:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.start(timeout=180)
    except LocalKafkaError as exc:
        pytest.exit(f"no Kafka broker for the tests: the local JVM broker failed: {exc}", returncode=1)
    config.stash[_BROKER] = (broker, folder)


def pytest_unconfigure(config):
    broker, folder = config.stash.get(_BROKER, (None, None))
    if broker is not None:
        broker.stop()
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        wait_for_broker(bootstrap, timeout=30)
        yield bootstrap
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), free_port())
    try:
        bootstrap = broker.start(timeout=180)
    except LocalKafkaError as exc:
        pytest.fail(f"no Kafka broker for the tests: KAFKA_BOOTSTRAP_SERVERS is unset, no Docker engine "
                    f"answers, and the local JVM broker failed: {exc}", pytrace=False)
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory):
    """Stateful stages keep their stores under the session's temporary folder, never in the checkout
    (``handoff run`` subprocesses inherit it)."""
    os.environ["HANDOFF_STATE_DIR"] = str(tmp_path_factory.mktemp("state"))
    yield Path(os.environ["HANDOFF_STATE_DIR"])
    os.environ.pop("HANDOFF_STATE_DIR", None)


@pytest.fixture(scope="session", autouse=True)
def views_database(tmp_path_factory):
    """The views of the whole session in one SQLite file of its own (rows are scoped by namespace),
    so the tests neither read nor leave the checkout's ``.local/views.db``; commands run by the
    tests inherit it through the environment."""
    previous = os.environ.get(VIEWS_URL_ENV)
    os.environ[VIEWS_URL_ENV] = url = f"sqlite:///{tmp_path_factory.mktemp('views') / 'views.db'}"
    yield url
    if previous is None:
        os.environ.pop(VIEWS_URL_ENV, None)
    else:
        os.environ[VIEWS_URL_ENV] = previous


PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's newest /usr/lib/postgresql/<major>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_BIN.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if not versions:
        pytest.fail(f"no PostgreSQL server ({name}): `make test` installs Debian's postgresql package", pytrace=False)
    return str(versions[-1])


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the session's own: initdb into a temporary folder, started on a free
    loopback port, stopped and removed at the end. initdb refuses to run as root, so as root the
    server runs as the ``postgres`` user (runuser), in a folder of its own under the system's
    temporary folder (pytest's is private to root); otherwise as the user running the tests."""
    data = Path(tempfile.mkdtemp(prefix="handoff-postgres-"))
    port = free_port()
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(data, "postgres")

    def pg(*args: str) -> None:
        done = subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            pytest.fail(f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}", pytrace=False)

    pg(_pg_bin("initdb"), "-D", str(data / "db"), "-U", "handoff", "-A", "trust", "--no-sync", "-E", "UTF8")
    pg(_pg_bin("pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-t", "60", "start",
       "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off")
    try:
        yield f"postgresql://handoff@127.0.0.1:{port}/postgres"
    finally:
        pg(_pg_bin("pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def namespace() -> str:
    """A fresh topic namespace per test: tests share the broker, never topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka(kafka_bootstrap, namespace) -> KafkaSettings:
    """The test's namespace on the broker; its topics are deleted afterwards. A workflow deploys
    ~160 partitions, so on a long-lived development broker the tests' leftovers would exhaust its
    open files within an hour (it then fails to create partitions: "Too many open files")."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, namespace=namespace)
    yield settings
    admin = settings.admin()
    leftovers = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{namespace}.")]
    for future in (admin.delete_topics(leftovers, operation_timeout=30) if leftovers else {}).values():
        future.result()


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project of its own: a copy of the shipped support_ticket workflow, its schemas and topics."""
    root = tmp_path / "project"
    shutil.copytree(EXAMPLES / "workflows/support_ticket", root / "workflows/support_ticket")
    shutil.copytree(EXAMPLES / "schemas", root / "schemas")
    shutil.copytree(EXAMPLES / "topics", root / "topics")
    monkeypatch.setenv("HANDOFF_PROJECT", str(root))  # the CLI sets it from --project; restored after the test
    return root


# ---- workflows under test: deploy one, feed it, read it back ----------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TICKETS = ROOT / "workflows/support_ticket/datasets/tickets.jsonl"
SECRET = "test-signing-secret"


def signed(record, field: str = "signature"):
    """A verdict (or control state) as the review commands sign it: with the session's key, for its person."""
    who = getattr(record, "reviewer", None) or record.changed_by
    return Signer.from_env().acting_as(who).sign(record, field)


def approved(request, by: str):
    """An action request as the review stage hands it to execute once ``by``, an approver, released it."""
    approver = Signer.from_env().acting_as(by, [PersonRole.approver])
    return approver.sign(request.model_copy(update={"approved_by": by}), "approval")


def tickets(injected: bool = False) -> list[dict]:
    """The sample tickets, without its prompt injections unless ``injected``: those go to a person
    before any model is asked, and most tests are about what a model answered."""
    rows = [orjson.loads(line) for line in TICKETS.read_bytes().splitlines() if line.strip()]
    return [row for row in rows if injected or "prompt_injection" not in row["expected"]["tags"]]


@pytest.fixture
def receiver(monkeypatch):
    with WebhookReceiver(secret=SECRET) as hooks:
        monkeypatch.setenv("HANDOFF_WEBHOOK_URL", hooks.url)
        monkeypatch.setenv("HANDOFF_WEBHOOK_SECRET", SECRET)
        yield hooks


def deployed(name: str, kafka, root: Path = WORKFLOWS) -> Workflow:
    """The workflow (from ``root``) with its topics created in the test's namespace; model retries made quick."""
    workflow = load_workflow(name, kafka.namespace, root)
    workflow = workflow.model_copy(update={"retries": ModelRetries(attempts=3, backoff_initial_s=0.01,
                                                                   backoff_max_s=0.05, timeout_s=5)})
    apply(kafka.admin(), list(workflow.topics.values()))
    return workflow


def produce(kafka, workflow: Workflow, events: list[dict], raw: list[tuple[bytes, bytes]] = ()) -> dict[str, bytes]:
    """Send events (and raw key/value pairs, in order after them); returns each event's bytes."""
    spec = workflow.topics[workflow.topic("triggers")]
    serde = AvroSerde(spec.value_schema)
    producer = kafka.producer()
    sent = {}
    for event in events:
        event = {k: v for k, v in event.items() if k != "expected"}
        sent[event["event_id"]] = value = serde.encode(event)
        producer.produce(spec.name, key=event["customer"]["id"], value=value)
    for key, value in raw:
        producer.produce(spec.name, key=key, value=value)
    assert producer.flush(60) == 0  # a broker just started may still be loading its coordinators
    return sent


class Running:
    """One stage on a runtime in a thread, stopped (drained, committed, checkpointed) on exit."""

    def __init__(self, stage, workflow: Workflow, kafka: KafkaSettings, guarantee: Guarantee = Guarantee.at_least_once,
                 instance: str = "a", state_dir: Path | None = None):
        self.stage = stage
        self.runtime = StageRuntime(stage, workflow.name, workflow.topics, kafka, RuntimeOptions(
            guarantee=guarantee, commit_interval_s=0.2, instance=instance, **({"state_dir": state_dir} if state_dir else {})))
        self.thread = threading.Thread(target=self._run)
        self.failure: BaseException | None = None

    def _run(self) -> None:
        try:
            self.runtime.run()
        except BaseException as exc:  # noqa: BLE001  reported by __exit__
            self.failure = exc

    def owned(self) -> set[int]:
        """The partition numbers the runtime holds now (restored before they appear)."""
        return {p for _, p in list(self.runtime._partitions)}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.runtime.stop()
        self.thread.join(60)
        assert not self.thread.is_alive() and self.failure is None, self.failure
