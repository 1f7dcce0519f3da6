"""A model server on loopback that speaks OpenAI chat completions and Anthropic messages.

Providers under test talk real HTTP to it, so what they send is what goes over the wire: every
request is recorded with its arrival time, headers and body. Replies are scripted in order —
an answer, a status with ``Retry-After``, latency, token usage — and once the script is spent
each request gets a valid answer built from the schema it sent (``response_format`` or the
forced tool), with usage derived from the sizes of request and answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from processors.dev.loopback import LoopbackServer
from processors.providers.scripted import schema_answer


class Reply(BaseModel):
    status: int = 200
    answer: dict | str | None = None
    """None: a valid answer for the request's schema; a str is sent as text, unparsed."""
    retry_after: str | None = None
    latency_s: float = 0.0
    usage: tuple[int, int] | None = None
    """(input, output) tokens to report; None: about a token per four bytes of request and answer."""
    echo_key: bool = False
    """An error body that quotes the request's credentials back, as careless servers do."""


class Arrival(BaseModel):
    at: float
    """time.monotonic() when the request arrived."""
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    usage: tuple[int, int] = (0, 0)


def _schema(body: dict) -> dict:
    if "tools" in body:
        return body["tools"][0]["input_schema"]
    return body.get("response_format", {}).get("json_schema", {}).get("schema", {})


def _openai(body: dict, text: str, usage: tuple[int, int]) -> dict:
    return {"id": "chatcmpl-loopback", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}


def _anthropic(body: dict, answer: dict | str, usage: tuple[int, int]) -> dict:
    content = ([{"type": "text", "text": answer}] if isinstance(answer, str) else
               [{"type": "tool_use", "id": "toolu_loopback", "name": body["tools"][0]["name"], "input": answer}])
    return {"id": "msg_loopback", "type": "message", "role": "assistant", "model": body["model"], "content": content,
            "stop_reason": "tool_use", "usage": {"input_tokens": usage[0], "output_tokens": usage[1]}}


class LLMServer:
    """Both protocols on one loopback port, in a background thread; use as a context manager."""

    def __init__(self) -> None:
        self.url = ""
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._arrivals: list[Arrival] = []
        app = Starlette(routes=[Route("/v1/chat/completions", self._handle, methods=["POST"]),
                                Route("/v1/messages", self._handle, methods=["POST"])])
        self._http = LoopbackServer(app, "llm-server")

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def __enter__(self) -> LLMServer:
        self.url = self._http.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.stop()

    async def _handle(self, request: Request) -> Response:
        """Recorded on arrival, before any scripted latency, so a client that gave up still shows."""
        arrived = time.monotonic()
        raw = await request.body()
        body = orjson.loads(raw)
        with self._lock:
            reply = self._script.popleft() if self._script else Reply()
        headers = {"retry-after": reply.retry_after} if reply.retry_after else {}
        usage = (0, 0)
        if reply.status != 200:
            key = request.headers.get("authorization") or request.headers.get("x-api-key") if reply.echo_key else ""
            payload: dict = {"type": "error",
                             "error": {"type": "scripted", "message": f"scripted {reply.status} {key}"}}
        else:
            answer = schema_answer(_schema(body)) if reply.answer is None else reply.answer
            text = answer if isinstance(answer, str) else orjson.dumps(answer).decode()
            usage = reply.usage or (len(raw) // 4, max(1, len(text) // 4))
            payload = (_anthropic(body, answer, usage) if request.url.path.endswith("/messages")
                       else _openai(body, text, usage))
        with self._lock:
            self._arrivals.append(Arrival(at=arrived, path=request.url.path, headers=dict(request.headers), body=body,
                                          status=reply.status, usage=usage))
        await asyncio.sleep(reply.latency_s)
        return Response(orjson.dumps(payload), reply.status, headers, media_type="application/json")
