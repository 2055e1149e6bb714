"""What persisted task and flow results are made of: plain data that Prefect's JSON serializer
writes and reads back identically, so that no result file in the shared storage is a pickle.

`Frame` is a polars DataFrame field of a pydantic result model: in JSON it is its schema (dtype
names) and its columns; read back it is the same frame, dtypes, nulls and float bits included.
Only flat columns of the dtypes in FRAME_DTYPES are written (every result frame of this project:
labels, traces, predictions, demos, calls); anything else is refused when the result is written.
"""

from __future__ import annotations

from typing import Annotated, Any

import polars as pl
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator

JSON = "json"  # result_serializer of every task and flow whose result is persisted
FRAME_DTYPES = {
    str(dtype): dtype
    for dtype in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64,
                  pl.Float32, pl.Float64, pl.String, pl.Boolean, pl.Null)
}


def frame_to_json(frame: pl.DataFrame) -> dict[str, Any]:
    unknown = {name: str(dtype) for name, dtype in frame.schema.items() if str(dtype) not in FRAME_DTYPES}
    if unknown:
        raise TypeError(f"a result frame has columns of dtypes JSON results do not carry: {unknown}")
    return {"schema": {name: str(dtype) for name, dtype in frame.schema.items()}, "columns": frame.to_dict(as_series=False)}


def frame_from_json(value: Any) -> pl.DataFrame:
    if isinstance(value, pl.DataFrame):
        return value
    schema = {name: FRAME_DTYPES[dtype] for name, dtype in value["schema"].items()}
    return pl.DataFrame(value["columns"], schema=schema)


Frame = Annotated[pl.DataFrame, PlainValidator(frame_from_json), PlainSerializer(frame_to_json, when_used="json")]


class Result(BaseModel):
    """Base of the result models: immutable; NaN and infinities written as JSON's NaN/Infinity
    (Python's json reads them back), not as null."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, ser_json_inf_nan="constants")
