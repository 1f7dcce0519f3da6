"""Client settings from a properties file and the environment, and a secured cluster.

The settings tests need no broker. The cluster test starts one broker of its own for the module
(``processors.dev.localkafka`` with a SASL_SSL listener: certificates made here with openssl,
SCRAM users created when its storage is formatted, StandardAuthorizer with ACLs), runs each stage
of a workflow as its own principal with the ACLs ``handoff acls`` derives, and checks that a
stage without one of them is refused at start in one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from typer.testing import CliRunner

from processors.cli.main import app
from processors.dev.localkafka import LocalKafka, LocalKafkaError, SecureListener, free_port
from processors.kafka import acls
from processors.kafka.broker import BrokerUnreachable, missing_topics
from processors.kafka.read import count
from processors.kafka.settings import ClientConfigError, ClientKind, KafkaSettings
from processors.kafka.topics import Role
from processors.kafka.topics import apply as apply_topics
from processors.kafka.write import write
from processors.stages.access import grants
from processors.stages.registry import STAGES, stages_for
from processors.workflow.workflow import load_workflow
from tests.conftest import SECRET, WORKFLOWS, tickets


@pytest.fixture
def clean_env(monkeypatch):
    """No client settings from the developer's environment."""
    for name in list(os.environ):
        if name.startswith(("HANDOFF_KAFKA_", "SCHEMA_REGISTRY_")) or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)
    return monkeypatch


def test_any_client_property_from_a_file_and_the_environment(tmp_path, clean_env):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    props = tmp_path / "client.properties"
    props.write_text("# a secured cluster\nbootstrap.servers=broker:9093\nsecurity.protocol=SASL_SSL\n"
                     "sasl.mechanism=SCRAM-SHA-512\nsasl.username=from-file\n\n"
                     "producer.linger.ms=50\nconsumer.fetch.min.bytes=1024\n"
                     "schema.registry.url=https://registry:8081\nschema.registry.subject.name.strategy=record\n")
    clean_env.setenv("HANDOFF_KAFKA_CONFIG", str(props))
    clean_env.setenv("HANDOFF_KAFKA_SASL_USERNAME", "stage-classify")  # the environment wins over the file
    clean_env.setenv("HANDOFF_KAFKA_SASL_PASSWORD_FILE", str(secret))  # a mounted secret
    clean_env.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "reg:pw")
    settings = KafkaSettings.load()
    assert settings.bootstrap_servers == "broker:9093"
    producer, consumer, admin = (settings.config(kind) for kind in ClientKind)
    for config in (producer, consumer, admin):
        assert config["security.protocol"] == "SASL_SSL" and config["sasl.username"] == "stage-classify"
        assert config["sasl.password"] == "s3cret"
    assert producer["linger.ms"] == "50" and "linger.ms" not in consumer and "producer.linger.ms" not in producer
    assert consumer["fetch.min.bytes"] == "1024" and "fetch.min.bytes" not in admin
    registry = settings.registry
    assert registry.url == "https://registry:8081" and registry.strategy == "record"
    assert dict(registry.properties) == {"basic.auth.user.info": "reg:pw"}
    assert registry.subject("t.decisions.billing", "handoff.Decision") == "handoff.Decision"
    assert "s3cret" not in repr(settings) and "reg:pw" not in repr(registry)
    assert KafkaSettings.load(bootstrap_servers="cli:9092").bootstrap_servers == "cli:9092"  # --bootstrap wins


@pytest.mark.parametrize("line, message", [
    ("enable.auto.commit=true", "enable.auto.commit cannot be set.*committed by the runtime"),
    ("consumer.isolation.level=read_uncommitted", "consumer.isolation.level cannot be set.*read committed"),
    ("just a line", "line 1: expected key=value"),
])
def test_a_property_handoff_relies_on_or_a_bad_line_is_refused_naming_the_file(tmp_path, clean_env, line, message):
    props = tmp_path / "client.properties"
    props.write_text(line + "\n")
    with pytest.raises(ClientConfigError, match=message) as refused:
        KafkaSettings.load(props)
    assert str(props) in str(refused.value)



def test_a_property_librdkafka_does_not_know_fails_the_command_in_one_line(tmp_path, clean_env):
    props = tmp_path / "client.properties"
    props.write_text("securty.protocol=SASL_SSL\n")
    clean_env.setenv("HANDOFF_KAFKA_CONFIG", "")  # restored afterwards: --kafka-config sets it in this process
    result = CliRunner().invoke(app, ["--kafka-config", str(props), "topics", "apply", "--workflow", "support_ticket"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        'Kafka client properties: No such configuration property: "securty.protocol"'], result.output

# ---- a secured cluster: SASL_SSL, SCRAM, ACLs ---------------------------------------------------------

PATH_STAGES = ("classify", "validate", "route", "execute")
"""The stages a trigger passes through; each runs as its own process and principal."""


@dataclass
class Secured:
    broker: LocalKafka
    listener: SecureListener

    def setup(self, namespace: str) -> KafkaSettings:
        """Settings for the set-up, as the PLAINTEXT listener's super user."""
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap, namespace=namespace, client={},
                             schema_registry={}, schema_registry_url=None)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """One broker for the module with a SASL_SSL listener and ACLs enforced."""
    folder = tmp_path_factory.mktemp("secured")
    listener = SecureListener.create(folder / "tls")
    broker = LocalKafka(folder / "kafka", free_port(), secure=listener)
    try:
        broker.start(timeout=180)
    except LocalKafkaError as exc:
        pytest.fail(f"the secured broker did not start: {exc}", pytrace=False)
    try:
        yield Secured(broker, listener)
    finally:
        broker.stop()


def principal(namespace: str, stage: str) -> str:
    return f"{namespace}-{stage}"


def add_users(admin: KafkaSettings, names: list[str]) -> None:
    upserts = [UserScramCredentialUpsertion(name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
                                            f"{name}-secret".encode()) for name in names]
    client = admin.admin()  # kept until the futures resolve: a destroyed client fails them
    for future in client.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)


def stage_env(secured: Secured, namespace: str, user: str, tmp_path: Path) -> dict[str, str]:
    """A stage's environment: its credentials in HANDOFF_KAFKA_* variables, the password from a mounted file."""
    secret = tmp_path / f"{user}.password"
    secret.write_text(f"{user}-secret")
    props = secured.listener.client_properties(user, "")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "HANDOFF_NAMESPACE": namespace,
           "HANDOFF_KAFKA_SASL_PASSWORD_FILE": str(secret)}
    env |= {"HANDOFF_KAFKA_" + k.upper().replace(".", "_"): v for k, v in props.items() if k != "sasl.password"}
    return env


def wait_for_access(secured: Secured, namespace: str, workflow, stage: str, allowed: bool = True,
                    timeout: float = 60.0) -> None:
    """Until the stage's principal signs in and has its ACLs (``allowed``) or lacks one: SCRAM users and
    ACL changes reach the broker a moment after the controller commits them."""
    user = principal(namespace, stage)
    props = secured.listener.client_properties(user, f"{user}-secret")
    settings = KafkaSettings(bootstrap_servers=props.pop("bootstrap.servers"), namespace=namespace, client=props,
                             schema_registry={}, schema_registry_url=None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            missing_topics(settings, [], timeout=2)
            acls.check(settings, grants(workflow, stage, settings))
            now = True
        except (BrokerUnreachable, acls.AccessDenied):
            now = False
        if now == allowed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{user}'s access did not become {'allowed' if allowed else 'denied'}")
        time.sleep(0.5)


def run_stage(stage: str, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "processors.cli", *args, "run", "--workflow", "support_ticket",
                             "--stage", stage, "--metrics-port", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 60.0) -> str:
    """The output of a process expected to exit by itself; killed if it does not."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()[0] + "\n(killed: it did not exit)"


def test_each_stage_runs_as_its_own_principal_and_one_without_its_acl_is_refused(secured, tmp_path, receiver):
    namespace = f"s{uuid.uuid4().hex[:8]}"
    admin = secured.setup(namespace)
    workflow = load_workflow("support_ticket", namespace)
    apply_topics(admin.admin(), list(workflow.topics.values()))
    add_users(admin, [principal(namespace, stage) for stage in STAGES])
    template = f"User:{namespace}-{{stage}}"
    applied = CliRunner().invoke(app, ["acls", "--workflow", "support_ticket", "--principal", template, "--apply",
                                       "--bootstrap", secured.broker.bootstrap], env={"HANDOFF_NAMESPACE": namespace})
    assert applied.exit_code == 0, applied.output
    for stage in PATH_STAGES:
        wait_for_access(secured, namespace, workflow, stage)
    events = [{k: v for k, v in t.items() if k != "expected"} for t in tickets()[:20]]
    trigger = workflow.spec(Role.triggers)
    write(admin.producer(), trigger.name, [(e["customer"]["id"], trigger.serde(admin).encode(e)) for e in events],
          what="triggers")

    properties = tmp_path / "classify.properties"  # classify reads its settings from a file instead
    properties.write_text("".join(f"{k}={v}\n" for k, v in secured.listener.client_properties(
        principal(namespace, "classify"), f"{principal(namespace, 'classify')}-secret").items()))
    plain = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "HANDOFF_NAMESPACE": namespace,
             "HANDOFF_WEBHOOK_URL": receiver.url, "HANDOFF_WEBHOOK_SECRET": SECRET}
    stages = {"classify": run_stage("classify", plain, "--kafka-config", str(properties))}
    stages |= {stage: run_stage(stage, plain | stage_env(secured, namespace, principal(namespace, stage), tmp_path))
               for stage in PATH_STAGES[1:]}
    settled = [workflow.spec(Role.review).name, workflow.spec(Role.dlq).name] + \
        [workflow.spec(Role.decisions, route).name for route in workflow.route_names]
    executions = workflow.spec(Role.executions).name
    try:
        deadline = time.monotonic() + 120
        while (count(admin, *settled) < len(events) or count(admin, executions) == 0) and \
                time.monotonic() < deadline and all(p.poll() is None for p in stages.values()):
            time.sleep(0.5)
    finally:
        for process in stages.values():
            process.send_signal(signal.SIGTERM)
        logs = {stage: finished(process) for stage, process in stages.items()}
    assert count(admin, *settled) == len(events), logs
    assert count(admin, workflow.spec(Role.dlq).name) == 0, "nothing refused, nothing dead-lettered"
    for stage, process in stages.items():
        assert process.returncode == 0, logs[stage]
        assert "authoriz" not in logs[stage].lower(), (stage, logs[stage])  # no ACL the derivation forgot

    ledger = workflow.spec(Role.seen).name  # take validate's ACL on its duplicate ledger away
    removed = AclBindingFilter(ResourceType.TOPIC, ledger, ResourcePatternType.LITERAL,
                               f"User:{principal(namespace, 'validate')}", "*", AclOperation.ANY, AclPermissionType.ANY)
    client = admin.admin()
    for future in client.delete_acls([removed]).values():
        future.result(timeout=30)
    wait_for_access(secured, namespace, workflow, "validate", allowed=False)
    refused = run_stage("validate", stage_env(secured, namespace, principal(namespace, "validate"), tmp_path))
    output = finished(refused)
    assert refused.returncode == 1, output
    assert output.strip().splitlines() == [
        f"stage validate: principal User:{principal(namespace, 'validate')} may not Read topic {ledger} "
        f"(its state's changelog: restored, and written): `handoff acls` prints the ACLs each stage needs"], output


def test_wrong_credentials_fail_in_one_line(secured, tmp_path):
    env = stage_env(secured, "nobody", "nobody", tmp_path)  # a user the broker does not know
    refused = run_stage("route", env)
    output = finished(refused)
    assert refused.returncode == 1, output
    [line] = output.strip().splitlines()
    assert "refused this client" in line and "sasl.username" in line, line


@pytest.mark.parametrize("name", sorted(p.name for p in WORKFLOWS.iterdir() if (p / "workflow.yaml").exists()))
def test_every_stage_of_every_shipped_workflow_has_its_acls(name, monkeypatch):
    """`handoff run` checks a stage's ACLs before it starts, so every stage a workflow runs must be able
    to say what it reads and writes (a stage that cannot stops every run of the workflow)."""
    monkeypatch.setenv("HANDOFF_WEBHOOK_URL", "http://127.0.0.1:9")
    workflow = load_workflow(name, "acl")
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", namespace="acl")
    for stage in stages_for(workflow):
        granted = grants(workflow, stage, settings)
        assert any(g.resource == acls.Resource.group and g.name == f"acl.handoff.{name}.{stage}" for g in granted)
