"""The console in a real browser: Debian's Chromium, headless, driven by Playwright (no browser downloaded),
against one console and one running pipeline per workflow, shared by the tests of this module.

The review items are written straight onto ``<wf>.review`` (as validate or execute would write them), so each
test decides exactly the items it made; the stages that follow a verdict (review, route, execute) run for
real, and so do the webhook receiver and the payments tool server the actions reach.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from playwright.sync_api import expect, sync_playwright

from processors.avro.serde import AvroSerde
from processors.clock import now_ms
from processors.console.app import build_app
from processors.console.project import console_of
from processors.console.users import Users
from processors.dev.loopback import LoopbackServer
from processors.dev.receiver import WebhookReceiver
from processors.dev.system_of_record import SystemOfRecordThread
from processors.kafka.read import snapshot
from processors.kafka.settings import KafkaSettings
from processors.kafka.topics import Role
from processors.offline.replay.places import Place
from processors.offline.replay.report import Change
from processors.ops.review_queue import ReviewQueue
from processors.pipeline import Pipeline
from processors.records import Mode, PersonRole, ReviewItem, ReviewReason, Verdict, VerdictKind
from processors.runtime.dead_letter import Header
from processors.views.store import open_store
from tests.conftest import SECRET, deployed, tickets
from tests.test_approvals import EVENT as REFUND_EVENT
from tests.test_approvals import request as refund_request

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"
PEOPLE = {"ana": [PersonRole.reviewer], "bob": [PersonRole.reviewer], "lee": [PersonRole.approver],
          "pat": [PersonRole.prompt_owner], "olga": [PersonRole.operator]}
SCREENSHOTS = os.environ.get("HANDOFF_SCREENSHOTS_DIR")
"""Set it to a folder to keep screenshots of the queue and an item page (the README's come from here)."""


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"waited {timeout:.0f}s for {what}"
        time.sleep(0.3)
    return found


class Deployment:
    """The module's namespace: both workflows deployed, their pipelines running, the console serving them."""

    def __init__(self, settings: KafkaSettings, users: Path):
        self.settings = settings
        self.support = deployed("support_ticket", settings)
        self.refund = deployed("refund", settings)
        self.pipelines = [Pipeline(self.support, settings, ["review", "route", "execute"]),
                          Pipeline(self.refund, settings, ["review", "execute"])]
        self.threads = [threading.Thread(target=p.run) for p in self.pipelines]
        self.console = console_of(settings, open_store(), users=users)
        self.console.workflows = {"support_ticket": self.support, "refund": self.refund}
        self.server = LoopbackServer(build_app(self.console), "console")

    def review_item(self, workflow, item: ReviewItem, key: str) -> ReviewItem:
        spec = workflow.spec(Role.review)
        producer = self.settings.producer()
        producer.produce(spec.name, key=key, value=AvroSerde(spec.value_schema).encode(item.model_dump()))
        assert producer.flush(10) == 0
        return item

    def ticket_item(self, event_id: str, deadline_ms: int | None = None, created_at_ms: int | None = None,
                    **answer) -> ReviewItem:
        ticket = tickets()[0] | {"event_id": event_id}
        event = {k: v for k, v in ticket.items() if k != "expected"}
        said = {"category": "how_to", "urgency": "low", "confidence": 0.5, "reason": "Asks how to do it."} | answer
        item = ReviewItem(review_id=f"{event_id}:low_confidence", event_id=event_id, workflow="support_ticket",
                          reason=ReviewReason.low_confidence, stage="validate", event=orjson.dumps(event).decode(),
                          answer=orjson.dumps(said).decode(), prompt=self.support.prompt_spec.ref, model="scripted",
                          created_at_ms=created_at_ms or now_ms(), queue="reviewers", deadline_ms=deadline_ms)
        return self.review_item(self.support, item, ticket["customer"]["id"])

    def dead_letters(self, workflow) -> list[dict[str, str]]:
        return [{k: v.decode() for k, v in m.headers()} for m in snapshot(self.settings, workflow.spec(Role.dlq).name)]


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap, tmp_path_factory):
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, namespace=f"t{uuid.uuid4().hex[:10]}")
    users = tmp_path_factory.mktemp("console") / "users.yaml"
    for name, roles in PEOPLE.items():
        Users(users).add(name, PASSWORD, roles)
    with pytest.MonkeyPatch.context() as env, WebhookReceiver(secret=SECRET) as hooks, \
            SystemOfRecordThread(tmp_path_factory.mktemp("sor") / "records.sqlite") as payments:
        env.setenv("HANDOFF_WEBHOOK_URL", hooks.url)
        env.setenv("HANDOFF_WEBHOOK_SECRET", SECRET)
        env.setenv("HANDOFF_RECORDS_MCP_URL", payments.url)
        env.setenv("HANDOFF_RECORDS_MCP_TOKEN", "test-token")
        running = Deployment(settings, users)
        running.hooks, running.payments = hooks, payments
        for thread in running.threads:
            thread.start()
        running.url = running.server.start()
        try:
            yield running
        finally:
            running.server.stop()
            for pipeline in running.pipelines:
                pipeline.stop()
            for thread in running.threads:
                thread.join(60)
            admin = settings.admin()
            leftovers = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{settings.namespace}.")]
            for future in (admin.delete_topics(leftovers, operation_timeout=30) if leftovers else {}).values():
                future.result()
    assert not any(t.is_alive() for t in running.threads)
    assert not [e for p in running.pipelines for e in p.errors]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def signed_in(browser, deployment, name: str):
    """A page of a fresh browser context (its own cookies), signed in as ``name``."""
    page = browser.new_context(base_url=deployment.url, viewport={"width": 1280, "height": 900}).new_page()
    page.goto("/")
    expect(page).to_have_url(f"{deployment.url}/login?next=/")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("header .who")).to_contain_text(name)
    return page


def test_a_reviewer_works_two_items_by_keyboard_and_a_corrected_item_runs_its_action_once(browser, deployment):
    soon = now_ms() + 4 * 3600 * 1000
    first = deployment.ticket_item("e_k1", deadline_ms=soon, created_at_ms=now_ms() - 60_000)
    second = deployment.ticket_item("e_k2", deadline_ms=soon + 60_000)
    page = signed_in(browser, deployment, "ana")
    page.goto("/?workflow=support_ticket&reason=low_confidence")
    rows = page.locator("#queue tbody tr[data-href]")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_class("selected")
    expect(page.locator("[data-deadline]").first).to_contain_text("in 3h")
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "console-queue.png"))
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class("selected")
    page.keyboard.press("k")
    page.keyboard.press("a")  # approve the first as the model answered
    expect(page.locator(".flash")).to_contain_text(f"approve of {first.review_id} by ana")
    expect(rows).to_have_count(1)
    page.keyboard.press("c")  # correct the second with the form
    expect(page).to_have_url(f"{deployment.url}/items/support_ticket/{second.review_id}#correct")
    assert page.locator("#answer-category option").all_inner_texts() == [
        "billing", "bug", "sales", "account", "how_to", "other"]
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "console-item.png"), full_page=True)
    page.select_option("#answer-category", "billing")
    page.select_option("#answer-urgency", "high")
    page.click("#correct-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text(f"correct of {second.review_id} by ana")

    key = "e_k2:open_escalation"
    wait_for(lambda: key in deployment.hooks.applied, 60, "the corrected ticket's escalation webhook")
    assert deployment.hooks.applied[key]["urgency"] == "high"
    executions = deployment.support.spec(Role.executions)
    done = lambda: [e for e in (executions.serde(deployment.settings).decode(m.value())  # noqa: E731
                                for m in snapshot(deployment.settings, executions.name))
                    if e["idempotency_key"] == key]
    assert [e["status"] for e in wait_for(done, 30, "the execution record")] == ["done"]
    assert deployment.hooks.duplicates == 0
    page.context.close()


def test_two_reviewers_race_and_the_loser_is_told_who_won(browser, deployment):
    item = deployment.ticket_item("e_race")
    ana, bob = signed_in(browser, deployment, "ana"), signed_in(browser, deployment, "bob")
    for page in (ana, bob):
        page.goto(f"/items/support_ticket/{item.review_id}")
    bob.select_option("#answer-category", "bug")
    ana.click("#approve-form button")
    expect(ana.locator(".flash")).to_contain_text("approve of e_race:low_confidence by ana")
    expect(bob.locator("#decided")).to_contain_text("Someone decided first: approve by ana")  # told at once
    bob.click("#correct-form button[type=submit]")
    expect(bob.locator("#lost")).to_contain_text("was already decided: approve by ana")
    expect(bob.locator("#winning")).to_contain_text("approve by ana")
    for page in (ana, bob):
        page.context.close()


def test_an_approver_releases_a_refund_with_an_adjusted_amount_and_a_reviewer_cannot(browser, deployment):
    with ThreadPoolExecutor(1) as thread:  # route runs on an event loop of its own, not Playwright's
        request = thread.submit(refund_request, deployment.refund).result()
    item = deployment.review_item(deployment.refund, ReviewItem(
        review_id="rf-1:risky_action:refund", event_id="rf-1", workflow="refund", reason=ReviewReason.risky_action,
        stage="execute", event=orjson.dumps(REFUND_EVENT).decode(), action=request,
        prompt=deployment.refund.prompt_spec.ref, model="m", created_at_ms=now_ms(), queue="approvers"),
        request.event_id)
    bob = signed_in(browser, deployment, "bob")
    bob.goto(f"/items/refund/{item.review_id}")
    expect(bob.locator("#arg-currency")).to_be_disabled()  # not adjustable
    bob.fill("#arg-amount", "45.5")
    bob.click("#approve-form button")
    expect(bob.locator("#errors")).to_contain_text("bob may not: it takes the role approver")
    lee = signed_in(browser, deployment, "lee")
    lee.goto(f"/items/refund/{item.review_id}")
    lee.fill("#arg-amount", "45.5")
    lee.click("#approve-form button")
    expect(lee.locator(".flash")).to_contain_text("the action runs once with the adjusted arguments")
    applied = wait_for(lambda: deployment.payments.service.refunds_by_key().get("rf-1:refund"), 60, "the refund")
    assert applied["amount"] == 45.5
    assert deployment.payments.service.refunds_by_key().keys() == {"rf-1:refund"}
    for page in (bob, lee):
        page.context.close()


def test_a_prompt_owner_flips_the_mode_and_the_running_stages_obey(browser, deployment):
    pat = signed_in(browser, deployment, "pat")
    pat.goto("/workflows/support_ticket")
    pat.on("dialog", lambda dialog: dialog.accept())
    pat.select_option("#mode-value", "suggest")
    pat.locator("#control form[data-what='the rollout mode'] button").click()
    expect(pat.locator("#flash")).to_contain_text("mode suggest (by pat)")
    expect(pat.locator("#audit")).to_contain_text("mode suggest")
    watcher = deployment.pipelines[0].control
    wait_for(lambda: watcher.state.mode == Mode.suggest, 5, "the running stages to be in suggest mode")
    assert watcher.state.changed_by == "pat" and watcher.state.signature.signer == "pat"
    pat.locator("#control form[data-what='the kill switch'] button").click()  # an operator's, not hers
    expect(pat.locator(".error")).to_contain_text("takes the role(s) operator; pat holds prompt_owner")
    assert not watcher.state.kill_switch
    production = deployment.support.prompt_spec.version
    version_row = pat.locator("#evals > table > tbody > tr", has_text=production).first
    expect(version_row).to_contain_text("production")
    version_row.locator("button", has_text="Run evals").click()
    expect(pat.locator("#evals > table > tbody > tr", has_text=production).first).to_contain_text("PASSED")
    pat.goto("/workflows/support_ticket/report")
    expect(pat.locator("#charts svg.chart")).to_have_count(6)
    expect(pat.locator("#charts")).to_contain_text("escalation recall")
    pat.context.close()


def test_an_operator_shadow_replays_the_review_queue_and_sees_each_event_diffed(browser, deployment):
    deployment.ticket_item("e_replay", category="billing", urgency="low")
    olga = signed_in(browser, deployment, "olga")
    olga.goto("/workflows/support_ticket")
    olga.locator("#replays button").click()
    expect(olga.locator("#flash")).to_contain_text("shadow replay r")
    rows = olga.locator("#replays table.replay tr", has_text="e_replay")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("review:low_confidence")
    olga.context.close()


def test_a_replay_diff_shows_a_changed_answer_within_one_route():
    def place(urgency: str) -> Place:
        return Place(kind="decision", detail="billing", answer=orjson.dumps(
            {"category": "billing", "urgency": urgency, "confidence": 0.9, "reason": urgency}).decode())
    change = Change(event_id="e", origin="review", before=place("low"), after=place("medium"))
    assert not change.changed and change.answer_diff() == {"urgency": ("low", "medium")}
    assert Change(event_id="e", origin="review", before=place("low"), after=place("low")).answer_diff() == {}


def test_without_a_session_pages_redirect_and_the_api_answers_401(deployment):
    with httpx.Client(base_url=deployment.url) as client:
        page = client.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
        assert client.get("/api/queue").status_code == 401
        posted = client.post("/items/support_ticket/x", data={"verdict": "approve"}, follow_redirects=False)
        assert posted.status_code == 303
        signin = client.get("/login")
        assert signin.headers["x-frame-options"] == "DENY" and signin.headers["cache-control"] == "no-store"
        cookie = signin.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert SECRET not in signin.text and os.environ["HANDOFF_SIGNING_KEY"].split(":")[1] not in signin.text
        forged = client.post("/login", data={"name": "ana", "password": PASSWORD})
        assert forged.status_code == 403, "a sign-in without the form's CSRF token is refused"
        token = signin.text.split('name="csrf" value="')[1].split('"')[0]
        guesses = [client.post("/login", data={"csrf": token, "name": "guessed", "password": f"guess {n}"}).status_code
                   for n in range(6)]
        assert guesses == [401] * 5 + [429], "the sixth wrong password within a minute is not even checked"


def test_behind_a_trusted_proxy_its_header_names_the_person_and_their_roles(deployment):
    proxied = deployment.console.model_copy(update={"trusted_header": "X-Forwarded-User",
                                                    "roles_header": "X-Forwarded-Roles"})
    server = LoopbackServer(build_app(proxied), "proxied console")
    try:
        with httpx.Client(base_url=server.start()) as client:
            assert client.get("/api/queue").status_code == 401
            page = client.get("/?workflow=refund", headers={"X-Forwarded-User": "sam",
                                                            "X-Forwarded-Roles": "approver, nonsense"})
            assert page.status_code == 200 and "sam (approver)" in page.text
    finally:
        server.stop()


def test_a_forged_verdict_on_the_topic_is_dead_lettered_and_the_item_stays_open(deployment):
    item = deployment.ticket_item("e_forged")
    forged = Verdict(verdict_id="forged", review_id=item.review_id, event_id=item.event_id, workflow="support_ticket",
                     reviewer="mallory", verdict=VerdictKind.approve, answer=item.answer, at_ms=now_ms(), item=item)
    spec = deployment.support.spec(Role.verdicts)
    producer = deployment.settings.producer()
    producer.produce(spec.name, key=item.review_id, value=spec.serde(deployment.settings).encode(
        forged.model_dump(), spec.name))
    assert producer.flush(10) == 0
    letters = wait_for(lambda: [h for h in deployment.dead_letters(deployment.support)
                                if h[Header.error_reason] == "unsigned_verdict"], 60, "the forged verdict's dead letter")
    assert "mallory: not signed" in letters[0][Header.error_message]
    queue = ReviewQueue(deployment.support, deployment.settings, deployment.console.store)
    assert queue.get(item.review_id)[1] is None, "the forged verdict claimed nothing"


def test_an_item_past_its_deadline_gets_its_default_verdict_with_nobody_signed_in(deployment):
    item = deployment.ticket_item("e_late", deadline_ms=now_ms() + 2000)
    queue = ReviewQueue(deployment.support, deployment.settings, deployment.console.store)
    decided = wait_for(lambda: queue.get(item.review_id)[1], 60, "the deadline's default verdict")
    assert (decided.verdict.reviewer, decided.verdict.verdict) == ("system", VerdictKind.reject)
    assert decided.verdict.reason.startswith("deadline passed (reviewers queue)")
    assert decided.verdict.signature.signer == "system"
