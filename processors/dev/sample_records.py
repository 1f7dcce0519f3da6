"""The sample system of record's contents: a small B2B company's CRM (contacts, leads, owners with
their territories and services) and a shop's ledger (orders, payments, earlier refunds), plus the
refund policy with its numbered clauses.

Generated, not stored: a seeded ``random.Random`` makes the same records on every machine, so the
refund and lead samples (``workflows/*/datasets/generate.py``) can name orders and contacts that
exist, with known totals, kinds and ages. Times are ISO-8601 UTC strings around :data:`REFERENCE`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from processors.refunds import Clause, OrderKind, Policy, RefundReason

REFERENCE = datetime(2026, 6, 15, tzinfo=UTC)
"""The sample's "today": orders are placed up to 150 days before it, leads up to 60."""
SEED = 15


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


TERRITORIES = ("DACH", "Nordics", "UK&I", "France", "Benelux", "Iberia", "US East", "US West")
SERVICES = ("cloud_migration", "data_platform", "security_audit", "managed_support", "training",
            "custom_development")
"""The services owners cover: the lead workflow's approved service categories."""


POLICY = Policy(version="2026-05.2", clauses=[
    Clause(id="1.1", title="Damaged or defective goods", reasons=[RefundReason.damaged], kinds=[OrderKind.physical],
           max_age_days=30, limit_share=1.0,
           text="Goods that arrive damaged or fail within 30 days of the order are refunded in full."),
    Clause(id="1.2", title="Wrong item", reasons=[RefundReason.wrong_item], kinds=[OrderKind.physical],
           max_age_days=30, limit_share=1.0,
           text="An item other than the one ordered is refunded in full within 30 days of the order."),
    Clause(id="2.1", title="Not delivered", reasons=[RefundReason.not_delivered], kinds=[OrderKind.physical],
           max_age_days=60, limit_share=1.0,
           text="An order not delivered within 60 days of the order is refunded in full."),
    Clause(id="2.2", title="Late delivery", reasons=[RefundReason.late_delivery], kinds=[OrderKind.physical],
           max_age_days=45, limit_share=0.2,
           text="A delivery later than promised earns back up to 20% of the order total within 45 days."),
    Clause(id="3.1", title="Change of mind", reasons=[RefundReason.changed_mind], kinds=[OrderKind.physical],
           max_age_days=14, limit_share=1.0,
           text="Physical goods may be returned for any reason within 14 days of the order."),
    Clause(id="3.2", title="Not as described", reasons=[RefundReason.not_as_described],
           kinds=[OrderKind.physical, OrderKind.digital], max_age_days=30, limit_share=0.5,
           text="Goods that differ from their description earn back up to half the order total within 30 days."),
    Clause(id="4.1", title="Digital goods", reasons=[RefundReason.damaged, RefundReason.changed_mind],
           kinds=[OrderKind.digital], max_age_days=14, limit_amount=50.0,
           text="Digital goods that do not work, or are unwanted, are refunded up to 50 within 14 days."),
    Clause(id="4.2", title="Subscription cancelled mid-term", reasons=[RefundReason.cancelled_subscription],
           kinds=[OrderKind.subscription], max_age_days=30, limit_share=0.5,
           text="A subscription cancelled within 30 days of its billing earns back up to half the period's price."),
    Clause(id="5.1", title="Duplicate charge", reasons=[RefundReason.duplicate_charge],
           kinds=[OrderKind.physical, OrderKind.digital, OrderKind.subscription], max_age_days=120, limit_share=1.0,
           text="A charge taken twice for one order is refunded in full within 120 days."),
])


class Owner(BaseModel):
    owner_id: str
    name: str
    email: str
    territories: list[str]
    services: list[str]
    active: bool = True


OWNERS = [
    Owner(owner_id="OW-01", name="Lena Brandt", email="lena.brandt@example.com", territories=["DACH"],
          services=["cloud_migration", "data_platform", "managed_support"]),
    Owner(owner_id="OW-02", name="Jonas Weber", email="jonas.weber@example.com", territories=["DACH", "Benelux"],
          services=["security_audit", "training", "custom_development"]),
    Owner(owner_id="OW-03", name="Sofie Lindqvist", email="sofie.lindqvist@example.com", territories=["Nordics"],
          services=list(SERVICES)),
    Owner(owner_id="OW-04", name="Oliver Hughes", email="oliver.hughes@example.com", territories=["UK&I"],
          services=["cloud_migration", "managed_support", "security_audit"]),
    Owner(owner_id="OW-05", name="Priya Nair", email="priya.nair@example.com", territories=["UK&I", "Benelux"],
          services=["data_platform", "training", "custom_development"]),
    Owner(owner_id="OW-06", name="Camille Durand", email="camille.durand@example.com", territories=["France"],
          services=["cloud_migration", "data_platform", "security_audit", "training"]),
    Owner(owner_id="OW-07", name="Marta Ruiz", email="marta.ruiz@example.com", territories=["Iberia", "France"],
          services=["managed_support", "custom_development"]),
    Owner(owner_id="OW-08", name="Diego Alves", email="diego.alves@example.com", territories=["Iberia"],
          services=["cloud_migration", "data_platform", "security_audit", "training"]),
    Owner(owner_id="OW-09", name="Rachel Kim", email="rachel.kim@example.com", territories=["US East"],
          services=list(SERVICES)),
    Owner(owner_id="OW-10", name="Marcus Bell", email="marcus.bell@example.com", territories=["US West"],
          services=["cloud_migration", "data_platform", "custom_development"]),
    Owner(owner_id="OW-11", name="Hannah Cole", email="hannah.cole@example.com", territories=["US West", "US East"],
          services=["security_audit", "managed_support", "training"]),
    Owner(owner_id="OW-12", name="Tom Fischer", email="tom.fischer@example.com", territories=["DACH"],
          services=["cloud_migration", "security_audit"], active=False),
    Owner(owner_id="OW-13", name="Anna de Vries", email="anna.devries@example.com", territories=["Benelux"],
          services=["cloud_migration", "managed_support"]),
]
"""Every (territory, service) pair has an active owner; OW-12 has left (inactive)."""


class Contact(BaseModel):
    contact_id: str
    name: str
    email: str
    company: str
    territory: str
    phone: str
    created_at: str


class Lead(BaseModel):
    lead_id: str
    contact_id: str
    created_at: str
    source: str
    status: str
    service: str
    territory: str
    owner_id: str | None = None


class Order(BaseModel):
    order_id: str
    contact_id: str
    total: float
    currency: str
    kind: OrderKind
    placed_at: str
    description: str


class Payment(BaseModel):
    payment_id: str
    order_id: str
    method: str
    amount: float
    currency: str
    status: str
    captured_at: str


class Refund(BaseModel):
    refund_id: str
    order_id: str
    amount: float
    currency: str
    reason: str
    idempotency_key: str
    created_at: str


class Sample(BaseModel):
    contacts: list[Contact]
    leads: list[Lead]
    owners: list[Owner]
    orders: list[Order]
    payments: list[Payment]
    refunds: list[Refund]
    policy: Policy


FIRST = ("Anna", "Ben", "Chloe", "David", "Elif", "Felix", "Grace", "Hugo", "Ines", "Jan", "Kira", "Luca", "Maya",
         "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wim", "Xenia", "Yusuf", "Zoe")
LAST = ("Schmidt", "Johansson", "Smith", "Martin", "Janssen", "Garcia", "Miller", "Novak", "Rossi", "Kowalski",
        "Dubois", "Berg", "Walsh", "Costa", "Meyer", "Nguyen", "Okafor", "Larsen", "Moreau", "Silva")
COMPANIES = ("Acme Logistics", "Borealis Energy", "Cobalt Health", "Delta Foods", "Elbe Maschinenbau",
             "Fjord Analytics", "Granite Insurance", "Harbor Retail", "Iris Media", "Juniper Travel",
             "Kestrel Finance", "Lumen Schools", "Meridian Labs", "Northwind Traders", "Orchid Pharma")
PRODUCTS = {
    OrderKind.physical: (("Espresso machine", 189.0, 649.0), ("Office chair", 149.0, 420.0), ("Blender", 49.0, 129.0),
                         ("Headphones", 59.0, 349.0), ("Standing desk", 299.0, 780.0), ("Backpack", 39.0, 110.0),
                         ("Monitor", 149.0, 520.0), ("Running shoes", 69.0, 180.0), ("Cookware set", 89.0, 260.0)),
    OrderKind.digital: (("Photo editor licence", 29.0, 120.0), ("E-book bundle", 9.0, 45.0),
                        ("Online course", 39.0, 199.0), ("Game", 19.0, 69.0)),
    OrderKind.subscription: (("Streaming plan, annual", 79.0, 159.0), ("Meal kit, monthly", 49.0, 119.0),
                             ("Cloud storage, annual", 59.0, 99.0), ("Software suite, monthly", 15.0, 60.0)),
}
CURRENCIES = (("EUR", 0.7), ("GBP", 0.15), ("USD", 0.15))


def _contacts(rng: random.Random) -> list[Contact]:
    out = []
    for n in range(80):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        company = rng.choice(COMPANIES)
        domain = company.lower().split()[0] + ".example"
        out.append(Contact(contact_id=f"C-{1001 + n}", name=f"{first} {last}",
                           email=f"{first.lower()}.{last.lower()}{n}@{domain}", company=company,
                           territory=rng.choice(TERRITORIES), phone=f"+49 30 {rng.randint(1000000, 9999999)}",
                           created_at=iso(REFERENCE - timedelta(days=rng.randint(90, 900)))))
    return out


def _leads(rng: random.Random, contacts: list[Contact]) -> list[Lead]:
    out = []
    for n, contact in enumerate(rng.sample(contacts, 40)):
        owners = [o for o in OWNERS if o.active and contact.territory in o.territories]
        service = rng.choice(SERVICES)
        covering = [o for o in owners if service in o.services]
        out.append(Lead(lead_id=f"L-{2001 + n}", contact_id=contact.contact_id,
                        created_at=iso(REFERENCE - timedelta(days=rng.randint(1, 60), hours=rng.randint(0, 23))),
                        source=rng.choice(("web_form", "email", "chat", "event")),
                        status=rng.choice(("new", "qualified", "contacted", "disqualified")), service=service,
                        territory=contact.territory, owner_id=covering[0].owner_id if covering else None))
    return out


def _orders(rng: random.Random, contacts: list[Contact]) -> tuple[list[Order], list[Payment], list[Refund]]:
    orders, payments, refunds = [], [], []
    currencies, weights = zip(*CURRENCIES)
    for n in range(420):
        kind = rng.choices(list(OrderKind), weights=(0.6, 0.2, 0.2))[0]
        product, low, high = rng.choice(PRODUCTS[kind])
        quantity = 1 if kind != OrderKind.physical or rng.random() < 0.8 else 2
        total = round(rng.uniform(low, high) * quantity, 2)
        currency = rng.choices(currencies, weights=weights)[0]
        placed = REFERENCE - timedelta(days=rng.randint(0, 150), hours=rng.randint(0, 23), minutes=rng.randint(0, 59))
        order = Order(order_id=f"O-{5001 + n}", contact_id=rng.choice(contacts).contact_id, total=total,
                      currency=currency, kind=kind, placed_at=iso(placed),
                      description=f"{quantity} x {product}" if quantity > 1 else product)
        orders.append(order)
        payments.append(Payment(payment_id=f"P-{8001 + n}", order_id=order.order_id,
                                method=rng.choice(("card", "card", "paypal", "sepa_debit")), amount=total,
                                currency=currency, status="captured", captured_at=iso(placed + timedelta(minutes=3))))
        if rng.random() < 0.08:  # an earlier, partial refund (goodwill, a missing part)
            refunds.append(Refund(refund_id=f"R-{9001 + len(refunds)}", order_id=order.order_id,
                                  amount=round(total * rng.choice((0.1, 0.25, 0.5)), 2), currency=currency,
                                  reason="earlier goodwill refund", idempotency_key=f"seed:{order.order_id}",
                                  created_at=iso(placed + timedelta(days=rng.randint(1, 5)))))
    return orders, payments, refunds


def sample() -> Sample:
    """The whole sample, the same on every call and every machine."""
    rng = random.Random(SEED)
    contacts = _contacts(rng)
    leads = _leads(rng, contacts)
    orders, payments, refunds = _orders(rng, contacts)
    return Sample(contacts=contacts, leads=leads, owners=OWNERS, orders=orders, payments=payments, refunds=refunds,
                  policy=POLICY)
