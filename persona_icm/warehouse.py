"""The DuckDB warehouse: the only place a DuckDB connection is opened.

`open_warehouse(path)` opens (or creates) the file and brings its schema up to date from
`warehouse/schema.sql`. Writes go through `Warehouse.replace` (delete the rows of one key, insert
a polars frame) inside `Warehouse.transaction()`, so re-running a step replaces its rows and a
failure leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

DEFAULT_PATH = Path("warehouse/persona_icm.duckdb")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "warehouse" / "schema.sql"
_VERSION_LINE = re.compile(r"^--\s*schema_version:\s*(\d+)\s*$", re.M)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SchemaError(RuntimeError):
    """The database and the schema file disagree in a way that cannot be fixed by applying it."""


def schema_text(path: Path = SCHEMA_PATH) -> tuple[int, str]:
    """(version, SQL) of the schema file; the version is its `-- schema_version: N` line."""
    sql = path.read_text()
    match = _VERSION_LINE.search(sql)
    if match is None:
        raise SchemaError(f"{path}: no '-- schema_version: N' line")
    return int(match.group(1)), sql


class Warehouse:
    """A DuckDB connection with transactional, idempotent writes of polars frames."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str):
        self.con = con
        self.path = path
        self._depth = 0

    # -- reads
    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run a query and return its result as a polars frame."""
        return self.con.sql(query, params=params).pl()

    def scalar(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> Any:
        return _scalar(self.con, query, params)

    # -- writes
    @contextmanager
    def transaction(self) -> Iterator[Warehouse]:
        """Everything inside commits together or not at all. Nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self.con.begin()
        self._depth = 1
        try:
            yield self
        except BaseException:
            self.con.rollback()
            raise
        else:
            self.con.commit()
        finally:
            self._depth = 0

    def replace(self, table: str, frame: pl.DataFrame, **key: Any) -> int:
        """Delete the rows of `table` matching `key` (column=value), then insert `frame`.

        Every row of `frame` must carry the key's values, so running the same call twice leaves
        the table as after the first. Columns are matched by name; table columns missing from
        the frame get their defaults. Returns the number of rows inserted.
        """
        if not key:
            raise ValueError(f"replace into {table}: a key (column=value) is required")
        for name in (table, *key):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")
        for column, value in key.items():
            if column not in frame.columns:
                raise ValueError(f"replace into {table}: frame has no key column {column!r}")
            if frame.height and not (frame[column] == value).all():
                raise ValueError(f"replace into {table}: some rows have {column} != {value!r}")
        where = " AND ".join(f"{column} = ?" for column in key)
        with self.transaction():
            self.con.execute(f"DELETE FROM {table} WHERE {where}", list(key.values()))
            if frame.height:
                self.con.register("_replace_frame", frame)
                try:
                    self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _replace_frame")
                finally:
                    with suppress(duckdb.Error):  # fails in an aborted transaction; harmless
                        self.con.unregister("_replace_frame")
        return frame.height

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _scalar(con: duckdb.DuckDBPyConnection, query: str, params: Any = None) -> Any:
    rows = con.execute(query, params).fetchall()  # fetch everything: DuckDB 2 forbids pending results
    return rows[0][0] if rows else None


def apply_schema(con: duckdb.DuckDBPyConnection, schema_path: Path = SCHEMA_PATH) -> int:
    """Bring the database up to the schema file, in one transaction; return the version.

    Does nothing when this exact file text was applied before. Refuses a database written by a
    newer schema version than the file's.
    """
    version, sql = schema_text(schema_path)
    digest = hashlib.sha256(sql.encode()).hexdigest()
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER NOT NULL, sha256 VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp, PRIMARY KEY (version, sha256))"
    )
    newest = _scalar(con, "SELECT max(version) FROM schema_version")
    if newest is not None and newest > version:
        raise SchemaError(
            f"the database has schema version {newest}, newer than {schema_path} (version {version}); "
            "use the code that wrote it, or a new warehouse path"
        )
    done = _scalar(
        con, "SELECT count(*) FROM schema_version WHERE version = ? AND sha256 = ?", [version, digest]
    )
    if done:
        return version
    con.begin()
    try:
        con.execute(sql)
        con.execute("INSERT INTO schema_version (version, sha256) VALUES (?, ?)", [version, digest])
    except BaseException:
        con.rollback()
        raise
    con.commit()
    return version


def open_warehouse(
    path: str | Path | None = None, *, read_only: bool = False, schema_path: Path = SCHEMA_PATH
) -> Warehouse:
    """Open the warehouse file (default warehouse/persona_icm.duckdb; ":memory:" for tests).

    Read-write opens create the file and apply the schema; read-only opens must find it.
    """
    target = str(DEFAULT_PATH if path is None else path)
    if target != ":memory:":
        file = Path(target)
        if read_only and not file.exists():
            raise FileNotFoundError(f"no warehouse at {file}; run ingestion first")
        file.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(target, read_only=read_only)
    if not read_only:
        try:
            apply_schema(con, schema_path)
        except BaseException:
            con.close()
            raise
    return Warehouse(con, target)
