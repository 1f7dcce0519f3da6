"""OpenAI-compatible chat completions: OpenAI itself, and vLLM, Ollama, llama.cpp and other
servers that speak the same protocol (``POST {base_url}/chat/completions``).

The output schema goes in ``response_format`` so a server that supports structured output
decodes only valid JSON; how strictly is a per-server choice (``structured_output``), and
validation downstream checks the answer whatever the server promised.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from processors.providers.base import ModelRequest
from processors.providers.http import HttpModel, HttpProvider, schema_name


class OpenAIProvider(HttpProvider):
    name = "openai"
    path = "/chat/completions"
    settings: OpenAIModel

    def headers(self, key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"} if key else {}

    def body(self, request: ModelRequest) -> dict:
        body = {"model": self.settings.model,
                "messages": [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}],
                "temperature": request.temperature, self.settings.max_tokens_param: request.max_tokens}
        mode = self.settings.structured_output
        if mode in ("json_schema", "strict_json_schema"):
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema_name(request), "schema": request.output_schema, "strict": mode == "strict_json_schema"}}
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def read(self, payload: dict) -> tuple[str, int, int]:
        """The message content; a refusal stands in for it, so validation sends it on to review."""
        message = payload["choices"][0]["message"]
        usage = payload.get("usage") or {}
        return (message.get("content") or message.get("refusal") or "", usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0))


class OpenAIModel(HttpModel):
    kind: Literal["openai"]
    base_url: str = Field("https://api.openai.com/v1", description=(
        "Up to /v1: Ollama http://localhost:11434/v1, vLLM http://localhost:8000/v1, "
        "llama.cpp http://localhost:8080/v1."))
    api_key_env: str | None = "OPENAI_API_KEY"
    structured_output: Literal["json_schema", "strict_json_schema", "json_object", "none"] = Field(
        "json_schema", description=(
            "json_schema: the schema in response_format, non-strict — OpenAI, vLLM, Ollama and llama.cpp "
            "constrain or guide the answer with any schema. strict_json_schema: OpenAI guarantees the schema, "
            "but only accepts schemas where every property is required and additionalProperties is false. "
            "json_object: JSON mode for servers without schemas (the prompt must describe the fields). "
            "none: no response_format at all, for servers that reject it."))
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field("max_tokens", description=(
        "OpenAI's reasoning models (o-series, gpt-5) accept only max_completion_tokens; most compatible "
        "servers know only max_tokens."))
    provider_class: ClassVar[type[HttpProvider]] = OpenAIProvider
