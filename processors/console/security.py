"""The console's web hygiene: who is signed in, CSRF tokens, and a limit on sign-in attempts.

A session is a cookie signed with the console's session secret (Starlette's ``SessionMiddleware``):
HttpOnly, ``SameSite=Strict``, ``Secure`` unless the console listens on loopback only, expiring after
``SESSION_S``. It holds the user's name and roles as they signed in, and a CSRF token every form
posts back (:func:`csrf_ok`), so another site cannot submit a verdict in a person's name. Failed
sign-ins are limited per user name and per client address (:class:`Attempts`), so a password
cannot be guessed at speed.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request

from processors.console.users import User
from processors.records import PersonRole

SESSION_S = 8 * 3600
CSRF_FIELD = "csrf"
HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}
"""On every answer: no framing (clickjacking a verdict), no sniffing, no referrer leaving, no cached item pages."""


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use)."""
    token = request.session.get(CSRF_FIELD)
    if token is None:
        token = request.session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def csrf_ok(request: Request, form: dict) -> bool:
    expected = request.session.get(CSRF_FIELD)
    return bool(expected) and hmac.compare_digest(expected, str(form.get(CSRF_FIELD, "")))


def signed_in(request: Request, header: str | None, roles_header: str | None) -> User | None:
    """The person behind the request: the session's user, or with a trusted reverse proxy, its headers."""
    if header:
        name = request.headers.get(header)
        if not name:
            return None
        given = (request.headers.get(roles_header or "") or "").split(",")
        return User(name=name, roles=[r.strip() for r in given if r.strip() in PersonRole.__members__])
    user = request.session.get("user")
    return User.model_validate(user) if user else None


class Attempts:
    """Failed sign-ins per key (a user name, a client address) within ``window_s``: at ``limit``, refused."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit = limit
        self.window_s = window_s
        self._failed: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            failed = self._failed.setdefault(key, deque())
            while failed and failed[0] < now - self.window_s:
                failed.popleft()
            return len(failed) >= self.limit

    def failed(self, key: str) -> None:
        with self._lock:
            self._failed.setdefault(key, deque()).append(time.monotonic())
