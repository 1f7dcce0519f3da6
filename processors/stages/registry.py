"""Every stage by name: what ``handoff run --stage`` and the pipeline build, one process or many."""

from __future__ import annotations

from processors.control.state import Control
from processors.providers.base import Provider
from processors.records import StageName
from processors.runtime.stage import Stage
from processors.stages.classify import Classify
from processors.stages.execute import Execute
from processors.stages.ground import Ground
from processors.stages.join import Join
from processors.stages.review import Review
from processors.stages.route import Route
from processors.stages.validate import Validate
from processors.views.stage import Views
from processors.workflow.workflow import Workflow

STAGES = tuple(StageName)
"""Every stage, in pipeline order."""


def stages_for(workflow: Workflow) -> list[StageName]:
    """What ``--stage all`` runs for ``workflow``: every stage, ground only when it declares lookups."""
    return [name for name in STAGES if name != StageName.ground or workflow.lookups]


def build_stage(name: StageName | str, workflow: Workflow, provider: Provider | None = None,
                control: Control | None = None) -> Stage:
    """``control``: what the stage obeys (the pipeline's watcher); pinned to ``initial(workflow)`` when None.
    ``provider``: classify's model, built from the workflow's ``model`` when None."""
    match StageName(name):
        case StageName.ground:
            return Ground(workflow, control)
        case StageName.classify:
            return Classify(workflow, provider or workflow.provider(), control)
        case StageName.validate:
            return Validate(workflow, control)
        case StageName.route:
            return Route(workflow, control)
        case StageName.execute:
            return Execute(workflow, control)
        case StageName.review:
            return Review(workflow, control)
        case StageName.join:
            return Join(workflow)
        case StageName.views:
            return Views(workflow)
