"""Model providers: everything that turns a rendered prompt into answer text."""

from processors.providers.anthropic import AnthropicModel, AnthropicProvider
from processors.providers.base import (
                                       Attempt,
                                       ModelAnswer,
                                       ModelRequest,
                                       Provider,
                                       ProviderError,
                                       ProviderRejected,
                                       ProviderTimeout,
)
from processors.providers.cascade import CascadeProvider, CascadeReport
from processors.providers.chain import ChainModel, ChainProvider, Cooldown
from processors.providers.embedded import EmbeddedProvider, Example, HoldoutReport, TrainingSpec
from processors.providers.http import HttpRetries
from processors.providers.limits import RateLimits
from processors.providers.openai import OpenAIModel, OpenAIProvider
from processors.providers.pricing import Price, price_of
from processors.providers.scripted import Fail, ScriptedProvider, Step, Timeout

__all__ = ["AnthropicModel", "AnthropicProvider", "Attempt", "CascadeProvider", "CascadeReport", "ChainModel",
           "ChainProvider", "Cooldown", "EmbeddedProvider", "Example", "Fail", "HoldoutReport", "HttpRetries",
           "ModelAnswer", "ModelRequest", "OpenAIModel", "OpenAIProvider", "Price", "Provider", "ProviderError",
           "ProviderRejected", "ProviderTimeout", "RateLimits", "ScriptedProvider", "Step", "Timeout", "TrainingSpec",
           "price_of"]
