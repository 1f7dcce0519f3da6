"""The control history for people: every control state a workflow ever had, from the views.

The control topic is compacted, so it keeps at least the latest state, not the history; the
views keep every state they applied (``control_states``), so ``handoff control show --history``
shows each change, who made it and why, even after compaction removed it from the topic.
"""

from __future__ import annotations

from sqlalchemy import select

from processors.kafka.settings import KafkaSettings
from processors.records import ControlState
from processors.views.catch_up import catch_up
from processors.views.rows import scope_of
from processors.views.schema import control_states
from processors.views.store import ViewStore, open_store
from processors.workflow.workflow import Workflow


def control_history(workflow: Workflow, settings: KafkaSettings, store: ViewStore | None = None) -> list[ControlState]:
    """Every control state of ``workflow``, oldest first."""
    store = store or open_store()
    catch_up(workflow, settings, store)
    with store.read() as conn:
        rows = conn.execute(select(control_states.c.state).where(control_states.c.scope == scope_of(workflow))
                            .order_by(control_states.c.log_offset))
        return [ControlState.model_validate_json(state) for (state,) in rows]
