"""Token prices: what a model call costs, from a table kept in the repository.

``prices.yaml`` lists USD per million input and output tokens per model, as the vendors publish
them, so cost is reviewed like code. A workflow overrides a model's price under ``prices`` (a
negotiated rate, a self-hosted model at zero). A dated snapshot (``gpt-4o-mini-2024-07-18``)
takes its family's price. A model with no price is recorded at zero cost, and the provider warns
once when it is built: a silent zero would hide spend.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PRICES = Path(__file__).with_name("prices.yaml")


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per million output (completion) tokens.")

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input + tokens_out * self.output) / 1_000_000


@cache
def price_table() -> dict[str, Price]:
    return TypeAdapter(dict[str, Price]).validate_python(yaml.safe_load(PRICES.read_text()))


def price_of(model: str) -> Price | None:
    """The model's price: its own entry, else the longest entry it is a dated variant of."""
    table = price_table()
    family = [name for name in table if model == name or model.startswith(f"{name}-")]
    return table[max(family, key=len)] if family else None
