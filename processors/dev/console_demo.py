"""The demo's console: a development signing key, one user with every role, the console on loopback.

``make demo`` prints where the console is and whom to sign in as; ``make demo CONSOLE=1`` keeps it
(and the broker) up after the demo until Ctrl-C, so the queue the demo left can be worked in a browser.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from processors.console.app import build_app
from processors.console.project import console_of
from processors.console.users import Users
from processors.dev.loopback import LoopbackServer
from processors.kafka.settings import KafkaSettings
from processors.records import PersonRole
from processors.signing import SIGNING_KEY_ENV
from processors.views.store import open_store

KEEP_UP_ENV = "HANDOFF_DEMO_CONSOLE"
USERS = Path(".local/demo-console-users.yaml")
USER = "demo"


class DemoConsole:
    def __init__(self, settings: KafkaSettings):
        os.environ.setdefault(SIGNING_KEY_ENV, f"demo:{secrets.token_hex(24)}")  # stages and console share it
        self.password = secrets.token_urlsafe(12)
        USERS.unlink(missing_ok=True)
        Users(USERS).add(USER, self.password, list(PersonRole))
        self.server = LoopbackServer(build_app(console_of(settings, open_store(), users=USERS)), "console")
        self.url = self.server.start()
        print(f"console: {self.url}/ (sign in as {USER}, password {self.password}; every role)", flush=True)

    def keep_up(self) -> None:
        """With ``make demo CONSOLE=1``: serve until Ctrl-C; otherwise stop now."""
        if os.environ.get(KEEP_UP_ENV) not in (None, "", "0"):
            print(f"console: keeping {self.url}/ up (sign in as {USER}, password {self.password}); Ctrl-C stops "
                  f"it and the broker", flush=True)
            try:
                self.server.wait()
            except KeyboardInterrupt:
                pass
        self.server.stop()
