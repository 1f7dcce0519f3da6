"""The webhook action against a real receiver on loopback: no mocks, real HTTP, real retries."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from processors.actions.webhook import ActionFailed, ActionResult, WebhookAction, sign, verify
from processors.dev.receiver import WebhookReceiver

SECRET = "s3cret"
ARGS = {"ticket_id": "T-1", "priority": "high", "note": "naïve ✓"}
FAST = {"backoff_initial": 0.01, "backoff_max": 0.05}  # keeps the retry tests to milliseconds


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=SECRET) as r:
        yield r


def action(url: str, secret: str | None = SECRET, **options: Any) -> WebhookAction:
    return WebhookAction("create_ticket", f"{url}/hooks/create_ticket", secret, **{**FAST, **options})


def deliver(url: str, key: str = "k1", secret: str | None = SECRET, **options: Any) -> ActionResult:
    return asyncio.run(action(url, secret, **options).run(key, ARGS))


def failure(url: str, key: str = "k1", secret: str | None = SECRET, **options: Any) -> ActionFailed:
    with pytest.raises(ActionFailed) as caught:
        deliver(url, key, secret, **options)
    return caught.value


def test_sign_and_verify() -> None:
    body = orjson.dumps(ARGS)
    signature = sign(SECRET, 1700000000, body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify(SECRET, "1700000000", body, signature)
    assert not verify(SECRET, 1700000001, body, signature)
    assert not verify(SECRET, 1700000000, body + b" ", signature)
    assert not verify("other", 1700000000, body, signature)
    assert not verify(SECRET, 1700000000, body, "sha256=é")


def test_success_with_valid_signature(receiver: WebhookReceiver) -> None:
    result = deliver(receiver.url)
    assert (result.http_status, result.attempts) == (200, 1)
    assert orjson.loads(result.response) == {"applied": "k1", "sequence": 1}
    assert result.latency_ms > 0
    assert receiver.applied == {"k1": ARGS}
    [arrival] = receiver.arrivals
    assert (arrival.key, arrival.path, arrival.status) == ("k1", "/hooks/create_ticket", 200)


def test_5xx_retried_with_the_same_key_and_applied_once(receiver: WebhookReceiver) -> None:
    receiver.fail_next(None, 503, 503)
    result = deliver(receiver.url)
    assert (result.http_status, result.attempts) == (200, 3)
    assert [(a.key, a.status) for a in receiver.arrivals] == [("k1", 503), ("k1", 503), ("k1", 200)]
    assert receiver.applied == {"k1": ARGS}
    assert receiver.duplicates == 0


def test_4xx_fails_at_once_without_retry(receiver: WebhookReceiver) -> None:
    receiver.fail_next(None, 400)
    exc = failure(receiver.url)
    assert (exc.reason, exc.retryable, exc.attempts, exc.http_status) == ("http_4xx", False, 1, 400)
    assert "scripted failure" in (exc.response or "")
    assert len(receiver.arrivals) == 1
    assert receiver.applied == {}


def test_5xx_forever_exhausts_max_attempts(receiver: WebhookReceiver) -> None:
    receiver.fail_next(None, *[502] * 10)
    exc = failure(receiver.url, max_attempts=3)
    assert (exc.reason, exc.retryable, exc.attempts, exc.http_status) == ("http_5xx_exhausted", True, 3, 502)
    assert len(receiver.arrivals) == 3
    assert receiver.applied == {}


def test_client_timeout_is_retried_and_the_late_original_is_a_duplicate(receiver: WebhookReceiver) -> None:
    receiver.delay_next(None, 0.6)  # first attempt outlives the client's 0.2 s timeout
    result = deliver(receiver.url, timeout=0.2)
    assert (result.http_status, result.attempts) == (200, 2)
    receiver.stop()  # waits for the abandoned first request, which the server still processes
    assert receiver.applied == {"k1": ARGS}
    assert receiver.duplicates == 1
    assert {a.key for a in receiver.arrivals} == {"k1"}


def test_timeouts_forever_exhaust(receiver: WebhookReceiver) -> None:
    receiver.delay = 0.3
    exc = failure(receiver.url, timeout=0.1, max_attempts=2)
    assert (exc.reason, exc.retryable, exc.attempts, exc.http_status) == ("timeout_exhausted", True, 2, None)
    receiver.stop()
    assert len(receiver.arrivals) == 2
    assert receiver.applied == {"k1": ARGS}  # a timeout is ambiguous: the receiver did apply it


def test_connection_refused_exhausts() -> None:
    with socket.socket() as bound:  # bound but not listening: connections are refused, the port stays ours
        bound.bind(("127.0.0.1", 0))
        exc = failure(f"http://127.0.0.1:{bound.getsockname()[1]}", max_attempts=2)
    assert (exc.reason, exc.retryable, exc.attempts) == ("connect_exhausted", True, 2)


def test_replayed_call_is_not_applied_twice(receiver: WebhookReceiver) -> None:
    async def twice() -> tuple[ActionResult, ActionResult]:
        async with httpx.AsyncClient() as client:  # the shared-client path
            webhook = action(receiver.url, client=client)
            return await webhook.run("k1", ARGS), await webhook.run("k1", ARGS)

    first, second = asyncio.run(twice())
    assert first.response == second.response
    assert receiver.applied == {"k1": ARGS}
    assert receiver.duplicates == 1


def test_bad_signature_is_401_and_not_retried(receiver: WebhookReceiver) -> None:
    exc = failure(receiver.url, secret="wrong")
    assert (exc.reason, exc.retryable, exc.attempts, exc.http_status) == ("http_4xx", False, 1, 401)
    assert [a.status for a in receiver.arrivals] == [401]
    assert receiver.applied == {}


def test_429_honours_retry_after() -> None:
    with WebhookReceiver(secret=SECRET, retry_after=1) as receiver:
        receiver.fail_next(None, 429)
        result = deliver(receiver.url, backoff_max=2)
        first, second = receiver.arrivals
    assert result.attempts == 2
    assert second.at - first.at >= 1.0


def test_429_exhausted_has_its_own_reason(receiver: WebhookReceiver) -> None:
    receiver.fail_next(None, 429, 429)
    exc = failure(receiver.url, max_attempts=2)
    assert (exc.reason, exc.retryable, exc.http_status) == ("http_429_exhausted", True, 429)


def test_failures_scripted_for_one_key_spare_others(receiver: WebhookReceiver) -> None:
    receiver.fail_next("k2", 503)
    assert deliver(receiver.url, "k1").attempts == 1
    assert deliver(receiver.url, "k2").attempts == 2
    assert set(receiver.applied) == {"k1", "k2"}


def test_receiver_requires_an_idempotency_key() -> None:
    with WebhookReceiver() as receiver:
        response = httpx.post(f"{receiver.url}/hooks/x", json=ARGS)
    assert response.status_code == 400
    assert [(a.key, a.status) for a in receiver.arrivals] == [(None, 400)]
