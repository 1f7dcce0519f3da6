"""The Avro contracts in ``schemas/``: every version of every schema, found by name or fingerprint.

A schema is named by its path under ``schemas/`` without ``.avsc``. Versioned schemas end in
``.vN`` (``support_ticket/created.v2``); ``latest("support_ticket/created")`` picks the highest
N. Every version stays in the folder for as long as some producer may still write it: the
serde resolves a record's writer schema by fingerprint among all of them.

A schema may name a record another file defines, by its full name (``"type": "handoff.Decision"``
in ``handoff/action_request.avsc``): each record type is written once. The store expands every
reference into the definition (fastavro's ``load_schema``), so each contract — what is
fingerprinted and registered — is one standalone schema, and a change to a nested record
changes the fingerprint of every schema that carries it. A full name that several versions
share names the latest.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro.repository.base import AbstractSchemaRepository, SchemaRepositoryError
from fastavro.schema import UnknownType, fingerprint, fullname, load_schema, to_parsing_canonical_form

from processors import project

_VERSIONED = re.compile(r"^(?P<base>.+)\.v(?P<version>\d+)$")


@dataclass(frozen=True)
class Contract:
    """One schema file: its name, the parsed schema, and its CRC-64-AVRO fingerprint (8 bytes, little-endian)."""

    name: str
    schema: dict
    fingerprint: bytes
    canonical: str

    @classmethod
    def parse(cls, name: str, raw: dict | list | str) -> "Contract":
        """A contract from parsed schema JSON."""
        canonical = to_parsing_canonical_form(raw)
        return cls(
            name=name,
            schema=parse_schema(raw),
            fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
            canonical=canonical,
        )

    @property
    def base(self) -> str:
        m = _VERSIONED.match(self.name)
        return m["base"] if m else self.name

    @property
    def version(self) -> int:
        return _version(self.name)

    def has_field(self, path: str) -> bool:
        """Does the record have a field at dotted ``path`` (``customer.id``), through nested records and
        nullable unions? What a workflow's key and event-id paths are checked with at load."""
        named = named_types(self.schema)
        types: list[Any] = [self.schema]
        for name in path.split("."):
            records = [t for t in _resolved(types, named) if isinstance(t, dict) and t.get("type") == "record"]
            types = [f["type"] for record in records for f in record["fields"] if f["name"] == name]
            if not types:
                return False
        return True


def _resolved(types: list[Any], named: dict[str, Any]) -> list[Any]:
    """``types`` with unions flattened and type names replaced by their definitions."""
    out: list[Any] = []
    for t in types:
        t = named.get(t, t) if isinstance(t, str) else t
        out += _resolved(t, named) if isinstance(t, list) else [t]
    return out


def named_types(schema: Any, named: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type ``schema`` defines, by full name: a later use of one is only its name."""
    named = {} if named is None else named
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, named)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
        inner = [f["type"] for f in schema.get("fields", [])] + [schema[k] for k in ("items", "values") if k in schema]
        for sub in inner:
            named_types(sub, named)
    return named


def _version(name: str) -> int:
    m = _VERSIONED.match(name)
    return int(m["version"]) if m else 1


class UnknownContract(KeyError):
    """No schema of that name in ``schemas/``."""


class _Files(AbstractSchemaRepository):
    """The schema JSON of every file, by contract name and by the full name of the type it defines:
    what ``load_schema`` asks for when a schema names a type it does not define itself."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw
        self.by_type = {fullname(raw): name for name, raw in sorted(self.raw.items(), key=lambda kv: _version(kv[0]))
                        if isinstance(raw, dict) and "name" in raw}

    def load(self, name: str) -> dict:
        found = self.raw.get(self.by_type.get(name, name))
        if found is None:
            raise SchemaRepositoryError(f"no schema defines {name!r}")
        return copy.deepcopy(found)  # load_schema writes the definitions it expands into what it loads


def _read(root: Path, under: str = "") -> dict[str, Any]:
    """The schema JSON of every ``.avsc`` below ``root / under``, by its name under ``root``."""
    return {path.relative_to(root).with_suffix("").as_posix(): orjson.loads(path.read_bytes())
            for path in (root / under).rglob("*.avsc")}


class ContractStore:
    """Every ``.avsc`` under a folder, indexed by name and by fingerprint. Without a folder: the
    project's schemas and the engine's contracts (``handoff/``, always the shipped ones: a project
    holds only its own; a copy of one that differs is refused, it would fork the engine's records)."""

    def __init__(self, root: Path | None = None):
        self.root = project.schemas_dir() if root is None else root
        self.by_name: dict[str, Contract] = {}
        self.by_fingerprint: dict[bytes, Contract] = {}
        raw = _read(self.root)
        if root is None:
            engine = _read(project.engine_schemas_dir(), project.ENGINE_SCHEMAS)
            forked = sorted(name for name in engine if name in raw and raw[name] != engine[name])
            if forked:
                raise ValueError(f"{self.root / forked[0]}.avsc differs from handoff's own contract of that name: "
                                 f"schemas/{project.ENGINE_SCHEMAS}/ belongs to the engine; delete it from the project")
            raw |= engine
        files = _Files(raw)
        root = self.root
        for name in sorted(files.raw):
            try:
                expanded = load_schema(name, repo=files)
            except UnknownType as exc:
                raise ValueError(f"{root / name}.avsc names type {exc.name!r}, which no schema in {root} "
                                 "defines") from None
            contract = Contract.parse(name, expanded)
            self.by_name[name] = contract
            self.by_fingerprint.setdefault(contract.fingerprint, contract)

    def get(self, name: str) -> Contract:
        """A schema by exact name, or by base name for its latest version."""
        if name in self.by_name:
            return self.by_name[name]
        return self.latest(name)

    def latest(self, base: str) -> Contract:
        versions = [c for c in self.by_name.values() if c.base == base]
        if not versions:
            raise UnknownContract(f"no schema {base!r} in {self.root}")
        return max(versions, key=lambda c: c.version)


def default_store() -> ContractStore:
    """The contracts of the project in force and the engine's, read once per project."""
    return _store_of(project.schemas_dir())


@cache
def _store_of(schemas: Path) -> ContractStore:
    return ContractStore()
