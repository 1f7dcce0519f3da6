"""A ledger: a compacted topic read into memory, answering "was this key already done?".

Stages keep no local state, so what must survive restarts and replays — which actions took
effect, which events were already decided — lives in a compacted topic keyed by the thing
that must happen once. A stage loads the ledger when partitions are assigned (the whole
topic, read committed, up to its current end) and adds entries as it emits them; the entry
travels in the same commit as the stage's other outputs, so under ``exactly_once`` the
ledger and the effect's record appear together or not at all.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import TopicSpec
from processors.runtime.stage import Emit

Entry = TypeVar("Entry", bound=BaseModel)


class Ledger(Generic[Entry]):
    def __init__(self, settings: KafkaSettings, declared: str, spec: TopicSpec, model: type[Entry]):
        self.settings = settings
        self.declared = declared
        self.spec = spec
        self.model = model
        self._serde = spec.serde(settings)  # the framing the runtime writes the entries in
        self._entries: dict[str, Entry] = {}

    def load(self) -> int:
        """Replace memory with the topic's content; returns the number of keys."""
        entries = {}
        for msg in snapshot(self.settings, self.spec.name):
            if msg.key() is not None and msg.value() is not None:
                entries[msg.key().decode()] = self.model.model_validate(self._serde.decode(msg.value()))
        self._entries = entries
        return len(entries)

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def record(self, key: str, entry: Entry) -> Emit:
        """Remember ``entry`` now and return the output that makes it durable."""
        self._entries[key] = entry
        return Emit(self.declared, entry, key=key)
