"""What a cascade saves: the example project's banking77 (``examples/cascade``: the embedded model
first, the LLM below its threshold) against an all-LLM run of the same events.

Both runs go through the real classify → validate → route in memory (:mod:`processors.offline.runner`),
the LLM a real OpenAI-compatible server on loopback (:mod:`.llm_server`, put where the example
declares its ``base_url``) that reports token usage from the sizes of request and answer; the USD are
the LLM's published price (``prices.yaml``). So the tokens and USD are those of real requests, the
share answered offline that of the embedded model on the held-out BANKING77 queries. ``make bench``
(``cost.*``) and ``make demo`` print it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pydantic import BaseModel

from processors.dev.bench_kit import events
from processors.dev.llm_server import LLMServer
from processors.offline.runner import OfflineResult, OfflineRunner
from processors.project import SHIPPED
from processors.providers.build import build_provider
from processors.workflow.workflow import load_workflow

CASCADE_PROJECT = SHIPPED / "examples" / "cascade"
EMBEDDED = "embedded:"
"""How an answer the embedded model gave alone names its model."""


class CascadeSaving(BaseModel):
    events: int
    threshold: float
    offline_share: float
    """Of the events, those the embedded model answered alone (no LLM call)."""
    all_llm_tokens: int
    cascade_llm_tokens: int
    all_llm_usd: float
    cascade_usd: float

    @property
    def saved_usd(self) -> float:
        return self.all_llm_usd - self.cascade_usd

    @property
    def saved_tokens(self) -> int:
        return self.all_llm_tokens - self.cascade_llm_tokens

    def render(self) -> str:
        return (f"cost: cascade (embedded first, the LLM below {self.threshold}) against all-LLM on the same "
                f"{self.events} events: {self.offline_share:.1%} answered offline; LLM tokens {self.all_llm_tokens:,} → "
                f"{self.cascade_llm_tokens:,}; USD {self.all_llm_usd:.4f} → {self.cascade_usd:.4f} "
                f"(saved {self.saved_usd:.4f}, {self.saved_usd / max(self.all_llm_usd, 1e-12):.0%})")


def _llm_tokens(results: list[OfflineResult]) -> int:
    return sum(r.tokens_in + r.tokens_out for r in results if r.model and not r.model.startswith(EMBEDDED))


def measure(n: int = 2000) -> CascadeSaving:
    """The saving on ``n`` held-out BANKING77 queries."""
    workflow = load_workflow("banking77", root=CASCADE_PROJECT / "workflows")
    with LLMServer() as llm:
        then = workflow.model.then.model_copy(update={"base_url": f"{llm.url}/v1"})
        cascade = build_provider(workflow.model.model_copy(update={"then": then}), workflow.folder,
                                 workflow.redaction, workflow.name)
        all_llm = build_provider(then, workflow.folder, workflow.redaction, workflow.name)
        rows = events(workflow, n, "cost")
        cascaded = asyncio.run(OfflineRunner(workflow, cascade).run(rows))
        llm_only = asyncio.run(OfflineRunner(workflow, all_llm).run(rows))
    return CascadeSaving(events=n, threshold=workflow.model.threshold,
                         offline_share=cascade.report().answered_first / n,
                         all_llm_tokens=_llm_tokens(llm_only), cascade_llm_tokens=_llm_tokens(cascaded),
                         all_llm_usd=sum(r.cost_usd for r in llm_only), cascade_usd=sum(r.cost_usd for r in cascaded))


def show_cascade_saving(say: Callable[[str], None], n: int = 500) -> None:
    """The demo's part: the saving on ``n`` events, one line."""
    say(measure(n).render())
