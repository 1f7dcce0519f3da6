"""Who may sign in to the console, and with which roles.

By default people live in a users file (YAML, ``HANDOFF_CONSOLE_USERS``, default
``.local/console-users.yaml``): ``<name>: {password: <argon2 hash>, roles: [reviewer, ...]}``, written
by ``handoff console user add`` (the password is hashed with argon2id, never stored). Behind a
company's reverse proxy that authenticates people itself, the console trusts a header instead
(``--trusted-header X-Forwarded-User``, with the roles in ``--roles-header``): use it only when
nothing but the proxy can reach the console. OIDC is not built in: put an OIDC proxy
(oauth2-proxy, a cloud load balancer) in front and use the header mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, Field, ValidationError

from processors import project
from processors.records import PersonRole

USERS_ENV = "HANDOFF_CONSOLE_USERS"
HASHER = PasswordHasher()


class UsersError(ValueError):
    """A users file that cannot be read or written: one line, what to fix."""


class User(BaseModel):
    """A person who may sign in: their name and roles (the hash stays in the file)."""

    name: str
    roles: list[PersonRole] = Field(default_factory=list)


class Entry(BaseModel):
    password: str
    roles: list[PersonRole] = Field(default_factory=list)


def users_path(given: Path | None = None) -> Path:
    return given or (Path(os.environ[USERS_ENV]) if os.environ.get(USERS_ENV) else
                     project.root() / ".local" / "console-users.yaml")


class Users:
    """The users file: read on every sign-in, so an added user or a changed role counts at once."""

    def __init__(self, path: Path):
        self.path = path

    def _entries(self) -> dict[str, Entry]:
        try:
            raw = yaml.safe_load(self.path.read_text()) or {} if self.path.exists() else {}
            return {str(name): Entry.model_validate(entry) for name, entry in raw.items()}
        except (OSError, yaml.YAMLError, AttributeError, ValidationError) as exc:
            raise UsersError(f"users file {self.path}: {str(exc).splitlines()[0]} (expected '<name>: "
                             f"{{password: <argon2 hash>, roles: [...]}}' entries)") from None

    def add(self, name: str, password: str, roles: list[PersonRole]) -> None:
        """Add or replace ``name`` with an argon2id hash of ``password``."""
        if len(password) < 8:
            raise UsersError("a password needs 8 characters or more")
        entries = self._entries() | {name: Entry(password=HASHER.hash(password), roles=roles)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(yaml.safe_dump({n: e.model_dump(mode="json") for n, e in entries.items()}))
        self.path.chmod(0o600)

    def check(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs; None otherwise (unknown names are hashed too: no timing tell)."""
        entry = self._entries().get(name)
        try:
            HASHER.verify(entry.password if entry else DUMMY, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(name=name, roles=entry.roles) if entry else None


DUMMY = HASHER.hash("not anyone's password")
