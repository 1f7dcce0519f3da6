"""Redaction masks personal data in free text and leaves ordinary numbers readable."""

import pytest

from processors.redaction import Redaction

REDACT = Redaction()


@pytest.mark.parametrize("text, expected", [
    ("mail me at jane.doe+billing@example.co.uk today", "mail me at [EMAIL] today"),
    ("card 4111 1111 1111 1111 was charged", "card [CARD ****1111] was charged"),
    ("card 5555-5555-5555-4444.", "card [CARD ****4444]."),
    ("call +44 20 7946 0958 or (415) 555-0132", "call [PHONE] or [PHONE]"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN [IBAN] please"),
])
def test_personal_data_is_masked(text, expected):
    assert REDACT.text(text) == expected


@pytest.mark.parametrize("text", [
    "order 1234567890123 is late",          # no separators: an id, not a phone
    "since 2026-05-29 the export fails",     # an ISO date
    "we were charged $2,400 twice",          # an amount
    "invoice INV-2026-0042, 3 seats",        # an invoice number
    "card 4111 1111 1111 1112 (not Luhn)",   # fails the Luhn check: not a card
    "error 500 at 09:14:02",                 # a status and a time
])
def test_ordinary_numbers_stay_readable(text):
    assert REDACT.text(text) == text


def test_declared_fields_are_masked_whole_and_others_scanned():
    redaction = Redaction(fields=["customer.name"])
    assert redaction.inputs({"customer.name": "Jane Doe", "ticket.body": "reach me on jane@example.com",
                             "customer.arr": 12000}) == {
        "customer.name": "[REDACTED]", "ticket.body": "reach me on [EMAIL]", "customer.arr": 12000}
