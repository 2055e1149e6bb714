"""The run configuration: one pydantic model, named presets, and overrides.

Each section belongs to one module: `DataConfig` to goqa/claims, `ModelSpec` to scoring,
`IcmConfig` to icm, `EvalConfig` to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from persona_icm import backends
from persona_icm import methods as methods_registry

DEFAULT_COUNTRIES = ["United States", "France", "Japan"]
ALL_COUNTRIES = "all"  # data.countries: every country of the GOQA file with enough question groups
MIN_TEST_CLAIMS = 20  # the default data.min_groups gives a qualifying country at least this many test claims
FORK_DRAW_SEED = 42  # pandas random_state of the fork's False-option draw (transform_opinions.py)
FORK_SPLIT_SEED = 733244742  # the seed the fork passes to load_data (src/experiments/ICM.py)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """What GOQA file, which questions and countries, and how claims and splits are made."""

    protocol: Literal["fork", "balanced"] = Field(
        "fork",
        description="fork: the persona-elicitation fork's data chain item for item (its 180 Pew questions and 14 "
        "countries, tie rule, False-option draw, per-country split; persona_icm/fork_chain.py). balanced: every "
        "question of question_sources (or question_list), one question-level balanced split shared by all countries.",
    )
    corpus: Literal["goqa", "control"] = Field(
        "goqa",
        description="goqa: GlobalOpinionQA. control: the known-answer control questions (persona_icm/control.py), "
        "generated into data/control_goqa.csv; goqa_path and $GOQA_PATH are then not read.",
    )
    goqa_path: Path | None = Field(
        None, description="Local GOQA CSV; None: $GOQA_PATH, else data/global_opinions.csv (downloaded once)."
    )
    countries: list[str] | Literal["all"] = Field(
        default_factory=lambda: list(DEFAULT_COUNTRIES),
        description="Country names of the GOQA file, or 'all': every country of the file with at least min_groups "
        "usable question groups (protocol fork: of its 14 countries). The dataset records the ones left out and why "
        "(warehouse table dataset_countries).",
    )
    min_groups: int | None = Field(
        None, ge=1,
        description="countries 'all': the usable question groups a country needs. None: the fewest groups whose "
        f"test split holds {MIN_TEST_CLAIMS} claims before test_cap (40 at train_fraction 0.75).",
    )
    dataset: Literal["all", "binary"] = Field(
        "binary", description="binary: questions with exactly 2 options (counted after dropping, if on)."
    )
    question_sources: list[str] = Field(
        default_factory=lambda: ["GAS"],
        min_length=1,
        description="balanced: questions of these GOQA sources (GAS = Pew). fork: must stay ['GAS'].",
    )
    question_list: Path | None = Field(
        None, description="balanced: plain text or CSV of question texts; replaces the source rule."
    )
    require_all_countries: bool = Field(
        False,
        description="balanced: False, each country uses every question it has (a question still falls on the same "
        "side of the split in every country); True, only questions with a usable group in every requested country.",
    )
    drop_non_substantive: bool = Field(
        False, description="balanced: drop DK/Refused, Don't know, No answer, Missing... first."
    )
    seed: int = Field(
        None,  # filled in by _protocol_seeds
        description="Seeds the draw of each group's False option. fork: pandas random_state (default 42, the "
        "fork's; only `all` draws); balanced: numpy seed (default 0).",
    )
    split_seed: int = Field(
        None,  # filled in by _protocol_seeds
        description="fork: seed of random.Random shuffling each country's groups (default 733244742, the fork's). "
        "balanced: seed of the question-level shuffle (default 0).",
    )
    train_fraction: float = Field(
        0.75, gt=0, lt=1,
        description="fork: train takes int(n*f) claims of a country's n, test int(n*(1-f)), each capped. "
        "balanced: share of questions on the train side.",
    )
    train_cap: int = Field(
        125, ge=2, description="Max train claims per country (fork: exact, a cut group included; balanced: whole groups)."
    )
    test_cap: int = Field(
        50, ge=2, description="Max test claims per country (fork: exact, a cut group included; balanced: whole groups)."
    )

    @model_validator(mode="before")
    @classmethod
    def _protocol_seeds(cls, values: Any) -> Any:
        """An unset seed or split_seed takes the protocol's default (the fork's own seeds for "fork")."""
        if not isinstance(values, dict):
            return values
        fork = values.get("protocol", "fork") == "fork"
        defaults = {"seed": FORK_DRAW_SEED if fork else 0, "split_seed": FORK_SPLIT_SEED if fork else 0}
        return {**values, **{k: v for k, v in defaults.items() if values.get(k) is None}}

    @model_validator(mode="after")
    def _one_source_file(self) -> DataConfig:
        if self.corpus == "control" and self.goqa_path is not None:
            raise ValueError(f"corpus 'control' reads its own file; goqa_path ({self.goqa_path}) must be unset")
        return self

    @model_validator(mode="after")
    def _fork_protocol_fits(self) -> DataConfig:
        """Options of the balanced rule have no meaning in the fork's chain: refused, never ignored."""
        if self.protocol != "fork":
            return self
        wrong = []
        if self.corpus != "goqa":
            wrong.append(f"corpus {self.corpus!r} (its questions are not the fork's)")
        if self.question_list is not None:
            wrong.append("question_list")
        if self.question_sources != ["GAS"]:
            wrong.append(f"question_sources {self.question_sources}")
        if self.require_all_countries:
            wrong.append("require_all_countries")
        if self.drop_non_substantive:
            wrong.append("drop_non_substantive")
        if wrong:
            raise ValueError(
                f"protocol 'fork' takes the fork's 180 questions as its chain does; {', '.join(wrong)} "
                "belong(s) to protocol 'balanced' (set data.protocol=balanced)"
            )
        return self

    @model_validator(mode="after")
    def _all_countries_fits(self) -> DataConfig:
        if self.countries == ALL_COUNTRIES:
            if self.require_all_countries:
                raise ValueError("countries 'all' with require_all_countries would keep only the questions every "
                                 "country of the file was asked; choose one of them")
        elif self.min_groups is not None:
            raise ValueError(f"min_groups ({self.min_groups}) applies to countries 'all' only; it has a list")
        return self

    def min_groups_for_all(self) -> int:
        """What countries 'all' asks of a country: min_groups, else the fewest groups g of two claims whose test
        split, int(2 g (1 - train_fraction)) claims before test_cap, holds MIN_TEST_CLAIMS (the fork's rule; the
        balanced split is within about half a group of it)."""
        if self.min_groups is not None:
            return self.min_groups
        groups = 1
        while int(2 * groups * (1 - self.train_fraction)) < MIN_TEST_CLAIMS:
            groups += 1
        return groups

    @field_validator("countries", "question_sources")
    @classmethod
    def _distinct(cls, values: list[str] | str) -> list[str] | str:
        if isinstance(values, str):
            return values
        if not values:
            raise ValueError("List should have at least 1 item after validation, not 0")
        if len(set(values)) != len(values):
            raise ValueError(f"listed twice: {sorted({v for v in values if values.count(v) > 1})}")
        return values


class OpenAISpec(_Section):
    """An OpenAI-compatible server (hosted API or `vllm serve`); see persona_icm/scoring/openai.py."""

    base_url: str = "https://api.openai.com/v1"
    model: str | None = Field(None, description="Served model name; default: ModelSpec.name.")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Env var holding the key; None: no key.")
    api_key_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the key (read by the flow); wins over api_key_env."
    )
    mode: Literal["top_logprobs", "allowed_token_ids"] = "top_logprobs"
    top_logprobs: int = Field(20, ge=1)
    tokenizer: str | None = Field(None, description="Local tokenizer (name/folder) for allowed_token_ids.")
    timeout_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_seconds: float = Field(1.0, ge=0)
    max_concurrency: int = Field(8, ge=1)


class VllmEngineArgs(_Section):
    """Arguments of the in-process `vllm.LLM` engine (backend "vllm"); None leaves vLLM's default.

    The weights' dtype is ModelSpec.dtype, shared with the hf backend.

    On a CPU build of vLLM the KV-cache size comes from the env var VLLM_CPU_KVCACHE_SPACE (GiB),
    not from gpu_memory_utilization.
    """

    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=2, description="Must be >= the longest prompt + 1.")
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    kv_cache_dtype: str = Field("auto", description='"fp8" doubles KV capacity but changes the scores.')
    quantization: str | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = Field(False, description="Skip graph capture/compilation: engine starts in seconds, not minutes.")
    block_size: int | None = Field(None, ge=1, description="KV block (prefix-cache granularity); vLLM default.")
    num_gpu_blocks_override: int | None = Field(
        None, ge=2, description="Pin the KV cache to this many blocks (capacity = (blocks - 1) x block_size tokens); "
        "default: what gpu_memory_utilization leaves. For reproducible cache behaviour and `persona-icm plan`'s estimate.",
    )
    seed: int = 0


class PromptConfig(_Section):
    """How prompts for this model are laid out (persona_icm/prompts.py)."""

    style: Literal["fork", "database"] = Field(
        "fork", description="Base prompt layout: the fork's (default) or this project's earlier 'database' layout."
    )
    chat_template: Path | None = Field(
        None, description="Text file replacing the zero-shot chat instruction; placeholders {country} {question} {opinion}."
    )


class ModelSpec(_Section):
    """Which model scores claims, and how (persona_icm/scoring)."""

    backend: str = Field("hf", description="A registered scoring backend (persona_icm/backends.py): hf, vllm, openai, synthetic (not a model: orchestration load tests).")
    name: str = Field(
        "smollm2-135m-instruct",
        description="Demo model name (smollm2-135m-instruct, gemma-3-270m, qwen2.5-coder-0.5b-instruct), "
        "hub id or local folder.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: fp32 CPU, bf16 GPU.")
    head_dtype: Literal["float32", "model"] = Field(
        "float32",
        description="Precision of the LM head (hidden state -> logits) and the log-softmax, for the hf and vllm "
        "backends: float32 whatever `dtype` is (bf16 logits move in steps of 0.06-0.125 at 8-32), or `model`: "
        "the weights' dtype. Changes the scores, so it is part of the search cache key.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ... (hf backend).")
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass (hf).")
    prefix_reuse: bool = Field(True, description="Compute shared prompt prefixes once (hf).")
    kv_budget_gb: float = Field(2.0, gt=0, description="Memory for copies of a shared prefix's KV cache (hf).")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Refuse longer prompts; default: model limit.")
    openai: OpenAISpec = Field(default_factory=OpenAISpec)
    vllm: VllmEngineArgs = Field(default_factory=VllmEngineArgs)
    prompts: PromptConfig = Field(default_factory=PromptConfig)

    @field_validator("backend")
    @classmethod
    def _registered(cls, name: str) -> str:
        backends.get(name)  # ValueError naming the registered backends
        return name


class IcmConfig(_Section):
    """The ICM search (docs/method.md "Objective", "Search"); defaults are the fork's (preset `seed`)."""

    alpha: float = Field(3.5, ge=0, description="Weight of mutual predictability P in U = alpha*P - I.")
    objective: Literal["logodds_mean", "logprob_sum", "logodds_calibrated"] = Field(
        "logodds_mean",
        description="P(D): mean signed log-odds (fork, alpha tuned for it), sum of log P(y|x) (paper), or mean "
        "signed log-odds minus each claim's zero-shot log-odds (calibrated: what the demonstrations add).",
    )
    consistency: bool = Field(True, description="False drops I from U and skips ConsistencyFix (ablation).")
    num_seed: int = Field(12, ge=2, description="Claims labelled at random (balanced) before the search.")
    seed_claims: Literal["random", "first"] = Field(
        "random",
        description="Which claims get the seed labels: `num_seed` drawn at random (the paper), or the first "
        "`num_seed` training claims in split order (the fork). Their balanced labels are shuffled by the search's RNG.",
    )
    iterations: int = Field(
        1000, ge=1, description="K in Algorithm 1; when not given, 1500 for data.dataset='all' (the fork's setting)."
    )
    initial_fix_rounds: int = Field(20, ge=0, description="ConsistencyFix rounds after seeding.")
    loop_fix_rounds: int = Field(10, ge=0, description="ConsistencyFix rounds inside each iteration.")
    initial_T: float = Field(10.0, gt=0)
    final_T: float = Field(
        0.1,
        gt=0,
        description="A floor on T. The log schedule with the presets' betas stays above it for any feasible K "
        "(seed: T = 0.50 after 1000 accepted moves), exactly as in both earlier codebases.",
    )
    schedule: Literal["log", "exp"] = "log"
    beta: float = Field(2.75, gt=0, description="log schedule: T = initial_T / (1 + beta*ln(1+accepted)).")
    decay: float = Field(0.99, gt=0, lt=1, description="exp schedule: T = initial_T * decay**accepted.")
    unlabelled_sibling_weight: float = Field(100.0, gt=0, description="Sampling weight of an unlabelled claim whose group has a labelled member.")
    seed: int = Field(0, description="Seeds the search's one random generator.")
    seeds: list[int] | None = Field(
        None, min_length=1, description="Independent searches, one per seed (each evaluated); None: [seed]."
    )
    engine: Literal["fast", "reference"] = Field(
        "fast", description="fast: memoised, batched, prefix-ordered; reference: one prompt per call. Identical trajectory."
    )
    context_order: Literal["entry", "claim"] = Field(
        "entry", description="Demo order: groups as they entered the pool (prefix-stable) or in claim order (earlier code)."
    )
    score_memo_size: int = Field(200_000, ge=0, description="LRU capacity of the score memo (fast engine); affects cost only.")
    checkpoint_every: int = Field(50, ge=1, description="Iterations between checkpoints (when a checkpoint path is given).")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and len(set(values)) != len(values):
            raise ValueError(f"listed twice: {sorted({v for v in values if values.count(v) > 1})}")
        if values is not None and any(v < 0 for v in values):
            raise ValueError("seeds must be >= 0 (-1 marks rows that use no ICM run)")
        return values

    def searches(self) -> list[IcmConfig]:
        """The config of each independent search: one per seed of `seeds` (else just this one)."""
        return [self.model_copy(update={"seed": s, "seeds": None}) for s in (self.seeds or [self.seed])]


ITERATIONS_ALL_DATASET = 1500  # the fork's K for dataset "all"



def _methods_schema(schema: dict[str, Any]) -> None:
    """JSON schema of eval.methods: the registered names, read when the schema is built."""
    schema["items"] = {**schema.get("items", {}), "enum": methods_registry.config_names()}


class EvalConfig(_Section):
    eval_repeats: int = Field(10, ge=1, description="Seeded random demo orders per demo set.")
    demo_sizes: list[int] = Field(
        default_factory=lambda: [10, 20, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000],
        description="Accuracy-vs-demos sizes (claims); those below the pool size are run, plus the pool. [] = no curve.",
    )
    methods: list[str] = Field(
        default_factory=methods_registry.config_names,
        description="Evaluation methods (persona_icm/methods.py); option_prior runs with golden and with ICM "
        "labels (option_prior_golden/_icm).",
        json_schema_extra=_methods_schema,
    )
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = Field(0, description="Seeds demo sampling, orders, random-matched flips and the bootstrap.")

    @field_validator("methods")
    @classmethod
    def _registered_methods(cls, values: list[str]) -> list[str]:
        registered = methods_registry.config_names()
        unknown = [v for v in values if v not in registered]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(registered)}")
        return values


Preset = Literal["seed", "fork", "paper", "smoke", "control", "world", "world-smoke"]
PRESET_NAMES: tuple[str, ...] = get_args(Preset)


class RunConfig(_Section):
    preset: Preset = "seed"
    data: DataConfig = Field(default_factory=DataConfig)
    base_model: ModelSpec = Field(
        default_factory=ModelSpec, description="The base model of a one-model run; with base_models, the first of them."
    )
    base_models: list[ModelSpec] = Field(
        None,  # filled in by _one_or_several_models: [base_model]
        min_length=1,
        description="A study: the whole per-country experiment once per model, each its own run (run_id) of one "
        "study (study_id). Default [base_model]. Distinct by what changes a score (persona_icm/scorer_identity.py).",
    )
    chat_model: ModelSpec | None = None
    icm: IcmConfig = Field(default_factory=IcmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    warehouse_path: Path = Path("warehouse/persona_icm.duckdb")

    @model_validator(mode="before")
    @classmethod
    def _iterations_for_dataset(cls, values: Any) -> Any:
        """docs/method.md "Search": K is 1000, and 1500 for dataset `all`, unless icm.iterations is given."""
        if not isinstance(values, dict):
            return values
        data = values.get("data") or {}
        dataset = data.get("dataset") if isinstance(data, dict) else data.dataset
        icm = values.get("icm") or {}
        given = "iterations" in (icm if isinstance(icm, dict) else icm.model_fields_set)
        if dataset != "all" or given:
            return values
        if isinstance(icm, dict):
            return {**values, "icm": {**icm, "iterations": ITERATIONS_ALL_DATASET}}
        return {**values, "icm": IcmConfig(**icm.model_dump(exclude_unset=True), iterations=ITERATIONS_ALL_DATASET)}

    @model_validator(mode="before")
    @classmethod
    def _one_or_several_models(cls, values: Any) -> Any:
        """base_models defaults to [base_model]; given, base_model is its first (set both only if they agree)."""
        if not isinstance(values, dict):
            return values
        several = values.get("base_models")
        if several is None:
            return {**values, "base_models": [values.get("base_model") or {}]}
        if not isinstance(several, list) or not several:
            return values  # the field's own validation names the problem
        if values.get("base_model") is not None:
            first, given = (ModelSpec.model_validate(m) if not isinstance(m, ModelSpec) else m
                            for m in (several[0], values["base_model"]))
            if first != given:
                raise ValueError(
                    f"base_model ({given.backend}:{given.name}) differs from the first of base_models "
                    f"({first.backend}:{first.name}); set base_models alone (base_model is then its first)"
                )
        return {**values, "base_model": several[0]}

    def model_configs(self) -> list[RunConfig]:
        """One config per base model, each as a one-model run of that model would have it (same run_id)."""
        return [self.model_copy(update={"base_model": spec, "base_models": [spec]}) for spec in self.base_models]


# Every GOQA country with enough question groups (docs/method.md "All countries"): seed's search,
# evaluation and caps on the balanced data rule (the fork's chain knows its 14 countries only), every
# question of both GOQA sources, dataset `all` (WVS's questions are nearly all multi-option, so `binary`
# would leave out the countries only WVS asked).
WORLD_DATA: dict[str, Any] = {
    "protocol": "balanced", "countries": ALL_COUNTRIES, "question_sources": ["GAS", "WVS"], "dataset": "all",
}
SMOKE_ICM = {"num_seed": 4, "iterations": 8, "initial_fix_rounds": 5, "loop_fix_rounds": 3, "checkpoint_every": 4}
SMOKE_EVAL = {"eval_repeats": 2, "demo_sizes": [4], "bootstrap_samples": 200}

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # The fork's search as it ran, to set beside its published table (docs/method.md "Departures"):
    # no consistency term (its I was always 0), demos in claim order, seed labels on the first
    # num_seed training claims, fp8 KV cache on vLLM (its engine's setting). Data as `seed`.
    "fork": {
        "base_model": {"vllm": {"kv_cache_dtype": "fp8"}},
        "icm": {"consistency": False, "context_order": "claim", "seed_claims": "first"},
    },
    "paper": {"icm": {"alpha": 50.0, "initial_T": 10.0, "final_T": 0.01, "beta": 0.99}},
    # The plumbing check: about 2.5 minutes on a 2-core CPU with the offline SmolLM2-135M.
    "smoke": {
        "data": {"countries": ["United States", "France"], "train_cap": 12, "test_cap": 8},
        "chat_model": {"name": "smollm2-135m-instruct"},
        "icm": SMOKE_ICM,
        "eval": SMOKE_EVAL,
    },
    "world": {"data": WORLD_DATA},
    # world's countries (the same min_groups rule), each at a fraction of smoke's work (a study has 40-140 of
    # them): the plumbing of a study on a CPU, with the offline SmolLM2.
    "world-smoke": {
        "data": {**WORLD_DATA, "train_cap": 8, "test_cap": 4},
        "chat_model": {"name": "smollm2-135m-instruct"},
        "icm": {**SMOKE_ICM, "iterations": 4, "initial_fix_rounds": 3, "loop_fix_rounds": 2, "checkpoint_every": 2},
        "eval": {"eval_repeats": 1, "demo_sizes": [], "bootstrap_samples": 100},
    },
    "control": {
        "data": {
            "protocol": "balanced",  # its questions are not the fork's
            "corpus": "control",
            "question_sources": ["CONTROL"],
            "countries": ["United States"],
            "train_fraction": 0.25,
            "train_cap": 16,
            "test_cap": 96,
        },
        "base_model": {"name": "gemma-3-270m"},
        "chat_model": {"name": "smollm2-135m-instruct"},
        "icm": {"num_seed": 2, "iterations": 80, "initial_fix_rounds": 5, "loop_fix_rounds": 3, "checkpoint_every": 10},
        "eval": {"eval_repeats": 4, "demo_sizes": [4, 10], "bootstrap_samples": 1000},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(preset: str = "seed", overrides: dict[str, Any] | None = None) -> RunConfig:
    """The preset's values, then `overrides` (nested dicts) on top; validated. With base_models in `overrides`,
    the preset's base_model settings (preset fork: its fp8 KV cache) and the overrides' base_model settings
    other than its name are under each of them."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if "preset" in (overrides or {}):  # it would relabel this preset's values, not apply the other's
        raise ValueError(
            f"preset cannot be set as an override (got preset={overrides['preset']!r}); choose it with --preset "
            "(the flow's `preset` parameter)"
        )
    values = _merge({"preset": preset}, PRESETS[preset])
    overrides = dict(overrides or {})
    if isinstance(overrides.get("base_models"), list):
        shared = values.pop("base_model", {})
        given = overrides.get("base_model")
        if isinstance(given, dict):  # e.g. a deployment's engine settings: under each model too; its name must be the first's
            shared = _merge(shared, {k: v for k, v in given.items() if k != "name"})
            if "name" in given:
                overrides["base_model"] = shared | {"name": given["name"]}
            else:
                del overrides["base_model"]
        overrides["base_models"] = [_merge(shared, m) if isinstance(m, dict) else m for m in overrides["base_models"]]
    return RunConfig.model_validate(_merge(values, overrides))
