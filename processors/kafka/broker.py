"""Is a broker there, and does it have a workflow's topics? Asked once, quietly, before a command works.

A client that cannot reach its broker makes librdkafka log every refused connection, and a
record produced to a topic that does not exist fails on its own, one error per record. A command
asks first, with a silent client (librdkafka's ``log_level`` 0, its errors swallowed), and says
in one line what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException

from processors.kafka.settings import ClientConfigError, KafkaSettings


def _ignore(_error) -> None:
    """An ``error_cb``: the command reports the failure itself."""


QUIET = {"log_level": 0, "error_cb": _ignore}
"""Client settings that keep librdkafka from logging to stderr: for a command's own clients."""


class BrokerUnreachable(ConnectionError):
    """No broker answered at the bootstrap address, or it refused the client's credentials."""


_REFUSALS = {
    KafkaError._AUTHENTICATION: "check sasl.username and sasl.password (HANDOFF_KAFKA_SASL_USERNAME, "
                                "HANDOFF_KAFKA_SASL_PASSWORD or HANDOFF_KAFKA_SASL_PASSWORD_FILE) and sasl.mechanism",
    KafkaError._SSL: "check security.protocol and ssl.ca.location (the CA that signed the broker's certificate)",
}
"""Errors librdkafka reports through ``error_cb`` when a broker answers but refuses the client, and what to check."""


def missing_topics(settings: KafkaSettings, names: Iterable[str], timeout: float = 5.0) -> list[str]:
    """Those of ``names`` the broker does not have (in their order); :class:`BrokerUnreachable`
    when no broker answers within ``timeout``, :class:`ClientConfigError` when the user's client
    properties do not make a client."""
    errors: list[KafkaError] = []
    try:
        admin = settings.admin(**{**QUIET, "error_cb": errors.append})
    except KafkaException as exc:  # a property librdkafka does not know, or a value it refuses
        raise ClientConfigError(f"Kafka client properties: {exc.args[0].str()}") from None
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        admin.poll(0)  # serves the error callbacks queued meanwhile: an authentication failure is one
        refused = next((e for e in errors if e.code() in _REFUSALS), None)
        if refused is not None:
            raise BrokerUnreachable(f"the broker at {settings.bootstrap_servers} refused this client: {refused.str()}; "
                                    f"{_REFUSALS[refused.code()]}") from None
        raise BrokerUnreachable(
            f"no Kafka broker answers at {settings.bootstrap_servers} (asked for its topics for {timeout:.0f}s: "
            f"{exc.args[0].str()}); start one with `handoff kafka up`, or point --bootstrap or "
            f"KAFKA_BOOTSTRAP_SERVERS at yours") from None
    return [name for name in names if name not in topics or topics[name].error is not None]
