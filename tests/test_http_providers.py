"""The HTTP providers against real servers on loopback speaking the OpenAI chat-completions and
Anthropic messages protocols (``processors/dev/llm_server.py``): retries, Retry-After, fallbacks,
cooldown, rate limits, cost and redaction, checked from what the servers recorded."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import TypeAdapter

from processors.dev.llm_server import LLMServer, Reply
from processors.dev.localkafka import free_port
from processors.offline.outputs import read
from processors.ops.summary import collect
from processors.pipeline import Pipeline
from processors.providers import (
    AnthropicModel,
    CascadeProvider,
    ChainModel,
    ModelRequest,
    OpenAIModel,
    Price,
    ProviderError,
    ProviderRejected,
    ScriptedProvider,
    price_of,
)
from processors.records import Decision, Trace
from processors.workflow.workflow import ModelRetries, Workflow
from tests.conftest import deployed, produce, tickets

KEY = "sk-test-0123456789abcdef"
SCHEMA = {"type": "object", "required": ["category", "confidence"], "properties": {
    "category": {"type": "string", "enum": ["billing", "bug", "how_to"]},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
EMAIL, CARD = "jane.doe@example.com", "4111 1111 1111 1111"


@pytest.fixture
def llm():
    with LLMServer() as server:
        yield server


@pytest.fixture
def backup():
    with LLMServer() as server:
        yield server


def openai(url: str, **settings) -> OpenAIModel:
    return OpenAIModel.model_validate({"kind": "openai", "model": "gpt-4.1-mini", "base_url": f"{url}/v1",
                                       "api_key": KEY, "timeout_s": 2, "retries": FAST} | settings)


def anthropic(url: str, **settings) -> AnthropicModel:
    return AnthropicModel.model_validate({"kind": "anthropic", "model": "claude-haiku-4-5", "base_url": url,
                                          "api_key": KEY, "timeout_s": 2, "retries": FAST} | settings)


def request(user: str = "Subject: charged twice\nBody: please refund", event_id: str = "e1",
            system: str = "Classify the ticket.", **fields) -> ModelRequest:
    return ModelRequest(prompt_name="ticket classifier", prompt_version="1", system=system, user=user, inputs={},
                        output_schema=SCHEMA, event_id=event_id, **fields)


def run(provider, *requests: ModelRequest):
    async def main():
        try:
            return await asyncio.gather(*(provider.complete(r) for r in requests))
        finally:
            await provider.close()
    return asyncio.run(main())


@pytest.mark.parametrize("mode, expected", [
    ("json_schema", {"type": "json_schema", "json_schema": {"name": "ticket_classifier", "schema": SCHEMA,
                                                            "strict": False}}),
    ("json_object", {"type": "json_object"}),
    ("none", None),
])
def test_openai_asks_for_the_schema_in_response_format(llm, mode, expected):
    llm.script(Reply(answer={"category": "billing", "confidence": 0.9}))  # without a schema, the server can't guess
    [answer] = run(openai(llm.url, structured_output=mode).provider(), request())
    [arrival] = llm.arrivals
    assert arrival.path == "/v1/chat/completions" and arrival.headers["authorization"] == f"Bearer {KEY}"
    assert arrival.body.get("response_format") == expected
    assert arrival.body["messages"][1]["content"] == request().user and arrival.body["max_tokens"] == 400
    assert orjson.loads(answer.text) == {"category": "billing", "confidence": 0.9}
    assert answer.model == "openai:gpt-4.1-mini" and [a.outcome for a in answer.attempts] == ["ok"]


def test_anthropic_forces_the_schema_through_a_tool(llm):
    [answer] = run(anthropic(llm.url).provider(), request())
    [arrival] = llm.arrivals
    assert arrival.path == "/v1/messages"
    assert arrival.headers["x-api-key"] == KEY and arrival.headers["anthropic-version"] == "2023-06-01"
    assert arrival.body["tools"] == [{"name": "ticket_classifier", "input_schema": SCHEMA,
                                      "description": arrival.body["tools"][0]["description"]}]
    assert arrival.body["tool_choice"] == {"type": "tool", "name": "ticket_classifier"}
    assert arrival.body["system"] == "Classify the ticket." and "authorization" not in arrival.headers
    assert orjson.loads(answer.text) == {"category": "billing", "confidence": 0.9}
    assert (answer.tokens_in, answer.tokens_out) == arrival.usage


def test_cost_totals_match_the_price_table(llm, backup):
    llm.script(*(Reply(usage=u) for u in [(1200, 80), (900, 40), (15_000, 300)]))
    backup.script(Reply(usage=(2000, 150)), Reply(usage=(700, 60)))
    gpt = run(openai(llm.url).provider(), request(), request(), request())
    claude = run(anthropic(backup.url).provider(), request(), request())
    local = run(openai(llm.url, model="llama3.1:8b", prices={"input": 0.05, "output": 0.1}).provider(), request())

    def priced(server: LLMServer, price: Price, arrivals: slice) -> float:
        return sum(price.cost(*a.usage) for a in server.arrivals[arrivals])

    expected = (priced(llm, price_of("gpt-4.1-mini"), slice(0, 3))
                + priced(backup, price_of("claude-haiku-4-5"), slice(0, 2))
                + priced(llm, Price(input=0.05, output=0.1), slice(3, 4)))
    assert price_of("gpt-4.1-mini") == Price(input=0.40, output=1.60)  # as prices.yaml lists it
    assert sum(a.cost_usd for a in gpt + claude + local) == pytest.approx(expected, rel=1e-12)
    assert sorted(a.cost_usd for a in gpt) == pytest.approx(sorted([(1200 * 0.40 + 80 * 1.60) / 1e6,
                                                                    (900 * 0.40 + 40 * 1.60) / 1e6,
                                                                    (15_000 * 0.40 + 300 * 1.60) / 1e6]))
    assert price_of("gpt-4.1-mini-2025-04-14") == price_of("gpt-4.1-mini") and price_of("llama3.1:8b") is None


@pytest.mark.parametrize("protocol, status", [("openai", 429), ("anthropic", 529)])
def test_retry_after_is_honoured(llm, protocol, status):
    llm.script(Reply(status=status, retry_after="1"))
    settings = (openai if protocol == "openai" else anthropic)(llm.url)
    [answer] = run(settings.provider(), request())
    first, second = llm.arrivals
    assert (first.status, second.status) == (status, 200)
    assert second.at - first.at >= 1.0, "the retry came before the server's Retry-After"
    assert [a.outcome.split(":")[0] for a in answer.attempts] == [f"HTTP {status}", "ok"]


def test_a_400_is_not_retried_and_the_key_never_shows(llm):
    llm.script(Reply(status=400, echo_key=True))
    settings = openai(llm.url)
    with pytest.raises(ProviderRejected) as caught:
        run(settings.provider(), request())
    assert len(llm.arrivals) == 1
    assert "HTTP 400" in str(caught.value) and "[API KEY]" in str(caught.value)
    shown = [str(caught.value), repr(caught.value), repr(settings), settings.model_dump_json(),
             *(a.outcome for a in caught.value.attempts)]
    assert not any(KEY in text for text in shown)


def test_a_missing_key_fails_when_the_provider_is_built(monkeypatch):
    monkeypatch.delenv("HANDOFF_TEST_KEY", raising=False)
    settings = OpenAIModel(kind="openai", model="gpt-4.1-mini", api_key_env="HANDOFF_TEST_KEY")
    with pytest.raises(ValueError, match="HANDOFF_TEST_KEY"):
        settings.provider()
    monkeypatch.setenv("HANDOFF_TEST_KEY", KEY)
    assert settings.provider().model == "openai:gpt-4.1-mini"


def test_fallback_fires_when_the_primary_is_down(backup):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    chain = ChainModel(kind="chain", models=[openai(dead, retries=FAST | {"attempts": 2}), anthropic(backup.url)])
    [answer] = run(chain.provider(), request())
    assert answer.model == "anthropic:claude-haiku-4-5" and len(backup.arrivals) == 1
    assert [a.model for a in answer.attempts] == ["openai:gpt-4.1-mini"] * 2 + ["anthropic:claude-haiku-4-5"]
    assert "cannot reach" in answer.attempts[0].outcome and answer.attempts[-1].outcome == "ok"
    assert answer.cost_usd == answer.attempts[-1].cost_usd > 0


def test_a_failing_primary_cools_down_and_the_chain_skips_it(llm, backup):
    llm.script(*[Reply(status=503)] * 10)
    chain = ChainModel(kind="chain", models=[openai(llm.url, retries=FAST | {"attempts": 2}), anthropic(backup.url)],
                       cooldown={"failures": 2, "seconds": 30}).provider()

    async def calls():
        answers = [await chain.complete(request(event_id=f"e{i}")) for i in range(4)]
        await chain.close()
        return answers

    answers = asyncio.run(calls())
    assert {a.model for a in answers} == {"anthropic:claude-haiku-4-5"}
    assert len(llm.arrivals) == 4, "two calls of two attempts each, then the primary is skipped"
    assert [len(a.attempts) for a in answers] == [3, 3, 1, 1]
    assert REGISTRY.get_sample_value("handoff_model_cooldowns_total", {"model": "openai:gpt-4.1-mini"}) >= 1


def test_a_long_retry_after_fails_over_at_once(llm, backup):
    llm.script(Reply(status=429, retry_after="30"))
    chain = ChainModel(kind="chain", models=[openai(llm.url), anthropic(backup.url)]).provider()
    started = time.monotonic()
    [answer] = run(chain, request())
    assert time.monotonic() - started < 10, "the 30 s Retry-After was not waited out"
    assert len(llm.arrivals) == 1 and answer.model == "anthropic:claude-haiku-4-5"


def test_a_hung_primary_is_cut_off_by_its_deadline(llm, backup):
    llm.script(*[Reply(latency_s=1)] * 5)
    primary = openai(llm.url, timeout_s=0.3, deadline_s=0.5, retries=FAST | {"attempts": 5})
    chain = ChainModel(kind="chain", models=[primary, anthropic(backup.url)], deadline_s=5).provider()
    [answer] = run(chain, request())
    assert answer.model == "anthropic:claude-haiku-4-5"
    assert len(llm.arrivals) == 2, "two 0.3 s attempts fit the 0.5 s deadline, not the five configured"
    assert all(a.outcome.startswith("no answer within") for a in answer.attempts[:-1])


def test_every_model_down_is_a_retryable_error_naming_each(llm):
    llm.script(*[Reply(status=500)] * 4)
    dead = f"http://127.0.0.1:{free_port()}"
    chain = ChainModel(kind="chain", models=[openai(llm.url, retries=FAST | {"attempts": 2}),
                                             anthropic(dead, retries=FAST | {"attempts": 2})]).provider()
    with pytest.raises(ProviderError) as caught:
        run(chain, request())
    assert caught.value.retryable and len(caught.value.attempts) == 4
    message = str(caught.value)
    assert "openai:gpt-4.1-mini: HTTP 500" in message and "anthropic:claude-haiku-4-5: cannot reach" in message


def test_rate_limits_space_requests_and_do_not_count_against_the_deadline(llm):
    """60 requests a minute: a full bucket goes at once, then one a second. The deadline (0.8 s) is
    shorter than the last one's wait, yet nothing fails: waiting for budget is not trying."""
    provider = openai(llm.url, deadline_s=0.8, rate_limits={"requests_per_minute": 60}).provider()
    started = time.monotonic()
    answers = run(provider, *(request(event_id=f"e{i}") for i in range(62)))
    assert len(answers) == 62 and all(a.model == "openai:gpt-4.1-mini" for a in answers)
    arrivals = sorted(a.at - started for a in llm.arrivals)
    assert arrivals[60] >= 1.0 and arrivals[61] >= 2.0


def test_nothing_unredacted_leaves_the_process(llm, backup):
    """Even a caller that forgot to redact sends nothing personal: the providers redact again."""
    leaky = request(user=f"Refund to card {CARD} please, mail {EMAIL}", system=f"Reply to {EMAIL}")
    run(openai(llm.url).provider(), leaky)
    run(anthropic(backup.url).provider(), leaky)
    sent = [orjson.dumps(a.body).decode() for a in llm.arrivals + backup.arrivals]
    assert len(sent) == 2 and all("[CARD ****1111]" in body and "[EMAIL]" in body for body in sent)
    assert not any(EMAIL in body or CARD in body or re.sub(r"\D", "", CARD) in body for body in sent)


def test_the_cascade_asks_the_llm_only_below_the_threshold(llm):
    confidences = [0.95, 0.9, 0.5, 0.85]
    first = ScriptedProvider({f"e{i}": [{"category": "bug", "confidence": c}] for i, c in enumerate(confidences)})
    cascade = CascadeProvider(first, openai(llm.url).provider(), threshold=0.8, workflow="cascade-test")
    answers = run(cascade, *(request(event_id=f"e{i}") for i in range(4)),
                  request(event_id="e0", repair_errors=["category: not one of the allowed values"]))
    assert len(llm.arrivals) == 2, "the unsure answer and the repair went to the LLM; three did not"
    assert [a.model for a in answers] == ["scripted:inline"] * 2 + ["openai:gpt-4.1-mini", "scripted:inline",
                                                                      "openai:gpt-4.1-mini"]
    unsure = answers[2]
    assert [a.model for a in unsure.attempts] == ["scripted:inline", "openai:gpt-4.1-mini"]
    assert unsure.attempts[0].outcome == "confidence 0.50 < 0.8: asking the LLM"
    report = cascade.report()
    assert (report.answered_first, report.escalated) == (3, 2)
    assert report.llm_cost_usd == pytest.approx(answers[2].cost_usd + answers[4].cost_usd)
    assert report.saved_usd == pytest.approx(3 * report.llm_cost_usd / 2) and report.saved_usd > 0
    assert REGISTRY.get_sample_value("handoff_cascade_answers_total",
                                     {"workflow": "cascade-test", "answered_by": "first"}) == 3


def test_the_readme_model_blocks_are_valid_configuration():
    section = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text().split("## Model providers")[1]
    blocks = [yaml.safe_load(b)["model"] for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    kinds = [TypeAdapter(Workflow.model_fields["model"].rebuild_annotation()).validate_python(b).kind for b in blocks]
    assert {"openai", "anthropic", "chain", "cascade"} <= set(kinds)


def test_a_workflow_classifies_through_an_openai_model(kafka, receiver, llm, monkeypatch):
    """The normal pipeline, built from configuration, against the loopback server: every ticket is
    decided, the server never sees personal data, a retried 503 is in the trace, and the
    decisions' cost is the price table's."""
    monkeypatch.setenv("HANDOFF_TEST_OPENAI_KEY", KEY)
    model = openai(llm.url, api_key=None, api_key_env="HANDOFF_TEST_OPENAI_KEY")
    workflow = deployed("support_ticket", kafka).model_copy(update={"model": model,
                                                                    "retries": ModelRetries(attempts=1)})
    events = tickets()[:6]
    events[0]["ticket"]["body"] = f"Refund to card {CARD} please, mail {EMAIL}"
    llm.script(Reply(status=503))
    produce(kafka, workflow, events)

    assert Pipeline(workflow, kafka).run_until_drained(timeout=60)
    summary = collect(workflow, kafka)
    assert set(summary.decided) == {e["event_id"] for e in events} and not summary.reviewed and not summary.dead
    sent = [orjson.dumps(a.body).decode() for a in llm.arrivals]
    assert len(sent) == 7 and not any(EMAIL in body or CARD in body for body in sent)
    decisions = [d for name in workflow.topics if name.startswith(workflow.topic("decisions."))
                 for d in read(workflow, kafka, name.removeprefix(f"{workflow.name}."), Decision)]
    price = price_of("gpt-4.1-mini")
    assert sum(d.cost_usd for d in decisions) == pytest.approx(sum(price.cost(*a.usage) for a in llm.arrivals))
    assert {d.model for d in decisions} == {"openai:gpt-4.1-mini"}
    traces = read(workflow, kafka, "traces", Trace)
    assert [t.error.split(":")[0] for t in traces if t.step == "classify" and t.error] == ["HTTP 503"]
