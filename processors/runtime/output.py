"""An output ready for the producer: topic name, key and value bytes, headers, and the input it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import Message


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes | None  # None: a tombstone's dead letter
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    source: Message | None = None
    """The input record whose output this is (none for a tick's): dead-lettered if the broker refuses this output."""
    partition: int | None = None
    """Set for a state store's changelog record (its store's partition); None: the partitioner chooses."""
