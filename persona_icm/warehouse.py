"""The DuckDB warehouse: the only place a DuckDB connection is opened.

`open_warehouse(path)` opens (or creates) the file and brings its schema up to date from
`warehouse/schema.sql`. Writes go through `Warehouse.replace` (delete the rows of one key, insert
a polars frame) inside `Warehouse.transaction()`, so re-running a step replaces its rows and a
failure leaves nothing half-written.

DuckDB lets one process at a time open a file for writing (and no reader while it does). An
open that meets another process's lock retries with exponential backoff for `lock_timeout`
seconds, then raises WarehouseLocked naming the file and the holder's PID.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import tenacity

from persona_icm.methods import REGISTRY_COLUMNS, registry_rows

DEFAULT_PATH = Path("warehouse/persona_icm.duckdb")
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "warehouse" / "schema.sql"
_VERSION_LINE = re.compile(r"^--\s*schema_version:\s*(\d+)\s*$", re.M)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
# Seconds an open waits for another process's lock: writers wait out another run's persist or
# report; readers (the CLI) give up sooner. PERSONA_ICM_WAREHOUSE_LOCK_TIMEOUT overrides both.
WRITER_LOCK_TIMEOUT = 300.0
READER_LOCK_TIMEOUT = 30.0

log = logging.getLogger(__name__)


class SchemaError(RuntimeError):
    """The database and the schema file disagree in a way that cannot be fixed by applying it."""


def schema_text(path: Path = SCHEMA_PATH) -> tuple[int, str]:
    """(version, SQL) of the schema file; the version is its `-- schema_version: N` line."""
    sql = path.read_text()
    match = _VERSION_LINE.search(sql)
    if match is None:
        raise SchemaError(f"{path}: no '-- schema_version: N' line")
    return int(match.group(1)), sql


class WarehouseLocked(RuntimeError):
    """Another process holds the DuckDB file's lock and did not release it in time."""

    def __init__(self, path: str, waited: float, holder_pid: int | None, holder_program: str | None):
        self.path, self.waited, self.holder_pid = path, waited, holder_pid
        holder = "another process" if holder_pid is None else f"another process (PID {holder_pid}, {holder_program})"
        super().__init__(
            f"warehouse {path} is held by {holder}; gave up after waiting {waited:.0f} s. DuckDB lets one "
            "process write a file at a time: wait for that run to finish (or stop it), or use another warehouse path"
        )


class WarehouseUnusable(ValueError):
    """The warehouse path is not a DuckDB file this project can open; the message is one line."""


DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file


def warehouse_file_problem(path: Path) -> str | None:
    """What makes `path` unusable as a DuckDB database file, or None (an absent file is fine: a
    write creates it). Reads 12 bytes, takes no lock."""
    if path.is_dir():
        return "is a directory, not a DuckDB file"
    if not path.exists():
        return None
    if not path.is_file():
        return "is not a regular file"
    try:
        with path.open("rb") as file:
            head = file.read(12)
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if not head:
        return "is an empty file, not a DuckDB database"
    if head[8:12] != DUCKDB_MAGIC:
        return "is not a DuckDB database file"
    return None


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
        """Delete the rows of `table` matching `key` (column=value, or column=(values, ...): any
        of them), then insert `frame`.

        Every row of `frame` must carry the key's values, so running the same call twice leaves
        the table as after the first. Columns are matched by name; table columns missing from
        the frame get their defaults. Returns the number of rows inserted.
        """
        if not key:
            raise ValueError(f"replace into {table}: a key (column=value) is required")
        for name in (table, *key):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"not a plain SQL identifier: {name!r}")
        allowed = {column: list(value) if isinstance(value, tuple | list) else [value] for column, value in key.items()}
        for column, values in allowed.items():
            if column not in frame.columns:
                raise ValueError(f"replace into {table}: frame has no key column {column!r}")
            if not values:
                raise ValueError(f"replace into {table}: key {column!r} has no values")
            if frame.height and not frame[column].is_in(values).all():
                shown = values[0] if len(values) == 1 else values
                raise ValueError(f"replace into {table}: some rows have {column} != {shown!r}")
        where = " AND ".join(f"{column} IN ({', '.join('?' * len(values))})" for column, values in allowed.items())
        with self.transaction():
            self.con.execute(f"DELETE FROM {table} WHERE {where}", [v for values in allowed.values() for v in values])
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


# Keys that schema.sql declares on these tables; files made before schema_version 7 lack them.
PRIMARY_KEYS = {
    "predictions": ("run_id", "country", "method", "experiment", "n_demos", "repeat", "icm_seed", "claim_id"),
    "demos": ("run_id", "country", "method", "experiment", "n_demos", "repeat", "icm_seed", "position"),
}


def _add_primary_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Migration: the primary keys of PRIMARY_KEYS on tables created without them (icm_seed NULL,
    the old way of writing "no ICM run", becomes -1 first)."""
    for table, key in PRIMARY_KEYS.items():
        if not _scalar(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]):
            continue  # a new file: schema.sql creates it with its key
        has_key = _scalar(
            con, "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]
        )
        if has_key:
            continue
        con.execute(f"UPDATE {table} SET icm_seed = -1 WHERE icm_seed IS NULL")
        con.execute(f"ALTER TABLE {table} ALTER COLUMN icm_seed SET NOT NULL")
        columns = ", ".join(f'"{c}"' for c in key)
        con.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({columns})")


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
    _add_primary_keys(con)  # each statement its own transaction: DuckDB indexes no uncommitted update
    con.begin()
    try:
        con.execute(sql)
        con.execute("INSERT INTO schema_version (version, sha256) VALUES (?, ?)", [version, digest])
    except BaseException:
        con.rollback()
        raise
    con.commit()
    return version


def sync_methods(con: duckdb.DuckDBPyConnection) -> None:
    """Make the `methods` table the registry's rows (persona_icm/methods.py), in one transaction;
    writes nothing when they are equal already."""
    columns = ", ".join(REGISTRY_COLUMNS)
    rows = registry_rows()
    if con.execute(f"SELECT {columns} FROM methods ORDER BY position").fetchall() == rows:
        return
    con.begin()
    try:
        con.execute("DELETE FROM methods")
        con.executemany(f"INSERT INTO methods ({columns}) VALUES ({', '.join('?' * len(REGISTRY_COLUMNS))})", rows)
    except BaseException:
        con.rollback()
        raise
    con.commit()


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "Could not set lock" in str(exc)


def _connect(target: str, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried with exponential backoff while another process holds the lock."""

    def waiting(state: tenacity.RetryCallState) -> None:
        if state.attempt_number == 1:
            log.warning("warehouse %s is locked by another process; retrying for up to %.0f s: %s",
                        target, lock_timeout, state.outcome.exception())

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_lock_conflict),
        wait=tenacity.wait_exponential(multiplier=0.05, max=5.0) + tenacity.wait_random(0, 0.05),
        stop=tenacity.stop_after_delay(lock_timeout),
        before_sleep=waiting,
        reraise=True,
    )
    start = time.monotonic()
    try:
        return retrying(duckdb.connect, target, read_only=read_only)
    except duckdb.IOException as exc:
        if not _is_lock_conflict(exc):
            raise
        holder = _LOCK_HOLDER.search(str(exc))
        raise WarehouseLocked(
            target, time.monotonic() - start,
            int(holder["pid"]) if holder else None, holder["program"] if holder else None,
        ) from None


def lock_timeout_default(read_only: bool) -> float:
    env = os.environ.get("PERSONA_ICM_WAREHOUSE_LOCK_TIMEOUT")
    if env:
        return float(env)
    return READER_LOCK_TIMEOUT if read_only else WRITER_LOCK_TIMEOUT


def open_warehouse(
    path: str | Path | None = None,
    *,
    read_only: bool = False,
    schema_path: Path = SCHEMA_PATH,
    lock_timeout: float | None = None,
) -> Warehouse:
    """Open the warehouse file (default warehouse/persona_icm.duckdb; ":memory:" for tests).

    Read-write opens create the file and apply the schema; read-only opens must find it. While
    another process holds the file, retries for `lock_timeout` seconds (default
    lock_timeout_default), then raises WarehouseLocked.
    """
    target = str(DEFAULT_PATH if path is None else path)
    if target != ":memory:":
        file = Path(target)
        if read_only and not file.exists():
            raise FileNotFoundError(f"no warehouse at {file}; run ingestion first")
        problem = warehouse_file_problem(file)
        if problem:
            raise WarehouseUnusable(f"warehouse {file} {problem}; give another warehouse path (--warehouse)")
        file.parent.mkdir(parents=True, exist_ok=True)
    timeout = lock_timeout_default(read_only) if lock_timeout is None else lock_timeout
    try:
        con = _connect(target, read_only, timeout)
    except duckdb.Error as error:  # not a lock: _connect turns those into WarehouseLocked
        raise WarehouseUnusable(f"warehouse {target} cannot be opened: {' '.join(str(error).split())}") from None
    if read_only and not _scalar(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version'"):
        con.close()
        raise WarehouseUnusable(f"warehouse {target} is a DuckDB file but not a persona-icm warehouse (it has no tables of ours)")
    if not read_only:
        try:
            apply_schema(con, schema_path)
            sync_methods(con)
        except BaseException:
            con.close()
            raise
    return Warehouse(con, target)


# ---------------------------------------------------------------- results of runs (flows write)

# The tables a (run, country, step) transaction replaces; model_calls is also keyed by step.
RESULT_TABLES = ("icm_labels", "icm_trace", "icm_diagnosis", "icm_diagnosis_groups", "predictions", "demos", "metrics", "model_calls")
PER_METHOD_TABLES = ("predictions", "demos")  # written per method set: the base model's, then the chat model's


def write_run(wh: Warehouse, run: dict[str, Any]) -> None:
    """Insert or replace the `runs` row of run["run_id"]."""
    wh.replace("runs", pl.DataFrame([run]), run_id=run["run_id"])


def write_results(wh: Warehouse, run_id: str, country: str, step: str, frames: dict[str, pl.DataFrame],
                  methods: Sequence[str] | None = None) -> dict[str, int]:
    """Replace the rows of (run_id, country) in each table of `frames`, in one transaction; with
    `methods`, only those methods' rows of the per-method tables (predictions, demos), so the base
    model's methods and the chat model's are written at different times.

    Each frame must have exactly its table's columns once run_id and country (and step, for
    model_calls) are added: a missing or unknown column is an error naming it, nothing is
    written. Returns rows written per table. Running it twice leaves the tables as after the first.
    """
    unknown = set(frames) - set(RESULT_TABLES)
    if unknown:
        raise ValueError(f"write_results: not a result table: {sorted(unknown)}")
    written = {}
    with wh.transaction():
        for table, frame in frames.items():
            frame = frame.with_columns(run_id=pl.lit(run_id), country=pl.lit(country))
            key: dict[str, Any] = {"run_id": run_id, "country": country}
            if table == "model_calls":
                frame, key = frame.with_columns(step=pl.lit(step)), {**key, "step": step}
            if methods is not None and table in PER_METHOD_TABLES:
                key["method"] = tuple(methods)
            columns = table_columns(wh, table)
            missing, extra = [c for c in columns if c not in frame.columns], [c for c in frame.columns if c not in columns]
            if missing or extra:
                raise ValueError(f"write_results: the {table} frame does not match the table: missing {missing}, unknown {extra}")
            written[table] = wh.replace(table, frame.select(columns), **key)
    return written


def table_columns(wh: Warehouse, table: str) -> list[str]:
    """The table's columns in schema order (warehouse/schema.sql declares every table once)."""
    return wh.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = ? ORDER BY column_index", [table])["column_name"].to_list()


# ---------------------------------------------------------------- accuracy (the views)

def question_outcomes(wh: Warehouse, run_id: str, country: str | None = None) -> pl.DataFrame:
    """Rows of the view question_outcomes (the one definition of both accuracies) of a run."""
    where, params = "run_id = ?", [run_id]
    if country is not None:
        where, params = where + " AND country = ?", [*params, country]
    return wh.sql(f"SELECT * FROM question_outcomes WHERE {where}", params)
