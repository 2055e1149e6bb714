"""The run configuration: one pydantic model, named presets, and overrides.

Each section belongs to one module: `DataConfig` to goqa/claims, `ModelSpec` to scoring,
`IcmConfig` to icm, `EvalConfig` to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
    """The ICM search (ICM_SPEC.md "Objective", "Search"); defaults are the fork's (preset `seed`)."""

    alpha: float = Field(3.5, ge=0, description="Weight of mutual predictability P in U = alpha*P - I.")
    objective: Literal["logodds_mean", "logprob_sum"] = Field(
        "logodds_mean", description="P(D): mean signed log-odds (fork, alpha tuned for it) or sum of log P(y|x) (paper)."
    )
    consistency: bool = Field(True, description="False drops I from U and skips ConsistencyFix (ablation).")
    num_seed: int = Field(12, ge=2, description="Claims labelled at random (balanced) before the search.")
    iterations: int = Field(1000, ge=0, description="K in Algorithm 1.")
    initial_fix_rounds: int = Field(20, ge=0, description="ConsistencyFix rounds after seeding.")
    loop_fix_rounds: int = Field(10, ge=0, description="ConsistencyFix rounds inside each iteration.")
    initial_T: float = Field(10.0, gt=0)
    final_T: float = Field(0.1, gt=0)
    schedule: Literal["log", "exp"] = "log"
    beta: float = Field(2.75, gt=0, description="log schedule: T = initial_T / (1 + beta*ln(1+accepted)).")
    decay: float = Field(0.99, gt=0, lt=1, description="exp schedule: T = initial_T * decay**accepted.")
    unlabelled_sibling_weight: float = Field(100.0, gt=0, description="Sampling weight of an unlabelled claim whose group has a labelled member.")
    seed: int = 0
    engine: Literal["fast", "reference"] = Field(
        "fast", description="fast: memoised, batched, prefix-ordered; reference: one prompt per call. Identical trajectory."
    )
    context_order: Literal["entry", "claim"] = Field(
        "entry", description="Demo order: groups as they entered the pool (prefix-stable) or in claim order (earlier code)."
    )
    score_memo_size: int = Field(200_000, ge=0, description="LRU capacity of the score memo (fast engine); affects cost only.")
    checkpoint_every: int = Field(50, ge=1, description="Iterations between checkpoints (when a checkpoint path is given).")


class EvalConfig(_Section):
    eval_repeats: int = Field(10, ge=1)
    demo_sizes: list[int] = Field(default_factory=lambda: [10, 20, 50, 75, 100, 150, 200])
    bootstrap_samples: int = Field(1000, ge=100)
    seed: int = 0


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
        "icm": {"num_seed": 4, "iterations": 24, "initial_fix_rounds": 5, "loop_fix_rounds": 3, "checkpoint_every": 8},
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
