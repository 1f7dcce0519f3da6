"""A provider from its declaration: the ``model`` block of a workflow, as configuration models.

The HTTP kinds declare themselves (:class:`OpenAIModel`, :class:`AnthropicModel`,
:class:`ChainModel` build their own providers); the kinds declared here need a folder to find
their training data or script in, which is why building takes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from processors.providers.anthropic import AnthropicModel
from processors.providers.base import Provider
from processors.providers.cascade import CascadeProvider
from processors.providers.chain import ChainModel
from processors.providers.embedded import Completion, EmbeddedProvider, TrainingSpec
from processors.providers.openai import OpenAIModel
from processors.providers.policy_engine import PolicyEngineProvider
from processors.providers.scripted import ScriptedProvider
from processors.redaction import Redaction


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddedModel(_Strict):
    kind: Literal["embedded"]
    training: TrainingSpec
    complete: str | None = Field(None, description=(
        "Code that fills the answer fields the classifier does not give, by name "
        "(processors/workflow/completions.py: lead_intake)."))


class ScriptedModel(_Strict):
    kind: Literal["scripted"]
    script: str | None = Field(None, description="YAML/JSONL script, relative to the workflow folder.")
    latency_s: float = 0.0


class CascadeModel(_Strict):
    """The embedded model answers first; what it is less sure of than ``threshold`` goes to ``then``
    (see processors/providers/cascade.py)."""

    kind: Literal["cascade"]
    first: EmbeddedModel
    then: Annotated[OpenAIModel | AnthropicModel | ChainModel, Field(discriminator="kind")]
    threshold: float = Field(0.8, ge=0, le=1, description=(
        "Higher sends more to the LLM: more cost and latency, fewer of the embedded model's mistakes. "
        "At or above review_threshold, so what the embedded model is unsure of meets the LLM before a person."))


class RefundPolicyModel(_Strict):
    """The refund workflow's offline default: a policy engine in code, an embedded classifier for the
    request's reason (see processors/providers/policy_engine.py)."""

    kind: Literal["refund_policy"]
    classifier: TrainingSpec


ModelConfig = (EmbeddedModel | ScriptedModel | OpenAIModel | AnthropicModel | ChainModel | CascadeModel
               | RefundPolicyModel)
"""What a workflow's ``model:`` may declare, told apart by ``kind``."""


def build_provider(model: ModelConfig, folder: Path, redaction: Redaction, name: str,
                   completions: Mapping[str, Completion] | None = None) -> Provider:
    """The provider ``model`` declares. ``folder`` holds its training data or script; HTTP providers
    redact what they send with ``redaction`` and read their API keys from the environment now;
    ``name`` labels a cascade's metrics; ``completions`` are the completions an embedded model may name."""
    if isinstance(model, EmbeddedModel):
        return _embedded(model, folder, completions)
    if isinstance(model, ScriptedModel):
        if model.script:
            return ScriptedProvider.from_file(folder / model.script, latency=model.latency_s)
        return ScriptedProvider(latency=model.latency_s)
    if isinstance(model, RefundPolicyModel):
        return PolicyEngineProvider(model.classifier, folder)
    if isinstance(model, CascadeModel):
        return CascadeProvider(_embedded(model.first, folder, completions), model.then.provider(redaction.text),
                               model.threshold, name)
    return model.provider(redaction.text)


def _embedded(model: EmbeddedModel, folder: Path, completions: Mapping[str, Completion] | None) -> EmbeddedProvider:
    completion = None if model.complete is None else (completions or {})[model.complete]
    return EmbeddedProvider(model.training, folder, completion=completion)
