"""What each stage's principal must be allowed on a secured cluster, derived from the topology.

A stage reads its inputs (``Stage.inputs``) in its consumer group; restores and writes its tables'
changelogs (``Stage.tables``); reads the control topic (every stage process follows it) with
consumers that never join their group but look its coordinator up (Describe on the group id); and
writes the topics it declares (``WorkflowStage.outputs``) and the dead letters (the runtime's).
The runtime reads the size limit of every topic of the workflow (``DescribeConfigs`` on the
workflow's prefix), and under ``exactly_once`` uses transactional ids ``<group>.<instance>``
(a prefix). So the grants below are exactly what ``handoff run --stage S`` does; ``handoff acls``
prints or applies them, and ``handoff run`` checks them as the stage's principal before it starts
(:func:`processors.kafka.acls.check`).
"""

from __future__ import annotations

from processors.control.watcher import watcher_group
from processors.kafka.acls import Grant, Operation, Pattern, Resource
from processors.kafka.read import READER_GROUP
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.providers.base import ModelAnswer, ModelRequest, Provider
from processors.records import StageName
from processors.runtime.options import stage_group
from processors.stages.base import WorkflowStage
from processors.stages.registry import build_stage
from processors.workflow.workflow import Workflow

PRINCIPAL = "User:handoff-{workflow}-{stage}"
"""The default principal of a stage: one per workflow and stage, so each is allowed only its own topics."""


class _NoModel(Provider):
    """Classify built only to say what it reads and writes: no model is built (no API key read)."""

    async def complete(self, request: ModelRequest) -> ModelAnswer:
        raise RuntimeError("a stage built for its access list answers nothing")


def grants(workflow: Workflow, stage: StageName | str, settings: KafkaSettings,
           principal: str = PRINCIPAL) -> list[Grant]:
    """Every ACL ``stage`` of ``workflow`` needs, for ``principal`` (``{workflow}``, ``{stage}`` filled in),
    with the namespace of ``settings``."""
    built = build_stage(stage, workflow, provider=_NoModel())
    who = principal.format(workflow=workflow.name, stage=stage)
    tables = [table.topic for table in built.tables()]
    reads = [*built.inputs, *tables, workflow.topic(Role.control)]
    writes = [*built.outputs(), *tables, workflow.topic(Role.dlq)]
    group = settings.group_id(stage_group(workflow.name, stage))
    topics = [Grant(principal=who, resource=Resource.topic, name=workflow.topics[topic].name,
                    operations=tuple(op for op, wanted in ((Operation.read, topic in reads),
                                                           (Operation.write, topic in writes)) if wanted),
                    why=_why(topic, built, workflow, writes)) for topic in dict.fromkeys([*reads, *writes])]
    prefix = workflow.spec(Role.control).name.removesuffix(Role.control)  # "<namespace>.<workflow>."
    return topics + [
        Grant(principal=who, resource=Resource.topic, name=prefix, pattern=Pattern.prefixed,
              operations=(Operation.describe_configs,), why="the runtime reads each topic's max.message.bytes"),
        Grant(principal=who, resource=Resource.group, name=group, operations=(Operation.read,),
              why="its consumer group: joins it, commits offsets"),
        Grant(principal=who, resource=Resource.group, name=settings.group_id(watcher_group(workflow)),
              operations=(Operation.describe,), why="the control watcher's group id (never joined)"),
        Grant(principal=who, resource=Resource.group, name=READER_GROUP, operations=(Operation.describe,),
              why="the group id of the readers that restore state (never joined)"),
        Grant(principal=who, resource=Resource.transactional_id, name=f"{group}.", pattern=Pattern.prefixed,
              operations=(Operation.write, Operation.describe),
              why="exactly_once: its transactional ids, <group>.<instance>")]


def _why(topic: str, stage: WorkflowStage, workflow: Workflow, writes: list[str]) -> str:
    if topic in stage.inputs:
        reason = "an input"
    elif topic == workflow.topic(Role.control):
        reason = "the control state it follows"
    elif topic in {table.topic for table in stage.tables()}:
        return "its state's changelog: restored, and written"
    else:
        return "its dead letters" if topic == workflow.topic(Role.dlq) else "an output"
    return reason + (", and an output" if topic in writes else "")
