"""The run configuration: one pydantic model, named presets, and overrides.

Each section belongs to one module: `DataConfig` to goqa/claims, `ModelSpec` to scoring,
`IcmConfig` to icm, `EvalConfig` to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_COUNTRIES = ["United States", "France", "Japan"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """What GOQA file, which questions and countries, and how claims and splits are made."""

    goqa_path: Path | None = Field(
        None, description="Local GOQA CSV; None: $GOQA_PATH, else data/global_opinions.csv (downloaded once)."
    )
    countries: list[str] = Field(default_factory=lambda: list(DEFAULT_COUNTRIES), min_length=1)
    dataset: Literal["all", "binary"] = Field(
        "binary", description="binary: questions with exactly 2 options (counted after dropping, if on)."
    )
    question_sources: list[str] = Field(
        default_factory=lambda: ["GAS"],
        min_length=1,
        description="The rule: questions of these GOQA sources (GAS = Pew).",
    )
    question_list: Path | None = Field(
        None, description="Plain text or CSV of question texts; replaces the source rule."
    )
    require_all_countries: bool = Field(
        True, description="Keep only questions with a usable group in every requested country."
    )
    drop_non_substantive: bool = Field(False, description="Drop DK/Refused, Don't know, No answer, Missing... first.")
    seed: int = Field(0, description="Seeds the draw of each group's False option.")
    split_seed: int = Field(0, description="Seeds the question-level train/test shuffle.")
    train_fraction: float = Field(0.75, gt=0, lt=1, description="Share of questions on the train side.")
    train_cap: int = Field(125, ge=2, description="Max train claims per country, rounded down to whole groups.")
    test_cap: int = Field(50, ge=2, description="Max test claims per country, rounded down to whole groups.")

    @field_validator("countries", "question_sources")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"listed twice: {sorted({v for v in values if values.count(v) > 1})}")
        return values


class ModelSpec(_Section):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    name: str = "smollm2-135m-instruct"


class IcmConfig(_Section):
    alpha: float = Field(3.5, ge=0)
    num_seed: int = Field(12, ge=2)
    iterations: int = Field(1000, ge=1, description="K in Algorithm 1.")
    initial_fix_rounds: int = Field(20, ge=0)
    loop_fix_rounds: int = Field(10, ge=0)
    initial_T: float = Field(10.0, gt=0)
    final_T: float = Field(0.1, gt=0)
    schedule: Literal["log", "exp"] = "log"
    beta: float = Field(2.75, gt=0)
    decay: float = Field(0.99, gt=0, lt=1)
    objective: Literal["logodds_mean", "logprob_sum"] = "logodds_mean"
    seed: int = 0


EvalMethod = Literal["icm", "golden", "random_matched", "zero_shot_base", "zero_shot_chat", "option_prior"]
EVAL_METHODS: tuple[str, ...] = get_args(EvalMethod)


class EvalConfig(_Section):
    eval_repeats: int = Field(10, ge=1, description="Seeded random demo orders per demo set.")
    demo_sizes: list[int] = Field(
        default_factory=lambda: [10, 20, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000],
        description="Accuracy-vs-demos sizes (claims); those below the pool size are run, plus the pool. [] = no curve.",
    )
    methods: list[EvalMethod] = Field(
        default_factory=lambda: list(EVAL_METHODS),
        description="option_prior runs with golden and with ICM labels (option_prior_golden/_icm).",
    )
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = Field(0, description="Seeds demo sampling, orders, random-matched flips and the bootstrap.")


class RunConfig(_Section):
    preset: Literal["seed", "paper", "smoke"] = "seed"
    data: DataConfig = Field(default_factory=DataConfig)
    base_model: ModelSpec = Field(default_factory=ModelSpec)
    chat_model: ModelSpec | None = None
    icm: IcmConfig = Field(default_factory=IcmConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    warehouse_path: Path = Path("warehouse/persona_icm.duckdb")


PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    "paper": {"icm": {"alpha": 50.0, "initial_T": 10.0, "final_T": 0.01, "beta": 0.99}},
    "smoke": {
        "data": {"train_cap": 16, "test_cap": 8},
        "icm": {"num_seed": 4, "iterations": 30, "initial_fix_rounds": 5, "loop_fix_rounds": 3},
        "eval": {"eval_repeats": 2, "demo_sizes": [4, 8], "bootstrap_samples": 200},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(preset: str = "seed", overrides: dict[str, Any] | None = None) -> RunConfig:
    """The preset's values, then `overrides` (nested dicts) on top; validated."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = _merge({"preset": preset}, PRESETS[preset])
    return RunConfig.model_validate(_merge(values, overrides or {}))
