"""Anthropic's Messages API (``POST {base_url}/v1/messages``).

The output schema is forced through a tool: the model is given one tool whose input schema is
the prompt's output schema, and ``tool_choice`` makes calling it the only possible answer. The
tool call's input is the answer, returned as JSON text like every other provider's.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import orjson

from processors.providers.base import ModelRequest
from processors.providers.http import HttpModel, HttpProvider, schema_name


class AnthropicProvider(HttpProvider):
    name = "anthropic"
    path = "/v1/messages"
    settings: AnthropicModel

    def headers(self, key: str | None) -> dict[str, str]:
        return {"anthropic-version": self.settings.anthropic_version, **({"x-api-key": key} if key else {})}

    def body(self, request: ModelRequest) -> dict:
        tool = schema_name(request)
        return {"model": self.settings.model, "max_tokens": request.max_tokens, "temperature": request.temperature,
                "system": request.system, "messages": [{"role": "user", "content": request.user}],
                "tools": [{"name": tool, "description": "Record the answer. Its input is the whole answer.",
                           "input_schema": request.output_schema}],
                "tool_choice": {"type": "tool", "name": tool}}

    def read(self, payload: dict) -> tuple[str, int, int]:
        """The tool call's input; text blocks if the model answered without it (validation then decides)."""
        blocks = payload["content"]
        call = next((b for b in blocks if b.get("type") == "tool_use"), None)
        text = orjson.dumps(call["input"]).decode() if call else "".join(b.get("text", "") for b in blocks)
        usage = payload.get("usage") or {}
        return text, usage.get("input_tokens", 0), usage.get("output_tokens", 0)


class AnthropicModel(HttpModel):
    kind: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    provider_class: ClassVar[type[HttpProvider]] = AnthropicProvider
