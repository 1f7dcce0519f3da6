"""Who decided: verdicts, approvals and control changes signed with a key the stages know.

Anyone with broker access can write a record; only a holder of a known key can sign one. A
signature (:class:`~processors.records.Signature`) is an HMAC-SHA256, with the key ``key_id``
names, over the record's **canonical form** — its fields as sorted-key JSON, the signature field
left out — followed by the key id, the signer and the signer's roles. So a record changed after
signing, a signer's name or roles changed, or a key nobody knows, all fail :meth:`Keyring.check`.

Keys are known by id, so a key rotates: add the new one to the keyring, move the signers to it,
then drop the old. Each known key says whom it may sign for — one identity (a person's own CLI
key) or ``*`` (a service that signs for the people it authenticated: the console, the review
stage's deadline defaults) — and which roles it may claim.

Where the keys come from (a ``_FILE`` variant names a file holding the value, like every secret):

* ``HANDOFF_SIGNING_KEY`` — the key this process signs with, ``<key id>:<secret>``; with
  ``HANDOFF_IDENTITY`` (who signs; the CLI's ``--reviewer``/``--by`` take its place for a ``*``
  key) and ``HANDOFF_ROLES`` (comma-separated; default every role).
* ``HANDOFF_SIGNING_KEYS`` — the keys this process accepts, YAML: ``<key id>: {secret: …,
  identity: ana, roles: [reviewer]}`` (identity ``*`` and every role when left out). When unset,
  the one key of ``HANDOFF_SIGNING_KEY`` is known, for anyone and every role (one key for a
  development set-up). With neither, nothing verifies: every verdict is refused, fail closed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import TypeVar

import orjson
import yaml
from pydantic import BaseModel, Field, ValidationError

from processors.records import PersonRole, Signature

SIGNING_KEY_ENV = "HANDOFF_SIGNING_KEY"
SIGNING_KEYS_ENV = "HANDOFF_SIGNING_KEYS"
IDENTITY_ENV = "HANDOFF_IDENTITY"
ROLES_ENV = "HANDOFF_ROLES"
FILE_SUFFIX = "_FILE"
ANYONE = "*"
SYSTEM = "system"
"""The signer of what the engine decides itself (a review deadline's default verdict)."""

Signed = TypeVar("Signed", bound=BaseModel)


class SigningError(ValueError):
    """A signing set-up that cannot work (a malformed key, an unreadable keys file): one line, what to fix."""


class BadSignature(Exception):
    """A record whose signature does not verify; the message says why, in one line."""


class UnknownKey(BadSignature):
    """Signed with a key id this process does not know: forged, or a key only others hold."""


def secret_value(name: str) -> str | None:
    """``$NAME``, else the content of the file ``$NAME_FILE`` names (a mounted secret), else None."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(name + FILE_SUFFIX)
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise SigningError(f"{name}{FILE_SUFFIX}: cannot read {path}: {exc.strerror}") from None


def canonical(record: BaseModel, field: str) -> bytes:
    """The bytes a signature covers: every field of ``record`` but ``field``, as sorted-key JSON."""
    return orjson.dumps(record.model_dump(mode="json", exclude={field}), option=orjson.OPT_SORT_KEYS)


def _mac(secret: str, record: BaseModel, field: str, key_id: str, signer: str, roles: list[PersonRole]) -> str:
    claim = orjson.dumps({"key_id": key_id, "signer": signer, "roles": sorted(roles)})
    return hmac.new(secret.encode(), canonical(record, field) + b"\n" + claim, hashlib.sha256).hexdigest()


class KnownKey(BaseModel):
    """A key the stages accept, and what it may sign for."""

    secret: str = Field(min_length=16)
    identity: str = ANYONE
    roles: list[PersonRole] = Field(default_factory=lambda: list(PersonRole))


class Keyring:
    """The keys a process accepts, by id."""

    def __init__(self, keys: dict[str, KnownKey], complete: bool = True):
        self.keys = keys
        self.complete = complete
        """True when these are the stages' keys (``HANDOFF_SIGNING_KEYS``); False when only this process's own
        key is known (a person's CLI): a signature by another key cannot be judged here."""

    @classmethod
    def from_env(cls) -> Keyring:
        text = secret_value(SIGNING_KEYS_ENV)
        if text is None:
            signer = Signer.from_env(required=False)
            return cls({} if signer is None else {signer.key_id: KnownKey(secret=signer.secret)}, complete=False)
        try:
            entries = yaml.safe_load(text) or {}
            return cls({str(key_id): KnownKey.model_validate(entry) for key_id, entry in entries.items()})
        except (yaml.YAMLError, AttributeError, ValidationError) as exc:
            raise SigningError(f"{SIGNING_KEYS_ENV}: expected '<key id>: {{secret: ..., identity: ..., roles: "
                               f"[...]}}' entries: {str(exc).splitlines()[0]}") from None

    def check(self, record: BaseModel, field: str, signer: str) -> Signature:
        """The record's signature when it verifies and is made out to ``signer``; else BadSignature."""
        signature: Signature | None = getattr(record, field)
        if signature is None:
            raise BadSignature("not signed")
        key = self.keys.get(signature.key_id)
        if key is None:
            raise UnknownKey(f"signed with key {signature.key_id!r}, which is not a known key")
        expected = _mac(key.secret, record, field, signature.key_id, signature.signer, signature.roles)
        if not hmac.compare_digest(expected, signature.mac):
            raise BadSignature(f"the signature of key {signature.key_id!r} does not match the record (changed "
                               f"after signing, or forged)")
        if signature.signer != signer:
            raise BadSignature(f"signed by {signature.signer!r} but names {signer!r}")
        if key.identity not in (ANYONE, signature.signer):
            raise BadSignature(f"key {signature.key_id!r} signs for {key.identity!r} only, not {signature.signer!r}")
        beyond = set(signature.roles) - set(key.roles)
        if beyond:
            raise BadSignature(f"key {signature.key_id!r} may not claim the role(s) {', '.join(sorted(beyond))}")
        return signature


class Signer(BaseModel):
    """A key this process signs with, for an identity and its roles."""

    key_id: str
    secret: str = Field(min_length=16)
    identity: str
    roles: list[PersonRole] = Field(default_factory=lambda: list(PersonRole))

    @classmethod
    def from_env(cls, required: bool = True) -> Signer | None:
        """``HANDOFF_SIGNING_KEY`` (``<key id>:<secret>``), ``HANDOFF_IDENTITY``, ``HANDOFF_ROLES``."""
        text = secret_value(SIGNING_KEY_ENV)
        if text is None:
            if required:
                raise SigningError(f"no signing key: set {SIGNING_KEY_ENV}=<key id>:<secret> (or "
                                   f"{SIGNING_KEY_ENV}{FILE_SUFFIX}), a key the stages know")
            return None
        key_id, sep, secret = text.partition(":")
        roles = os.environ.get(ROLES_ENV)
        try:
            if not sep or not key_id:
                raise ValueError("expected <key id>:<secret>")
            return cls(key_id=key_id, secret=secret, identity=os.environ.get(IDENTITY_ENV) or SYSTEM,
                       roles=[r.strip() for r in roles.split(",") if r.strip()] if roles else list(PersonRole))
        except (ValueError, ValidationError) as exc:
            raise SigningError(f"{SIGNING_KEY_ENV} or {ROLES_ENV}: {str(exc).splitlines()[0]} (roles: "
                               f"{', '.join(PersonRole)}; a secret of 16 characters or more)") from None

    def acting_as(self, identity: str | None = None, roles: list[PersonRole] | None = None) -> Signer:
        """This key signing for another identity or fewer roles (a ``*`` key: the console's users)."""
        return self.model_copy(update={k: v for k, v in (("identity", identity), ("roles", roles)) if v is not None})

    def sign(self, record: Signed, field: str) -> Signed:
        """``record`` with ``field`` set to this signer's signature of it."""
        mac = _mac(self.secret, record, field, self.key_id, self.identity, self.roles)
        signature = Signature(key_id=self.key_id, signer=self.identity, roles=sorted(self.roles), mac=mac)
        return record.model_copy(update={field: signature})
