"""A replay's lookups: made again, or the results recorded the last time the event was grounded.

A workflow that declares lookups grounds each trigger before classify (:mod:`processors.stages.ground`)
and writes what it found to ``<wf>.grounded``. A replay chooses (``--lookups``):

* ``again`` (the default): the selection goes through ground once more, so the model sees what the
  systems of record say *now*;
* ``recorded``: each event's latest grounded record is reused, so the model sees exactly what it saw
  before and only the prompt differs — the way to tell a prompt fix from a change in the data. An
  event with nothing recorded (grounding failed, or the record was deleted by retention) is looked up
  again, and the report counts it.
"""

from __future__ import annotations

from enum import StrEnum

from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.outputs import read
from processors.records import GroundedEvent
from processors.workflow.workflow import Workflow


class LookupSource(StrEnum):
    again = "again"
    recorded = "recorded"


def recorded(workflow: Workflow, settings: KafkaSettings, source: LookupSource,
             event_ids: set[str]) -> dict[str, GroundedEvent]:
    """The latest grounded record of each of ``event_ids`` (empty unless ``source`` is ``recorded`` and
    the workflow grounds its triggers)."""
    if source != LookupSource.recorded or not workflow.lookups:
        return {}
    return {g.event_id: g for g in read(workflow, settings, Role.grounded, GroundedEvent) if g.event_id in event_ids}
