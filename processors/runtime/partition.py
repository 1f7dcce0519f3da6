"""The bookkeeping of one assigned partition: which records are finished, released, acknowledged.

Records enter in consumption order (:meth:`PartitionBook.expect`) and finish in any order
(:meth:`~PartitionBook.finish`). Only the unbroken prefix of finished records is *released* to
the producer, so outputs leave in input order per partition and the committed offset never
passes a record whose outputs were not produced. Three marks follow the prefix: ``released_to``
(what exactly_once commits), ``acked_to`` (every output acknowledged by the broker: what
at_least_once commits) and ``committed_to`` (the last commit, so an unchanged mark is not
committed again). Each mark is the offset *after* the record it names, as Kafka commits it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from processors.runtime.output import Output


@dataclass
class PartitionBook:
    """Records of one partition in consumption order.

    ``pending``: consumed records, ``None`` until their outputs are ready. ``unacked``: released
    records, with how many of their outputs the broker has not acknowledged yet. ``epoch``: the
    assignment this book belongs to; a result of an earlier assignment is dropped on arrival.
    """

    epoch: int
    pending: OrderedDict[int, list[Output] | None] = field(default_factory=OrderedDict)
    unacked: OrderedDict[int, int] = field(default_factory=OrderedDict)
    released_to: int | None = None  # offset after the last released record
    acked_to: int | None = None  # offset after the last record whose outputs are all acknowledged
    committed_to: int | None = None

    def expect(self, offset: int) -> None:
        """A consumed record whose outputs are not ready yet: it holds back every later release."""
        self.pending[offset] = None

    def finish(self, offset: int, outputs: list[Output]) -> None:
        self.pending[offset] = outputs

    def unfinished(self) -> int:
        """Records consumed whose outputs are not ready (running, or waiting behind their key)."""
        return sum(1 for outputs in self.pending.values() if outputs is None)

    def release(self) -> list[tuple[int, list[Output]]]:
        """The unbroken prefix of finished records, in offset order, now handed to the producer."""
        out = []
        while self.pending:
            offset, outputs = next(iter(self.pending.items()))
            if outputs is None:
                break
            self.pending.popitem(last=False)
            out.append((offset, outputs))
            self.unacked[offset] = len(outputs)
            self.released_to = offset + 1
        self._advance()
        return out

    def ack(self, offset: int) -> None:
        """The broker acknowledged one output of the released record at ``offset``."""
        self.unacked[offset] -= 1
        self._advance()

    def _advance(self) -> None:
        while self.unacked:
            offset, left = next(iter(self.unacked.items()))
            if left:
                return
            self.unacked.popitem(last=False)
            self.acked_to = offset + 1


Books = dict[tuple[str, int], PartitionBook]
"""The books of the partitions a runtime owns, by (topic, partition)."""
