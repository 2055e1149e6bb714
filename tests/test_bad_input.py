"""Bad input end to end: `persona-icm run` and the flow stop with one clear line, before a model
loads or the warehouse is written (persona_icm/preflight.py, flows/cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from persona_icm.config import build_config
from persona_icm.preflight import InputError, InputWarning, check_run
from tests.goqa_fixtures import make_rows, write_goqa

ROOT = Path(__file__).resolve().parent.parent
COUNTRIES = ["United States", "France"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.tiny_model import write_tiny_model

    work = tmp_path_factory.mktemp("bad_input")
    goqa = write_goqa(work / "goqa.csv", make_rows(24, 4, COUNTRIES))
    rows = make_rows(6, 0, COUNTRIES)
    rows[3]["selections"] = "defaultdict(<class 'list'>, {'France': [0.5, 'lots']})"
    malformed = write_goqa(work / "malformed.csv", rows)
    not_goqa = work / "people.csv"
    not_goqa.write_text("name,age\nAda,36\n")
    questions = work / "questions.txt"
    questions.write_text("Is there life on Mars?\nDo cats dream?\n")
    model = str(write_tiny_model(work / "tiny"))
    header_only = work / "header_only.csv"
    header_only.write_text("question,selections,options,source\n")
    rows = make_rows(24, 4, COUNTRIES)
    duplicated = write_goqa(work / "duplicated.csv", [*rows[:5], rows[2], *rows[5:]])
    (work / "empty.csv").write_bytes(b"")
    (work / "latin1.csv").write_bytes("question\nQuelle est la capitale? \u00e9t\u00e9\n".encode("latin-1"))
    (work / "a_folder.txt").mkdir()
    (work / "wide_template.txt").write_text("In {country}: {question:>100000000} -> {opinion}?")
    return {"work": work, "goqa": goqa, "malformed": malformed, "not_goqa": not_goqa, "questions": questions, "model": model,
            "header_only": header_only, "duplicated": duplicated}


def good_args(inputs, warehouse: Path) -> list[str]:
    return [
        "--warehouse", str(warehouse), "run", "--preset", "smoke", "--goqa-path", str(inputs["goqa"]),
        "--set", f"data.countries={json.dumps(COUNTRIES)}", "--set", "data.train_cap=12", "--set", "data.test_cap=8",
        "--set", f"base_model.name={inputs['model']}", "--set", "icm.num_seed=4",
    ]


# (extra CLI arguments, the error line must match all of these)
BAD = {
    "goqa_missing": (["--goqa-path", "{work}/nope.csv"], ["GOQA file", "nope.csv", "does not exist"]),
    "not_goqa": (["--goqa-path", "{not_goqa}"], ["people.csv is not a GOQA file", "missing column"]),
    "malformed_row": (["--goqa-path", "{malformed}"], ["malformed.csv", "row", "France"]),
    "unknown_country": (["--set", 'data.countries=["France", "Atlantis"]'], ["unknown country", "Atlantis"]),
    "question_list_matches_nothing": (
        ["--set", "data.protocol=balanced", "--set", "data.question_list={questions}"], ["question list", "matches"]
    ),
    "question_list_under_fork_protocol": (["--set", "data.question_list={questions}"], ["data", "question_list", "protocol 'balanced'"]),
    "alpha_negative": (["--set", "icm.alpha=-1"], ["icm.alpha", "greater than or equal to 0", "got -1"]),
    "k_zero": (["--set", "icm.iterations=0"], ["icm.iterations", "greater than or equal to 1"]),
    "cap_below_minimum": (["--set", "data.test_cap=1"], ["data.test_cap"]),
    "num_seed_above_pool": (["--set", "icm.num_seed=40"], ["icm.num_seed=40", "train claims", "lower icm.num_seed"]),
    "model_not_local_offline": (["--set", "base_model.name=no-org/no-such-model"], ["no-org/no-such-model", "HF_HUB_OFFLINE"]),
    "model_folder_missing": (["--set", "base_model.name=./no/such/folder"], ["./no/such/folder", "does not exist"]),
    "vllm_not_installed": (["--set", "base_model.backend=vllm"], ["base_model: backend 'vllm' needs the vllm package"]),
    "tensor_parallel_above_visible_gpus": (
        ["--set", "base_model.backend=vllm", "--set", "base_model.vllm.tensor_parallel_size=4"],
        ["base_model: vllm.tensor_parallel_size=4 but this process sees 0 GPU(s)", "lower tensor_parallel_size"],
    ),
    "chat_endpoint_down": (
        ["--set", "chat_model.backend=openai", "--set", "chat_model.name=m", "--set", "chat_model.openai.api_key_env=null",
         "--set", "chat_model.openai.base_url=http://127.0.0.1:9/v1", "--set", "chat_model.openai.max_attempts=1"],
        ["chat_model 'm' at http://127.0.0.1:9/v1", "no answer"],
    ),
    "chat_template_missing": (
        ["--set", "chat_model.name={model}", "--set", "chat_model.prompts.chat_template={work}/no-template.txt"],
        ["chat_model.prompts.chat_template", "no-template.txt"],
    ),
    "context_too_long": (
        ["--set", "base_model.max_prompt_tokens=200"],
        ["United States: the longest prompt", "pool of 12 train claims", "200", "lower data.train_cap to about"],
    ),
    "preset_set_as_override": (["--set", "preset=paper"], ["preset cannot be set as an override", "'paper'", "--preset"]),
    "goqa_directory": (["--goqa-path", "{work}/a_folder.txt"], ["GOQA file", "a_folder.txt is a directory"]),
    "goqa_header_only": (["--goqa-path", "{header_only}"], ["header_only.csv has a header but no data rows"]),
    "goqa_exact_duplicate_row": (
        ["--goqa-path", "{duplicated}"],
        ["duplicated.csv, data row 6 (", "drinking alcohol is moral", "exact copy of data row 3"],
    ),
    "question_list_directory": (["--set", "data.protocol=balanced", "--set", "data.question_list={work}/a_folder.txt"], ["data.question_list", "a_folder.txt is a directory"]),
    "question_list_missing": (["--set", "data.protocol=balanced", "--set", "data.question_list={work}/nope.txt"], ["data.question_list", "nope.txt does not exist"]),
    "question_list_empty_csv": (["--set", "data.protocol=balanced", "--set", "data.question_list={work}/empty.csv"], ["data.question_list", "empty.csv is empty"]),
    "question_list_not_utf8": (["--set", "data.protocol=balanced", "--set", "data.question_list={work}/latin1.csv"], ["data.question_list", "latin1.csv is not UTF-8"]),
    "chat_template_format_spec": (
        ["--set", "chat_model.name={model}", "--set", "chat_model.prompts.chat_template={work}/wide_template.txt"],
        ["chat_model.prompts.chat_template", "{question:>100000000}", "format spec", "plain {question}"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_on_stderr_exit_1_and_nothing_written(case, inputs, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    warehouse = tmp_path / "wh" / "persona_icm.duckdb"
    extra, expected = BAD[case]
    fields = {k: str(v) for k, v in inputs.items()}
    argv = good_args(inputs, warehouse) + [a.format(**fields) for a in extra]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), lines  # no traceback
    (err,) = [line for line in lines if line.startswith("error: ")]
    for part in expected:
        assert part in err, (part, err)
    assert not warehouse.parent.exists()


def test_good_input_passes_preflight_and_a_cap_above_the_data_only_warns(inputs):
    overrides = {
        "data": {"goqa_path": str(inputs["goqa"]), "countries": COUNTRIES, "train_cap": 12, "test_cap": 8},
        "base_model": {"name": inputs["model"]},
    }
    checked = check_run(build_config("smoke", overrides))
    assert {c: len(s.train) for c, s in checked.splits.items()} == {c: 12 for c in COUNTRIES}
    assert checked.window == 4096 and 0 < max(checked.longest_prompt.values()) < 4096
    # The spec's caps are maxima (train min(75%, 125)): above the data they warn, never fail.
    with pytest.warns(InputWarning, match="data.test_cap=400 is larger than the data"):
        check_run(build_config("smoke", {**overrides, "data": {**overrides["data"], "test_cap": 400}}))


def test_longest_prompt_bound_is_the_real_pool_prompt(inputs):
    """The preflight's token count equals the encoded prompt with every train claim as a demo."""
    from transformers import AutoTokenizer

    from persona_icm.preflight import longest_prompt_tokens
    from persona_icm.prompts import PromptEncoder
    from persona_icm.scoring.base import ScoreRequest

    overrides = {"data": {"goqa_path": str(inputs["goqa"]), "countries": COUNTRIES, "train_cap": 12, "test_cap": 8}}
    split = check_run(build_config("smoke", overrides)).splits["France"]
    encoder = PromptEncoder(AutoTokenizer.from_pretrained(inputs["model"]), "base")
    actual = max(
        len(encoder.encode(ScoreRequest(tuple((c, y) for c in split.train), query)))
        for query in split.train + split.test for y in (0, 1)
    )
    assert actual <= longest_prompt_tokens(encoder, split) <= actual + len(split.train)


def test_cli_subprocess_bad_input_exits_before_prefect_is_imported(inputs, tmp_path):
    """The real entry point in a fresh interpreter: exit 1, one stderr line, Prefect never imported."""
    warehouse = tmp_path / "persona_icm.duckdb"
    argv = good_args(inputs, warehouse) + ["--set", 'data.countries=["Atlantis"]']
    probe = (
        "import sys\nfrom flows.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    print('prefect imported:', 'prefect' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: unknown country") and "\n" not in done.stderr.strip(), done.stderr
    assert "prefect imported: False" in done.stdout
    assert not warehouse.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown_country", "alpha_negative", "context_too_long"])
def test_flow_fails_at_once_without_retries_and_writes_nothing(case, harness, inputs, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.experiment import persona_icm

    warehouse = tmp_path / "wh" / "persona_icm.duckdb"
    overrides = {
        "data": {"goqa_path": str(inputs["goqa"]), "countries": COUNTRIES, "train_cap": 12, "test_cap": 8},
        "base_model": {"name": inputs["model"]},
        "warehouse_path": str(warehouse),
    }
    expected = {
        "unknown_country": ({"data": {**overrides["data"], "countries": ["Atlantis"]}}, "unknown country"),
        "alpha_negative": ({"icm": {"alpha": -1}}, "icm.alpha"),
        "context_too_long": ({"base_model": {"name": inputs["model"], "max_prompt_tokens": 200}}, "longest prompt"),
    }
    change, message = expected[case]
    state = persona_icm(preset="smoke", overrides={**overrides, **change}, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=message):
        state.result()
    assert not warehouse.parent.exists()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    # check-inputs failed on its only attempt; nothing after it ran (alpha fails before any task)
    assert [(t.name.rsplit("-", 1)[0], t.run_count, t.state.name) for t in tasks] == (
        [] if case == "alpha_negative" else [("check-inputs", 1, "Failed")]
    )


def test_search_retries_only_failures_that_waiting_can_fix():
    """icm-search's retry condition: no retry for bad input or a backend without log-probs."""
    from types import SimpleNamespace

    import httpx

    from persona_icm.scoring.openai import (
        CandidateNotReturned,
        EndpointUnavailable,
        NoLogprobsError,
    )
    from tasks.common import retry_helps
    from tasks.search import icm_search

    def failed_with(error):
        def result():
            raise error

        return SimpleNamespace(result=result)

    no_retry = [InputError("x"), NoLogprobsError("x"), CandidateNotReturned("x"), FileNotFoundError("x"), ModuleNotFoundError("x")]
    retry = [EndpointUnavailable("x"), RuntimeError("CUDA error: out of memory"), httpx.ConnectError("x"), OSError("x")]
    assert [retry_helps(None, None, failed_with(e)) for e in no_retry] == [False] * len(no_retry)
    assert [retry_helps(None, None, failed_with(e)) for e in retry] == [True] * len(retry)
    assert icm_search.retry_condition_fn is retry_helps and icm_search.retries == 1


def test_a_run_that_fails_after_the_checks_is_one_line_and_exit_1(inputs, tmp_path, capsys, monkeypatch):
    """The flow replaced by a STUB that fails as a backend outage would (no Prefect run here)."""
    import flows.experiment

    def outage(**kwargs):
        raise RuntimeError("http://gpu-box:8000/v1/completions failed 6 attempts (HTTP 503)\nmore detail")

    monkeypatch.setattr(flows.experiment, "persona_icm", outage)
    with pytest.raises(SystemExit) as exit_:
        main(good_args(inputs, tmp_path / "persona_icm.duckdb"))
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: run failed: RuntimeError: http://gpu-box:8000/v1/completions failed 6 attempts (HTTP 503)"
    )


@pytest.mark.parametrize(
    ("served", "reply", "expected"),
    [
        (["another-model"], None, "does not serve model 'stub-model'"),
        (["stub-model"], {"True": 0.0, "False": 0.0}, "log-prob exactly 0.0"),
        (["stub-model"], {"True": -0.1, "Yes": -2.0}, "['False'] not among the top"),
    ],
)
def test_preflight_probes_each_openai_compatible_model_once(inputs, served, reply, expected):
    """The chat endpoint of a run is asked once before anything runs (STUB server: no model)."""
    from tests.helpers import ModelListingStub, chat_reply

    stub = ModelListingStub(served)
    stub.default = (200, chat_reply(reply or {"True": -0.1, "False": -2.0}))
    overrides = {
        "data": {"goqa_path": str(inputs["goqa"]), "countries": COUNTRIES, "train_cap": 12, "test_cap": 8},
        "base_model": {"name": inputs["model"]},
        "chat_model": {"backend": "openai", "name": "stub-model", "openai": {"base_url": stub.url, "api_key_env": None}},
    }
    try:
        with pytest.raises(InputError, match=f"chat_model 'stub-model' at {stub.url}: .*" + _re_escape(expected)):
            check_run(build_config("smoke", overrides))
        assert [path for path, _, _ in stub.requests] == ([] if served == ["another-model"] else ["/v1/chat/completions"])
    finally:
        stub.close()


def _re_escape(text: str) -> str:
    import re

    return re.escape(text)


def _no_warehouses(folder: Path) -> dict[str, tuple[Path, str]]:
    """Paths given as the warehouse that are not one: (path, what the error line says)."""
    import duckdb

    text, empty, directory, other = folder / "notes.duckdb", folder / "empty.duckdb", folder / "dir.duckdb", folder / "other.duckdb"
    text.write_text("run_id,status\nabc,completed\n")
    empty.write_bytes(b"")
    directory.mkdir()
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    return {
        "text_file": (text, "is not a DuckDB database file"),
        "empty_file": (empty, "is an empty file, not a DuckDB database"),
        "directory": (directory, "is a directory, not a DuckDB file"),
        "duckdb_of_another_program": (other, "is a DuckDB file but not a persona-icm warehouse"),
    }


@pytest.mark.parametrize("command", [["runs"], ["sql", "select count(*) from runs"]])
@pytest.mark.parametrize("case", ["text_file", "empty_file", "directory", "duckdb_of_another_program"])
def test_runs_and_sql_on_a_path_that_is_no_warehouse_are_one_line(case, command, tmp_path, capsys):
    path, expected = _no_warehouses(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["--warehouse", str(path), *command])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: warehouse {path} ") and expected in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created (no .wal)


@pytest.mark.parametrize("case", ["text_file", "read_only_folder"])
def test_run_refuses_an_unusable_warehouse_in_seconds_before_prefect_starts(case, inputs):
    """A fresh interpreter: exit 1 with one line, Prefect never imported (so no temporary server).
    Root may write into a 0o555 folder, so as root the run is started without the capabilities
    that override permission bits: the folder is then read-only for it, as for any other user."""
    import shutil
    import tempfile
    import time

    base = Path(tempfile.mkdtemp(prefix="persona-icm-wh-"))  # pytest's tmp folders are closed to other users
    try:
        base.chmod(0o755)
        as_root_without_override: list[str] = []
        if case == "text_file":
            warehouse, expected = _no_warehouses(base)["text_file"]
        else:
            folder = base / "read-only"
            folder.mkdir()
            folder.chmod(0o555)
            warehouse, expected = folder / "persona_icm.duckdb", f"cannot write in folder {folder} (Permission denied)"
            if os.geteuid() == 0:  # root keeps its uid (it owns the venv) without the capabilities that skip permission bits
                if shutil.which("setpriv") is None:
                    pytest.skip("running as root without setpriv (util-linux): a 0o555 folder is writable for root")
                as_root_without_override = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        before = sorted(str(p) for p in base.rglob("*"))
        probe = (
            "import sys\nfrom flows.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print('prefect imported:', 'prefect' in sys.modules)"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.monotonic()
        done = subprocess.run([*as_root_without_override, sys.executable, "-c", probe, *good_args(inputs, warehouse)],
                              capture_output=True, text=True, env=env, timeout=120, cwd=base)
        elapsed = time.monotonic() - start
        assert done.returncode == 1, done.stderr
        err = done.stderr.strip()
        assert err.startswith(f"error: warehouse {warehouse}") and expected in err and "\n" not in err, err
        assert "prefect imported: False" in done.stdout
        assert elapsed < 30, elapsed
        assert sorted(str(p) for p in base.rglob("*")) == before
    finally:
        for folder in base.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base)


def test_the_input_check_log_line_reads_for_a_model_without_a_known_window():
    """An OpenAI-compatible base model has no window known here: the line says so, not '{} ... None'."""
    from persona_icm.preflight import Preflight

    unknown = Preflight("ds_x", {}).prompt_check()
    assert "not checked" in unknown and "None" not in unknown and "{}" not in unknown
    known = Preflight("ds_x", {}, {"France": 812, "Japan": 790}, 4096).prompt_check()
    assert known == "longest prompt in tokens: France 812, Japan 790; base model window 4096 tokens"
