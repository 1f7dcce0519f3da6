"""How a stage runtime runs: the delivery guarantee and the knobs that trade one cost for another.

Every option says what it buys and what it costs, so choosing one is a decision, not a guess.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Guarantee(StrEnum):
    """What a commit promises about outputs after a crash; each has its committer (:mod:`.commit`)."""

    at_least_once = "at_least_once"
    exactly_once = "exactly_once"


STATE_DIR_ENV = "HANDOFF_STATE_DIR"


def stage_group(workflow: str, stage: str, options: RuntimeOptions | None = None) -> str:
    """A stage's consumer group before the namespace: ``options.group``, else ``handoff.<workflow>.<stage>``
    (the runtime's, the ACLs' and the deployment's, which must agree)."""
    return (options.group if options is not None else None) or f"handoff.{workflow}.{stage}"


class RuntimeOptions(BaseModel):
    """Every option trades one thing for another; the defaults suit model-bound stages."""

    model_config = ConfigDict(extra="forbid")

    guarantee: Guarantee = Field(Guarantee.at_least_once, description=(
        "exactly_once costs a transaction per commit interval and read_committed latency downstream; "
        "at_least_once may duplicate outputs after a crash (actions stay idempotent either way)."))
    max_in_flight: int = Field(500, ge=1, description=(
        "More hides model latency better but holds more memory and more work to redo after a crash."))
    commit_interval_s: float = Field(1.0, gt=0, description=(
        "Shorter means less replay after a crash and lower end-to-end latency under exactly_once, "
        "at the cost of more commits (and transactions)."))
    drain_timeout_s: float = Field(10.0, ge=0, description=(
        "How long a revoke or shutdown waits for in-flight records; longer redoes less work but "
        "stalls the rebalance for the whole group."))
    max_buffered: int = Field(5000, ge=1, description=(
        "Records consumed but not yet started before partitions pause. More rides out the refetch "
        "after a resume without starving the stage; less holds less memory and replays less."))
    poll_batch: int = Field(500, ge=1, description="Records taken per consume call.")
    max_message_bytes: int = Field(1_000_000, ge=1024, description=(
        "The producer's message.max.bytes (librdkafka's default): with each topic's max.message.bytes, the "
        "largest record a stage writes; a record whose output is bigger is dead-lettered (output_too_large). "
        "More lets bigger records through, at the cost of memory in every client and broker that holds them."))
    gc_young_threshold: int | None = Field(100_000, ge=1, description=(
        "Allocations between collections of Python's youngest garbage-collector generation, for the "
        "whole process (Python's default: 700; None leaves it). A record's objects die young and "
        "reference counting frees them, so each collection mostly rescans the records in flight: rarer "
        "collections gave classify about 20% more events/s in `make bench`, with no more memory. The "
        "cost: objects caught in reference cycles (an exception and its traceback) live a little longer."))
    broker_timeout_s: float = Field(60.0, gt=0, description=(
        "How long all brokers may be unreachable, or a lost transaction may fail to start over "
        "(exactly_once), before the stage gives up with a clear error and exits for its supervisor to "
        "restart it. Longer rides out a longer broker outage in the process (an in-process pipeline has "
        "no supervisor); shorter hands a stuck process to the supervisor sooner."))
    state_dir: Path = Field(default_factory=lambda: Path(os.environ.get(STATE_DIR_ENV) or ".local/state"), description=(
        "Where stateful stages keep their partition-local stores (processors/state/store.py), one folder "
        "per process and table. On a persistent volume a restart reads only the changelog written since "
        "the last checkpoint; on an empty one (a new pod, a moved partition) it reads the partition's "
        "whole changelog first. Costs disk about the size of the owned partitions' live state."))
    group: str | None = Field(None, description="Consumer group; default handoff.<workflow>.<stage>.")
    instance: str = Field(default_factory=socket.gethostname, description=(
        "This process's stable name within its group: its static group membership and, under "
        "exactly_once, its transactional id. Kept across restarts, a restarted process takes its "
        "predecessor's partitions at once instead of after the session timeout, and fences its open "
        "transaction instead of leaving it to time out. The cost: a process that dies (SIGKILL, a crash) "
        "holds its partitions until the session timeout (45 s); a graceful stop leaves the group, see "
        "leave_group_on_stop. Give each instance of one stage on one host its own name."))
    leave_group_on_stop: bool = Field(True, description=(
        "On a graceful stop (SIGTERM, Ctrl-C), leave the consumer group, so the other instances take "
        "this one's partitions at once: a static member's close sends no LeaveGroup (KIP-345; under "
        "Kafka 4's consumer protocol it keeps its partitions too), so without this a scale-in stalls "
        "its partitions for the session timeout. The cost: a graceful restart of the same instance "
        "(a rolling deploy) moves its partitions away and back, two rebalances instead of none."))
