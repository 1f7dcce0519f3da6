"""``handoff init`` and ``handoff workflow new``: a project folder and a workflow that runs as is.

A new workflow is the same set of files a shipped one is — its trigger schema, ``workflow.yaml``,
a prompt spec, an eval suite, labelled examples the embedded model trains on and a few sample
events — written from the templates in ``scaffold/`` (``${name}``, ``${version}`` and ``${owner}``
filled in, in paths too). Nothing is ever overwritten, and the workflow is loaded once written, so
what the command hands over is known to load.
"""

from __future__ import annotations

import getpass
import re
from datetime import date
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from processors import project
from processors.cli.params import fail
from processors.workflow.workflow import WorkflowError, load_workflow

SCAFFOLD = Path(__file__).resolve().parent / "scaffold"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,48}$")

app = typer.Typer(no_args_is_help=True, help="Workflows of the project: a new one from the scaffold.")
NewName = Annotated[str, typer.Argument(help="The workflow's name: lower-case letters, digits and _ (it names "
                                             "its topics, e.g. orders.triggers).")]


def scaffold(root: Path, name: str) -> list[Path]:
    """Write workflow ``name`` into project folder ``root``; the files written. Refuses a bad name or
    any file that exists already (:class:`WorkflowError`), before writing anything."""
    if not _NAME.match(name):
        raise WorkflowError(f"workflow name {name!r}: use lower-case letters, digits and _, starting with a letter")
    values = {"name": name, "version": f"{date.today().isoformat()}.1", "owner": getpass.getuser()}
    plan = {root / Template(str(source.relative_to(SCAFFOLD))).substitute(values): source
            for source in sorted(SCAFFOLD.rglob("*")) if source.is_file()}
    existing = [str(path) for path in plan if path.exists()]
    if existing:
        raise WorkflowError(f"{existing[0]} exists already: workflow {name!r} (or part of it) is in {root}; "
                            f"choose another name")
    for target, source in plan.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template(source.read_text()).substitute(values))
    return list(plan)


def _scaffolded(root: Path, name: str) -> None:
    """Scaffold ``name`` into ``root``, load it from there, and say what to type next; exit 1 on a refusal."""
    try:
        scaffold(root, name)
        project.use(root)  # the workflow's schema and topics are read from this project
        load_workflow(name)
    except WorkflowError as exc:
        raise fail(str(exc))
    flag = f"--project {root} "
    typer.echo(f"wrote workflow {name} in {root}: workflows/{name}/, schemas/{name}/, topics/{name}.yaml\n"
               f"next (against a broker; `handoff kafka up` starts one):\n"
               f"  handoff {flag}topics apply --workflow {name}\n"
               f"  handoff {flag}produce {root / 'workflows' / name / 'datasets' / 'events.jsonl'} --workflow {name}\n"
               f"  handoff {flag}run --workflow {name}\n"
               f"  handoff {flag}eval --workflow {name}            # offline: the prompt's eval suite")


def init(folder: Annotated[Path, typer.Argument(file_okay=False, resolve_path=True,
                                                help="The project folder to create (or an empty one).")],
         workflow: Annotated[str, typer.Option("--workflow", "-w", help="Its first workflow's name.")] = "requests") -> None:
    """Create a project folder (workflows/, schemas/, topics/) with one workflow that runs as is."""
    if folder.exists() and any(folder.iterdir()):
        raise fail(f"{folder} is not empty: `handoff init` starts a project; add a workflow to one with "
                   f"`handoff --project {folder} workflow new NAME`")
    _scaffolded(folder, workflow)


@app.command("new")
def workflow_new(name: NewName) -> None:
    """Add a workflow to the project in force (--project or HANDOFF_PROJECT) that runs as is."""
    root = project.root_from_env()
    if root is None:
        raise fail("no project: name one with --project DIR or HANDOFF_PROJECT (the shipped examples are not "
                   "yours to change), or start one with `handoff init DIR`")
    _scaffolded(root, name)
