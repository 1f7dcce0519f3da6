"""Where the broker is and how every handoff client talks to it.

One place builds producers, consumers and admin clients, so every process agrees on the
bootstrap address, the topic namespace, the user's client properties and the settings that make
handoff safe: idempotent producers (no duplicates from producer retries), manual offset commits
and read-committed consumers.

**Client properties.** Any librdkafka property (``security.protocol``, ``sasl.mechanism``,
``ssl.ca.location``…) comes from, lowest first:

1. a properties file, ``--kafka-config FILE`` or ``HANDOFF_KAFKA_CONFIG``: ``key=value`` lines,
   ``#`` comments (kcat's format). A key under ``producer.``, ``consumer.`` or ``admin.`` applies
   to that kind of client only; ``schema.registry.*`` configures the Schema Registry client
   (``schema.registry.url``, ``schema.registry.basic.auth.user.info``…);
2. environment variables: ``HANDOFF_KAFKA_SASL_USERNAME`` sets ``sasl.username`` (the name after
   the prefix, lower-cased, ``_`` → ``.``), ``SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO`` sets the
   registry's ``basic.auth.user.info``; a variable ending in ``_FILE`` names a file whose content
   is the value (``HANDOFF_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka``: a mounted secret);
3. ``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL`` and the command line's ``--bootstrap``.

Secrets come from the environment or a mounted file, never from the command line (where ``ps``
shows them), and a settings object never shows them in its repr. The properties handoff's
guarantees rest on (:data:`RESERVED`) cannot be set: a file that tries fails at load.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, Field, model_validator

from processors.avro.registry import Registry, SubjectNameStrategy
from processors.logs import LIBRDKAFKA

CONFIG_ENV = "HANDOFF_KAFKA_CONFIG"
KAFKA_ENV_PREFIX = "HANDOFF_KAFKA_"
REGISTRY_ENV_PREFIX = "SCHEMA_REGISTRY_"
REGISTRY_PREFIX = "schema.registry."
FILE_SUFFIX = "_FILE"

RESERVED = {
    "enable.idempotence": "producers are idempotent, so a retry never writes a record twice",
    "enable.auto.commit": "offsets are committed by the runtime, only past records whose outputs are durable",
    "isolation.level": "consumers read committed, so an aborted transaction is never seen",
    "group.id": "each stage's group is derived from the workflow and the namespace",
    "group.instance.id": "static membership is the stage's --instance",
    "transactional.id": "under exactly_once the transactional id is the stage's --instance",
}
"""Properties a user may not set, and why handoff sets them itself."""


class ClientKind(StrEnum):
    producer = "producer"
    consumer = "consumer"
    admin = "admin"


class ClientConfigError(Exception):
    """A client property that cannot be used; the message names where it was set. Not a ValueError, so
    pydantic lets it through from the validator that reads the sources, as one line."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def read_properties(path: Path) -> dict[str, str]:
    """``key=value`` lines of ``path``; blank lines and ``#`` or ``!`` comments skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClientConfigError(f"Kafka client properties {path}: {exc.strerror}") from None
    props = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ClientConfigError(f"{path}: line {number}: expected key=value, got {line[:40]!r}")
        props[key.strip()] = value.strip()
    return props


def _from_env(prefix: str) -> dict[str, str]:
    """Properties from ``<prefix><NAME>`` variables (``<prefix><NAME>_FILE``: the file's content)."""
    props = {}
    for name, value in sorted(os.environ.items()):
        if not name.startswith(prefix) or name == CONFIG_ENV or not value:
            continue
        key = name[len(prefix):]
        if key.endswith(FILE_SUFFIX):
            key = key[:-len(FILE_SUFFIX)]
            try:
                value = Path(value).read_text().strip()
            except OSError as exc:
                raise ClientConfigError(f"{name}: cannot read {value}: {exc.strerror}") from None
        props[key.lower().replace("_", ".")] = value
    return props


def _scope(key: str) -> ClientKind | None:
    """The kind of client a ``producer.``/``consumer.``/``admin.`` key is for; None: every client."""
    head = key.split(".", 1)[0]
    return ClientKind(head) if head in ClientKind.__members__ and "." in key else None


def _unscoped(key: str) -> str:
    scope = _scope(key)
    return key.removeprefix(f"{scope}.") if scope else key


def _sources(config_file: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """(librdkafka properties, Schema Registry client properties) from the file, then the environment."""
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    kafka, registry = {}, {}
    for key, value in (read_properties(path) if path else {}).items():
        if key.startswith(REGISTRY_PREFIX):
            registry[key.removeprefix(REGISTRY_PREFIX)] = value
        else:
            kafka[key] = value
    kafka |= _from_env(KAFKA_ENV_PREFIX)
    registry |= _from_env(REGISTRY_ENV_PREFIX)
    for key in sorted(kafka):
        why = RESERVED.get(_unscoped(key))
        if why:
            raise ClientConfigError(f"Kafka client property {key} cannot be set ({path or 'environment'}): "
                                    f"handoff sets it because {why}")
    return kafka, registry


PRODUCER_TUNABLE = {"linger.ms": 5, "compression.type": "lz4"}
"""Every producer's defaults that a user's properties may override (``make bench`` gives its peer the same)."""


class KafkaSettings(BaseModel):
    """Read from the properties file and the environment (see the module docstring); command-line
    flags override. Build one with :meth:`load` to read a given properties file."""

    bootstrap_servers: str = Field(default="")
    namespace: str = Field(default_factory=lambda: _env("HANDOFF_NAMESPACE", ""),
                           description="Prefix of every topic and group name; isolates environments on one broker.")
    client: dict[str, str] | None = Field(None, repr=False, description=(
        "librdkafka properties every client gets (``producer.``/``consumer.``/``admin.``: one kind only); "
        "None: read from the properties file and the environment."))
    schema_registry_url: str | None = Field(default_factory=lambda: _env("SCHEMA_REGISTRY_URL"),
                                            description="Confluent wire format when set; single-object encoding otherwise.")
    schema_registry: dict[str, str] | None = Field(None, repr=False, description=(
        "Schema Registry client properties (basic.auth.user.info, ssl.ca.location…); None: from the file and "
        "the environment."))
    subject_name_strategy: SubjectNameStrategy | None = Field(None, description=(
        "How registry subjects are named: topic (<topic>-value, the default), record (<record name>) or "
        "topic_record (<topic>-<record name>)."))
    config_file: Path | None = Field(None, exclude=True, description="The properties file (default: HANDOFF_KAFKA_CONFIG).")

    @classmethod
    def load(cls, config_file: Path | None = None, **fields: Any) -> KafkaSettings:
        """Settings from ``config_file`` (default ``HANDOFF_KAFKA_CONFIG``) and the environment, ``fields`` on top."""
        return cls(config_file=config_file, **{k: v for k, v in fields.items() if v is not None})

    @model_validator(mode="after")
    def _read_sources(self) -> KafkaSettings:
        if self.client is not None and self.schema_registry is not None and self.bootstrap_servers:
            return self
        kafka, registry = _sources(self.config_file)
        if not self.bootstrap_servers:
            self.bootstrap_servers = (_env("KAFKA_BOOTSTRAP_SERVERS") or kafka.get("bootstrap.servers")
                                      or "127.0.0.1:9092")
        kafka.pop("bootstrap.servers", None)
        if self.client is None:
            self.client = kafka
        strategy = registry.pop("subject.name.strategy", None)
        if self.subject_name_strategy is None:
            self.subject_name_strategy = SubjectNameStrategy(strategy) if strategy else SubjectNameStrategy.topic
        url = registry.pop("url", None)
        if "schema_registry_url" not in self.model_fields_set and not self.schema_registry_url:
            self.schema_registry_url = url
        if self.schema_registry is None:
            self.schema_registry = registry
        return self

    @property
    def registry(self) -> Registry | None:
        """The Schema Registry handoff's serdes talk to, or None (single-object encoding)."""
        if not self.schema_registry_url:
            return None
        return Registry(url=self.schema_registry_url, strategy=self.subject_name_strategy,
                        properties=tuple(sorted(self.schema_registry.items())))

    @property
    def principal(self) -> str | None:
        """Who this process is to the broker, when it says (``sasl.username``): named in access errors."""
        return self.client.get("sasl.username")

    def config(self, kind: ClientKind, **handoff: Any) -> dict[str, Any]:
        """A ``kind`` client's configuration: the bootstrap address, the user's properties for every
        client and for this kind, then ``handoff``'s own (which win)."""
        common = {k: v for k, v in self.client.items() if _scope(k) is None}
        own = {_unscoped(k): v for k, v in self.client.items() if _scope(k) == kind}
        return {"bootstrap.servers": self.bootstrap_servers, **common, **own, **handoff}

    def admin(self, **overrides) -> AdminClient:
        return AdminClient(self.config(ClientKind.admin, **overrides))

    def producer(self, **overrides) -> Producer:
        return Producer({**PRODUCER_TUNABLE, **self.config(ClientKind.producer, **{
            "enable.idempotence": True,
            "logger": LIBRDKAFKA,  # librdkafka's own lines through handoff's logging (JSON, repeats folded)
            **overrides})})

    def group_id(self, group: str) -> str:
        """A consumer group's name on the broker: namespaced like topics."""
        return f"{self.namespace}.{group}" if self.namespace else group

    def consumer(self, group: str, **overrides) -> Consumer:
        return Consumer({"auto.offset.reset": "earliest", **self.config(ClientKind.consumer, **{
            "group.id": self.group_id(group),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "logger": LIBRDKAFKA,
            **overrides,
        })})
