"""Client settings from a properties file and the environment, and a secured cluster.

The settings tests need no broker. The cluster test starts one broker of its own for the module
(``processors.dev.localkafka`` with a SASL_SSL listener: certificates made here with openssl,
SCRAM users created when its storage is formatted, StandardAuthorizer with ACLs), runs each stage
of a workflow as its own principal with the ACLs ``handoff acls`` derives, and checks that a
stage without one of them is refused at start in one line.
"""

from __future__ import annotations

import pytest

from processors.kafka.settings import ClientConfigError, ClientKind, KafkaSettings


@pytest.fixture
def clean_env(monkeypatch):
    """No client settings from the developer's environment."""
    for name in list(__import__("os").environ):
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
