"""The Avro contracts in ``schemas/``: every version of every schema, found by name or fingerprint.

A schema is named by its path under ``schemas/`` without ``.avsc``. Versioned schemas end in
``.vN`` (``support_ticket/created.v2``); ``latest("support_ticket/created")`` picks the highest
N. Every version stays in the folder for as long as some producer may still write it: the
serde resolves a record's writer schema by fingerprint among all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import orjson
from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

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
        m = _VERSIONED.match(self.name)
        return int(m["version"]) if m else 1


class UnknownContract(KeyError):
    """No schema of that name in ``schemas/``."""


class ContractStore:
    """Every ``.avsc`` under a folder, indexed by name and by fingerprint."""

    def __init__(self, root: Path | None = None):
        self.root = root = root or project.schemas_dir()
        self.by_name: dict[str, Contract] = {}
        self.by_fingerprint: dict[bytes, Contract] = {}
        for path in sorted(root.rglob("*.avsc")):
            name = path.relative_to(root).with_suffix("").as_posix()
            contract = Contract.parse(name, orjson.loads(path.read_bytes()))
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


@cache
def default_store() -> ContractStore:
    return ContractStore()
