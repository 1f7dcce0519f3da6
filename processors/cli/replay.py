"""``handoff replay``: past triggers again after a fix, shadow or live (processors/offline/replay/ says how)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from processors.cli.params import Bootstrap, WorkflowName, WorkflowsDir, control_store, fail
from processors.offline.replay.lookups import LookupSource
from processors.offline.replay.report import ReplayMode
from processors.offline.replay.request import GateMissed, ReplayRequest, run_replay
from processors.offline.replay.selection import Selection


def replay(workflow: WorkflowName,
           start: Annotated[Optional[str], typer.Option("--from", help="ISO time (UTC unless it names a zone): "
                                                                        "triggers at or after it.")] = None,
           end: Annotated[Optional[str], typer.Option("--to", help="ISO time: triggers before it.")] = None,
           offsets: Annotated[Optional[str], typer.Option(help="Trigger offsets P:FROM-TO[,…], both ends included.")] = None,
           source: Annotated[Optional[str], typer.Option(help="review or dlq: the events waiting there now.")] = None,
           prompt_version: Annotated[Optional[str], typer.Option(help="Default: the version production points to.")] = None,
           mode: Annotated[str, typer.Option(help="shadow: decide again, act on nothing, report what changes; "
                                                  "live: send through the running stages (actions stay idempotent).")] = "shadow",
           replay_id: Annotated[Optional[str], typer.Option("--id", help="Marks everything the replay writes "
                                                                          "(default: generated).")] = None,
           show_events: Annotated[bool, typer.Option("--show-events", help="List every changed event, "
                                                                          "not the first 20.")] = False,
           lookups: Annotated[LookupSource, typer.Option(help="again: ground the events anew (what the systems "
                                                              "of record say now); recorded: reuse what their lookups "
                                                              "returned last time, so only the prompt differs.")]
           = LookupSource.again,
           wait: Annotated[float, typer.Option(help="live: wait up to SECONDS for the running stages to settle "
                                                    "every re-injected event, then report what changed.")] = 0.0,
           bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None) -> None:
    """Replay past triggers after a fix, through a prompt version: shadow or live.

    A live replay acts through its version, so a version production does not point to must pass
    its eval suite first, the same gate as ``prompt promote``."""
    store = control_store(workflow, bootstrap, workflows_dir)
    try:
        request = ReplayRequest(mode=ReplayMode(mode), prompt_version=prompt_version, wait=wait, lookups=lookups,
                                selection=Selection.parse(start=start, end=end, offsets=offsets, source=source),
                                **({"replay_id": replay_id} if replay_id else {}))
        done = run_replay(store, request, typer.echo)
    except GateMissed as exc:
        typer.echo(exc.report.table())
        raise fail(str(exc))
    except ValueError as exc:  # a WorkflowError too
        raise fail(str(exc))
    if done is not None:
        typer.echo(done.render(None if show_events else 20))
