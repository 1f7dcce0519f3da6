"""A ledger: a compacted topic held in memory, answering "was this key already done?".

Stages keep no local state, so what must survive restarts and replays — which actions took
effect, which events were already decided — lives in a compacted topic keyed by the thing
that must happen once. A stage declares its ledgers (:meth:`Stage.tables`); the runtime
restores them when partitions are assigned (the whole topic, read committed, up to its current
end), and the stage adds entries as it emits them: the entry travels in the same commit as the
stage's other outputs, so under ``exactly_once`` the ledger and the effect's record appear
together or not at all. The last entry per key counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from confluent_kafka import Message
from pydantic import BaseModel

from processors.avro.serde import AvroSerde
from processors.runtime.stage import Emit, Table

Entry = TypeVar("Entry", bound=BaseModel)


class Ledger(Table, Generic[Entry]):
    def __init__(self, declared: str, model: type[Entry]):
        self.topic = declared
        self.model = model
        self._entries: dict[str, Entry] = {}

    def restore(self, messages: Iterable[Message], serde: AvroSerde) -> None:
        entries = {}
        for msg in messages:
            if msg.key() is not None and msg.value() is not None:
                entries[msg.key().decode()] = self.model.model_validate(serde.decode(msg.value()))
        self._entries = entries

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def record(self, key: str, entry: Entry) -> Emit:
        """Remember ``entry`` now and return the output that makes it durable."""
        self._entries[key] = entry
        return Emit(self.topic, entry, key=key)
