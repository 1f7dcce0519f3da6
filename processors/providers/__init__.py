"""Model providers: everything that turns a rendered prompt into answer text."""

from processors.providers.base import (ModelAnswer, ModelRequest, Provider, ProviderError, ProviderRejected,
                                       ProviderTimeout)
from processors.providers.embedded import EmbeddedProvider, Example, HoldoutReport, TrainingSpec
from processors.providers.scripted import Fail, ScriptedProvider, Step, Timeout

__all__ = ["EmbeddedProvider", "Example", "Fail", "HoldoutReport", "ModelAnswer", "ModelRequest", "Provider",
           "ProviderError", "ProviderRejected", "ProviderTimeout", "ScriptedProvider", "Step", "Timeout",
           "TrainingSpec"]
