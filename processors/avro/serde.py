"""Avro serde: the bytes on every handoff topic.

Two framings, chosen per serde:

* **Single-object encoding** (default, Avro spec): ``C3 01`` + the writer schema's 8-byte
  little-endian CRC-64-AVRO fingerprint + the Avro body. A reader needs no registry: it looks
  the fingerprint up among the versions kept in ``schemas/``.
* **Confluent wire format** (when a Schema Registry is configured: :mod:`.registry`): ``00`` + the
  4-byte big-endian schema id + the body. Writer schemas are registered under the subject the
  registry's strategy names (``<topic>-value`` by default).

Either way the body is decoded with the *writer* schema and resolved into the consumer's
*reader* schema, so a v1 consumer reads v2 records and the reverse (Avro schema resolution).
Every failure raises a :class:`DecodeError` subclass that names its cause, for the stage
runtime to dead-letter; nothing here crashes a consumer loop.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Protocol

import orjson
from confluent_kafka.schema_registry import Schema
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.validation import validate

from processors.avro.contracts import Contract, ContractStore, default_store, named_types
from processors.avro.registry import Registry

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER = 10
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER = 5


class DecodeError(Exception):
    """Bytes that cannot become a record. ``reason`` is a short stable label for metrics."""

    reason = "undecodable"


class NotAvro(DecodeError):
    """The bytes do not start with a known framing header."""

    reason = "not_avro"


class WrongFraming(DecodeError):
    """Avro in the other framing: the reader and the writer disagree on whether a registry is used."""

    reason = "wrong_framing"


class UnknownSchema(DecodeError):
    """The header names a writer schema (fingerprint or registry id) nobody here knows."""

    reason = "unknown_schema"


class Truncated(DecodeError):
    """The body ends before the writer schema says it should, or has bytes left over."""

    reason = "truncated"


class SchemaMismatch(DecodeError):
    """The writer schema cannot be resolved into the reader schema."""

    reason = "schema_mismatch"


class EncodeError(ValueError):
    """A record does not match the schema it is written with; ``errors`` lists each field."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def check_record(record: Any, contract: Contract) -> list[str]:
    """Every way ``record`` breaks ``contract``: wrong types, missing fields and fields the schema
    does not have, each named by its dotted path in the record (``customer.plan: missing``), so a
    person finds it in their JSON without knowing the schema's record names."""
    return _errors(record, contract.schema, "", named_types(contract.schema))


def _errors(datum: Any, schema: Any, path: str, named: dict[str, Any]) -> list[str]:
    """``datum`` against ``schema`` at ``path``; records, arrays and maps are walked so an error names
    the innermost field, anything else is fastavro's to judge."""
    where = path or "record"
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):  # a union: fine if one branch takes it; a lone record branch is walked
        if any(not _errors(datum, branch, path, named) for branch in schema):
            return []
        records = [b for b in schema if isinstance(named.get(b, b), dict) and named.get(b, b).get("type") == "record"]
        if isinstance(datum, dict) and len(records) == 1:
            return _errors(datum, records[0], path, named)
        return [f"{where}: expected {' or '.join(_type_name(named.get(b, b)) for b in schema)}, got {datum!r}"]
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "record" and isinstance(datum, dict):
        fields = {f["name"]: f for f in schema["fields"]}
        errors = [f"{_join(path, k)}: not in schema" for k in datum if k not in fields]
        for name, field in fields.items():
            if name in datum:
                errors += _errors(datum[name], field["type"], _join(path, name), named)
            elif "default" not in field:
                errors.append(f"{_join(path, name)}: missing ({_type_name(named.get(field['type'], field['type']))})")
        return errors
    if kind == "array" and isinstance(datum, list):
        return [e for i, item in enumerate(datum) for e in _errors(item, schema["items"], f"{path}[{i}]", named)]
    if kind == "map" and isinstance(datum, dict):
        return [e for k, v in datum.items() for e in _errors(v, schema["values"], f"{path}[{k!r}]", named)]
    if kind != "record" and validate(datum, schema, raise_errors=False, strict=True):
        return []
    return [f"{where}: expected {_type_name(schema)}, got {datum!r}"]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema.get("type", str(schema)) if isinstance(schema, dict) else "union"


class Framing(Protocol):
    """How the writer schema is named in front of the body."""

    def header(self, contract: Contract, topic: str) -> bytes: ...

    def writer(self, data: bytes) -> tuple[Contract, int]:
        """The writer contract and the offset where the body starts."""
        ...


class SingleObjectFraming:
    def __init__(self, store: ContractStore):
        self.store = store

    def header(self, contract: Contract, topic: str) -> bytes:
        return SINGLE_OBJECT_MAGIC + contract.fingerprint

    def writer(self, data: bytes) -> tuple[Contract, int]:
        if data[:1] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER:
            raise WrongFraming(f"Confluent wire format (schema id {struct.unpack('>I', data[1:CONFLUENT_HEADER])[0]}), "
                               "but this reader expects single-object encoding: set SCHEMA_REGISTRY_URL to read it")
        if data[:2] != SINGLE_OBJECT_MAGIC:
            raise NotAvro(f"expected single-object header C3 01, got {data[:2].hex() or 'empty value'}")
        if len(data) < SINGLE_OBJECT_HEADER:
            raise Truncated(f"single-object header needs 10 bytes, value has {len(data)}")
        fp = data[2:SINGLE_OBJECT_HEADER]
        contract = self.store.by_fingerprint.get(fp)
        if contract is None:
            raise UnknownSchema(f"fingerprint {fp.hex()} matches no schema in {self.store.root}")
        return contract, SINGLE_OBJECT_HEADER


class RegistryFraming:
    """Confluent Schema Registry wire format, through confluent-kafka's registry client."""

    def __init__(self, registry: Registry, store: ContractStore):
        self.registry = registry
        self.client = registry.client()
        self.store = store
        self._ids: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, Contract] = {}

    def header(self, contract: Contract, topic: str) -> bytes:
        key = (contract.name, topic)
        if key not in self._ids:
            subject = self.registry.subject(topic, contract.schema["name"])
            self._ids[key] = self.client.register_schema(subject, Schema(contract.canonical, "AVRO"))
        return CONFLUENT_MAGIC + struct.pack(">I", self._ids[key])

    def writer(self, data: bytes) -> tuple[Contract, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            raise WrongFraming("single-object encoding (C3 01), but this reader expects the Confluent wire format: "
                               "unset SCHEMA_REGISTRY_URL to read it")
        if data[:1] != CONFLUENT_MAGIC:
            raise NotAvro(f"expected Confluent magic byte 00, got {data[:1].hex() or 'empty value'}")
        if len(data) < CONFLUENT_HEADER:
            raise Truncated(f"Confluent header needs 5 bytes, value has {len(data)}")
        (schema_id,) = struct.unpack(">I", data[1:CONFLUENT_HEADER])
        if schema_id not in self._by_id:
            try:
                registered = self.client.get_schema(schema_id)
            except Exception as exc:
                raise UnknownSchema(f"registry has no schema id {schema_id}: {exc}") from exc
            self._by_id[schema_id] = Contract.parse(f"registry/{schema_id}", orjson.loads(registered.schema_str))
        return self._by_id[schema_id], CONFLUENT_HEADER


class AvroSerde:
    """Encode with one writer contract, decode any known writer into one reader contract.

    ``writer`` and ``reader`` are contract names (``support_ticket/created.v1``) or base names
    for the latest version. ``reader`` defaults to ``writer``.
    """

    def __init__(self, writer: str, reader: str | None = None, *, store: ContractStore | None = None,
                 registry: Registry | None = None):
        self.store = store or default_store()
        self.writer = self.store.get(writer)
        self.reader = self.store.get(reader) if reader else self.writer
        self.framing: Framing = RegistryFraming(registry, self.store) if registry else SingleObjectFraming(self.store)

    def encode(self, record: dict, topic: str = "", *, check: bool = False) -> bytes:
        """Avro bytes with header. ``check`` reports every field error before writing (slower)."""
        if check:
            errors = check_record(record, self.writer)
            if errors:
                raise EncodeError(errors)
        out = io.BytesIO()
        out.write(self.framing.header(self.writer, topic))
        try:
            schemaless_writer(out, self.writer.schema, record)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise EncodeError([f"{self.writer.name}: {exc}"]) from exc
        return out.getvalue()

    def decode(self, data: bytes | None) -> dict:
        """The record in the reader schema's shape, or a :class:`DecodeError` saying why not."""
        if data is None:
            raise NotAvro("the value is null (a tombstone?), not an Avro record")
        writer, start = self.framing.writer(data)
        body = io.BytesIO(data)
        body.seek(start)
        try:
            record = schemaless_reader(body, writer.schema, self.reader.schema)
        except SchemaResolutionError as exc:
            raise SchemaMismatch(f"writer {writer.name} cannot be read as {self.reader.name}: {str(exc)[:200]}") from exc
        except (EOFError, StopIteration) as exc:
            raise Truncated(f"body ends early for writer {writer.name} ({exc or 'no more bytes'})") from exc
        except (ValueError, IndexError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise Truncated(f"body is not valid for writer {writer.name}: {exc}") from exc
        if body.tell() != len(data):
            raise Truncated(f"{len(data) - body.tell()} bytes left after a {writer.name} record")
        return record
