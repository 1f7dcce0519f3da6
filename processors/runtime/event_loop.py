"""Where a stage's coroutines run: an asyncio loop in a daemon thread, or inline on the caller's.

The consumer thread owns the Kafka clients and must keep polling, so records that await (model
calls, webhooks) run on a loop of their own (:class:`EventLoop`); a stage that never awaits runs
its coroutine to completion on the consumer thread instead (:func:`run_inline`), with no thread hop.
"""

from __future__ import annotations

import asyncio
import threading


class EventLoop:
    """An asyncio loop in a daemon thread; stage coroutines run here."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="handoff-stage-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        """Run ``coro`` on the loop and wait for its result (start-up and close, not records)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():  # a loop still running (a stage stuck past 5 s) cannot be closed
            self.loop.close()


def run_inline(coro):
    """Run a coroutine that never suspends to completion on this thread and return its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("an inline stage awaited something: set `inline = False` on it")
