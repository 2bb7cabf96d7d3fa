"""Sigma rules as SQL for the SQLite store: every field condition asks whether *some element* of
the field satisfies it, as the search stores answer.

pysigma-backend-sqlite writes a condition over columns named by fields (`` `user.name`='lina' ``),
which the store once served by joining one ``json_each`` per field to the event's row. A field
holding a list then gave one row per element, and the whole condition had to hold on one of
those rows: ``onegate.rule_ids|all: [a, b]`` never matched (no element is both), and ``not
user.roles: admin`` matched an admin with a second role (some element is not ``admin``). The
search stores read each condition on its own: some element matches, or none does.

:class:`EachElementSql` keeps the backend's text for each condition and puts it inside
``EXISTS (SELECT 1 FROM json_each(sigma__doc, '$."<field>"') WHERE <condition on value>)``, so
each condition is decided over the elements of its field, and ``NOT`` means no element. Several
conditions on one field joined by ``OR`` (a list of values, ``contains`` alternatives) share one
``EXISTS``, so the document is read once for them. ``<field>.caseless`` reads the field's text
lower-cased (core.eventstore.CASELESS; ASCII by SQLite's ``lower()``, anything else by the
store's :data:`core.eventstore.SQL_CASELESS` function). ``field: null`` and ``|exists: false``
hold when no element has a value, ``|exists: true`` when one has, as on the search stores.

Field names reach the SQL text as JSON path literals; the pipeline lets through only ECS names
(letters, digits, ``_`` and ``.``), so no quote can occur in them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sigma.backends.sqlite.sqlite import sqliteBackend
from sigma.conditions import ConditionFieldEqualsValueExpression, ConditionOR
from sigma.conversion.state import ConversionState
from sigma.types import SigmaExists, SigmaNull

from core.eventstore import CASELESS, SQL_CASELESS, SQL_DOCUMENT

__all__ = ["EachElementSql"]

_FIELD = re.compile(r"[A-Za-z0-9_@.]+")


# json_each's ``value`` lower-cased when it is text (ASCII text, as many bytes as characters, by
# SQLite's own ``lower()``).
_CASELESS_VALUE = (
    "(CASE WHEN type <> 'text' THEN value"
    " WHEN length(CAST(value AS BLOB)) = length(value) THEN lower(value)"
    f" ELSE {SQL_CASELESS}(value) END)"
)


class EachElementSql(sqliteBackend):
    """pysigma-backend-sqlite with each field condition decided over the field's elements."""

    _column: str | None = None  # while a condition is written: what its field reads

    def escape_and_quote_field(self, field: str) -> str:
        if self._column is not None:
            return self._column
        return str(super().escape_and_quote_field(field))  # type: ignore[no-untyped-call]

    def convert_condition_field_eq_val(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> Any:
        if self._column is not None:  # a condition written in terms of others (|cidr): inside
            return super().convert_condition_field_eq_val(cond, state)
        return self._each(cond.field, [cond], state)

    def convert_condition_as_in_expression(self, cond: Any, state: ConversionState) -> Any:
        field = cond.args[0].field
        return self._elements(
            field, lambda: super(EachElementSql, self).convert_condition_as_in_expression(cond, state)
        )

    def convert_condition_or(self, cond: ConditionOR, state: ConversionState) -> Any:
        atoms = [
            arg
            for arg in cond.args
            if isinstance(arg, ConditionFieldEqualsValueExpression)
            and not isinstance(arg.value, SigmaNull | SigmaExists)
        ]
        if len(atoms) > 1 and len(atoms) == len(cond.args) and len({atom.field for atom in atoms}) == 1:
            return self._each(atoms[0].field, atoms, state)
        return super().convert_condition_or(cond, state)

    def _each(
        self, field: str, conds: list[ConditionFieldEqualsValueExpression], state: ConversionState
    ) -> Any:
        """``conds`` (on ``field``, any one of them) over the field's elements."""
        if len(conds) == 1 and isinstance(conds[0].value, SigmaNull | SigmaExists):
            value = conds[0].value
            present = isinstance(value, SigmaExists) and value.exists
            path, _ = self._source(field)
            test = f"EXISTS (SELECT 1 FROM json_each({SQL_DOCUMENT}, {path}) WHERE type <> 'null')"  # noqa: S608
            return test if present else f"NOT {test}"

        def write() -> str:
            parts = [str(sqliteBackend.convert_condition_field_eq_val(self, cond, state)) for cond in conds]
            return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

        return self._elements(field, write)

    def _elements(self, field: str, write: Callable[[], Any]) -> str:
        """``EXISTS`` an element of ``field`` for which the condition ``write`` gives holds (the
        condition written with the field read as the element)."""
        path, column = self._source(field)
        self._column = column
        try:
            condition = write()
        finally:
            self._column = None
        return f"EXISTS (SELECT 1 FROM json_each({SQL_DOCUMENT}, {path}) WHERE {condition})"  # noqa: S608

    @staticmethod
    def _source(field: str) -> tuple[str, str]:
        """The JSON path literal of ``field``'s values and the column its condition reads."""
        name, column = field, "value"
        if field.endswith(CASELESS) and len(field) > len(CASELESS):
            name, column = field.removesuffix(CASELESS), _CASELESS_VALUE
        if _FIELD.fullmatch(name) is None:  # the pipeline admits ECS names only: never reached
            raise ValueError(f"{name[:64]!r} is not a field name")
        return f"'$.\"{name}\"'", column
