"""Lead intake (seed 000): what code decides about a lead, so no model is trusted with it.

A model reads the lead and says what it is about (intent, service, urgency). Three things it must
not be left to guess, because each sends work to a person who acts on it:

* **Missing information** is computed from the required fields (:data:`REQUIRED`): a field the form
  left empty, or an inbound message does not carry, is missing; the answer must name exactly those.
  The owner is told to ask for exactly them, so a guessed list would send them after the wrong ones.
* **The owner** must exist in the CRM and cover the lead's territory and service. The ground stage
  looks up the territory's active owners through the CRM's ``find_owners`` tool (the lookup
  :data:`OWNERS`); the answer's owner must be one of them whose services include the answer's service.
* **A duplicate** — another lead of the same contact created within :data:`DUPLICATE_WINDOW` before
  this one — is recognised from the contact's leads in the CRM (the lookup :data:`HISTORY`, tool
  ``find_leads``): the answer's ``duplicate_of`` must name it, and a duplicate sales lead's next action
  is ``merge_duplicate`` (it is noted on the earlier lead, not assigned again).

The rules below check an answer (a model's, a repair's or a reviewer's) against those; the rules
module registers them. :func:`complete` is the embedded default's other half: the classifier gives
intent, service and urgency, and this fills the rest from the same computations, with an extractive
summary (the sender's own first sentences).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from processors.paths import lookup

SALES_INTENTS = frozenset({"purchase", "information"})
"""Intents that are sales leads: they get an owner, a task and, when something is missing, a request for it."""
REQUIRED: dict[str, tuple[str, ...]] = {
    "contact_details": ("contact.email", "contact.phone"),
    "name": ("contact.name",),
    "company": ("contact.company",),
    "budget": ("lead.budget",),
    "timeline": ("lead.timeline",),
}
"""What a sales person needs before the first call, by the name the answer uses: given when any of its event
fields is."""
DUPLICATE_WINDOW = timedelta(days=14)
OWNERS = "owners"
"""The lookup of the territory's active owners (``find_owners``: ``{owners: [{owner_id, services, …}]}``)."""
HISTORY = "history"
"""The lookup of the contact's leads (``find_leads``: ``{leads: [{lead_id, created_at, …}]}``, newest first)."""


class NextAction(StrEnum):
    """The next actions code decides on (the prompt's output schema allows these)."""

    merge_duplicate = "merge_duplicate"
    request_information = "request_information"
    book_call = "book_call"
    send_proposal = "send_proposal"
    send_information = "send_information"
    forward_to_support = "forward_to_support"
    forward_to_partnerships = "forward_to_partnerships"
    close = "close"


NO_LEAD_ACTIONS = {"existing_customer": NextAction.forward_to_support,
                   "partnership": NextAction.forward_to_partnerships}
SUMMARY_CHARS = 300
MIN_WORDS = 3
"""A summary skips shorter lines: a name under a message, "Thx"."""

Value = Callable[[str], Any]
"""A value by its dotted path: into the event (the rules), or among the request's inputs (the completion)."""


def missing_information(field: Value) -> list[str]:
    """The required information none of whose fields is given, in :data:`REQUIRED` order."""
    return [name for name, paths in REQUIRED.items() if not any(_given(field(path)) for path in paths)]


def covering(owners: list[dict], service: str) -> list[str]:
    """The ids of the owners (of one territory) whose services include ``service``."""
    return [o["owner_id"] for o in owners if service in (o.get("services") or [])]


def duplicate_of(leads: list[dict], lead_id: str, submitted_at: str) -> str | None:
    """The newest other lead of the contact created within :data:`DUPLICATE_WINDOW` before the submission."""
    submitted = _time(submitted_at)
    if submitted is None:
        return None
    for earlier in leads:
        created = _time(earlier.get("created_at"))
        if earlier.get("lead_id") != lead_id and created is not None and \
                submitted - DUPLICATE_WINDOW <= created <= submitted:
            return earlier["lead_id"]
    return None


def next_action(intent: str, urgency: str, missing: list[str], duplicate: str | None) -> NextAction:
    """What follows from the lead, decided in code for the embedded default."""
    if intent not in SALES_INTENTS:
        return NO_LEAD_ACTIONS.get(intent, NextAction.close)
    if duplicate:
        return NextAction.merge_duplicate
    if missing:
        return NextAction.request_information
    if intent == "information":
        return NextAction.send_information
    return NextAction.book_call if urgency == "high" else NextAction.send_proposal


def summary(message: str) -> str:
    """Extractive: the message's first sentences that say something (greetings and sign-offs skipped), up to
    :data:`SUMMARY_CHARS`."""
    sentences = [s.strip() for s in _SENTENCES.split(message or "") if s.strip()]
    said = [s for s in sentences if not _FORMULA.match(s) and len(s.split()) >= MIN_WORDS] or sentences or \
        ["(empty message)"]
    kept = said[0][:SUMMARY_CHARS]
    for sentence in said[1:]:
        if len(kept) + 1 + len(sentence) > SUMMARY_CHARS:
            break
        kept = f"{kept} {sentence}"
    return kept


# -- the rules (registered in processors/workflow/rules.py) --------------------------------------------

def owner_covers_the_lead(answer: dict, event: dict, lookups: dict) -> str | None:
    """A sales lead's owner is an active owner of its territory in the CRM who covers its service; no other
    lead gets one. When nobody covers it, the answer has no owner and asks for review."""
    owner, intent = answer.get("recommended_owner"), answer.get("intent")
    territory, service = lookup(event, "lead.territory"), answer.get("service")
    if OWNERS not in lookups:
        return (f"the owners of territory {territory} were not looked up (lookup {OWNERS!r}): "
                "the owner cannot be checked")
    owners = lookups[OWNERS].get("owners") or []
    able = covering(owners, service)
    if intent not in SALES_INTENTS:
        return None if owner is None else f"a lead with intent {intent} gets no owner (recommended_owner {owner})"
    if owner is None:
        if able:
            return f"a {intent} lead needs an owner: {', '.join(able)} cover {territory} and {service}"
        return None if answer.get("review") is True else \
            f"no owner covers {territory} and {service}: recommended_owner null needs review true"
    if owner not in {o["owner_id"] for o in owners}:
        known = ", ".join(o["owner_id"] for o in owners) or "none"
        return f"recommended_owner {owner} is no active owner of territory {territory} in the CRM (its owners: {known})"
    if owner not in able:
        return (f"recommended_owner {owner} does not cover service {service} in {territory} "
                f"(who does: {', '.join(able) or 'nobody'})")
    return None


def missing_information_is_computed(answer: dict, event: dict, lookups: dict) -> str | None:
    """The answer's missing information is exactly what the required fields leave empty, and a sales lead with
    something missing asks for it (``request_information``) while a complete one does not."""
    computed = missing_information(lambda path: lookup(event, path))
    given = answer.get("missing_information") or []
    if sorted(given) != sorted(computed):
        return f"missing_information must be {computed} (from the required fields), not {given}"
    asks = answer.get("next_action") == NextAction.request_information
    if asks and not computed:
        return "next_action request_information, but no required information is missing"
    duplicate = answer.get("next_action") == NextAction.merge_duplicate
    if not asks and computed and answer.get("intent") in SALES_INTENTS and not duplicate:
        return f"a sales lead missing {', '.join(computed)} must ask for it: next_action request_information"
    return None


def duplicate_lead_is_recognised(answer: dict, event: dict, lookups: dict) -> str | None:
    """``duplicate_of`` names the contact's lead within :data:`DUPLICATE_WINDOW` before this one (from the CRM), or
    is null when there is none; a duplicate sales lead's next action is ``merge_duplicate``, and only its."""
    if HISTORY not in lookups:
        return f"the contact's leads were not looked up (lookup {HISTORY!r}): a duplicate cannot be recognised"
    earlier = duplicate_of(lookups[HISTORY].get("leads") or [], lookup(event, "lead.id"), lookup(event, "submitted_at"))
    said = answer.get("duplicate_of")
    if said != earlier:
        days = DUPLICATE_WINDOW.days
        return (f"duplicate_of must be {earlier}: the contact's lead within {days} days before this one" if earlier
                else f"duplicate_of {said}: the contact has no other lead within {days} days before this one")
    if (answer.get("next_action") == NextAction.merge_duplicate) != (earlier is not None and
                                                                     answer.get("intent") in SALES_INTENTS):
        return "next_action merge_duplicate is a duplicate sales lead's, and only its"
    return None


RULES = (owner_covers_the_lead, missing_information_is_computed, duplicate_lead_is_recognised)


# -- the embedded default's completion --------------------------------------------------------------

def complete(answer: dict, inputs: dict[str, Any]) -> dict:
    """The classifier's intent, service and urgency, completed from the request's inputs (the event's declared
    fields and the lookups) by the same computations the rules check: what an LLM would be asked to fill."""
    intent, service, urgency = answer.get("intent"), answer.get("service"), answer.get("urgency")
    missing = missing_information(inputs.get)
    leads = inputs.get(f"lookups.{HISTORY}.leads") or []
    duplicate = duplicate_of(leads, inputs.get("lead.id"), inputs.get("submitted_at"))
    owner, review = None, False
    if intent in SALES_INTENTS:
        able = covering(inputs.get(f"lookups.{OWNERS}.owners") or [], service)
        owner, review = (able[0], False) if able else (None, True)
    return answer | {"summary": summary(inputs.get("lead.message") or ""), "missing_information": missing,
                     "recommended_owner": owner, "duplicate_of": duplicate, "review": review,
                     "next_action": next_action(intent, urgency, missing, duplicate)}


_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")
_FORMULA = re.compile(r"^(dear|hi|hello|hey|good (morning|day|afternoon)|kind regards|best regards?|regards|"
                      r"sincerely|cheers|thanks?( so much| you very much)?|talk soon|waiting your answer|"
                      r"hola|bonjour|olá|sehr geehrte|mit freundlichen|saludos|cordialement|atenciosamente)"
                      r"\b[^.!?]{0,40}[,!]?$",
                      re.IGNORECASE)


def _given(value: Any) -> bool:
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
