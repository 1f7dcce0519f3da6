"""Which Schema Registry the serdes use, how they sign in, and how subjects are named.

One :class:`Registry` is the whole of it: the URL, the client properties
(``basic.auth.user.info``, ``ssl.ca.location``… as confluent-kafka's ``SchemaRegistryClient``
takes them) and the subject-name strategy. It is frozen and hashable, so serdes are shared per
registry for the life of the process. :class:`~processors.kafka.settings.KafkaSettings` builds it
from the properties file and the environment.

The strategies are the registry's own (confluent-kafka's functions): ``topic`` names a topic's
value schemas ``<topic>-value`` (one contract per topic: the default, and what compatibility
checks per topic expect); ``record`` names them by the record's full name (``handoff.Decision``:
one subject a record type, shared by every topic carrying it); ``topic_record`` by both
(``<topic>-handoff.Decision``).
"""

from __future__ import annotations

from enum import StrEnum

from confluent_kafka.schema_registry import (
    SchemaRegistryClient,
    SchemaRegistryError,
    record_subject_name_strategy,
    topic_record_subject_name_strategy,
    topic_subject_name_strategy,
)
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import BaseModel, ConfigDict, Field


class SubjectNameStrategy(StrEnum):
    topic = "topic"
    record = "record"
    topic_record = "topic_record"


_STRATEGIES = {SubjectNameStrategy.topic: topic_subject_name_strategy,
               SubjectNameStrategy.record: record_subject_name_strategy,
               SubjectNameStrategy.topic_record: topic_record_subject_name_strategy}


NUMERIC = {"max.retries", "retries.wait.ms", "retries.max.wait.ms", "timeout", "cache.capacity",
           "cache.latest.ttl.sec"}
"""Client properties the registry client takes as numbers; a properties file or variable gives text."""


class RegistryConfigError(Exception):
    """The registry's client properties are not usable; the message says which."""


class RegistryUnavailable(ConnectionError):
    """The registry does not answer, or refuses these credentials; the message says which and what to do."""


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True)

    url: str
    strategy: SubjectNameStrategy = SubjectNameStrategy.topic
    properties: tuple[tuple[str, str], ...] = Field((), repr=False, description=(
        "SchemaRegistryClient properties besides the URL, sorted (a tuple, so the registry is hashable)."))

    def subject(self, topic: str, record_name: str) -> str:
        """The subject a value schema named ``record_name`` is registered under, on ``topic``."""
        return _STRATEGIES[self.strategy](SerializationContext(topic, MessageField.VALUE), record_name)

    def check(self) -> None:
        """Ask the registry for its subjects, so a wrong URL or credentials fail a command before it
        starts, in one line, instead of failing each record it would write."""
        try:
            self.client().get_subjects()
        except SchemaRegistryError as exc:
            hint = ("check basic.auth.user.info (SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO)"
                    if exc.http_status_code in (401, 403) else "check SCHEMA_REGISTRY_URL")
            raise RegistryUnavailable(f"the Schema Registry at {self.url} refused: HTTP {exc.http_status_code} "
                                      f"{exc.error_message}; {hint}") from None
        except Exception as exc:  # httpx's connection errors: nothing answers there
            raise RegistryUnavailable(f"no Schema Registry answers at {self.url} ({type(exc).__name__}: {exc}); "
                                      f"check SCHEMA_REGISTRY_URL") from None

    def client(self) -> SchemaRegistryClient:
        try:
            return SchemaRegistryClient({"url": self.url, **{k: float(v) if k in NUMERIC else v
                                                             for k, v in self.properties}})
        except (ValueError, TypeError) as exc:
            names = ", ".join(k for k, _ in self.properties) or "none"
            raise RegistryConfigError(f"Schema Registry client at {self.url} (properties: {names}): {exc}") from None
