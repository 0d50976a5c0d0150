"""Every statement that serves events to a client applies the one "never private" predicate."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import visitors

from prognetwork.streaming import queries
from prognetwork.streaming.visibility import Viewer

PREDICATE = str(queries.NEVER_PRIVATE.compile(dialect=asyncpg_dialect()))
USER = uuid.uuid4()
TENANT = uuid.uuid4()
VIEWERS = {
    "operator": Viewer(USER, role="operator"),
    "admin": Viewer(USER, role="admin"),
    "user": Viewer(USER),
    "tenant member": Viewer(USER, tenant_id=TENANT),
}
SERVED = {
    **{f"visible to {name}": queries.visible(viewer, None, 0, 10) for name, viewer in VIEWERS.items()},
    **{
        f"visible to {name}, of some types": queries.visible(viewer, frozenset({"app.a", "app.b"}), 0, 10)
        for name, viewer in VIEWERS.items()
    },
    "publish's read-back": queries.event_by_id(uuid.uuid4()),
}


def test_the_predicate_excludes_private_events():
    assert PREDICATE == "events.private IS false"


@pytest.mark.parametrize("statement", SERVED.values(), ids=SERVED.keys())
def test_every_served_query_excludes_private_events(statement):
    sql = str(statement.compile(dialect=asyncpg_dialect()))
    assert PREDICATE in sql.partition("WHERE")[2], sql
    # The very expression, not a look-alike that could drift from it.
    assert any(element is queries.NEVER_PRIVATE for element in visitors.iterate(statement))


def test_the_tailer_excludes_private_events():
    assert PREDICATE in queries.TAIL.partition("WHERE")[2], queries.TAIL


@pytest.mark.parametrize(
    "viewer,binds",
    [
        (VIEWERS["admin"], set()),
        (VIEWERS["user"], {USER}),
        (VIEWERS["tenant member"], {USER, TENANT}),
    ],
    ids=["sees all", "user", "tenant member"],
)
def test_a_viewer_narrows_what_is_served_by_bound_values_only(viewer, binds):
    compiled = queries.visible(viewer, frozenset({"app.a"}), 5, 10).compile(dialect=asyncpg_dialect())
    values = list(compiled.params.values())
    assert all(value in values for value in (*binds, 5, 10, ["app.a"])), values
    for value in binds:
        assert str(value) not in str(compiled)
