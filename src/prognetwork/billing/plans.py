"""The plans a tenant can be on, and what each entitles it to.

Invariants a reader must keep:
- The catalogue has exactly one plan without a price, named `free`: what a tenant gets with no
  subscription, or with one that no longer pays (`ENTITLED_STATUSES` says which still do). Every
  other plan has a Stripe price id, and no two plans share a name or a price.
- A subscription's seats are its plan's seats times its quantity (a quantity of 2 buys the plan
  twice); the free fallback always has the free plan's seats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

FREE_PLAN = "free"
# Statuses under which a subscription still grants its plan. `past_due` keeps it while Stripe
# retries the payment; `incomplete` (never paid), `incomplete_expired`, `unpaid`, `paused` and
# `canceled` fall back to the free plan.
ENTITLED_STATUSES = frozenset({"active", "trialing", "past_due"})


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")
    price_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")
    seats: int = Field(ge=1, le=1_000_000)
    features: list[str] = Field(default_factory=list, max_length=100)


DEFAULT_PLANS = [
    Plan(name=FREE_PLAN, price_id=None, seats=3, features=["events"]),
    Plan(name="pro", price_id="price_pro_monthly", seats=20, features=["events", "sso", "audit_log"]),
    Plan(
        name="enterprise",
        price_id="price_enterprise_monthly",
        seats=200,
        features=["events", "sso", "audit_log", "priority_support"],
    ),
]


def catalogue_problems(plans: Iterable[Plan]) -> list[str]:
    """What makes a list of plans unusable as the catalogue (empty when it is fine)."""
    plans = list(plans)
    names = [p.name for p in plans]
    prices = [p.price_id for p in plans if p.price_id is not None]
    found = []
    if len(set(names)) != len(names):
        found.append("two plans share a name")
    if len(set(prices)) != len(prices):
        found.append("two plans share a price id")
    free = [p for p in plans if p.name == FREE_PLAN]
    if not free or free[0].price_id is not None:
        found.append(f"a plan named {FREE_PLAN!r} without a price id is required (the fallback)")
    if any(p.price_id is None for p in plans if p.name != FREE_PLAN):
        found.append(f"every plan but {FREE_PLAN!r} needs a price id")
    return found


@dataclass(frozen=True, slots=True)
class Entitlements:
    plan: str
    seats: int
    features: tuple[str, ...]


class Catalogue:
    """The configured plans, looked up by name or by Stripe price."""

    def __init__(self, plans: Iterable[Plan]) -> None:
        self.plans = list(plans)
        problems = catalogue_problems(self.plans)
        if problems:
            raise ValueError("; ".join(problems))
        self._by_name = {p.name: p for p in self.plans}
        self._by_price = {p.price_id: p for p in self.plans if p.price_id is not None}

    @property
    def free(self) -> Plan:
        return self._by_name[FREE_PLAN]

    def named(self, name: str) -> Plan | None:
        return self._by_name.get(name)

    def priced(self, price_id: str | None) -> Plan | None:
        return self._by_price.get(price_id) if price_id else None

    def fallback(self) -> Entitlements:
        return Entitlements(FREE_PLAN, self.free.seats, tuple(self.free.features))

    def entitlements(self, plan: str, status: str, seats: int) -> Entitlements:
        """What a subscription to `plan` in `status` with `seats` grants right now."""
        found = self.named(plan)
        if found is None or status not in ENTITLED_STATUSES:
            return self.fallback()
        return Entitlements(found.name, seats, tuple(found.features))
