import polars as pl
import pytest

from persona_icm.warehouse import SCHEMA_PATH, SchemaError, open_warehouse, schema_text


def _schema_copy(tmp_path, extra: str = "", version: int | None = None, name: str = "schema.sql"):
    v, sql = schema_text()
    if version is not None:
        sql = sql.replace(f"-- schema_version: {v}", f"-- schema_version: {version}", 1)
    path = tmp_path / name
    path.write_text(sql + extra)
    return path


def test_schema_applies_once_and_survives_reopen(tmp_path):
    db = tmp_path / "w.duckdb"
    with open_warehouse(db) as wh:
        assert wh.scalar("SELECT count(*) FROM schema_version") == 1
        tables = set(wh.sql("SELECT table_name FROM duckdb_tables()")["table_name"])
        assert {"goqa_sources", "goqa_questions", "goqa_selections", "claims", "splits", "datasets"} <= tables
    with open_warehouse(db) as wh:
        assert wh.scalar("SELECT count(*) FROM schema_version") == 1
        assert wh.scalar("SELECT max(version) FROM schema_version") == schema_text()[0]


def test_appended_schema_sql_is_applied_and_a_broken_one_rolls_back(tmp_path):
    db = tmp_path / "w.duckdb"
    open_warehouse(db).close()
    v = schema_text()[0]
    good = _schema_copy(tmp_path, "\nCREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY);\n", v + 1)
    with open_warehouse(db, schema_path=good) as wh:
        assert wh.scalar("SELECT max(version) FROM schema_version") == v + 1
        assert wh.scalar("SELECT count(*) FROM runs") == 0
    bad = _schema_copy(
        tmp_path,
        "\nCREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY);"
        "\nCREATE TABLE IF NOT EXISTS half (x INTEGER);\nTHIS IS NOT SQL;\n",
        v + 2,
        name="bad.sql",
    )
    with pytest.raises(Exception, match="syntax"):
        open_warehouse(db, schema_path=bad)
    with open_warehouse(db, schema_path=good) as wh:
        assert wh.scalar("SELECT max(version) FROM schema_version") == v + 1
        assert "half" not in set(wh.sql("SELECT table_name FROM duckdb_tables()")["table_name"])


def test_a_newer_database_is_refused(tmp_path):
    db = tmp_path / "w.duckdb"
    newer = _schema_copy(tmp_path, version=schema_text()[0] + 5)
    open_warehouse(db, schema_path=newer).close()
    with pytest.raises(SchemaError, match="newer"):
        open_warehouse(db, schema_path=SCHEMA_PATH)


def test_replace_is_idempotent_and_scoped_to_its_key():
    with open_warehouse(":memory:") as wh:
        wh.con.execute("CREATE TABLE t (run_id VARCHAR, k INTEGER, v DOUBLE, PRIMARY KEY (run_id, k))")
        a = pl.DataFrame({"run_id": ["a", "a"], "k": [1, 2], "v": [0.5, 1.5]})
        b = pl.DataFrame({"run_id": ["b"], "k": [1], "v": [9.0]})
        wh.replace("t", a, run_id="a")
        wh.replace("t", b, run_id="b")
        wh.replace("t", a, run_id="a")
        assert wh.sql("SELECT * FROM t ORDER BY run_id, k").rows() == [("a", 1, 0.5), ("a", 2, 1.5), ("b", 1, 9.0)]
        wh.replace("t", a.head(1).with_columns(v=pl.lit(7.0)), run_id="a")
        assert wh.sql("SELECT * FROM t ORDER BY run_id, k").rows() == [("a", 1, 7.0), ("b", 1, 9.0)]
        with pytest.raises(ValueError, match="run_id != 'b'"):
            wh.replace("t", a, run_id="b")
        with pytest.raises(ValueError, match="identifier"):
            wh.replace("t; DROP TABLE t", a, run_id="a")


def test_failure_inside_a_transaction_writes_nothing():
    with open_warehouse(":memory:") as wh:
        wh.con.execute("CREATE TABLE t (run_id VARCHAR, k INTEGER PRIMARY KEY)")
        wh.con.execute("CREATE TABLE u (run_id VARCHAR, k INTEGER PRIMARY KEY)")
        wh.replace("t", pl.DataFrame({"run_id": ["old"], "k": [0]}), run_id="old")
        with pytest.raises(Exception, match="[Cc]onstraint"):
            with wh.transaction():
                wh.replace("t", pl.DataFrame({"run_id": ["old"], "k": [5]}), run_id="old")
                wh.replace("u", pl.DataFrame({"run_id": ["x", "x"], "k": [1, 1]}), run_id="x")
        assert wh.sql("SELECT * FROM t").rows() == [("old", 0)]
        assert wh.scalar("SELECT count(*) FROM u") == 0
        wh.replace("u", pl.DataFrame({"run_id": ["x"], "k": [1]}), run_id="x")  # usable afterwards
        assert wh.scalar("SELECT count(*) FROM u") == 1


def test_read_only_open_needs_an_existing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no warehouse"):
        open_warehouse(tmp_path / "missing.duckdb", read_only=True)
    open_warehouse(tmp_path / "w.duckdb").close()
    with open_warehouse(tmp_path / "w.duckdb", read_only=True) as wh:
        assert wh.scalar("SELECT count(*) FROM goqa_questions") == 0
