"""``handoff console``: the review queue, items, approvals, prompts, control and report in a browser.

Server-rendered (Starlette, Jinja2), a little plain JavaScript for the keyboard, the countdowns and
the race notice; nothing to build, no asset fetched from elsewhere. Everything it shows comes from
the views (:mod:`processors.views`, caught up with the topics on each read) and the workflow files;
everything it does goes through the same code as the CLI — :class:`ReviewQueue` for verdicts,
:class:`ControlStore` for control changes — signed for the signed-in person with the console's key
(:class:`~processors.signing.Signer`, a ``*`` key: it vouches for the people it authenticated), so
the stages check the console's verdicts exactly as the CLI's.

Every page but ``/login`` and ``/healthz`` needs a session: a page redirects to sign-in, ``/api/…``
answers 401. Roles decide what a person may do (the stages check them again on the signatures):
a reviewer corrects and rejects, an approver releases actions, a prompt owner sets labels and the
mode, an operator the kill switch and thresholds. The first verdict in the log wins: a person
who loses a race is told on submitting (409, with the verdict that won), and an open item page
polls ``/api/items/…`` so it says so as soon as someone else decides.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import orjson
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from processors.console.charts import charts
from processors.console.forms import changed, fields_of
from processors.console.security import SESSION_S, Attempts, SecurityHeaders, csrf_ok, csrf_token, signed_in
from processors.console.users import User, Users
from processors.control.state import approval_risk, review_threshold
from processors.control.store import ControlRefused, ControlStore
from processors.kafka.settings import KafkaSettings
from processors.offline.evals import EvalError, EvalReport, run_suite
from processors.offline.replay.report import ReplayReport
from processors.offline.replay.request import ReplayRequest, run_replay
from processors.offline.replay.selection import Selection
from processors.ops.report import by_day
from processors.ops.review_queue import InvalidVerdict, ReviewQueue, UnknownItem, VerdictRefused, next_step
from processors.records import Mode, PersonRole, ReviewItem, ReviewReason, VerdictKind
from processors.signing import Signer, SigningError
from processors.views.catch_up import ViewsBehind
from processors.views.control_history import control_history
from processors.views.rows import scope_of
from processors.views.store import ViewStore, ViewsUnavailable
from processors.views.trace_steps import steps_of
from processors.workflow.workflow import Workflow

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


class Console(BaseModel):
    """What one console serves: the project's workflows, where their topics and views are, who signs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    workflows: dict[str, Workflow]
    settings: KafkaSettings
    store: ViewStore
    signer: Signer
    users: Users
    trusted_header: str | None = None
    roles_header: str | None = None
    secure_cookies: bool = True
    session_secret: str = ""


class QueueRow(BaseModel):
    workflow: str
    item: ReviewItem
    suggestion: str
    confidence: float | None


def _iso(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else ""


TEMPLATES.env.filters["iso"] = _iso
TEMPLATES.env.filters["pretty"] = lambda value: orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def build_app(console: Console) -> Starlette:
    """The console's web app."""
    by_user, by_address = Attempts(limit=5), Attempts(limit=20)
    evals: dict[tuple[str, str], EvalReport | str] = {}
    replays: dict[str, list[ReplayReport]] = {}

    def signer_for(user: User) -> Signer:
        """The console's key signing for ``user``, with the roles both the user and the key hold."""
        return console.signer.acting_as(user.name, [r for r in user.roles if r in console.signer.roles])

    def queue_of(workflow: Workflow, user: User | None = None) -> ReviewQueue:
        return ReviewQueue(workflow, console.settings, console.store,
                           signer=None if user is None else signer_for(user))

    def page(request: Request, name: str, user: User, status: int = 200, **context) -> Response:
        return TEMPLATES.TemplateResponse(request, name, {"user": user, "csrf": csrf_token(request),
                                                          "workflows": sorted(console.workflows), **context},
                                          status_code=status)

    def person(request: Request) -> User | None:
        return signed_in(request, console.trusted_header, console.roles_header)

    def needs_session(handler):
        """A page without a session redirects to sign-in; ``/api/…`` answers 401; a POST needs the CSRF token."""
        async def wrapped(request: Request) -> Response:
            user = person(request)
            if user is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "sign in first"}, status_code=401)
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            form = None
            if request.method == "POST":
                form = dict(await request.form())
                if not csrf_ok(request, form):
                    return Response("the form is stale or forged (no valid CSRF token): reload the page",
                                    status_code=403)
            return await handler(request, user, form)
        return wrapped

    def workflow_of(request: Request) -> Workflow:
        name = request.path_params["workflow"]
        if name not in console.workflows:
            raise UnknownItem(name)
        return console.workflows[name]

    # ---- signing in ---------------------------------------------------------------------------

    async def login_page(request: Request) -> Response:
        return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": csrf_token(request), "error": None,
                                                                  "next": request.query_params.get("next", "/")})

    async def login(request: Request) -> Response:
        form = dict(await request.form())
        target = str(form.get("next") or "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))

        def refused(error: str, status: int) -> Response:
            return TEMPLATES.TemplateResponse(request, "login.html", {"csrf": csrf_token(request), "error": error,
                                                                      "next": target}, status_code=status)

        if not csrf_ok(request, form):
            return refused("The sign-in form was stale: try again.", 403)
        client = request.client.host if request.client else "?"
        if by_user.blocked(name) or by_address.blocked(client):
            return refused("Too many failed attempts: wait a minute, then try again.", 429)
        user = await run_in_threadpool(console.users.check, name, password)
        if user is None:
            by_user.failed(name)
            by_address.failed(client)
            return refused("Unknown user or wrong password.", 401)
        request.session.clear()
        request.session["user"] = user.model_dump(mode="json")
        csrf_token(request)
        return RedirectResponse(target, status_code=303)

    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ---- the queue ----------------------------------------------------------------------------

    def rows(user: User, workflow: str | None, reason: str | None, assignee: str | None) -> list[QueueRow]:
        out = []
        for name, flow in sorted(console.workflows.items()):
            if workflow and name != workflow:
                continue
            for item in queue_of(flow).open_items():
                if (reason and item.reason != reason) or (assignee and item.queue != assignee):
                    continue
                answer = orjson.loads(item.answer) if item.answer else {}
                suggestion = (f"{item.action.action} {item.action.arguments}" if item.action is not None
                              else f"{flow.label}={answer[flow.label]}" if flow.label in answer else "no valid answer")
                out.append(QueueRow(workflow=name, item=item, suggestion=suggestion,
                                    confidence=answer.get("confidence")))
        return out

    def filters(request: Request) -> dict[str, str | None]:
        return {k: request.query_params.get(k) or None for k in ("workflow", "reason", "assignee")}

    @needs_session
    async def queue_page(request: Request, user: User, _form) -> Response:
        chosen = filters(request)
        found = await run_in_threadpool(rows, user, **chosen)
        queues = sorted({w.deadline_for(r).queue for w in console.workflows.values() for r in ReviewReason}
                        | {w.deadline_for(r).escalate_to for w in console.workflows.values() for r in ReviewReason})
        return page(request, "queue.html", user, rows=found, chosen=chosen, reasons=list(ReviewReason),
                    queues=queues, flash=request.session.pop("flash", None))

    @needs_session
    async def queue_api(request: Request, user: User, _form) -> Response:
        found = await run_in_threadpool(rows, user, **filters(request))
        return JSONResponse([{"workflow": r.workflow, "review_id": r.item.review_id, "reason": r.item.reason,
                              "queue": r.item.queue, "created_at_ms": r.item.created_at_ms,
                              "deadline_ms": r.item.deadline_ms, "suggestion": r.suggestion,
                              "confidence": r.confidence} for r in found])

    # ---- one item -----------------------------------------------------------------------------

    def item_context(flow: Workflow, review_id: str) -> dict:
        item, decided = queue_of(flow).get(review_id)
        event = orjson.loads(item.event)
        answer = orjson.loads(item.answer) if item.answer else {}
        correction = fields_of(flow.prompt_spec.output_schema, answer)
        approval = []
        if item.action is not None and item.action.action in flow.actions:
            action = flow.actions[item.action.action]
            approval = fields_of(action.arguments_schema, orjson.loads(item.action.arguments), action.adjustable)
        steps = steps_of(console.store, scope_of(flow), item.event_id)
        return {"flow": flow, "item": item, "decided": decided.verdict if decided else None,
                "event": _redacted(flow, event), "answer": answer or None, "correction": correction,
                "approval": approval, "steps": [s for s in steps if s.step != "ground"],
                "grounding": [s for s in steps if s.step == "ground"],
                "risky": item.reason == ReviewReason.risky_action}

    @needs_session
    async def item_page(request: Request, user: User, _form) -> Response:
        flow = workflow_of(request)
        context = await run_in_threadpool(item_context, flow, request.path_params["review_id"])
        return page(request, "item.html", user, **context, outcome=None, errors=[])

    @needs_session
    async def item_api(request: Request, user: User, _form) -> Response:
        item, decided = await run_in_threadpool(queue_of(workflow_of(request)).get, request.path_params["review_id"])
        verdict = decided.verdict if decided else None
        said = None if verdict is None else {"verdict": verdict.verdict, "reviewer": verdict.reviewer,
                                             "reason": verdict.reason, "at": _iso(verdict.at_ms)}
        return JSONResponse({"review_id": item.review_id, "open": verdict is None, "verdict": said})

    @needs_session
    async def decide(request: Request, user: User, form: dict) -> Response:
        flow, review_id = workflow_of(request), request.path_params["review_id"]
        kind = VerdictKind(form.get("verdict", ""))
        context = await run_in_threadpool(item_context, flow, review_id)
        fields = changed(form, context["approval"] if context["risky"] else context["correction"]) \
            if kind != VerdictKind.reject else {}
        reason = str(form.get("reason") or "").strip() or None
        try:
            verdict = await run_in_threadpool(queue_of(flow, user).decide, review_id, kind, fields=fields,
                                              reason=reason)
        except VerdictRefused as exc:  # lost the race, or came late: say who won and what
            context = await run_in_threadpool(item_context, flow, review_id)
            return page(request, "item.html", user, 409, **context, outcome=str(exc), errors=[], lost=exc.first)
        except (InvalidVerdict, SigningError) as exc:
            return page(request, "item.html", user, 422, **context, outcome=None, errors=str(exc).splitlines())
        request.session["flash"] = f"{kind} of {review_id} by {verdict.reviewer}: {next_step(verdict)}"
        return RedirectResponse("/", status_code=303)

    # ---- the prompt owner's page --------------------------------------------------------------

    def workflow_context(flow: Workflow) -> dict:
        state = ControlStore(console.settings, flow).current()
        versions = [(v, flow.prompt_spec_for(v), [label for label, at in state.labels.items() if at == v])
                    for v in flow.prompt_versions()]
        return {"flow": flow, "state": state, "versions": versions, "modes": list(Mode),
                "history": list(reversed(control_history(flow, console.settings, console.store))),
                "evals": {v: evals.get((flow.name, v)) for v in flow.prompt_versions()},
                "replays": list(reversed(replays.get(flow.name, []))),
                "threshold": review_threshold(flow, state), "risk": approval_risk(flow, state)}

    @needs_session
    async def workflow_page(request: Request, user: User, _form) -> Response:
        context = await run_in_threadpool(workflow_context, workflow_of(request))
        return page(request, "workflow.html", user, **context, flash=request.session.pop("flash", None), error=None)

    @needs_session
    async def change_control(request: Request, user: User, form: dict) -> Response:
        flow = workflow_of(request)
        if form.get("confirm") != "yes":
            context = await run_in_threadpool(workflow_context, flow)
            return page(request, "workflow.html", user, 400, **context, flash=None,
                        error="Nothing changed: confirm the change first.")
        try:
            fields, change = _control_change(form)
            state = await run_in_threadpool(ControlStore(console.settings, flow, signer_for(user)).publish, change,
                                            reason=str(form.get("reason") or "").strip() or None, **fields)
        except (ControlRefused, SigningError, ValueError) as exc:
            context = await run_in_threadpool(workflow_context, flow)
            return page(request, "workflow.html", user, 403, **context, flash=None, error=str(exc))
        request.session["flash"] = f"control version {state.version}: {state.change} (by {state.changed_by})"
        return RedirectResponse(f"/workflows/{flow.name}", status_code=303)

    @needs_session
    async def run_evals(request: Request, user: User, _form) -> Response:
        flow, version = workflow_of(request), request.path_params["version"]
        try:
            evals[(flow.name, version)] = await run_in_threadpool(run_suite, flow.with_prompt(version))
        except (EvalError, ValueError) as exc:
            evals[(flow.name, version)] = str(exc)
        return RedirectResponse(f"/workflows/{flow.name}#evals", status_code=303)

    @needs_session
    async def shadow_replay(request: Request, user: User, form: dict) -> Response:
        """An operator's shadow replay of the review or dead-letter topic through a prompt version: nothing acts."""
        flow = workflow_of(request)
        if PersonRole.operator not in user.roles:
            context = await run_in_threadpool(workflow_context, flow)
            return page(request, "workflow.html", user, 403, **context, flash=None,
                        error=f"a replay takes the role operator; {user.name} holds {', '.join(user.roles) or 'none'}")
        try:
            wanted = ReplayRequest(selection=Selection.parse(source=str(form.get("source", ""))),
                                   prompt_version=str(form.get("version") or "") or None)
            report = await run_in_threadpool(run_replay, ControlStore(console.settings, flow), wanted, lambda _: None)
        except ValueError as exc:
            context = await run_in_threadpool(workflow_context, flow)
            return page(request, "workflow.html", user, 422, **context, flash=None, error=str(exc))
        replays.setdefault(flow.name, []).append(report)
        request.session["flash"] = f"shadow replay {report.replay_id}: {len(report.changes)} events decided again"
        return RedirectResponse(f"/workflows/{flow.name}#replays", status_code=303)

    @needs_session
    async def report_page(request: Request, user: User, _form) -> Response:
        flow = workflow_of(request)
        await run_in_threadpool(queue_of(flow).refresh)
        series = await run_in_threadpool(by_day, flow, console.store)
        return page(request, "report.html", user, flow=flow, charts=charts(series), series=series)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def not_found(request: Request, exc: Exception) -> Response:
        return Response(f"not found: {exc}", status_code=404)

    async def views_down(request: Request, exc: Exception) -> Response:
        return Response(f"the views cannot be read now: {exc}", status_code=503)

    routes = [
        Route("/login", login_page, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/healthz", healthz),
        Route("/", queue_page), Route("/api/queue", queue_api),
        Route("/items/{workflow}/{review_id:path}", item_page, methods=["GET"]),
        Route("/items/{workflow}/{review_id:path}", decide, methods=["POST"]),
        Route("/api/items/{workflow}/{review_id:path}", item_api),
        Route("/workflows/{workflow}", workflow_page), Route("/workflows/{workflow}/report", report_page),
        Route("/workflows/{workflow}/control", change_control, methods=["POST"]),
        Route("/workflows/{workflow}/evals/{version}", run_evals, methods=["POST"]),
        Route("/workflows/{workflow}/replays", shadow_replay, methods=["POST"]),
    ]
    secret = console.session_secret or secrets.token_urlsafe(32)
    middleware = [Middleware(SecurityHeaders),
                  Middleware(SessionMiddleware, secret_key=secret, session_cookie="handoff_session", max_age=SESSION_S,
                             same_site="strict", https_only=console.secure_cookies)]
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={UnknownItem: not_found, ViewsBehind: views_down, ViewsUnavailable: views_down})


def _control_change(form: dict) -> tuple[dict, str]:
    """The one control field a form changes, and the change's name (as ``handoff control`` names it)."""
    field = str(form.get("field", ""))
    value = str(form.get("value", "")).strip()
    if field == "mode":
        return {"mode": Mode(value)}, f"mode {value}"
    if field == "kill_switch":
        return {"kill_switch": value == "on"}, f"kill switch {value}"
    if field in ("review_threshold", "approval_risk"):
        bound = None if value in ("", "default") else float(value)
        if bound is not None and not 0 <= bound <= 1:
            raise ValueError(f"{field}: {value} is not from 0 to 1")
        return {field: bound}, f"{field.replace('_', ' ')} {value or 'default'}"
    raise ValueError(f"no control field {field!r}")


def _redacted(flow: Workflow, event: dict) -> dict:
    """The event as a person may see it: the workflow's redaction applied to every text, its masked fields hidden."""
    def walk(value, path: str):
        if path in flow.redaction.fields:
            return "[REDACTED]"
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, path) for v in value]
        return flow.redaction.text(value) if isinstance(value, str) else value
    return walk(event, "")
