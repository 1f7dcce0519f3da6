"""``handoff console``: the web console for reviewers, approvers, prompt owners and operators."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
import uvicorn

from processors.cli.params import Bootstrap, ViewsUrl, WorkflowsDir, fail, settings, views
from processors.console.app import build_app
from processors.console.project import console_of
from processors.console.users import Users, UsersError, users_path
from processors.records import PersonRole
from processors.signing import SigningError
from processors.workflow.workflow import WorkflowError

app = typer.Typer(no_args_is_help=True, help="The web console: the review queue, approvals, prompts, control "
                                             "and report, signed in with roles.")
user_app = typer.Typer(no_args_is_help=True, help="Who may sign in (the users file, argon2-hashed passwords).")
app.add_typer(user_app, name="user")
UsersFile = Annotated[Optional[Path], typer.Option("--users", envvar="HANDOFF_CONSOLE_USERS", help=(
    "The users file (default .local/console-users.yaml in the project)."))]
PASSWORD_ENV = "HANDOFF_CONSOLE_PASSWORD"


@app.command("serve")
def console_serve(host: Annotated[str, typer.Option(help="Listen here; loopback unless told otherwise.")] = "127.0.0.1",
                  port: Annotated[int, typer.Option(help="The port.")] = 8600,
                  users: UsersFile = None, bootstrap: Bootstrap = None, workflows_dir: WorkflowsDir = None,
                  views_url: ViewsUrl = None,
                  trusted_header: Annotated[Optional[str], typer.Option(help=(
                      "Trust a reverse proxy's header for the user name (e.g. X-Forwarded-User) instead of "
                      "sign-in: only when nothing but the proxy reaches the console."))] = None,
                  roles_header: Annotated[Optional[str], typer.Option(help=(
                      "With --trusted-header: the header listing the user's roles, comma-separated."))] = None) -> None:
    """Serve the console for every workflow of the project (needs HANDOFF_SIGNING_KEY, a '*' key the stages know)."""
    try:
        console = console_of(settings(bootstrap), views(views_url), host=host, users=users,
                             workflows_dir=workflows_dir, trusted_header=trusted_header, roles_header=roles_header,
                             session_secret=os.environ.get("HANDOFF_CONSOLE_SESSION_SECRET", ""))
    except (SigningError, WorkflowError) as exc:
        raise fail(str(exc))
    typer.echo(f"handoff console on http://{host}:{port}/ ({', '.join(console.workflows)})")
    uvicorn.run(build_app(console), host=host, port=port, log_level="warning")


@user_app.command("add")
def user_add(name: Annotated[str, typer.Argument(help="The user name people sign in with.")],
             role: Annotated[list[PersonRole], typer.Option("--role", help="A role; repeat.")],
             users: UsersFile = None) -> None:
    """Add or replace a user; the password is read from $HANDOFF_CONSOLE_PASSWORD or asked for, and stored hashed."""
    password = os.environ.get(PASSWORD_ENV) or getpass.getpass(f"password for {name}: ")
    try:
        Users(users_path(users)).add(name, password, list(role))
    except UsersError as exc:
        raise fail(str(exc))
    typer.echo(f"{name} may sign in as {', '.join(role)} ({users_path(users)})")
