"""Prometheus metrics, labelled by workflow and stage so one dashboard serves every workflow.

Every stage process serves them on ``/metrics`` when started with ``handoff run --metrics-port``
(:func:`serve`). Counters are per process: sum them over processes with PromQL. Per-version
quality figures (automation, override, escalation recall…) need joins across topics and are
computed by ``handoff report`` (:mod:`processors.ops.report`), not here.
"""

from __future__ import annotations

import collections
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

EVENTS_IN = Counter("handoff_events_in_total", "Records consumed by a stage.", ["workflow", "stage"])
EVENTS_OUT = Counter("handoff_events_out_total", "Records produced by a stage, by topic.", ["workflow", "stage", "topic"])
DEAD_LETTERS = Counter("handoff_dead_letters_total", "Records sent to the dead letters, by reason.", ["workflow", "stage", "reason"])
LATENCY = Histogram("handoff_stage_latency_seconds", "Time to process one record in a stage.", ["workflow", "stage"],
                    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
VALIDATION_FAILURES = Counter("handoff_validation_failures_total", "Invalid model answers, by reason.", ["workflow", "reason"])
REVIEWS = Counter("handoff_reviews_total", "Items sent to review, by reason.", ["workflow", "reason"])
RETRIES = Counter("handoff_retries_total", "Retried model calls and actions.", ["workflow", "stage"])
MODEL_LATENCY = Histogram("handoff_model_latency_seconds", "Time from asking the model to its answer (the answer used, "
                          "retries excluded).", ["workflow", "model"],
                          buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
TOKENS = Counter("handoff_tokens_total", "Model tokens, by direction.", ["workflow", "direction"])
COST = Counter("handoff_cost_usd_total", "Model cost in US dollars.", ["workflow"])


class StageMetrics:
    """The per-record metrics of one stage of one workflow.

    Records in and out are counted in plain integers and added to the Prometheus counters by
    :meth:`flush`, which the runtime calls once per loop step: each counter increment takes a lock,
    and a stage writes several records per input. A scrape sees them at most one step late.
    """

    def __init__(self, workflow: str, stage: str):
        self.workflow = workflow
        self.stage = stage
        self._in = EVENTS_IN.labels(workflow, stage)
        self._latency = LATENCY.labels(workflow, stage)
        self._out: dict[str, Counter] = {}
        self._consumed = 0
        self._produced: collections.Counter[str] = collections.Counter()

    def consumed(self) -> None:
        self._consumed += 1

    def produced(self, topic: str) -> None:
        self._produced[topic] += 1

    def flush(self) -> None:
        """Add what was counted since the last flush to the Prometheus counters."""
        if self._consumed:
            self._in.inc(self._consumed)
            self._consumed = 0
        for topic, count in self._produced.items():
            child = self._out.get(topic)
            if child is None:
                child = self._out[topic] = EVENTS_OUT.labels(self.workflow, self.stage, topic)
            child.inc(count)
        self._produced.clear()

    def dead_lettered(self, reason: str) -> None:
        DEAD_LETTERS.labels(self.workflow, self.stage, reason).inc()

    def observe(self, seconds: float) -> None:
        self._latency.observe(seconds)


class ModelUsage:
    """Latency, tokens and cost of a workflow's model calls."""

    def __init__(self, workflow: str):
        self.workflow = workflow
        self._latency: dict[str, Histogram] = {}
        self._tokens_in = TOKENS.labels(workflow, "in")
        self._tokens_out = TOKENS.labels(workflow, "out")
        self._cost = COST.labels(workflow)

    def record(self, model: str, latency_ms: float, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        latency = self._latency.get(model)
        if latency is None:
            latency = self._latency[model] = MODEL_LATENCY.labels(self.workflow, model)
        latency.observe(latency_ms / 1000)
        self._tokens_in.inc(tokens_in)
        self._tokens_out.inc(tokens_out)
        self._cost.inc(cost_usd)


def serve(port: int, addr: str = "127.0.0.1") -> WSGIServer:
    """Serve ``/metrics`` on ``addr`` (``port`` 0: any free port, see ``server_port``). Loopback by
    default: a scraper on the same host or pod reaches it, nothing else on the network does; a
    scraper elsewhere (Prometheus in another pod) needs ``0.0.0.0`` or the pod's address."""
    server, _thread = start_http_server(port, addr=addr)
    return server
