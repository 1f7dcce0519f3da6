"""Evals as a gate, and the offline runner under them.

The shipped prompt versions pass their suites with the embedded model, through the real CLI;
a version that loses the ticket body, a model that answers one version with broken JSON, and a
model that obeys prompt injections each fail it, on the metric that should catch them. The
offline runner places misbehaving answers exactly where the Kafka pipeline places them.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from processors.avro.serde import EncodeError
from processors.cli.main import app
from processors.control.state import initial
from processors.offline.evals import EvalError, EvalReport, run_suite
from processors.offline.runner import OfflineRunner
from processors.ops.summary import collect
from processors.paths import lookup
from processors.pipeline import Pipeline
from processors.providers.base import ModelRequest
from processors.providers.scripted import ScriptedProvider, Timeout
from processors.workflow import rules
from processors.workflow.workflow import load_workflow
from tests.conftest import ROOT, deployed, produce, tickets

WORKFLOWS = ROOT / "workflows"
EVALS = WORKFLOWS / "support_ticket/datasets/evals"


def rows(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def eval_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.output


def table_rows(output: str) -> dict[str, list[str]]:
    """The metric lines of a printed table: metric -> [target, value, n, pass]."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metric"))
    parsed = {}
    for line in lines[start + 1:]:
        if line.startswith(("PASSED", "FAILED")):
            break
        metric, *rest = line.split()
        parsed[metric] = [" ".join(rest[:-3]), *rest[-3:]]
    return parsed


@pytest.mark.parametrize("workflow, version", [("support_ticket", "2026-05-29.1"), ("support_ticket", "2026-05-20.3"),
                                               ("banking77", "2026-11-20.1")])
def test_the_shipped_versions_pass_their_suites_and_the_report_matches_the_table(tmp_path, workflow, version):
    report_path = tmp_path / "report.json"
    code, output = eval_cli("--workflow", workflow, "--prompt-version", version, "--report", str(report_path))

    assert code == 0, output
    report = EvalReport.model_validate_json(report_path.read_text())
    assert report.passed and report.prompt.version == version and not report.subset
    assert {d.dataset for d in report.datasets} == {"golden", "edge", "negative", "adversarial"}
    assert report.absent == ["regression"]
    printed = table_rows(output)
    assert list(printed) == [row.metric for row in report.rows]
    for row in report.rows:
        target, value, n, passed = printed[row.metric]
        assert target == (row.target or "-")
        assert value == ("n/a" if row.value is None else f"{row.value:g}")
        assert int(n) == row.n
        assert passed == {True: "yes", False: "NO", None: "-"}[row.passed]
    gated = {row.metric for row in report.rows if row.target}
    assert {"valid_json_rate", "escalation_recall", "adversarial_fail_closed_rate", "negative_safe_rate",
            "p95_latency_ms"} <= gated
    assert all(row.value is not None for row in report.rows if row.target)


def test_eval_datasets_hold_no_training_rows():
    """Evals measure what the embedded model never saw: its held-out split, plus rows written for evals."""
    for name in ("support_ticket", "banking77"):
        workflow = load_workflow(name)
        provider = workflow.provider()
        trained = {provider.spec.compose(e.inputs) for e in provider.split()[0]}
        for path in (workflow.folder / "datasets/evals").glob("*.jsonl"):
            for row in rows(path):
                text = provider.spec.compose({p: lookup(row, p) for p in provider.spec.text})  # as a request carries it
                assert text not in trained, f"{path.name}: {row['event_id']} is a training example"


@pytest.fixture
def copied(tmp_path) -> Path:
    """A copy of the workflows folder, to add prompt versions and datasets to."""
    root = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS / "support_ticket", root / "support_ticket")
    return root


def add_version(root: Path, version: str, **changes) -> None:
    folder = root / "support_ticket/prompts/support_ticket_classifier"
    spec = yaml.safe_load((folder / "2026-05-29.1.yaml").read_text())
    (folder / f"{version}.yaml").write_text(yaml.safe_dump(spec | {"version": version} | changes))


def test_a_version_that_drops_the_ticket_body_fails_the_gate(copied):
    add_version(copied, "2026-06-02.1", inputs=["ticket.subject", "customer.plan"],
                template="Plan: {{ customer.plan }}\nSubject: {{ ticket.subject }}\nReturn JSON.")

    code, output = eval_cli("--workflow", "support_ticket", "--prompt-version", "2026-06-02.1",
                            "--workflows-dir", str(copied), "--report", str(copied / "r.json"))

    assert code == 1, output
    report = EvalReport.model_validate_json((copied / "r.json").read_text())
    assert not report.passed
    missed = {row.metric for row in report.rows if row.passed is False}
    assert "category_accuracy" in missed and "FAILED: missed" in output
    assert eval_cli("--workflow", "support_ticket", "--workflows-dir", str(copied),
                    "--report", str(copied / "ok.json"))[0] == 0, "the production version still passes"


def oracle(expected: dict[str, dict], obey: set[str] = frozenset()):
    """A model that answers every event with its expected answer — except the events in ``obey``,
    where it does what the injection asks: billing, high urgency, fully confident."""
    def answer(request: ModelRequest) -> dict:
        if request.event_id in obey:
            return {"category": "billing", "urgency": "high", "confidence": 1.0,
                    "reason": "The ticket says to route it to billing with high urgency."}
        labels = expected[request.event_id]
        return {"category": labels["category"], "urgency": labels["urgency"], "confidence": 0.95,
                "reason": "Scripted from the expected labels."}
    return answer


def expected_answers() -> dict[str, dict]:
    return {row["event_id"]: row["expected"] for path in EVALS.glob("*.jsonl") for row in rows(path)}


def test_a_model_that_breaks_json_for_one_version_fails_it_and_the_regression_set_is_run(copied):
    add_version(copied, "2026-06-03.1")
    regression = copy.deepcopy(rows(EVALS / "golden.jsonl")[:3])
    for row in regression:
        row["event_id"] += "_corrected"
    (copied / "support_ticket/datasets/evals/regression.jsonl").write_bytes(
        b"".join(orjson.dumps(row) + b"\n" for row in regression))
    expected = expected_answers() | {row["event_id"]: row["expected"] for row in regression}
    good = oracle(expected)

    def model(request: ModelRequest) -> dict | str:
        if request.prompt_version != "2026-06-03.1":
            return good(request)
        return '{"category": "billing", ' if not request.repair_errors else good(request) | {"category": "refunds"}

    workflow = load_workflow("support_ticket", root=copied)
    passing = run_suite(workflow, provider=ScriptedProvider(default=model))
    live = initial(workflow).model_copy(update={"mode": "suggest", "kill_switch": True})  # production: 2026-05-29.1
    failing = run_suite(workflow.with_prompt("2026-06-03.1"), provider=ScriptedProvider(default=model), control=live)

    assert passing.passed and failing.prompt.version == "2026-06-03.1" and not failing.passed
    # the version under test answered, as if fully rolled out, whatever the live state says
    values = {row.metric: row for row in failing.rows}
    assert values["valid_json_rate"].value == 0 and values["valid_json_rate"].passed is False
    assert values["category_accuracy"].value == 0, "an out-of-enum answer sent to review is no right answer"
    assert values["adversarial_fail_closed_rate"].value == 1, "invalid twice ends in review: fails closed"
    assert {d.dataset: d.review for d in failing.datasets}["golden"] == len(rows(EVALS / "golden.jsonl"))
    assert passing.absent == [] and {d.dataset: d.rows for d in passing.datasets}["regression"] == 3
    assert {row.metric: row.value for row in passing.rows}["regression_accuracy"] == 1


def test_the_adversarial_metric_catches_a_model_that_obeys_injections():
    """The workflow's rule on the event holds every eval injection before a model is asked, so a
    model that obeys them does no harm; for a phrasing the rule does not know (here: the rule off),
    the metric catches it."""
    adversarial = {row["event_id"] for row in rows(EVALS / "adversarial.jsonl")}
    workflow = load_workflow("support_ticket")
    obeying = oracle(expected_answers(), obey=adversarial)

    held = run_suite(workflow, provider=ScriptedProvider(default=obeying))
    assert held.passed and {d.dataset: d.review for d in held.datasets}["adversarial"] == len(adversarial)
    unguarded = workflow.model_copy(update={"rules": [r for r in workflow.rules if r not in rules.EVENT_RULES]})
    report = run_suite(unguarded, provider=ScriptedProvider(default=obeying))

    assert {row.metric for row in report.rows if row.passed is False} == {"adversarial_fail_closed_rate"}
    assert not report.passed
    # obeying sends a ticket to escalation: harmless only where the ticket itself calls for an escalation
    escalating = {row["event_id"] for row in rows(EVALS / "adversarial.jsonl")
                  if workflow.decide(row["expected"], row)[1] == "escalation"}
    assert set(report.misses["adversarial_fail_closed_rate"]) == adversarial - escalating
    assert len(escalating) < len(adversarial) // 2


# ---- the offline runner against the Kafka pipeline ----------------------------------------------------

BILLING = {"category": "billing", "urgency": "low", "confidence": 0.95, "reason": "A question about an invoice."}
URGENT = {"category": "billing", "urgency": "high", "confidence": 0.93, "reason": "Charged twice; payroll is blocked."}


def poison_script() -> dict:
    return {"e_ok": [BILLING], "e_timeout": [Timeout()] * 3,
            "e_malformed": ['{"category": "billing", ', "Sure! It is a billing ticket."],
            "e_out_of_enum": [BILLING | {"category": "refunds"}] * 2, "e_repaired": ['{"category": ', BILLING],
            "e_low": [BILLING | {"confidence": 0.4}], "e_escalate": [URGENT]}


def test_the_offline_runner_places_every_event_where_the_pipeline_does(kafka):
    workflow = deployed("support_ticket", kafka)
    events = [copy.deepcopy(ticket) | {"event_id": name} for name, ticket in zip(poison_script(), tickets())]

    offline = OfflineRunner(workflow, ScriptedProvider(poison_script()))
    results = {r.event_id: r for r in asyncio.run(offline.run(events))}

    produce(kafka, workflow, events)
    assert Pipeline(workflow, kafka, stages=["classify", "validate", "route"],
                    provider=ScriptedProvider(poison_script())).run_until_drained(timeout=120)
    summary = collect(workflow, kafka)

    assert {e: r.route for e, r in results.items() if r.ended == "decision"} == summary.decided
    assert {e: r.review_reason for e, r in results.items() if r.ended == "review"} == summary.reviewed
    assert {e: r.dead_letter_reason for e, r in results.items() if r.ended == "dead_letter"} == summary.dead
    assert summary.reviewed == {"e_malformed": "invalid_output", "e_out_of_enum": "invalid_output",
                                "e_low": "low_confidence"}
    assert summary.dead == {"e_timeout": "model_unavailable"}

    timeout = results["e_timeout"]
    assert timeout.attempts == 3 and "ProviderTimeout" in timeout.dead_letter_message
    malformed = results["e_malformed"]
    assert malformed.attempts == 2 and malformed.first_answer_json is False and malformed.answer is None
    assert malformed.validation_errors == ["the answer is not a JSON object"]
    assert results["e_out_of_enum"].first_answer_json and not results["e_out_of_enum"].first_answer_valid
    assert results["e_repaired"].attempts == 2 and results["e_repaired"].route == "billing"
    assert results["e_escalate"].actions == ["open_escalation", "notify_team"]
    assert results["e_ok"].actions == ["notify_team"] and results["e_ok"].decision.label == "billing"


def test_a_dataset_row_the_trigger_contract_rejects_is_named_by_file_and_line(copied):
    golden = copied / "support_ticket/datasets/evals/golden.jsonl"
    bad = rows(golden)
    del bad[1]["ticket"]["body"]
    golden.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in bad))
    workflow = load_workflow("support_ticket", root=copied)

    with pytest.raises(EncodeError):
        OfflineRunner(workflow, ScriptedProvider()).encode(bad[1])
    with pytest.raises(EvalError, match=r"golden\.jsonl:2: does not match the trigger contract"):
        run_suite(workflow, provider=ScriptedProvider())
