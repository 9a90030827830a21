"""VOTable ``TABLE`` elements (IVOA VOTable 1.4), parsed whole by astropy and cut into batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.arrow import ndarray_to_arrow
from jupyter_staging.formats.base import TableSource, without_paths
from jupyter_staging.formats.metadata import (
    base_meta,
    dumps,
    votable_field_meta,
    votable_param,
    with_metadata,
)

__all__ = ["VOTableSource", "has_readable_table", "votable_problem"]


class _Found(NamedTuple):
    """A ``TABLE`` of the file, the ``PARAM``s in scope of it (as dicts) and its ``RESOURCE``."""

    table: Any
    params: list[dict[str, Any]]
    resource: Any


class _Unreadable(ConversionFailed):
    """astropy cannot parse the VOTable; ``words`` is astropy's message (folders removed)."""

    def __init__(self, path: Path, words: str) -> None:
        super().__init__(f"{path.name}: not a readable VOTable: {words}")
        self.words = words


def _parse(path: Path) -> Any:
    # astropy is heavy (about a second to import): loaded only when a VOTable is read
    from astropy.io.votable import parse

    try:
        return parse(str(path), verify="ignore")
    except Exception as exc:  # astropy raises XML, value and unit errors for malformed files
        words = without_paths(str(exc), path).strip() or type(exc).__name__
        raise _Unreadable(path, words) from None


def has_readable_table(path: Path) -> bool:
    """Whether astropy parses the VOTable at ``path`` and finds a ``TABLE`` in it (the file is parsed
    whole: as long as the conversion's own parse). A VOTable astropy rejects is not a table here."""
    return votable_problem(path) is None


def votable_problem(path: Path) -> str | None:
    """Why the VOTable at ``path`` cannot be converted, for a notice: ``"not a readable VOTable file
    (<astropy's words>)"`` when astropy cannot parse it (a download cut short, malformed XML), ``"not a
    table"`` when it holds no ``TABLE``; None when it can. Parses the file whole. Never raises."""
    try:
        return None if _tables(_parse(path)) else "not a table"
    except _Unreadable as exc:
        return f"not a readable VOTable file ({exc.words})"


def _tables(votable: Any) -> list[_Found]:
    """Every ``TABLE`` of the file in document order, with the ``PARAM``s of its enclosing elements."""
    found: list[_Found] = []

    def walk(resource: Any, params: list[dict[str, Any]]) -> None:
        params = params + [votable_param(p, "RESOURCE") for p in resource.params]
        for table in resource.tables:
            found.append(_Found(table, params, resource))
        for child in resource.resources:
            walk(child, params)

    top = [votable_param(p, "VOTABLE") for p in votable.params]
    for resource in votable.resources:
        walk(resource, top)
    return found


def _position(found: list[_Found], hdu: int | str | None, name: str) -> int:
    """Position in ``found`` of table ``hdu`` (0-based position, a string of digits, or ID/name)."""
    if not found:
        raise ConversionFailed(f"{name}: the VOTable holds no TABLE")
    if isinstance(hdu, str) and hdu.strip().isdigit():
        hdu = int(hdu)
    if hdu is None:
        return 0
    if isinstance(hdu, int):
        if not 0 <= hdu < len(found):
            raise ConversionFailed(
                f"{name}: table {hdu} does not exist; the VOTable has tables 0 to {len(found) - 1}"
            )
        return hdu
    matches = [i for i, f in enumerate(found) if hdu in (f.table.ID, f.table.name)]
    if not matches:
        raise ConversionFailed(f"{name}: no VOTable TABLE with ID or name {hdu!r}")
    return matches[0]


def _schema_meta(path: Path, votable: Any, found: _Found, position: int) -> dict[str, str]:
    """Schema metadata of the table: its position and name, descriptions, ``PARAM``s and ``INFO``s."""
    table, resource = found.table, found.resource
    params = found.params + [votable_param(p, "TABLE") for p in table.params]
    meta = base_meta(path, "votable") | {"votable.table": str(position)}
    if table.ID or table.name:
        meta["votable.table_name"] = table.name or table.ID
    if table.description:
        meta["votable.description"] = table.description
    if resource.description:
        meta["votable.resource_description"] = resource.description
    if params:
        meta["votable.params"] = dumps(params)
    infos = [
        {"name": info.name, "value": info.value, "content": getattr(info, "content", None)}
        for info in list(votable.infos) + list(resource.infos) + list(getattr(table, "infos", []))
    ]
    if infos:
        meta["votable.infos"] = dumps(infos)
    return meta


def _no_data(field: Any) -> pa.Array:
    """An empty column for a ``FIELD`` of a ``TABLE`` without ``DATA``, typed from its datatype."""
    try:
        dtype = np.dtype(field.converter.format)
    except (AttributeError, TypeError):
        return pa.array([], type=pa.null())
    return pa.array([], type=pa.null()) if dtype.kind == "O" else ndarray_to_arrow(np.empty(0, dtype))


class VOTableSource(TableSource):
    """A VOTable ``TABLE`` (``hdu``: its 0-based position among the file's tables, or its ID/name).

    astropy has no streaming VOTable reader: the whole file is parsed into memory (roughly the table's
    binary size, times two while converting), then cut into parts of at most ``chunk_rows`` rows.
    Raises :class:`ConversionFailed` when the file cannot be parsed, holds no ``TABLE`` or not the one
    asked for.
    """

    def __init__(self, path: Path, hdu: int | str | None, chunk_rows: int) -> None:
        votable = _parse(path)
        found = _tables(votable)
        position = _position(found, hdu, path.name)
        arrow = arrow_table(found[position].table)
        fields_meta = [votable_field_meta(field) for field in found[position].table.fields]
        meta = _schema_meta(path, votable, found[position], position)
        schema = with_metadata(arrow.schema, fields_meta, meta)
        super().__init__(pa.Table.from_arrays(arrow.columns, schema=schema), path.stat().st_size, chunk_rows)


def arrow_table(table: Any) -> pa.Table:
    """The rows of a parsed VOTable ``TABLE`` (astropy's ``TableElement``) as an Arrow table, one column
    per ``FIELD`` (named by its name, else its ID), without metadata."""
    data = table.array
    names = data.dtype.names or ()
    arrays, columns = [], []
    for i, field in enumerate(table.fields):
        arrays.append(ndarray_to_arrow(data[names[i]]) if i < len(names) else _no_data(field))
        columns.append(field.name or field.ID or names[i])
    return pa.table(arrays, names=columns)
