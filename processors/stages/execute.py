"""Execute: run an action request once in effect, or say exactly why it did not run.

In order, for each request:

1. **Already done?** The idempotency ledger (:class:`EffectsDone`, a partition-local store of the
   actions topic's partition, changelog ``<workflow>.actions.done``) knows every key whose effect was
   applied within ``retention.effects_kept``, which a workflow cannot set shorter than its replay
   reach or its dedupe window; a known key is answered with an ``already_done`` execution and
   nothing runs — across restarts and replays.
2. **Allowed?** The action must exist and its scope must be granted to the workflow; its
   arguments must satisfy its JSON Schema. Otherwise → dead letters, nothing runs.
3. **Risky?** Risk above the ``approval_risk`` in force (the control state's when set, else
   the workflow's) without an approval → review (``risky_action``) with the decision and the
   request; nothing runs until a person says so. An action declared ``approval: always`` goes
   there every time it comes without ``approved_by``, whatever the rollout mode, thresholds,
   approval risk or kill switch say: this check is here, where the action runs, so no setting
   and no path around route can lower it. A request that does carry ``approved_by`` must carry
   its ``approval`` too, signed by the review stage for an approver
   (:func:`~processors.workflow.verdict_log.approval_refusal`): one written straight onto the
   actions topic is dead-lettered as ``unsigned_approval``, never run.
4. **Run.** A webhook is POSTed with an HMAC signature and the Idempotency-Key (retries on
   timeouts and 5xx inside :class:`WebhookAction`); a 4xx, or retries exhausted → dead
   letters. An emit writes a notification to its topic. An ``mcp_tool`` calls its allow-listed
   tool (:mod:`processors.actions.mcp`: inputSchema checked first, the idempotency key as the
   tool declares, retries per failure type; refused or exhausted → dead letters), traced with its
   redacted arguments, result, latency and error. Then an execution record — the arguments it ran
   with, the original ones when an approver adjusted them, who approved, the tool's result — and
   the ledger entry, in the same commit.
5. **Then.** The actions it declares to follow it (``then``: a CRM note after a refund, the verdict
   event that closes the case) are requested on ``<wf>.actions`` in that same commit, their arguments
   read from the decision and from what this one did (``execution.approved_by``,
   ``execution.arguments.amount``, ``execution.response.refund_id``…). Each has its own idempotency
   key, so a repeat of this commit requests them again harmlessly; an ``already_done`` answer
   requests nothing, since they were requested when it ran.

A crash after the effect but before the ledger entry is committed runs the action again on
restart — with the same Idempotency-Key, which is what lets the receiver apply it once.
"""

from __future__ import annotations

import httpx
import orjson

from processors.actions.mcp import ToolCall, ToolCallFailed, ToolRefused
from processors.actions.webhook import ActionFailed, ActionResult, WebhookAction, secret_from_env
from processors.clock import now_ms
from processors.control.state import Control, approval_risk
from processors.kafka.topics import Role
from processors.records import (
    ActionDone,
    ActionRequest,
    ControlState,
    Execution,
    ExecutionStatus,
    Notification,
    ReviewReason,
    StageName,
    Usage,
)
from processors.runtime import metrics
from processors.runtime.stage import DeadLetter, Emit, Record, Table
from processors.signing import Keyring
from processors.stages.base import WorkflowStage
from processors.state.store import Store
from processors.workflow.verdict_log import approval_refusal
from processors.workflow.workflow import Action, ActionKind, Approval, Workflow, action_view


class EffectsDone(Store[ActionDone]):
    """Every idempotency key whose effect was applied, kept for ``retention.effects_kept``."""

    def __init__(self, workflow: Workflow):
        super().__init__(workflow.topic(Role.actions_done), workflow.topic(Role.actions), ActionDone)
        self.kept_ms = int(workflow.retention.effects_kept * 1000)

    def due_ms(self, entry: ActionDone) -> int:
        return entry.executed_at_ms + self.kept_ms


class Execute(WorkflowStage):
    name = StageName.execute
    input_roles = [Role.actions]
    output_roles = [Role.executions, Role.review, Role.traces, Role.actions]  # and each emit action's topic

    def __init__(self, workflow: Workflow, control: Control | ControlState | None = None):
        super().__init__(workflow, control)
        self.done = EffectsDone(workflow)
        self.webhooks: dict[str, WebhookAction] = {}
        self.tools = workflow.tool_client()
        self.http: httpx.AsyncClient | None = None
        self.keyring = Keyring.from_env()

    async def start(self) -> None:
        self.tools.check_settings()
        self.http = httpx.AsyncClient()
        self.webhooks = {
            name: WebhookAction(name, action.resolved_url(), secret_from_env(name, action.secret_env),
                                timeout=action.timeout_s, max_attempts=action.max_attempts, client=self.http)
            for name, action in self.workflow.actions.items() if action.kind == ActionKind.webhook}

    async def close(self) -> None:
        if self.http is not None:  # None: start failed (a tool server's setting missing) before it
            await self.http.aclose()
        await self.tools.close()

    def tables(self) -> list[Table]:
        return [self.done]

    def outputs(self) -> list[str]:
        return super().outputs() + [a.topic for a in self.workflow.actions.values() if a.kind == ActionKind.emit]

    async def process(self, record: Record) -> list[Emit]:
        request = ActionRequest.model_validate(record.value)
        key = request.idempotency_key
        if self.done.get(record.partition, key) is not None:
            return self._executed(request, ExecutionStatus.already_done,
                                  ActionResult(http_status=None, response=None, attempts=0, latency_ms=0.0))
        action, arguments = self._allowed(request)
        if request.approved_by is not None and (refused := approval_refusal(request, self.keyring)):
            raise DeadLetter("unsigned_approval", refused)
        control = self.control.state
        bound = approval_risk(self.workflow, control)
        always = action.approval == Approval.always
        if (always or action.risk > bound) and request.approved_by is None:
            decision = request.decision
            why = "approval: always" if always else f"risk {action.risk} above {bound}"
            return [self.review(ReviewReason.risky_action, event_id=request.event_id, event=decision.event,
                                prompt=decision.prompt, model=decision.model, key=request.event_id,
                                suffix=f":{request.action}", answer=decision.answer, action=request,
                                control_version=control.version, replay=decision.replay, lookups=request.lookups),
                    self.trace(request.event_id, action_request=request.arguments,
                               error=f"{why}: awaiting approval")]
        if action.kind == ActionKind.webhook:
            try:
                result = await self.webhooks[request.action].run(key, arguments)
            except ActionFailed as exc:
                self._retried(exc.attempts)
                raise DeadLetter(f"action_{exc.reason}", str(exc), attempts=exc.attempts) from exc
            self._retried(result.attempts)
            outputs = []
        elif action.kind == ActionKind.mcp_tool:
            result, outputs = await self._call_tool(request, action, arguments)
        else:
            result = ActionResult(http_status=None, response=None, attempts=1, latency_ms=0.0)
            outputs = [Emit(action.topic, Notification(event_id=request.event_id, workflow=self.workflow.name,
                                                       action=request.action, idempotency_key=key,
                                                       arguments=request.arguments, at_ms=now_ms()),
                            key=request.event_id)]
        ledger = self.done.put(record.partition, key, ActionDone(idempotency_key=key, event_id=request.event_id,
                                                                 action=request.action, executed_at_ms=now_ms()))
        return outputs + [ledger] + self._executed(request, ExecutionStatus.done, result) + self._then(request, action,
                                                                                                       result)

    def tick(self, now_ms: int, partitions: list[tuple[str, int]]) -> list[Emit]:
        """Forget effects older than ``retention.effects_kept``: no replay or duplicate can reach them."""
        return self.done.expire(self.owned(partitions, Role.actions), now_ms)

    async def _call_tool(self, request: ActionRequest, action: Action, arguments: dict) -> tuple[ActionResult, list]:
        """The tool's result as the action's, and the call's trace; DeadLetter (the trace kept) when it failed."""
        try:
            call = await self.tools.call(action.tool, arguments, idempotency_key=request.idempotency_key)
        except ToolRefused as exc:
            raise DeadLetter(exc.reason, str(exc), keep=[self._tool_trace(request, exc.call, str(exc))]) from exc
        except ToolCallFailed as exc:
            self._retried(exc.call.attempts)
            raise DeadLetter(exc.reason, str(exc), attempts=exc.call.attempts, first_failure_ms=exc.first_failure_ms,
                             keep=[self._tool_trace(request, exc.call, str(exc))]) from exc
        self._retried(call.attempts)
        result = ActionResult(http_status=None, response=call.result_text(), attempts=call.attempts,
                              latency_ms=call.latency_ms)
        return result, [self._tool_trace(request, call)]

    def _tool_trace(self, request: ActionRequest, call: ToolCall, error: str | None = None) -> Emit:
        return self.trace(request.event_id, usage=Usage(latency_ms=call.latency_ms), tool=call.tool,
                          action_request=call.arguments, action_response=call.result_text(), error=error)

    def _then(self, request: ActionRequest, action: Action, result: ActionResult) -> list[Emit]:
        """The requests of the actions declared to follow this one (``then``), with what it did as ``execution.``:
        written with its execution and ledger entry, so they are requested once it has run, and only then."""
        if not action.then:
            return []
        arguments, decision = orjson.loads(request.arguments), request.decision
        original = orjson.loads(request.original_arguments) if request.original_arguments else arguments
        execution = {"action": request.action, "approved_by": request.approved_by, "arguments": arguments,
                     "original_arguments": original, "response": _parsed(result.response)}
        view = action_view(decision, orjson.loads(decision.answer), orjson.loads(decision.event), execution=execution)
        follow = [self.workflow.action_request(name, decision, view, now_ms(), request.lookups) for name in action.then]
        return [Emit(self.workflow.topic(Role.actions), r, key=r.idempotency_key) for r in follow]

    def _retried(self, attempts: int) -> None:
        """Webhook retries count in ``handoff_retries_total`` like model retries do."""
        if attempts > 1:
            metrics.RETRIES.labels(self.workflow.name, self.name).inc(attempts - 1)

    def _allowed(self, request: ActionRequest) -> tuple[Action, dict]:
        """The declared action and its parsed arguments, if it may run with them; DeadLetter otherwise."""
        action = self.workflow.actions.get(request.action)
        if action is None:
            raise DeadLetter("unknown_action", f"action {request.action!r} is not declared by {self.workflow.name}")
        if action.scope not in self.workflow.grants:
            raise DeadLetter("scope_not_granted", f"action {request.action!r} needs scope {action.scope!r}")
        try:
            arguments = orjson.loads(request.arguments)
        except orjson.JSONDecodeError as exc:
            raise DeadLetter("invalid_arguments", f"arguments are not JSON: {exc}") from exc
        errors = action.arguments_check.errors(arguments)
        if errors:
            raise DeadLetter("invalid_arguments", "; ".join(errors))
        return action, arguments

    def _executed(self, request: ActionRequest, status: ExecutionStatus, result: ActionResult) -> list[Emit]:
        execution = Execution(event_id=request.event_id, workflow=self.workflow.name, action=request.action,
                              idempotency_key=request.idempotency_key, status=status, attempts=result.attempts,
                              http_status=result.http_status, response=result.response,
                              latency_ms=result.latency_ms, executed_at_ms=now_ms(), arguments=request.arguments,
                              original_arguments=request.original_arguments, approved_by=request.approved_by)
        return [Emit(self.workflow.topic(Role.executions), execution, key=request.event_id),
                self.trace(request.event_id, action_request=request.arguments,
                           action_response={"status": status, "http_status": result.http_status,
                                            "attempts": result.attempts})]


def _parsed(response: str | None):
    """A tool's or webhook's response as JSON when it is JSON, else its text."""
    try:
        return None if response is None else orjson.loads(response)
    except orjson.JSONDecodeError:
        return response
