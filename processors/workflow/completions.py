"""Completions: code that fills what a classifier cannot answer, by the name a workflow gives it.

The embedded default classifies (intent, service, urgency); a workflow whose answer also holds
fields only code can work out — a lead's owner from the CRM, what its form left empty — names a
completion (``model: {kind: embedded, complete: lead_intake}``), and the provider hands it the
classifier's answer and the request's inputs. An LLM fills the same fields itself, and the
workflow's rules check either answer alike.
"""

from __future__ import annotations

from processors.providers.embedded import Completion
from processors.workflow import leads

COMPLETIONS: dict[str, Completion] = {"lead_intake": leads.complete}
