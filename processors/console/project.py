"""The console of a project: every workflow under its ``workflows/``, in one namespace, with one signing key."""

from __future__ import annotations

from pathlib import Path

from processors import project
from processors.console.app import Console
from processors.console.users import Users, users_path
from processors.kafka.settings import KafkaSettings
from processors.signing import ANYONE, Keyring, Signer, SigningError
from processors.views.store import ViewStore
from processors.workflow.workflow import load_workflow

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def console_of(settings: KafkaSettings, store: ViewStore, *, host: str = "127.0.0.1", users: Path | None = None,
               workflows_dir: Path | None = None, **options) -> Console:
    """The console for every workflow of the project. Its key (``HANDOFF_SIGNING_KEY``) must be one the
    stages know for anyone (``*``): it signs for each person it signed in."""
    root = workflows_dir or project.workflows_dir()
    names = sorted(p.name for p in root.iterdir() if (p / "workflow.yaml").exists())
    signer = Signer.from_env()
    known = Keyring.from_env().keys.get(signer.key_id)
    if known is not None and known.identity != ANYONE:
        raise SigningError(f"the console's key {signer.key_id!r} signs for {known.identity!r} only: give it a key "
                           f"the stages know with identity '*'")
    return Console(workflows={n: load_workflow(n, settings.namespace, root) for n in names}, settings=settings,
                   store=store, signer=signer, users=Users(users_path(users)),
                   secure_cookies=options.pop("secure_cookies", host not in LOOPBACK), **options)
