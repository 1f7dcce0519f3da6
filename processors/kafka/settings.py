"""Where the broker is and how every handoff client talks to it.

One place builds producers, consumers and admin clients, so every process agrees on the
bootstrap address, the topic namespace and the client settings that make handoff safe:
idempotent producers (no duplicates from producer retries) and manual offset commits.
"""

from __future__ import annotations

import os

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field

from processors.logs import LIBRDKAFKA


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


class KafkaSettings(BaseModel):
    """Read from the environment; command-line flags override."""

    bootstrap_servers: str = Field(default_factory=lambda: _env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    namespace: str = Field(default_factory=lambda: _env("HANDOFF_NAMESPACE", ""),
                           description="Prefix of every topic and group name; isolates environments on one broker.")
    schema_registry_url: str | None = Field(default_factory=lambda: _env("SCHEMA_REGISTRY_URL"),
                                            description="Confluent wire format when set; single-object encoding otherwise.")

    def admin(self, **overrides) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap_servers, **overrides})

    def producer(self, **overrides) -> Producer:
        return Producer({
            "bootstrap.servers": self.bootstrap_servers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "logger": LIBRDKAFKA,  # librdkafka's own lines through handoff's logging (JSON, repeats folded)
            **overrides,
        })

    def group_id(self, group: str) -> str:
        """A consumer group's name on the broker: namespaced like topics."""
        return f"{self.namespace}.{group}" if self.namespace else group

    def consumer(self, group: str, **overrides) -> Consumer:
        return Consumer({
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id(group),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": LIBRDKAFKA,
            **overrides,
        })
