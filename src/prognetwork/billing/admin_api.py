"""The billing service's part of the platform admin API: any tenant's subscription, for operators.

Authorised here, by the caller's platform role (the verified access token's `role`), not by a
tenant role: `admin` and `operator` may read any tenant's; anyone else is answered 403 `forbidden`,
naming the role required. The tenant's rows are read in a scope of that tenant (kit.tenancy), as
its own members' reads are.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from prognetwork.billing.api import SubscriptionOut
from prognetwork.billing.deps import RuntimeDep, Svc, WriteSession
from prognetwork.kit.auth import PLATFORM_READERS, bearer_token, invalid_token, require_platform_role
from prognetwork.kit.problems import AUTHENTICATED, PLATFORM_ROLE_REQUIRED, problem_responses
from prognetwork.kit.tokens import InvalidToken

router = APIRouter(prefix="/v1/admin/billing", tags=["admin"])


async def reader(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """The verified claims of a caller whose platform role may read (a signed-out session is refused)."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = await runtime.jwks.verify(token, runtime.http)
    except InvalidToken as exc:
        raise invalid_token(str(exc)) from None
    await runtime.revocations.ensure_active(claims, request.method)
    require_platform_role(claims, PLATFORM_READERS)
    return claims


Reader = Annotated[dict[str, Any], Depends(reader)]


@router.get(
    "/subscriptions/{tenant_id}",
    response_model=SubscriptionOut,
    summary="A tenant's subscription as Stripe last described it (platform admins and operators)",
    responses=problem_responses(*AUTHENTICATED, PLATFORM_ROLE_REQUIRED),
)
async def tenant_subscription(
    tenant_id: uuid.UUID, caller: Reader, svc: Svc, db: WriteSession
) -> SubscriptionOut:
    # A write session for a read: the tenant scope needs a transaction (see service.py).
    return SubscriptionOut.of(await svc.subscription(db, tenant_id), svc.catalogue.fallback())
