"""Every embedded model of a project, trained into the on-disk cache ahead of time.

A container image runs this at build time (``handoff deploy models`` in the Dockerfile), so the
cache (:data:`processors.providers.embedded.CACHE_DIR`) ships inside the image and a pod that
starts loads a fitted model in milliseconds instead of fitting one for seconds to minutes while
its liveness probe counts. The cache key covers the examples, the training spec, scikit-learn's
version and the provider's source, so an image built from other data never loads a stale model.
"""

from __future__ import annotations

from pathlib import Path

from processors.providers.build import CascadeModel, EmbeddedModel, RefundPolicyModel
from processors.providers.embedded import EmbeddedProvider
from processors.workflow.workflow import Workflow


def embedded(workflow: Workflow) -> list[EmbeddedProvider]:
    """The workflow's embedded models: its model, a cascade's first or a policy engine's classifier; none for an
    HTTP or scripted model."""
    model = workflow.model.first if isinstance(workflow.model, CascadeModel) else workflow.model
    if isinstance(model, RefundPolicyModel):
        return [EmbeddedProvider(model.classifier, workflow.folder)]
    return [EmbeddedProvider(model.training, workflow.folder)] if isinstance(model, EmbeddedModel) else []


def train(workflow: Workflow) -> list[Path]:
    """Fit (or find in the cache) every embedded model of ``workflow``; the cache files it left."""
    providers = embedded(workflow)
    for provider in providers:
        provider.train()
    return [provider.cache_path for provider in providers]
