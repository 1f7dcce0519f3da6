"""Replay against the real broker: what a selection takes and leaves out, re-injection with the
replay headers, the dead-letter loop guard, and a shadow replay's report of what changed."""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from processors.avro.serde import AvroSerde
from processors.cli.main import app
from processors.control.store import ControlStore
from processors.kafka.read import snapshot
from processors.offline.outputs import read
from processors.offline.replay.live import reinject
from processors.offline.replay.selection import Selection, Source, select
from processors.offline.replay.shadow import shadow
from processors.ops.summary import collect
from processors.pipeline import Pipeline
from processors.providers.scripted import ScriptedProvider, Timeout
from processors.records import Decision, Execution
from processors.stages.base import PROMPT_VERSION_HEADER, REPLAY_HEADER
from tests.conftest import deployed, produce, tickets

BILLING = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "A question about an invoice."}
HOUR_MS = 3_600_000


def events(n: int, prefix: str) -> list[dict]:
    """``n`` sample tickets with their own event ids (the sample's own may be used by another test)."""
    return [copy.deepcopy(t) | {"event_id": f"{prefix}{i}"} for i, t in enumerate(tickets()[:n])]


def test_time_and_offset_selections_take_exactly_the_range_and_say_what_they_leave_out(kafka):
    workflow = deployed("support_ticket", kafka)
    spec = workflow.topics[workflow.topic("triggers")]
    serde = AvroSerde(spec.value_schema)
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    batches = {hours: events(6, f"h{hours}_") for hours in (3, 2, 1)}  # sent 3, 2 and 1 hours ago
    middle = now - 2 * HOUR_MS
    strays = [(b"k1", b"not avro", []),                                                  # cannot decode
              (b"k2", serde.encode(_bare(batches[2][0])), []),                           # the same event id again
              (b"k3", serde.encode(_bare(batches[2][1])), [(REPLAY_HEADER, b"r-earlier")])]  # a replay itself
    producer = kafka.producer()
    for hours, batch in batches.items():
        for event in batch:
            producer.produce(spec.name, key=event["customer"]["id"], value=serde.encode(_bare(event)),
                             timestamp=now - hours * HOUR_MS)
        if hours == 2:
            for key, value, headers in strays:
                producer.produce(spec.name, key=key, value=value, headers=headers, timestamp=middle + 1)
    assert producer.flush(10) == 0

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, timezone.utc)

    selected = select(workflow, kafka, Selection(start=at(middle - HOUR_MS // 2), end=at(middle + HOUR_MS // 2)))
    assert sorted(o.event_id for o in selected.originals) == sorted(e["event_id"] for e in batches[2])
    assert selected.skipped == {"do not decode (not_avro)": 1, "repeat an event id": 1, "were replays themselves": 1}
    assert all(o.key == o.event["customer"]["id"].encode() for o in selected.originals)

    since = select(workflow, kafka, Selection(start=at(now - 90 * 60_000)))  # open end: up to now
    assert sorted(o.event_id for o in since.originals) == sorted(e["event_id"] for e in batches[1])

    first = selected.originals[0]
    partition, offset = map(int, first.origin.removeprefix("triggers ").split("@"))
    by_offset = select(workflow, kafka, Selection(offsets=Selection.parse_offsets(f"{partition}:{offset}-{offset}")))
    assert [o.event_id for o in by_offset.originals] == [first.event_id]
    assert by_offset.originals[0].value == first.value, "the original bytes, not a re-encoding"

    with pytest.raises(ValueError, match="exactly one"):
        Selection(start=at(now), source=Source.review)
    with pytest.raises(ValueError, match="PARTITION:FROM-TO"):
        Selection.parse_offsets("0:10")
    with pytest.raises(ValueError, match="no partition 99"):
        select(workflow, kafka, Selection(offsets={99: (0, 1)}))


def _bare(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "expected"}


def test_a_dead_letter_that_fails_again_on_replay_is_not_replayed_again(kafka, receiver):
    workflow = deployed("support_ticket", kafka)
    down, fine = events(2, "dlq_")
    produce(kafka, workflow, [down, fine])
    model = ScriptedProvider({down["event_id"]: [Timeout()] * 6}, default=BILLING)  # down for the first run and the replay
    assert Pipeline(workflow, kafka, provider=model).run_until_drained(timeout=120)
    assert collect(workflow, kafka).dead == {down["event_id"]: "model_unavailable"}

    selected = select(workflow, kafka, Selection(source=Source.dlq))
    assert [o.event_id for o in selected.originals] == [down["event_id"]] and not selected.skipped
    assert reinject(workflow, kafka, selected, "r-still-down", workflow.prompt_spec.version) == 1
    assert Pipeline(workflow, kafka, provider=model).run_until_drained(timeout=120)

    letters = snapshot(kafka, workflow.topics[workflow.topic("dlq")].name)
    assert len(letters) == 2
    replayed = [dict(m.headers()) for m in letters if REPLAY_HEADER in dict(m.headers())]
    assert len(replayed) == 1, "exactly the replayed record's dead letter is marked"
    assert replayed[0][REPLAY_HEADER] == b"r-still-down"
    assert replayed[0][PROMPT_VERSION_HEADER] == workflow.prompt_spec.version.encode()
    assert replayed[0]["handoff.error.reason"] == b"model_unavailable"

    guarded = select(workflow, kafka, Selection(source=Source.dlq))
    assert guarded.originals == []
    assert guarded.skipped == {"failed again on a replay: left for a person (loop guard)": 1}


def test_shadow_replay_of_review_reports_transitions_and_acts_on_nothing(kafka, receiver):
    workflow = deployed("support_ticket", kafka)
    unsure, unsure_too, broken, decided = events(4, "rev_")
    produce(kafka, workflow, [unsure, unsure_too, broken, decided])
    first = ScriptedProvider({unsure["event_id"]: [BILLING | {"confidence": 0.4}],
                              unsure_too["event_id"]: [BILLING | {"confidence": 0.5}],
                              broken["event_id"]: ["not json", "still not json"]}, default=BILLING)
    assert Pipeline(workflow, kafka, provider=first).run_until_drained(timeout=120)
    before = collect(workflow, kafka)
    assert before.reviewed == {unsure["event_id"]: "low_confidence", unsure_too["event_id"]: "low_confidence",
                               broken["event_id"]: "invalid_output"}
    executions = len(read(workflow, kafka, "executions", Execution))

    selected = select(workflow, kafka, Selection(source=Source.review))
    assert sorted(o.event_id for o in selected.originals) == sorted([unsure["event_id"], unsure_too["event_id"],
                                                                     broken["event_id"]])
    assert all(o.key == o.event["customer"]["id"].encode() for o in selected.originals)
    fixed = ScriptedProvider({unsure_too["event_id"]: [BILLING | {"confidence": 0.6}]},
                             default=BILLING | {"category": "bug"})
    report = asyncio.run(shadow(workflow, kafka, selected, workflow.prompt_spec.version, fixed, "r-shadow"))

    assert report.transitions() == {"review:low_confidence -> bug": 1, "review:invalid_output -> bug": 1}
    assert [c.event_id for c in report.changes if not c.changed] == [unsure_too["event_id"]]
    written = read(workflow, kafka, "replay", Decision)
    assert sorted(d.event_id for d in written) == sorted([unsure["event_id"], broken["event_id"]])
    assert {d.replay for d in written} == {"r-shadow"} and {d.route for d in written} == {"bug"}
    assert collect(workflow, kafka).decided == before.decided, "nothing new was decided for real"
    assert len(read(workflow, kafka, "executions", Execution)) == executions and receiver.applied == {}
    text = report.render()
    assert "review:low_confidence -> bug" in text and f"{broken['event_id']}: review:invalid_output -> bug" in text

    ControlStore(kafka, workflow).publish("review threshold 0.99", review_threshold=0.99)
    stricter = asyncio.run(shadow(workflow, kafka, selected, workflow.prompt_spec.version, fixed, "r-strict"))
    assert stricter.transitions() == {"review:invalid_output -> review:low_confidence": 1}, "the threshold in force"
    assert stricter.written == 0


def test_live_replay_command_reinjects_the_offsets_with_their_keys_and_the_replay_headers(kafka, monkeypatch):
    workflow = deployed("support_ticket", kafka)
    batch = events(3, "cli_")
    produce(kafka, workflow, batch)
    trigger = workflow.topics[workflow.topic("triggers")].name
    originals = {(m.partition(), m.offset()): m for m in snapshot(kafka, trigger)}
    partition, offset = next(iter(originals))
    monkeypatch.setenv("HANDOFF_NAMESPACE", kafka.namespace)

    result = CliRunner().invoke(app, ["replay", "--workflow", "support_ticket", "--offsets", f"{partition}:{offset}-{offset}",
                                      "--mode", "live", "--id", "r-cli", "--bootstrap", kafka.bootstrap_servers])
    assert result.exit_code == 0, result.output
    assert "selected 1 events" in result.output and "re-injected 1" in result.output

    again = [m for m in snapshot(kafka, trigger) if (m.partition(), m.offset()) not in originals]
    assert len(again) == 1
    source = originals[(partition, offset)]
    assert (again[0].key(), again[0].value()) == (source.key(), source.value())
    assert dict(again[0].headers()) == {REPLAY_HEADER: b"r-cli", PROMPT_VERSION_HEADER: workflow.prompt_spec.version.encode()}

    bad = CliRunner().invoke(app, ["replay", "--workflow", "support_ticket", "--source", "review", "--offsets", "0:1-2",
                                   "--bootstrap", kafka.bootstrap_servers])
    assert bad.exit_code == 1 and "exactly one" in bad.output
