"""`handoff produce` against the real broker: bad lines named by number, good lines sent keyed."""

import io
import json
from pathlib import Path

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form
from typer.testing import CliRunner

from processors.cli.main import app
from processors.kafka.read import snapshot
from processors.kafka.topics import apply
from processors.workflow.workflow import load_topics
from tests.test_serde import TICKET_V1


def ticket(n: int, customer: str) -> dict:
    return {**TICKET_V1, "event_id": f"evt_{n}", "customer": {**TICKET_V1["customer"], "id": customer}}


def test_produce_rejects_bad_lines_and_sends_good_ones(kafka, tmp_path, monkeypatch):
    apply(kafka.admin(), list(load_topics("support_ticket", kafka.namespace).values()))
    lines = [
        json.dumps(ticket(1, "cus_a")),
        "{not json",
        json.dumps({**ticket(2, "cus_b"), "customer": {**TICKET_V1["customer"], "arr": "big"}}),
        "",
        json.dumps({**ticket(3, "cus_a"), "expected": {"category": "billing", "urgency": "high"}}),
        json.dumps([1, 2]),
        json.dumps({k: v for k, v in ticket(4, "cus_c").items() if k != "ticket"}),
        json.dumps(ticket(5, "cus_c")),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)
    result = CliRunner().invoke(app, ["produce", str(path), "--bootstrap", kafka.bootstrap_servers])
    assert result.exit_code == 1, result.output  # the good lines went, but a rejected line fails the run (CI notices)
    assert "sent 3" in result.output and "rejected 4" in result.output
    assert "line 2: rejected: not JSON at column 2" in result.output
    assert "line 3: rejected" in result.output and "customer.arr: expected long" in result.output
    assert "line 6: rejected: expected a JSON object" in result.output
    assert "line 7: rejected" in result.output and "ticket" in result.output

    topic = f"{kafka.namespace}.support_ticket.triggers"
    records = snapshot(kafka, topic)
    assert sorted(m.key() for m in records) == [b"cus_a", b"cus_a", b"cus_c"]
    by_key = {}
    for m in records:
        by_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(parts) == 1 for parts in by_key.values()), "one customer's events must share a partition"

    # a plain client with fastavro alone: strip the 10-byte header, find the fingerprint among the
    # trigger contracts (schemas/support_ticket/, standalone: they name no type of another file)
    schemas = {}
    for avsc in (Path(__file__).parent.parent / "schemas/support_ticket").glob("*.avsc"):
        raw = json.loads(avsc.read_text())
        schemas[bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))] = parse_schema(raw)
    decoded = [schemaless_reader(io.BytesIO(m.value()[10:]), schemas[m.value()[2:10]]) for m in records]
    assert sorted(d["event_id"] for d in decoded) == ["evt_1", "evt_3", "evt_5"]
