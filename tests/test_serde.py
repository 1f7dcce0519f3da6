"""Avro contracts and the serde: golden bytes, evolution both ways, every decode failure kind."""

import io
import json
import struct

import pytest
from fastavro import schemaless_reader

from processors.avro.contracts import ContractStore
from processors.avro.registry import Registry
from processors.avro.serde import (
    AvroSerde,
    EncodeError,
    NotAvro,
    SchemaMismatch,
    Truncated,
    UnknownSchema,
    WrongFraming,
)

TICKET_V1 = {
    "event": "support_ticket.created", "event_id": "evt_01HY9K2P0A7", "created_at": "2026-05-29T14:22:10Z",
    "ticket": {"id": "tkt_9041", "subject": "Charged twice after upgrading",
               "body": "I upgraded to Pro yesterday and see two charges on my card.", "channel": "email", "language": "en"},
    "customer": {"id": "cus_1188", "plan": "pro", "arr": 2400, "region": "us"},
}


def rabin_fingerprint(canonical: str) -> bytes:
    """CRC-64-AVRO exactly as the Avro specification's reference algorithm gives it, little-endian."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in canonical.encode():
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return struct.pack("<Q", fp)


@pytest.fixture
def golden_store(tmp_path):
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "int.avsc").write_text('"int"')
    (tmp_path / "golden" / "point.v1.avsc").write_text(json.dumps({
        "type": "record", "name": "Point", "namespace": "golden",
        "fields": [{"name": "x", "type": "int"}, {"name": "label", "type": "string"}]}))
    return ContractStore(tmp_path)


def test_golden_single_object_bytes(golden_store):
    # The Avro spec's published fingerprint of "int" is 0x7275d51a3f395c8f, written little-endian.
    assert AvroSerde("golden/int", store=golden_store).encode(1) == bytes.fromhex("c301" "8f5c393f1ad57572" "02")
    point = AvroSerde("golden/point", store=golden_store)
    canonical = '{"name":"golden.Point","type":"record","fields":[{"name":"x","type":"int"},{"name":"label","type":"string"}]}'
    assert golden_store.get("golden/point").canonical == canonical
    expected = b"\xc3\x01" + rabin_fingerprint(canonical) + b"\x06" + b"\x04hi"  # zigzag(3)=6, len 2, "hi"
    assert point.encode({"x": 3, "label": "hi"}) == expected
    assert point.decode(expected) == {"x": 3, "label": "hi"}


def test_v1_writer_v2_reader_fills_defaults():
    data = AvroSerde("support_ticket/created.v1").encode(TICKET_V1)
    record = AvroSerde("support_ticket/created.v1", reader="support_ticket/created.v2").decode(data)
    assert record["ticket"]["attachments"] == 0 and record["source"] is None
    assert record["ticket"]["subject"] == TICKET_V1["ticket"]["subject"]


def test_v2_writer_v1_reader_drops_new_fields():
    v2 = {**TICKET_V1, "ticket": {**TICKET_V1["ticket"], "attachments": 2}, "source": "zendesk"}
    data = AvroSerde("support_ticket/created.v2").encode(v2)
    assert AvroSerde("support_ticket/created.v1").decode(data) == TICKET_V1


@pytest.mark.parametrize("data, error, words", [
    (b'{"event": "json, not avro"}', NotAvro, "C3 01"),
    (b"", NotAvro, "empty"),
    (None, NotAvro, "null"),
    (b"\xc3\x01\x00\x01", Truncated, "10 bytes"),
    (b"\xc3\x01" + b"\xde\xad\xbe\xef" * 2 + b"\x02", UnknownSchema, "deadbeef"),
])
def test_each_decode_failure_has_its_type(data, error, words):
    with pytest.raises(error, match=words):
        AvroSerde("support_ticket/created").decode(data)


def test_a_record_in_the_other_framing_says_which_and_what_to_set():
    """Confluent bytes on a single-object reader, and the reverse: wrong_framing, naming SCHEMA_REGISTRY_URL
    (the registry reader knows before it asks the registry anything)."""
    body = AvroSerde("support_ticket/created.v1").encode(TICKET_V1)[10:]
    with pytest.raises(WrongFraming, match="schema id 7.*set SCHEMA_REGISTRY_URL") as confluent:
        AvroSerde("support_ticket/created").decode(b"\x00" + struct.pack(">I", 7) + body)
    with pytest.raises(WrongFraming, match="unset SCHEMA_REGISTRY_URL") as single:
        AvroSerde("support_ticket/created", registry=Registry(url="http://127.0.0.1:9")).decode(
            AvroSerde("support_ticket/created.v1").encode(TICKET_V1))
    assert confluent.value.reason == single.value.reason == "wrong_framing"


def test_truncated_body_and_trailing_bytes():
    serde = AvroSerde("support_ticket/created.v1")
    data = serde.encode(TICKET_V1)
    with pytest.raises(Truncated, match="ends early"):
        serde.decode(data[:-20])
    with pytest.raises(Truncated, match="bytes left"):
        serde.decode(data + b"\x00\x00")


def test_writer_that_cannot_resolve_into_reader():
    data = AvroSerde("handoff/outcome").encode(
        {"event_id": "e", "workflow": "w", "outcome_type": "reopened", "value": None, "at_ms": 1, "source": "crm"})
    with pytest.raises(SchemaMismatch, match="cannot be read as support_ticket/created"):
        AvroSerde("handoff/outcome", reader="support_ticket/created").decode(data)


def test_encode_reports_every_field_error():
    bad = {**TICKET_V1, "customer": {**TICKET_V1["customer"], "arr": "lots"}, "extra": 1}
    with pytest.raises(EncodeError) as info:
        AvroSerde("support_ticket/created.v1").encode(bad, check=True)
    text = str(info.value)
    assert "customer.arr: expected long, got 'lots'" in text and "extra: not in schema" in text


def test_fastavro_alone_reads_single_object_bytes():
    """What a plain consumer does: strip 10 bytes, find the fingerprint among schemas/, decode."""
    from pathlib import Path

    from fastavro.schema import fingerprint, to_parsing_canonical_form

    data = AvroSerde("support_ticket/created.v1").encode(TICKET_V1)
    schemas = {}
    for path in (Path(__file__).parent.parent / "schemas" / "support_ticket").rglob("*.avsc"):  # trigger contracts stand alone
        schema = json.loads(path.read_text())
        schemas[bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))] = schema
    assert data[:2] == b"\xc3\x01"
    writer = schemas[data[2:10]]
    from fastavro import parse_schema
    assert schemaless_reader(io.BytesIO(data[10:]), parse_schema(writer)) == TICKET_V1
