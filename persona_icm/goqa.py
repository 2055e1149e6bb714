"""GlobalOpinionQA: find the CSV, parse it safely, load it into the warehouse.

The file (Hugging Face `Anthropic/llm_global_opinions`, `data/global_opinions.csv`) has columns
question, selections, options, source. `selections` is the repr of a Python
`defaultdict(<class 'list'>, {country: [share per option], ...})` and `options` a list literal
whose items may be numbers (`['Not important at all', 1.0, 2.0, ..., 'Very important']`).
Both are read with a regex and `ast.literal_eval`, which evaluates literals only: a data file
can never run code here.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from persona_icm.warehouse import Warehouse

HF_REPO = "Anthropic/llm_global_opinions"
HF_FILE = "data/global_opinions.csv"
DATA_DIR = Path("data")
CACHED_NAME = "global_opinions.csv"
REQUIRED_COLUMNS = ("question", "selections", "options", "source")
SHARE_SUM_TOLERANCE = 0.02
# Bump when parsing changes what lands in the tables: a file ingested by an older parser is
# then re-ingested instead of skipped.
PARSER_VERSION = 2

_DEFAULTDICT = re.compile(r"^\s*defaultdict\(\s*<class 'list'>\s*,\s*(\{.*\})\s*\)\s*$", re.S)


class GoqaFormatError(ValueError):
    """The file is not in the GOQA format; the message names the file, row and problem."""


class GoqaUnavailable(RuntimeError):
    """No local GOQA file was given and the hub download failed."""


class GoqaWarning(UserWarning):
    """Data kept as it is but worth knowing about (e.g. shares that do not sum to 1)."""


@dataclass(frozen=True)
class GoqaTable:
    """A parsed GOQA file, normalised to two frames.

    questions: question_id, row_idx, question, options (list[str]), n_options, source
    selections: question_id, country, option_idx, share
    """

    questions: pl.DataFrame
    selections: pl.DataFrame
    source_sha256: str
    origin: str
    n_rows: int
    n_empty_question_rows: int
    n_share_warnings: int


# ------------------------------------------------------------------------------ locating the file


def resolve_goqa_path(goqa_path: str | Path | None = None, data_dir: Path = DATA_DIR) -> Path:
    """The GOQA CSV to read: `goqa_path`, else $GOQA_PATH, else data/global_opinions.csv,
    downloaded from the hub on first use."""
    goqa_path = goqa_path or os.environ.get("GOQA_PATH") or None
    if goqa_path is not None:
        path = Path(goqa_path)
        if path.is_dir():
            raise GoqaFormatError(f"GOQA file {path} is a directory, not a CSV file (from --goqa-path / GOQA_PATH)")
        if not path.is_file():
            raise FileNotFoundError(f"GOQA file {path} does not exist (from --goqa-path / GOQA_PATH)")
        return path
    cached = data_dir / CACHED_NAME
    if cached.is_file():
        return cached
    return download_goqa(data_dir)


def claims_source_path(data, data_dir: Path = DATA_DIR) -> Path:
    """The CSV a run reads for `data` (a DataConfig): the control file, written on first use, or
    the GOQA file `resolve_goqa_path` finds."""
    if data.corpus == "control":
        from persona_icm.control import CONTROL_NAME, write_control_goqa

        return write_control_goqa(data_dir / CONTROL_NAME)
    return resolve_goqa_path(data.goqa_path, data_dir)


def download_goqa(data_dir: Path = DATA_DIR) -> Path:
    """Download the GOQA CSV from the Hugging Face hub once, into data_dir/global_opinions.csv."""
    from huggingface_hub import hf_hub_download

    try:
        fetched = hf_hub_download(
            repo_id=HF_REPO, filename=HF_FILE, repo_type="dataset", local_dir=data_dir / ".hub"
        )
    except Exception as error:  # offline, DNS, HTTP, auth: all mean "no file from the hub"
        raise GoqaUnavailable(
            f"could not download {HF_FILE} from the Hugging Face dataset {HF_REPO} "
            f"({type(error).__name__}: {error}). Offline, pass a local copy of the GOQA CSV with "
            "--goqa-path PATH or the environment variable GOQA_PATH=PATH."
        ) from error
    target = data_dir / CACHED_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".csv.partial")
    shutil.copyfile(fetched, partial)
    os.replace(partial, target)
    return target


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ parsing


def parse_selections(text: str, where: str) -> dict[str, list[float]]:
    """The per-country share lists from a selections cell (a defaultdict repr or a dict literal)."""
    if text is None or not text.strip():
        raise GoqaFormatError(f"{where}: empty selections")
    match = _DEFAULTDICT.match(text)
    literal = match.group(1) if match else text.strip()
    try:
        value = ast.literal_eval(literal)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise GoqaFormatError(
            f"{where}: selections is not a defaultdict(<class 'list'>, {{...}}) of literals: "
            f"{_clip(text)} ({type(error).__name__})"
        ) from None
    if not isinstance(value, dict):
        raise GoqaFormatError(f"{where}: selections is a {type(value).__name__}, not a dict: {_clip(text)}")
    out: dict[str, list[float]] = {}
    for country, shares in value.items():
        if not isinstance(country, str) or not country.strip():
            raise GoqaFormatError(f"{where}: selections key {country!r} is not a country name")
        if not isinstance(shares, list | tuple) or not all(_is_number(s) for s in shares):
            raise GoqaFormatError(f"{where}: shares for {country!r} are not a list of numbers: {shares!r}")
        shares = [float(s) for s in shares]
        if any(not math.isfinite(s) or s < 0 or s > 1 + 1e-9 for s in shares):
            raise GoqaFormatError(f"{where}: shares for {country!r} must lie in [0, 1]: {shares!r}")
        out[country.strip()] = shares
    return out


def parse_options(text: str, where: str) -> list[str]:
    """The option texts from an options cell; a numeric option becomes Python's text of it (1.0 -> '1.0'),
    as the fork's chain writes it."""
    try:
        value = ast.literal_eval(text.strip()) if text else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise GoqaFormatError(
            f"{where}: options is not a list literal: {_clip(text)} ({type(error).__name__})"
        ) from None
    if not isinstance(value, list | tuple) or not value:
        raise GoqaFormatError(f"{where}: options must be a non-empty list: {_clip(text)}")
    if not all(isinstance(o, str) or _is_number(o) for o in value):
        raise GoqaFormatError(f"{where}: options must be texts or numbers: {_clip(text)}")
    return [_option_text(o) for o in value]


def _option_text(option: str | int | float) -> str:
    return option if isinstance(option, str) else str(option)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _clip(text: str | None, n: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def question_id(question: str, options: list[str], source: str, occurrence: int = 0) -> str:
    """Stable id of a GOQA question: a hash of its text, options and source.

    `occurrence` (0 for the first) separates rows that repeat all three within one file.
    """
    key = [question, options, source] + ([occurrence] if occurrence else [])
    return hashlib.blake2b(json.dumps(key).encode(), digest_size=8).hexdigest()


def read_goqa(path: str | Path, origin: str | None = None) -> GoqaTable:
    """Parse a GOQA CSV. Raises GoqaFormatError on anything malformed; warns (GoqaWarning) on
    share lists that do not sum to 1 within SHARE_SUM_TOLERANCE and keeps them; skips and
    counts rows with an empty question."""
    path = Path(path)
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except Exception as error:
        raise GoqaFormatError(f"{path} is not a readable CSV file: {error}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise GoqaFormatError(
            f"{path} is not a GOQA file: missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(raw.columns) or 'none'}; expected {', '.join(REQUIRED_COLUMNS)})"
        )
    if raw.height == 0:
        raise GoqaFormatError(f"{path} has a header but no data rows")

    questions, selections, seen, rows_seen = [], [], {}, {}
    n_empty, bad_sums = 0, []
    for row_idx, row in enumerate(raw.select(REQUIRED_COLUMNS).iter_rows(named=True)):
        question = (row["question"] or "").strip()
        if not question:
            n_empty += 1
            continue
        where = f"{path}, data row {row_idx + 1} ({_clip(question, 60)})"
        options = parse_options(row["options"], where)
        shares = parse_selections(row["selections"], where)
        source = (row["source"] or "").strip()
        row_key = (question, tuple(options), source, tuple((c, tuple(v)) for c, v in shares.items()))
        if row_key in rows_seen:  # it would enter the data twice: two groups of one question in one split
            raise GoqaFormatError(
                f"{where}: an exact copy of data row {rows_seen[row_key] + 1} (same question, options, source "
                "and shares); remove one of them"
            )
        rows_seen[row_key] = row_idx
        key = (question, tuple(options), source)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        qid = question_id(question, options, source, occurrence)
        questions.append((qid, row_idx, question, options, len(options), source))
        for country, country_shares in shares.items():
            if len(country_shares) != len(options):
                raise GoqaFormatError(
                    f"{where}: {country!r} has {len(country_shares)} shares for {len(options)} options"
                )
            if abs(sum(country_shares) - 1) > SHARE_SUM_TOLERANCE:
                bad_sums.append(f"row {row_idx + 1} {country!r} sums to {sum(country_shares):.3f}")
            selections.extend((qid, country, k, s) for k, s in enumerate(country_shares))
    if not questions:
        raise GoqaFormatError(f"{path} has no data row with a question ({n_empty} rows, every question empty)")
    if bad_sums:
        warnings.warn(
            f"{path}: {len(bad_sums)} share list(s) do not sum to 1 +- {SHARE_SUM_TOLERANCE} "
            f"(kept as they are): {'; '.join(bad_sums[:5])}{' ...' if len(bad_sums) > 5 else ''}",
            GoqaWarning,
            stacklevel=2,
        )
    return GoqaTable(
        questions=pl.DataFrame(
            questions,
            schema={
                "question_id": pl.String,
                "row_idx": pl.Int32,
                "question": pl.String,
                "options": pl.List(pl.String),
                "n_options": pl.Int32,
                "source": pl.String,
            },
            orient="row",
        ),
        selections=pl.DataFrame(
            selections,
            schema={"question_id": pl.String, "country": pl.String, "option_idx": pl.Int32, "share": pl.Float64},
            orient="row",
        ),
        source_sha256=file_sha256(path),
        origin=origin or str(path.resolve()),
        n_rows=raw.height,
        n_empty_question_rows=n_empty,
        n_share_warnings=len(bad_sums),
    )


# ------------------------------------------------------------------------------ into the warehouse


@dataclass(frozen=True)
class IngestReport:
    source_sha256: str
    origin: str
    loaded: bool  # False: this exact file was already in the warehouse, nothing was written
    n_rows: int
    n_questions: int
    n_selections: int
    n_empty_question_rows: int
    n_share_warnings: int


def ingest_goqa(wh: Warehouse, source: str | Path | GoqaTable) -> IngestReport:
    """Load a GOQA file (a path, or the GoqaTable read_goqa already parsed from it) into
    goqa_sources/goqa_questions/goqa_selections, in one transaction.

    Keyed by the sha256 of the file's bytes: the same file again changes nothing; a different
    file is added next to the others under its own fingerprint.
    """
    parsed = source if isinstance(source, GoqaTable) else None
    path = Path(parsed.origin if parsed else source)
    sha = parsed.source_sha256 if parsed else file_sha256(path)
    known = wh.sql(
        "SELECT * FROM goqa_sources WHERE source_sha256 = ? AND parser_version = ?", [sha, PARSER_VERSION]
    )
    if known.height:
        r = known.row(0, named=True)
        return IngestReport(
            sha, r["origin"], False, r["n_rows"], r["n_questions"], r["n_selections"],
            r["n_empty_question_rows"], r["n_share_warnings"],
        )
    table = parsed or read_goqa(path)
    if table.source_sha256 != sha:
        raise RuntimeError(f"{path} changed while it was being ingested; try again")
    report = IngestReport(
        sha, table.origin, True, table.n_rows, table.questions.height, table.selections.height,
        table.n_empty_question_rows, table.n_share_warnings,
    )
    source_row = pl.DataFrame(
        [{
            "source_sha256": sha, "origin": table.origin, "parser_version": PARSER_VERSION,
            "n_rows": report.n_rows, "n_questions": report.n_questions,
            "n_selections": report.n_selections, "n_empty_question_rows": report.n_empty_question_rows,
            "n_share_warnings": report.n_share_warnings, "ingested_at": datetime.now(),
        }]
    )
    key = pl.lit(sha).alias("source_sha256")
    with wh.transaction():
        wh.replace("goqa_questions", table.questions.with_columns(key), source_sha256=sha)
        wh.replace("goqa_selections", table.selections.with_columns(key), source_sha256=sha)
        wh.replace("goqa_sources", source_row, source_sha256=sha)
    return report


def load_goqa(wh: Warehouse, source_sha256: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(questions, selections) of one ingested file, as read_goqa returns them."""
    questions = wh.sql(
        "SELECT question_id, row_idx, question, options, n_options, source FROM goqa_questions"
        " WHERE source_sha256 = ? ORDER BY row_idx",
        [source_sha256],
    )
    if not questions.height:
        raise LookupError(f"no GOQA file with sha256 {source_sha256} in {wh.path}; ingest it first")
    selections = wh.sql(
        "SELECT question_id, country, option_idx, share FROM goqa_selections"
        " WHERE source_sha256 = ? ORDER BY question_id, country, option_idx",
        [source_sha256],
    )
    return questions, selections
