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


def test_every_result_frame_matches_its_table_declared_once_in_schema_sql(tmp_path):
    """Each producer's frame schema against warehouse/schema.sql: same columns (the writer adds
    run_id, country, step; persist adds icm_seed) and compatible types."""
    from persona_icm.evaluate import DEMO_SCHEMA, PREDICTION_SCHEMA
    from persona_icm.icm import LABELS_SCHEMA, TRACE_SCHEMA
    from persona_icm.icm.diagnosis import ENERGY_SCHEMA, GROUP_SCHEMA
    from persona_icm.metrics import METRIC_SCHEMA
    from persona_icm.scoring.base import CALLS_SCHEMA
    from persona_icm.warehouse import RESULT_TABLES

    frames = {
        "icm_labels": (LABELS_SCHEMA, {"run_id", "country", "icm_seed"}),
        "icm_trace": (TRACE_SCHEMA, {"run_id", "country", "icm_seed"}),
        "icm_diagnosis": (ENERGY_SCHEMA, {"run_id", "country", "icm_seed"}),
        "icm_diagnosis_groups": (GROUP_SCHEMA, {"run_id", "country", "icm_seed"}),
        "predictions": (PREDICTION_SCHEMA, set()),
        "demos": (DEMO_SCHEMA, set()),
        "metrics": (METRIC_SCHEMA, set()),
        "model_calls": (CALLS_SCHEMA, {"run_id", "country", "step"}),
    }
    assert set(frames) == set(RESULT_TABLES)

    def family(type_name: str) -> str:
        name = type_name.upper()
        if name in ("VARCHAR", "STRING", "UTF8", "JSON"):
            return "text"
        if name in ("BOOLEAN",):
            return "bool"
        if name in ("DOUBLE", "FLOAT", "FLOAT64", "FLOAT32", "REAL"):
            return "float"
        if name.rstrip("0123456789") in ("INT", "UINT", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "INT64", "INT32", "INT16", "INT8"):
            return "int"
        return name

    with open_warehouse(tmp_path / "w.duckdb") as wh:
        for table, (schema, added) in frames.items():
            declared = dict(wh.sql("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?", [table]).iter_rows())
            assert set(schema) | added == set(declared), (table, sorted(set(schema) ^ (set(declared) - added)))
            for column, dtype in schema.items():
                assert family(str(dtype)) == family(declared[column]), (table, column, dtype, declared[column])


def test_a_frame_that_does_not_match_its_table_is_refused_by_name(tmp_path):
    import polars as pl

    from persona_icm.scoring.base import CallRecord, calls_frame
    from persona_icm.warehouse import write_results

    calls = calls_frame([CallRecord(1, 10, 0, 0.5, "icm")], "hf:m")
    with open_warehouse(tmp_path / "w.duckdb") as wh:
        with pytest.raises(ValueError, match=r"model_calls frame does not match.*missing \[\], unknown \['extra'\]"):
            write_results(wh, "r", "France", "icm", {"model_calls": calls.with_columns(extra=pl.lit(1))})
        with pytest.raises(ValueError, match=r"missing \['phase'\]"):
            write_results(wh, "r", "France", "icm", {"model_calls": calls.drop("phase")})
        assert wh.scalar("SELECT count(*) FROM model_calls") == 0
        assert write_results(wh, "r", "France", "icm", {"model_calls": calls}) == {"model_calls": 1}


def test_old_files_get_the_primary_keys_and_duplicates_are_refused(tmp_path):
    """A warehouse from before schema_version 7: predictions/demos without keys, icm_seed NULL."""
    import duckdb

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE predictions (run_id VARCHAR NOT NULL, country VARCHAR NOT NULL, method VARCHAR NOT NULL, "
                "experiment VARCHAR NOT NULL, n_demos INTEGER NOT NULL, \"repeat\" INTEGER NOT NULL, icm_seed INTEGER, "
                "claim_id VARCHAR NOT NULL, group_id VARCHAR NOT NULL, score DOUBLE NOT NULL, pred TINYINT NOT NULL, gold TINYINT NOT NULL)")
    con.execute("INSERT INTO predictions VALUES ('r', 'France', 'zero_shot_base', 'main', 0, 0, NULL, 'c1', 'g1', 0.5, 1, 1)")
    con.close()
    with open_warehouse(path) as wh:
        keys = wh.sql("SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY' ORDER BY 1")
        assert {"predictions", "demos"} <= set(keys["table_name"])
        assert wh.scalar("SELECT icm_seed FROM predictions") == -1
        assert wh.scalar("SELECT accuracy FROM results_by_country") == 1.0
        with pytest.raises(Exception, match="violates primary key"):
            wh.con.execute("INSERT INTO predictions VALUES ('r', 'France', 'zero_shot_base', 'main', 0, 0, -1, 'c1', 'g1', 0.7, 1, 1)")
