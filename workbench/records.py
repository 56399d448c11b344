"""The record schema every probe, circuit method and intervention writes.

Records are long format: one row per measured number. Coordinates that a quantity does not have stay
null (a layer-level value has ``head`` null; a run-level mean has ``prompt_id`` null). The schema is
enforced when a table is written (:func:`conform`); extra or missing columns are errors.

Besides records, a run stores two metadata tables with their own fixed schemas: ``prompts`` (one row
per prompt) and ``tokens`` (one row per prompt token), so that a run can be browsed and its figures
redrawn without the prompt file or the tokenizer.

This module imports no torch: the app reads runs without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

RECORD_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("probe", pa.string(), nullable=False),  # probe / method that produced the row
        pa.field("metric", pa.string(), nullable=False),  # quantity name; unit in run.json
        pa.field("layer", pa.int32()),  # null for model-level values
        pa.field("head", pa.int32()),  # query head index; null for layer-level values
        pa.field("prompt_id", pa.string()),  # null for aggregates over prompts
        pa.field("query_pos", pa.int32()),  # token position of the query, if any
        pa.field("key_pos", pa.int32()),  # token position of the key, if any
        pa.field("segment", pa.string()),  # named segment the value refers to, if any
        pa.field("condition", pa.string()),  # e.g. clean/corrupted, an intervention setting
        pa.field("dim", pa.int32()),  # residual-stream dimension, if any
        pa.field("value", pa.float64(), nullable=False),
    ],
    metadata={"workbench_schema_version": str(SCHEMA_VERSION)},
)
RECORD_COLUMNS = tuple(RECORD_SCHEMA.names)
_VALUE_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in ("run_id", "probe"))

PROMPTS_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("task", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("distractor", pa.string()),
        pa.field("corrupted_text", pa.string()),
        pa.field("segments", pa.string()),  # JSON: {name: [first_token, last_token + 1, ...]}
        pa.field("source", pa.string()),  # file:line the prompt came from
    ]
)

TOKENS_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("pos", pa.int32(), nullable=False),
        pa.field("token_id", pa.int32(), nullable=False),
        pa.field("token", pa.string(), nullable=False),  # decoded text of the token
        pa.field("char_start", pa.int32(), nullable=False),
        pa.field("char_end", pa.int32(), nullable=False),
    ]
)


def records(metric: str, value: Any, **columns: Any) -> pa.Table:
    """Build a record table (without ``run_id``/``probe``, which the run loop adds).

    Args:
        metric: the quantity's name; its unit is declared by the probe.
        value: array-like of floats, length n (or a scalar for n = 1).
        **columns: any of layer, head, prompt_id, query_pos, key_pos, segment, condition, dim; each
            a scalar (broadcast), ``None`` (all null) or an array of length n. ``prompt_id`` may be
            a ``pyarrow.Array``.

    Raises:
        ValueError: an unknown column, or an array whose length is not n.
    """
    unknown = set(columns) - set(_VALUE_COLUMNS)
    if unknown:
        raise ValueError(f"unknown record column(s) {sorted(unknown)}; known: {_VALUE_COLUMNS}")
    values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    n = len(values)
    arrays = {}
    for name in _VALUE_COLUMNS:
        field = RECORD_SCHEMA.field(name)
        if name == "metric":
            arrays[name] = _column(metric, n, field.type, name)
        elif name == "value":
            arrays[name] = pa.array(values, type=pa.float64())
        else:
            arrays[name] = _column(columns.get(name), n, field.type, name)
    return pa.table(arrays, schema=RECORD_SCHEMA.remove(0).remove(0))


def _column(data: Any, n: int, typ: pa.DataType, name: str) -> pa.Array:
    if data is None:
        return pa.nulls(n, type=typ)
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        arr = data if isinstance(data, pa.Array) else data.combine_chunks()
        if len(arr) != n:
            raise ValueError(f"column {name!r} has {len(arr)} values, expected {n}")
        return arr.cast(typ)
    if np.isscalar(data):
        if pa.types.is_string(typ):
            return pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([str(data)])
            ).dictionary_decode()
        return pa.array(np.full(n, data), type=typ)
    arr = np.asarray(data)
    if len(arr) != n:
        raise ValueError(f"column {name!r} has {len(arr)} values, expected {n}")
    return pa.array(arr, type=typ)


def string_column(labels: list[str] | np.ndarray, index: np.ndarray) -> pa.Array:
    """``labels[index]`` as a string array, built without a Python loop over rows."""
    return pa.DictionaryArray.from_arrays(
        pa.array(np.asarray(index, dtype=np.int32)), pa.array(list(labels), type=pa.string())
    ).dictionary_decode()


def concat(tables: list[pa.Table]) -> pa.Table | None:
    """Concatenate record tables (``None`` when the list is empty)."""
    tables = [t for t in tables if t is not None and t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables).combine_chunks()


def conform(table: pa.Table, *, run_id: str, probe: str) -> pa.Table:
    """Add ``run_id``/``probe`` and check the table against :data:`RECORD_SCHEMA`.

    Raises:
        ValueError: the columns are not exactly the record columns, or a type cannot be cast.
    """
    n = table.num_rows
    if "run_id" not in table.column_names:
        table = table.add_column(0, "run_id", _column(run_id, n, pa.string(), "run_id"))
    if "probe" not in table.column_names:
        table = table.add_column(1, "probe", _column(probe, n, pa.string(), "probe"))
    got = set(table.column_names)
    if got != set(RECORD_COLUMNS):
        missing, extra = set(RECORD_COLUMNS) - got, got - set(RECORD_COLUMNS)
        raise ValueError(f"record table columns differ from the schema: missing {sorted(missing)}, "
                         f"extra {sorted(extra)}")
    table = table.select(list(RECORD_COLUMNS)).cast(RECORD_SCHEMA)
    for name in ("run_id", "probe", "metric", "value"):
        if table.column(name).null_count:
            raise ValueError(f"record column {name!r} has nulls")
    return table
