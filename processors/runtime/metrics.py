"""Prometheus metrics, labelled by workflow and stage so one dashboard serves every workflow.

Every stage process serves them on ``/metrics`` (``handoff run`` does by default, on
``--metrics-port``), beside ``/healthz`` and ``/readyz`` (:mod:`.health`): one port for
everything a supervisor and a scraper ask (:func:`serve`). Counters are per process: sum them
over processes with PromQL.

The quality rates of ``handoff report`` (:mod:`processors.ops.report`) are joins across topics;
live, each stage counts the part of them it knows when it knows it (:class:`Quality`), and
``deploy/prometheus/rules.yml`` divides the counters into the same rates, per workflow and
prompt version, for dashboards and alerts. The report stays the figure of record: it sees a
whole window at once (an outcome that contradicts a decision a week later), a rate of counters
sees each fact in the window it arrived in.
"""

from __future__ import annotations

import collections
import threading
from enum import StrEnum
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from processors.runtime import health

DEFAULT_PORT = 9464  # `handoff run`'s metrics port unless told otherwise (HANDOFF_METRICS_PORT)

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
TOKENS = Counter("handoff_tokens_total", "Model tokens, by prompt version and direction.",
                 ["workflow", "prompt_version", "direction"])
COST = Counter("handoff_cost_usd_total", "Model cost in US dollars, by prompt version.", ["workflow", "prompt_version"])
LAG = Gauge("handoff_consumer_lag", "Records of an owned input partition not yet consumed (librdkafka's consumer_lag: "
            "the high watermark, or the last stable offset under read_committed, minus the consumed or committed "
            "offset), refreshed every STATISTICS_MS.", ["workflow", "stage", "topic", "partition"])
STATISTICS_MS = 10_000  # librdkafka's statistics.interval.ms for a stage consumer: how fresh the lag gauge is
SETTLED = Counter("handoff_settled_total", "Events leaving the automated path: decided by the model (automated) or "
                  "sent to review by classify, validate or route (review).", ["workflow", "prompt_version", "path"])
APPROVALS = Counter("handoff_approvals_requested_total", "Risky actions of model decisions held for a person's "
                    "approval (the event is not automated after all).", ["workflow", "prompt_version"])
VERDICTS = Counter("handoff_verdicts_total", "First verdicts applied, by kind (approve, correct, reject).",
                   ["workflow", "prompt_version", "verdict"])
TIME_TO_VERDICT = Histogram("handoff_time_to_verdict_seconds", "From a review item's creation to the first verdict "
                            "applied on it, by reason and by who decided (person, or system at the deadline).",
                            ["workflow", "reason", "by"],
                            buckets=(60, 300, 900, 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400))
DEADLINE_BREACHES = Counter("handoff_review_deadline_breaches_total", "Review items nobody decided by their deadline, "
                            "given their fail-closed default (reject or escalate) by the review stage.",
                            ["workflow", "reason", "default"])
ESCALATIONS = Counter("handoff_escalation_judgements_total", "Events whose need to escalate became known: needed, "
                      "escalated (the model's answer routes to the escalation route), and the evidence (model: a "
                      "model decision taken as right; verdict; outcome: a missed-escalation outcome).",
                      ["workflow", "prompt_version", "needed", "escalated", "evidence"])


class SettledPath(StrEnum):
    """Where an event left the automated path (``handoff_settled_total``'s ``path``)."""

    automated = "automated"
    review = "review"


class Evidence(StrEnum):
    """What told the need to escalate (``handoff_escalation_judgements_total``'s ``evidence``)."""

    model = "model"
    verdict = "verdict"
    outcome = "outcome"


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
        self._lagging: set[tuple[str, str]] = set()

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

    def statistics(self, stats: str) -> None:
        """librdkafka's ``stats_cb`` (every STATISTICS_MS, on the consumer's thread): the lag of each owned
        partition; a partition no longer owned leaves the gauge."""
        lags = {(topic, partition): p["consumer_lag"]
                for topic, t in orjson.loads(stats).get("topics", {}).items()
                for partition, p in t.get("partitions", {}).items() if partition != "-1" and p.get("consumer_lag", -1) >= 0}
        for topic, partition in self._lagging - lags.keys():
            LAG.remove(self.workflow, self.stage, topic, partition)
        for (topic, partition), lag in lags.items():
            LAG.labels(self.workflow, self.stage, topic, partition).set(lag)
        self._lagging = set(lags)


class ModelUsage:
    """Latency, tokens and cost of a workflow's model calls; tokens and cost by prompt version, so a
    new version's price shows beside the old one's."""

    def __init__(self, workflow: str):
        self.workflow = workflow
        self._latency: dict[str, Histogram] = {}
        self._spend: dict[str, tuple[Counter, Counter, Counter]] = {}  # prompt version -> tokens in, out, cost

    def record(self, model: str, prompt_version: str, latency_ms: float, tokens_in: int, tokens_out: int,
               cost_usd: float) -> None:
        latency = self._latency.get(model)
        if latency is None:
            latency = self._latency[model] = MODEL_LATENCY.labels(self.workflow, model)
        latency.observe(latency_ms / 1000)
        spend = self._spend.get(prompt_version)
        if spend is None:
            spend = self._spend[prompt_version] = (TOKENS.labels(self.workflow, prompt_version, "in"),
                                                   TOKENS.labels(self.workflow, prompt_version, "out"),
                                                   COST.labels(self.workflow, prompt_version))
        for counter, amount in zip(spend, (tokens_in, tokens_out, cost_usd)):
            counter.inc(amount)


class Quality:
    """The counters behind the live automation, review, override and escalation-recall rates, by
    the definitions of :mod:`processors.ops.report`; each stage calls the ones it knows:

    * route: a model decision is *automated* (:meth:`decided`), and, taken as right until a verdict
      or an outcome says otherwise, escalated and needed exactly when its route is the escalation route;
    * classify, validate, route: an item sent to review (:meth:`sent_to_review`); execute's
      risky-action approval instead marks a decided event as touched by a person;
    * review: a first verdict (:meth:`verdict`) and what it says about escalation;
    * join: an outcome of ``escalation.missed_outcomes`` for a decision on another route
      (:meth:`missed_escalation`): needed, not escalated.
    """

    def __init__(self, workflow: str, escalation_route: str | None):
        self.workflow = workflow
        self.escalation_route = escalation_route

    def decided(self, prompt_version: str, route: str, by_model: bool) -> None:
        if not by_model:  # a reviewed decision settled when it went to review
            return
        SETTLED.labels(self.workflow, prompt_version, SettledPath.automated).inc()
        if self.escalation_route is not None:
            escalated = route == self.escalation_route
            self._judged(prompt_version, needed=escalated, escalated=escalated, evidence=Evidence.model)

    def sent_to_review(self, prompt_version: str, risky_action: bool) -> None:
        if risky_action:
            APPROVALS.labels(self.workflow, prompt_version).inc()
        else:
            SETTLED.labels(self.workflow, prompt_version, SettledPath.review).inc()

    def verdict(self, prompt_version: str, verdict: str, answer_route: str | None, needed_route: str | None) -> None:
        """A first verdict; ``answer_route``: where the model's answer routes (None: no valid answer),
        ``needed_route``: where the verdict says the event belongs (None: nowhere, a reject)."""
        VERDICTS.labels(self.workflow, prompt_version, verdict).inc()
        if self.escalation_route is not None:
            self._judged(prompt_version, needed=needed_route == self.escalation_route,
                         escalated=answer_route == self.escalation_route, evidence=Evidence.verdict)

    def missed_escalation(self, prompt_version: str) -> None:
        self._judged(prompt_version, needed=True, escalated=False, evidence=Evidence.outcome)

    def _judged(self, prompt_version: str, needed: bool, escalated: bool, evidence: Evidence) -> None:
        ESCALATIONS.labels(self.workflow, prompt_version, str(needed).lower(), str(escalated).lower(), evidence).inc()


class _HealthCollector:
    """``handoff_stage_alive`` and ``handoff_stage_ready``: the answers of ``/healthz`` and ``/readyz``
    per stage runtime, read at each scrape, so an alert can say which stage of which workflow is down."""

    def collect(self):
        alive = GaugeMetricFamily("handoff_stage_alive", "1 when the stage's consumer loop is not stuck (/healthz).",
                                  labels=["workflow", "stage"])
        ready = GaugeMetricFamily("handoff_stage_ready", "1 when the stage reaches a broker, has its assignment and "
                                  "its state restored (/readyz).", labels=["workflow", "stage"])
        for stage in health.status().stages:
            alive.add_metric([stage.workflow, stage.stage], float(stage.alive))
            ready.add_metric([stage.workflow, stage.stage], float(stage.ready))
        return [alive, ready]


REGISTRY.register(_HealthCollector())


class _Quiet(WSGIRequestHandler):
    """No access log: a probe every few seconds would drown the stage's own lines."""

    def log_message(self, *_args) -> None:
        pass


def _app():
    """The WSGI app: ``/healthz`` and ``/readyz`` (200 or 503, with the JSON status of every stage
    runtime), anything else the Prometheus exposition."""
    exposition = make_wsgi_app()

    def serve_request(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return exposition(environ, start_response)
        status = health.status()
        ok = status.alive if path == "/healthz" else status.ready
        body = status.model_dump_json().encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return serve_request


def serve(port: int, addr: str = "127.0.0.1") -> WSGIServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``addr`` (``port`` 0: any free port, see
    ``server_port``), on a daemon thread. Loopback by default: a scraper on the same host or pod
    reaches it, nothing else on the network does; a scraper or a kubelet elsewhere needs ``0.0.0.0``
    or the pod's address."""
    server = make_server(addr, port, _app(), ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
