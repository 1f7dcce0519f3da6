"""``make bench``, (e): the whole banking77 pipeline on its embedded model, one process per stage.

classify → validate → route → execute (with its emit action; the webhook actions go to a real
receiver on loopback), each a ``handoff run --stage`` process, the four running throughout:

1. warm-up: a few hundred events, until drained (the model loaded, the groups settled);
2. steady load: a paced producer offers ``rate`` events/s for ``seconds`` (each event produced at its
   moment, not a backlog); per decision, trigger → decision is ``decided_at_ms`` − the trigger's
   timestamp. Beside its p50/p95 the report prints what the model took of it (``latency_ms``, the
   service time) and the rate the decisions came at: when that rate falls short of the offered one,
   the stages are behind and the latency is queueing;
3. backlog: ``n`` events produced at once, the pipeline's throughput measured from the first to the
   last trace of the run (every step writes one: classify's first to execute's last).
"""

from __future__ import annotations

import secrets
import statistics
import time

from processors.clock import now_ms
from processors.dev.bench_kit import (
    decision_topics,
    fresh,
    produce,
    runtimes,
    span,
    stage_env,
    stage_process,
    stop_processes,
    triggers,
)
from processors.dev.receiver import WebhookReceiver
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.pipeline import wait_until_drained
from processors.records import Decision
from processors.workflow.workflow import Workflow

STAGES = ["classify", "validate", "route", "execute"]
WARM_UP = 300
TICK_S = 0.01


def paced(workflow: Workflow, settings: KafkaSettings, rate: int, seconds: float) -> int:
    """Offer ``rate`` events/s for ``seconds``: every 10 ms the events due by then, each produced when due."""
    records = triggers(workflow, settings, int(rate * seconds), "paced")
    topic = workflow.spec(Role.triggers).name
    producer = settings.producer(**{"linger.ms": 1})
    started = time.monotonic()
    sent = 0
    while sent < len(records):
        due = min(len(records), int((time.monotonic() - started) * rate) + 1)
        for key, value in records[sent:due]:
            producer.produce(topic, key=key, value=value)
        sent = due
        producer.poll(0)
        time.sleep(TICK_S)
    producer.flush(30)
    return sent


def decisions(workflow: Workflow, settings: KafkaSettings, run: str) -> list[Decision]:
    serde = workflow.spec(Role.decisions, workflow.route_names[0]).serde(settings)
    return [decision for topic in decision_topics(workflow) for m in snapshot(settings, topic)
            if (decision := Decision.model_validate(serde.decode(m.value()))).event_id.startswith(f"{run}_")]


def _p(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values or [0.0])[0]


def measure(settings: KafkaSettings, n: int, rate: int = 1000, seconds: float = 10.0,
            say=print) -> dict[str, float]:
    """``pipeline.<name>``: the steady load's latencies and rate, then the backlog's throughput."""
    settings, workflow = fresh(settings, "e2e")
    receiver = WebhookReceiver(secret=secrets.token_hex(16))
    env = stage_env(settings, HANDOFF_WEBHOOK_URL=receiver.start(), HANDOFF_WEBHOOK_SECRET=receiver.secret)
    stages = runtimes(workflow, settings, STAGES)
    processes = [stage_process(workflow, settings, stage, f"e2e-{stage}", env=env) for stage in STAGES]
    def running() -> bool:
        return all(p.poll() is None for p in processes)

    def drained() -> None:
        if not wait_until_drained(settings, stages, timeout=900, running=running):
            raise RuntimeError("the pipeline did not drain; see .local/bench-logs/e2e-*.log")

    try:
        produce(settings, workflow.spec(Role.triggers).name, triggers(workflow, settings, WARM_UP, "warm"))
        drained()
        offered = paced(workflow, settings, rate, seconds)
        drained()
        steady = decisions(workflow, settings, "paced")
        e2e = [d.decided_at_ms - d.trigger_timestamp_ms for d in steady]
        model = [d.latency_ms for d in steady]
        span_s = max((max(d.decided_at_ms for d in steady) - min(d.decided_at_ms for d in steady)) / 1000, 1e-3)
        figures = {"p50_ms_at_1000": _p(e2e, 50), "p95_ms_at_1000": _p(e2e, 95),
                   "model_p95_ms_at_1000": _p(model, 95), "decided_eps_at_1000": len(steady) / span_s,
                   "offered_eps": rate}
        say(f"(e) steady {rate}/s offered ({offered} events over {seconds:.0f} s, paced): trigger → decision "
            f"p50 {figures['p50_ms_at_1000']:.0f} ms, p95 {figures['p95_ms_at_1000']:.0f} ms; the model's share p95 "
            f"{figures['model_p95_ms_at_1000']:.1f} ms; decisions came at {figures['decided_eps_at_1000']:.0f}/s "
            f"({len(steady)} decided; {'keeping up' if figures['decided_eps_at_1000'] >= 0.95 * rate else 'behind: queueing'})")
        started = now_ms()
        produce(settings, workflow.spec(Role.triggers).name, triggers(workflow, settings, n, "e2e"))
        drained()
        _, seconds = span(settings, [workflow.spec(Role.traces).name], 3 * n, started)  # classify, validate, route
        figures["embedded_e2e_eps"] = n / seconds
        say(f"(e) the whole banking77 pipeline, embedded model, one process per stage: "
            f"{figures['embedded_e2e_eps']:8.0f} events/s ({n} events in {seconds:.1f} s, first trace to last)")
        return figures
    finally:
        stop_processes(processes, "pipeline")
        receiver.stop()

