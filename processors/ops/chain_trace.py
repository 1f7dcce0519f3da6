"""One event's steps across a chain of workflows, in time order: what ``handoff trace EVENT_ID`` prints.

A chained workflow (``trigger.chain``) reads its parent's decisions and keeps the parent's event id as
its own, so one id names the run in every workflow of the chain. The chain of a workflow is its
ancestors and every workflow chained from any of them, found in the project's ``workflows/``; the
trace is every record on their ``<wf>.traces`` topics whose run id is the event id — stages, model
calls (prompt version, model, tokens), lookups and tool calls, reviews and verdicts, actions —
sorted by time. The topics are read whole (``snapshot``): this is a tool for one event at a time.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from processors import project
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.records import Trace
from processors.workflow.workflow import Workflow, load_workflow

SHOWN = ("tool", "inputs", "answer", "validation", "decision", "action_request", "action_response", "error")
"""The trace fields a line shows, when set, in this order."""


def chain_of(workflow: Workflow, root: Path | None = None) -> list[Workflow]:
    """``workflow``'s first ancestor and every workflow chained below it, parents first."""
    root = root or project.workflows_dir()
    top = workflow
    while top.trigger.chain is not None:
        top = load_workflow(top.trigger.chain.workflow, workflow.namespace, root)
    every = [load_workflow(p.name, workflow.namespace, root) for p in sorted(root.iterdir())
             if (p / "workflow.yaml").exists()]
    chain, frontier = [top], [top.name]
    while frontier:
        children = [w for w in every if w.trigger.chain is not None and w.trigger.chain.workflow in frontier]
        chain += children
        frontier = [w.name for w in children]
    return chain


def steps(settings: KafkaSettings, chain: list[Workflow], event_id: str) -> list[tuple[str, Trace]]:
    """(workflow, trace) of every step of ``event_id`` in ``chain``, in time order."""
    found = []
    for workflow in chain:
        spec = workflow.spec(Role.traces)
        serde = spec.serde(settings)
        found += [(workflow.name, trace) for trace in (Trace.model_validate(serde.decode(m.value()))
                                                       for m in snapshot(settings, spec.name))
                  if trace.run_id == event_id]
    return sorted(found, key=lambda pair: pair[1].at_ms)


def line(workflow: str, trace: Trace, started_ms: int) -> str:
    """One step: time since the first, workflow, stage, prompt version and model, then what it did."""
    prompt = f" {trace.prompt.name}@{trace.prompt.version}" if trace.prompt else ""
    model = f" {trace.model}" if trace.model else ""
    cost = f" {trace.latency_ms:.0f}ms" if trace.latency_ms else ""
    said = "  ".join(f"{name}={_short(getattr(trace, name))}" for name in SHOWN if getattr(trace, name))
    return f"+{(trace.at_ms - started_ms) / 1000:.3f}s  {workflow}  {trace.step}{prompt}{model}{cost}  {said}"


def _short(text: str, width: int = 160) -> str:
    try:
        text = orjson.dumps(orjson.loads(text)).decode()
    except orjson.JSONDecodeError:
        pass
    return text if len(text) <= width else text[:width - 1] + "…"
