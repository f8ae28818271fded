"""The hot path's statements, compiled once per dialect and run straight on the DBAPI cursor.

`Connection.execute` costs about 40-80 microseconds of Python per statement around the driver's
few microseconds (execution context, events, result metadata), and a no-op step runs about ten
statements: on SQLite that was a quarter to a third of a step (bench/engine.py, issue 7). The
statements here are the same SQLAlchemy Core statements, compiled by SQLAlchemy for the dialect
with the same bind and result processors; only the per-call machinery is skipped. Driver errors
are raised as SQLAlchemy's `DBAPIError`, with the connection invalidated on a disconnect, so
retries and outage handling see what they would see from `Connection.execute`.

On PostgreSQL, where every statement is also a network round trip, the machinery is still a
tenth of a step: the engine's chain measured 4.0-4.6 -> 3.8-4.0 ms/step and its fan-out 3.2 ->
2.9 (old and new alternating, psycopg's synchronous driver)."""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

_PYFORMAT_NAME = re.compile(r"%\((\w+)\)s")


@dataclass(slots=True)
class _Plan:
    #: held, so that the id the plan is filed under is never reused by another statement
    statement: ClauseElement
    sql: str
    #: bind names in order (positional paramstyles), or None (named: pass a dict)
    order: tuple[str, ...] | None
    names: tuple[str, ...]
    #: values of the statement's own literals (`status == 'pending'` binds 'pending')
    defaults: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]
    row: type | None
    types: tuple[Any, ...]
    #: (column index, result processor), filled on the first execution: a processor may depend
    #: on the type the driver reports (PostgreSQL's numeric types)
    results: list[tuple[int, Callable[[Any], Any]]]
    learned: bool = False


def _row_class(names: Sequence[str]) -> type:
    base = namedtuple("DirectRow", names, rename=True)  # type: ignore[misc]

    class DirectRow(base):
        """A result row: attributes by column name, and `_mapping`, like SQLAlchemy's Row."""

        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(self._fields, self, strict=True))

    return DirectRow


_plans: dict[tuple[int, str], _Plan] = {}


def _plan_of(statement: ClauseElement, dialect: Dialect) -> _Plan:
    key = (id(statement), dialect.name)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    if "POSTCOMPILE" in compiled.string:
        # An `in_([...])` is expanded per call by SQLAlchemy's execution, which is skipped here.
        raise ValueError(
            f"a direct statement cannot hold an IN list; use OR of equalities: {compiled.string}"
        )
    binds = {name: bind for name, bind in compiled.binds.items() if not name.startswith("%(")}
    if compiled.positional:
        order: tuple[str, ...] | None = tuple(compiled.positiontup or ())
        names = tuple(dict.fromkeys(order or ()))
    else:
        order = None
        names = tuple(dict.fromkeys(_PYFORMAT_NAME.findall(compiled.string)))
    defaults = {name: binds[name].effective_value for name in names if not binds[name].required}
    processors: dict[str, Callable[[Any], Any]] = {}
    for name in names:
        processor = binds[name].type._cached_bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    columns = compiled._result_columns or []
    plan = _Plan(
        statement=statement,
        sql=compiled.string,
        order=order,
        names=names,
        defaults=defaults,
        processors=processors,
        row=_row_class([c.keyname for c in columns]) if columns else None,
        types=tuple(c.type for c in columns),
        results=[],
    )
    _plans[key] = plan
    return plan


def _arguments(plan: _Plan, params: Mapping[str, Any]) -> Any:
    values = {**plan.defaults, **params} if plan.defaults else params
    if plan.processors:
        values = {**values}
        for name, processor in plan.processors.items():
            values[name] = processor(values[name])
    if plan.order is not None:
        return tuple(values[name] for name in plan.order)
    return {name: values[name] for name in plan.names}


def _run(conn: Connection, plan: _Plan, arguments: Any, many: bool = False) -> Any:
    return _on_cursor(conn, plan.sql, arguments, many, plan)


def _on_cursor(conn: Connection, sql: str, arguments: Any, many: bool, plan: _Plan | None) -> Any:
    """Execute on a cursor of the connection's DBAPI connection; the rows when `plan` returns any."""
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None
    cursor = dbapi_connection.cursor()
    try:
        if many:
            cursor.executemany(sql, arguments)
        elif arguments is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, arguments)
        if plan is None or plan.row is None:
            return None
        if not plan.learned:
            _learn_results(plan, conn.dialect, cursor.description)
        return cursor.fetchall()
    except conn.dialect.loaded_dbapi.Error as error:
        lost = conn.dialect.is_disconnect(error, dbapi_connection, cursor)
        if lost:
            conn.invalidate(error)
        raise exc.DBAPIError.instance(
            sql,
            arguments,
            error,
            conn.dialect.loaded_dbapi.Error,
            dialect=conn.dialect,
            connection_invalidated=lost,
        ) from error
    finally:
        cursor.close()


def _learn_results(plan: _Plan, dialect: Dialect, description: Any) -> None:
    found = []
    for index, type_ in enumerate(plan.types):
        processor = type_._cached_result_processor(dialect, description[index][1])
        if processor is not None:
            found.append((index, processor))
    plan.results[:] = found
    plan.learned = True


def rows(conn: Connection, statement: ClauseElement, params: Mapping[str, Any]) -> list[Any]:
    """Every row the statement returns, as named tuples with the columns' result processing."""
    plan = _plan_of(statement, conn.dialect)
    fetched = _run(conn, plan, _arguments(plan, params))
    assert plan.row is not None, "rows() of a statement that returns no columns"
    make = plan.row._make  # type: ignore[attr-defined]
    if not plan.results:
        return [make(row) for row in fetched]
    out = []
    for row in fetched:
        values = list(row)
        for index, processor in plan.results:
            values[index] = processor(values[index])
        out.append(make(values))
    return out


def first(conn: Connection, statement: ClauseElement, params: Mapping[str, Any]) -> Any:
    """The first row, or None."""
    found = rows(conn, statement, params)
    return found[0] if found else None


def execute(conn: Connection, statement: ClauseElement, params: Mapping[str, Any]) -> None:
    """Run a statement that returns nothing."""
    plan = _plan_of(statement, conn.dialect)
    _run(conn, plan, _arguments(plan, params))


def execute_sql(conn: Connection, sql: str) -> None:
    """Run one literal statement without parameters (SAVEPOINT and friends)."""
    _on_cursor(conn, sql, None, False, None)


def execute_many(conn: Connection, statement: ClauseElement, params: Sequence[Mapping[str, Any]]) -> None:
    """Run a statement once per parameter set, in one driver call."""
    plan = _plan_of(statement, conn.dialect)
    _run(conn, plan, [_arguments(plan, p) for p in params], many=True)
