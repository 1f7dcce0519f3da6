"""An output ready for the producer: topic name, key and value bytes, headers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)
