"""Route: deterministic rules from the workflow turn a validated answer into a decision.

The first route whose conditions hold decides (``workflow.yaml``, ``routes``). The decision
goes to ``<workflow>.decisions.<route>``, keyed like the trigger, and each action the route
names becomes an action request keyed by its idempotency key (``<event id>:<action>``), so
execute can recognise an effect that was already applied. In shadow mode the decision goes
to ``<workflow>.shadow`` and no action is requested.
"""

from __future__ import annotations

from processors.records import ActionRequest, Decision, WorkItem, dumps
from processors.stage import DeadLetter, Emit, Record, now_ms
from processors.stages.base import WorkflowStage


class Route(WorkflowStage):
    name = "route"
    input_suffixes = ["validated"]
    inline = True

    async def process(self, record: Record) -> list[Emit]:
        item = WorkItem.model_validate(record.value)
        answer, event = item.answer_dict(), item.event_dict()
        route, route_name, rule = self.workflow.decide(answer, event)
        topic = self.workflow.topic("shadow" if self.workflow.shadow else f"decisions.{route_name}")
        if topic not in self.workflow.topics:
            raise DeadLetter("no_route_topic", f"route {route_name!r} resolved from {rule} has no topic {topic}")
        decision = Decision(event_id=item.event_id, workflow=self.workflow.name, route=route_name, rule=rule,
                            label=str(answer[self.workflow.label]), confidence=float(answer.get("confidence", 0.0)),
                            answer=item.answer, event=item.event, prompt=item.prompt, model=item.model,
                            shadow=self.workflow.shadow, decided_at_ms=now_ms(),
                            source="review" if item.reviewed_by else "model",
                            trigger_timestamp_ms=item.trigger_timestamp_ms, latency_ms=item.latency_ms,
                            tokens_in=item.tokens_in, tokens_out=item.tokens_out, cost_usd=item.cost_usd)
        outputs = [Emit(topic, decision, key=record.key)]
        requests = [] if self.workflow.shadow else [self._request(name, decision, answer, event)
                                                    for name in route.actions]
        outputs += [Emit(self.workflow.topic("actions"), r, key=r.idempotency_key) for r in requests]
        outputs.append(self.trace(item.event_id, decision={"route": route_name, "rule": rule, "topic": topic},
                                  action_request=[r.action for r in requests]))
        return outputs

    def _request(self, name: str, decision: Decision, answer: dict, event: dict) -> ActionRequest:
        view = {"answer": answer, "event": event, "decision": decision.model_dump(include={"route", "label", "confidence"})}
        arguments = self.workflow.actions[name].build_arguments(view)
        return ActionRequest(event_id=decision.event_id, workflow=self.workflow.name, action=name,
                             idempotency_key=f"{decision.event_id}:{name}", arguments=dumps(arguments),
                             route=decision.route, decision=decision.model_dump_json(), requested_at_ms=now_ms())
