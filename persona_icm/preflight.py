"""Check a run's inputs before anything is written or any model loads.

`check_run(config)` reads the GOQA file, builds the claims and splits in memory (the same code
the flow runs later), checks that every model can be found without a download when offline,
and that the longest prompt of the run fits each country's base model window. Any problem
raises `InputError` with one line naming the input, what is wrong and what to change.
The flow calls it first (a task without retries: waiting does not fix bad input), and so does
`persona-icm run` before it starts Prefect, so a bad input never leaves a row or a traceback.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pydantic import ValidationError

from persona_icm import backends, claims, goqa, gpus
from persona_icm.claims import CountrySplit
from persona_icm.config import ModelSpec, RunConfig, build_config
from persona_icm.warehouse import warehouse_file_problem


class InputError(ValueError):
    """A run input (file, config value, model) that cannot work; the message is one line."""


class InputWarning(UserWarning):
    """An input that works but is not what it says (e.g. a cap larger than the data)."""


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the parsed GOQA file, the claims and splits the run will use (the
    flow writes these, it does not build them again) and each country's longest prompt."""

    dataset_id: str
    splits: dict[str, CountrySplit]
    longest_prompt: dict[str, int] = field(default_factory=dict)  # country -> tokens (local base models)
    window: int | None = None  # base model's prompt limit in tokens, when known
    goqa: goqa.GoqaTable | None = None
    dataset: claims.Dataset | None = None

    def prompt_check(self) -> str:
        """What the prompt-length check found, for the log."""
        if not self.longest_prompt:
            return "prompt length not checked (the base model's window is not known here, e.g. an OpenAI-compatible endpoint)"
        longest = ", ".join(f"{country} {tokens}" for country, tokens in self.longest_prompt.items())
        return f"longest prompt in tokens: {longest}; base model window {self.window} tokens"


# check_data's results in this process, by data config and file: `persona-icm run` checks before
# Prefect starts and its flow's check-inputs task finds the same file parsed already.
_CHECKED: dict[tuple, tuple[goqa.GoqaTable, claims.Dataset]] = {}


def one_line(text: str) -> str:
    return " ".join(text.split())


def config_error_line(error: ValidationError) -> str:
    """A pydantic ValidationError as one line: `icm.alpha: Input should be >= 0 (got -1); ...`."""
    parts = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        parts.append(f"{where}: {e['msg']}{got}")
    return "invalid config: " + "; ".join(parts)


def build_checked_config(preset: str, overrides: dict | None) -> RunConfig:
    """`build_config`, with a bad preset or value reported as one InputError line."""
    try:
        config = build_config(preset, overrides)
    except ValidationError as error:
        raise InputError(config_error_line(error)) from None
    except ValueError as error:  # unknown preset
        raise InputError(str(error)) from None
    check_distinct_models(config.base_models)
    return config


def check_distinct_models(models: list[ModelSpec]) -> None:
    """Each base model of a study once: two that agree on every setting that changes a score (backend, name,
    precision, prompt layout...: persona_icm/scorer_identity.py) would be the same run twice."""
    from persona_icm.scorer_identity import score_settings

    seen: dict[str, int] = {}
    for i, spec in enumerate(models):
        key = repr(sorted(score_settings(spec).items()))
        if key in seen:
            raise InputError(
                f"invalid config: base_models[{i}] ({spec.backend}:{spec.name}) scores as base_models[{seen[key]}] does "
                "(they differ only in settings that change no score); list each model once"
            )
        seen[key] = i


def check_question_list(path: Path) -> None:
    """data.question_list names a non-empty UTF-8 text or CSV file that holds questions."""
    where = f"data.question_list {path}"
    if path.is_dir():
        raise InputError(f"{where} is a directory, not a file of questions")
    if not path.is_file():
        raise InputError(f"{where} does not exist" if not path.exists() else f"{where} is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"{where} cannot be read ({error.strerror})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{where} is not UTF-8 text (byte {error.start} is {data[error.start]:#04x})") from None
    if not data.strip():
        raise InputError(f"{where} is empty")
    try:
        claims.read_question_list(path)
    except claims.DataError as error:
        raise InputError(f"data.question_list: {one_line(str(error))}") from None
    except pl.exceptions.PolarsError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"{where} is not a readable CSV file ({first})") from None


def check_warehouse(path: Path) -> None:
    """The warehouse file is absent (the run creates it) or a DuckDB file, and its folder can be
    written (or created). The folder is tested by creating and removing a file in it, which also
    holds for root and for read-only mounts, where permission bits alone mislead."""
    if str(path) == ":memory:":
        return
    problem = warehouse_file_problem(path)
    if problem:
        raise InputError(f"warehouse {path} {problem}; give another path with --warehouse (warehouse_path) or move it away")
    folder = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    if not folder.is_dir():
        raise InputError(f"warehouse {path}: {folder} is not a folder")
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        handle, probe = tempfile.mkstemp(prefix=".persona-icm-write-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"warehouse {path}: cannot write in folder {folder} ({error.strerror}); give another path with --warehouse") from None
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise InputError(f"warehouse {path} cannot be written (permission denied); give another path with --warehouse")


def check_data(config: RunConfig) -> tuple[goqa.GoqaTable, claims.Dataset, dict[str, CountrySplit]]:
    """GOQA file -> claims and splits, in memory: (parsed file, dataset, country -> split)."""
    data = config.data
    if data.question_list is not None:
        check_question_list(Path(data.question_list))
    try:
        path = goqa.claims_source_path(data)
        stat = path.stat()
        key = (data.model_dump_json(), str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _CHECKED:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", goqa.GoqaWarning)  # the ingest task reports them
                _CHECKED[key] = claims.dataset_from_file(data)
        table, dataset = _CHECKED[key]
    except (FileNotFoundError, goqa.GoqaFormatError, goqa.GoqaUnavailable, claims.DataError) as error:
        raise InputError(one_line(str(error))) from None
    splits = {c: dataset.country_split(c) for c in dataset.countries}
    for country, split in splits.items():
        if not split.train or not split.test:
            raise InputError(
                f"{country}: {len(split.train)} train and {len(split.test)} test claims; both must be non-empty "
                "(raise data.train_cap / data.test_cap, or select more questions)"
            )
        if len(split.train) < config.icm.num_seed:
            raise InputError(
                f"{country}: icm.num_seed={config.icm.num_seed} but only {len(split.train)} train claims; "
                f"lower icm.num_seed to <= {len(split.train)} or raise data.train_cap"
            )
        for side, cap, claims_ in (("train", data.train_cap, split.train), ("test", data.test_cap, split.test)):
            limit = cap if data.protocol == "fork" else cap // 2 * 2  # balanced caps round down to whole groups
            if limit > len(claims_):  # a cap is a maximum (docs/method.md: the fork capped train at min(75%, 125)), not an error
                warnings.warn(
                    f"{country}: data.{side}_cap={cap} is larger than the data; using its {len(claims_)} {side} claims",
                    InputWarning,
                    stacklevel=2,
                )
    return table, dataset, splits


def model_folder(spec: ModelSpec) -> str:
    """The local folder (or cached hub snapshot) of an in-process model (hf, vllm); InputError when there is none
    and the hub cannot be asked (HF_HUB_OFFLINE) or does not know it."""
    from persona_icm.scoring.models import DEMO_MODELS, resolve

    try:
        location = resolve(spec.name)
    except (FileNotFoundError, ModuleNotFoundError) as error:
        raise InputError(f"model {spec.name!r}: {error}") from None
    if Path(location).is_dir():
        return location
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(location, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    hint = f"use a demo model ({', '.join(DEMO_MODELS)}) or a local folder"
    if constants.HF_HUB_OFFLINE:
        raise InputError(
            f"model {spec.name!r} is not a demo model, not a local folder and not in the Hugging Face cache, "
            f"and HF_HUB_OFFLINE is set; {hint}"
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(location)
    except OSError as error:
        raise InputError(f"model {spec.name!r} cannot be found locally or on the hub ({str(error).splitlines()[0]}); {hint}") from None
    return location


def longest_prompt_tokens(encoder, split: CountrySplit) -> int:
    """Tokens of the longest base prompt the run builds for this country: every train claim as a
    demo (the full ICM pool, also the largest evaluation demo set) with its longer label, then the
    longest query."""
    from persona_icm.scoring.base import ScoreRequest

    query = max(split.train + split.test, key=lambda c: len(encoder.pieces(ScoreRequest((), c))[-1]))
    by_label = (encoder.pieces(ScoreRequest(tuple((c, y) for c in split.train), query)) for y in (0, 1))
    return sum(max(len(a), len(b)) for a, b in zip(*by_label, strict=True))


def check_model_host(config: RunConfig, roles: tuple[str, ...] = ("base_model", "chat_model")) -> list[str]:
    """Where a model runs in process: what its backend needs of the host (vLLM: the package, GPUs for its
    tensor-parallel group, and free memory on them: other processes holding it are named, as an error when
    the engine would not fit, else a gpus.GpuMemoryWarning). Runs in the process that loads the model (a gpu
    worker's flow run). Returns one line per visible GPU (free memory, the processes holding it) for the log;
    [] without NVML or without an in-process model."""
    specs = [(role, getattr(config, role)) for role in roles if getattr(config, role) is not None]
    for role, spec in specs:
        problem = backends.get(spec.backend).problem_on_this_host(spec)
        if problem:
            raise InputError(f"{role}: {problem}")
    if not any(backends.in_process(spec.backend) for _, spec in specs):
        return []
    return [gpu.describe() for gpu in gpus.visible_gpu_memory()]


def probe_endpoint(role: str, spec: ModelSpec, query, api_key: str | None) -> None:
    """One request to a remote model before anything runs: it answers, serves the model and
    returns both candidates (e.g. persona_icm.scoring.openai.OpenAIScorer.probe). Its API key
    resolves as the run's will (scoring.openai.resolve_api_key)."""
    from persona_icm.scoring import make_scorer
    from persona_icm.scoring.base import ProcessedLogprobs, ScoreRequest
    from persona_icm.scoring.openai import MissingApiKey

    backend = backends.get(spec.backend)
    kind = "chat" if role == "chat_model" else "base"
    try:
        scorer = make_scorer(spec, api_key=api_key)
    except MissingApiKey as error:
        raise InputError(f"{role}: {error}") from None
    try:
        scorer.probe(ScoreRequest((), query, kind))
    except (*backend.errors("non_retryable"), *backend.errors("unavailable"), ProcessedLogprobs) as error:
        raise InputError(f"{role} {spec.name!r} at {spec.openai.base_url}: {one_line(str(error))}") from None


def check_models(
    config: RunConfig,
    splits: dict[str, CountrySplit],
    models_here: bool = True,
    api_keys: dict[str, str | None] | None = None,
) -> tuple[dict[str, int], int | None]:
    """Every local model is findable; every endpoint answers; the base model's longest prompt per
    country fits its window. `models_here=False` (a fanned-out run's parent) leaves the checks of
    the model host (vLLM installed, GPUs for tensor parallelism) to the process that loads the model."""
    if models_here:
        check_model_host(config)
    some_query = next(c for split in splits.values() for c in split.test + split.train)
    for role, spec in (("chat_model", config.chat_model), ("base_model", config.base_model)):
        if spec is None:
            continue
        if spec.prompts.chat_template is not None:
            from persona_icm.prompts import read_chat_template

            try:
                read_chat_template(spec.prompts.chat_template)
            except (OSError, ValueError) as error:
                raise InputError(f"{role}.prompts.chat_template: {one_line(str(error))}") from None
        backend = backends.get(spec.backend)
        if not backend.in_process:
            key = (api_keys or {}).get(role)
            if key is None and spec.openai.api_key_secret:
                continue  # the flow's check passes the Secret block's value; without it nothing can be asked
            probe_endpoint(role, spec, some_query, key)
            continue
        folder = model_folder(spec)
        if role == "chat_model":
            continue
        window = backend.window(spec, folder)
        if window is None:
            return {}, None
        from transformers import AutoTokenizer

        from persona_icm.prompts import PromptEncoder

        encoder = PromptEncoder(AutoTokenizer.from_pretrained(folder), "base", style=spec.prompts.style)
        longest = {country: longest_prompt_tokens(encoder, split) for country, split in splits.items()}
        for country, tokens in longest.items():
            if tokens > window:
                pool = len(splits[country].train)
                fits = max(0, int(pool * window / tokens) // 2 * 2)
                raise InputError(
                    f"{country}: the longest prompt (ICM pool of {pool} train claims as demos) is {tokens} tokens, "
                    f"more than base_model {spec.name!r} accepts ({window}); lower data.train_cap to about {fits} or use a model with a longer window"
                )
        return longest, window
    return {}, None


def check_run(config: RunConfig, models_here: bool = True, api_keys: dict[str, str | None] | None = None) -> Preflight:
    """All checks, cheapest first; InputError on the first problem (see check_models)."""
    check_warehouse(Path(config.warehouse_path))
    table, dataset, splits = check_data(config)
    longest, window = check_models(config, splits, models_here, api_keys)
    return Preflight(dataset.dataset_id, splits, longest, window, table, dataset)
