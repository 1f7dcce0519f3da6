"""One real Kafka broker per test session.

Where it comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` if set; testcontainers' Kafka
module if a Docker engine answers; else the local JVM broker (``processors.localkafka``) in a
temporary folder. A test that needs Kafka never skips: if no broker can be had, it fails and
says why.
"""

from __future__ import annotations

import os
import uuid

import pytest

from processors.kafka import KafkaSettings
from processors.localkafka import LocalKafka, LocalKafkaError, free_port, wait_for_broker


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


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


@pytest.fixture
def namespace() -> str:
    """A fresh topic namespace per test: tests share the broker, never topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka(kafka_bootstrap, namespace) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap, namespace=namespace)
