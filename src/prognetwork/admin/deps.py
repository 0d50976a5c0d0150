"""The admin console's request dependencies, as `Annotated` aliases the routes declare.

`SignedIn` is the operator behind this request's session cookie (any admitted role); `Acting`
the same, refused unless their role may act (admin). Without a session the request is sent to the
sign-in page (app.py handles SignInRequired).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from prognetwork.admin.problems import READ_ONLY
from prognetwork.admin.runtime import Runtime
from prognetwork.admin.sessions import COOKIE
from prognetwork.admin.signin import Operator, SignInRequired


# `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool.
async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


async def signed_in(request: Request, runtime: RuntimeDep) -> Operator:
    session = await runtime.sessions.load(request.cookies.get(COOKIE))
    if session is None:
        raise SignInRequired
    return Operator(runtime.auth, session)


SignedIn = Annotated[Operator, Depends(signed_in)]


async def acting(operator: SignedIn) -> Operator:
    if not operator.session.may_act:
        raise READ_ONLY(f"Your role is {operator.session.role}: you may look, but only an admin may act.")
    return operator


Acting = Annotated[Operator, Depends(acting)]
