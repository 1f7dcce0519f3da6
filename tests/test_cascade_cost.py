"""The example project's cascade (``examples/cascade``) against an all-LLM run of the same events: the
real stages in memory, a real OpenAI-compatible server on loopback (``processors/dev/cascade_cost.py``)."""

from __future__ import annotations

from processors.dev.cascade_cost import measure


def test_the_cascade_answers_most_queries_offline_and_saves_the_llm_calls_it_avoided():
    saving = measure(60)
    assert saving.events == 60 and saving.threshold == 0.8
    assert 0.5 < saving.offline_share < 1  # the embedded model is sure of most held-out queries, not all
    assert 0 < saving.cascade_llm_tokens < saving.all_llm_tokens
    assert 0 < saving.cascade_usd < saving.all_llm_usd and saving.saved_usd == saving.all_llm_usd - saving.cascade_usd
    assert "answered offline" in saving.render()
