"""The run configuration: one pydantic model, named presets, and overrides.

Each section belongs to one module: `DataConfig` to goqa/claims, `ModelSpec` to scoring,
`IcmConfig` to icm, `EvalConfig` to evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_COUNTRIES = ["United States", "France", "Japan"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    goqa_path: Path | None = Field(None, description="Local GOQA CSV; None downloads it from the hub into data/.")
    countries: list[str] = Field(default_factory=lambda: list(DEFAULT_COUNTRIES))
    dataset: Literal["all", "binary"] = "binary"
    question_list: Path | None = Field(None, description="Plain text or CSV of question texts; overrides the rule.")
    drop_non_substantive: bool = False
    seed: int = Field(0, description="Drives the False-option draw and the question-level split.")
    train_cap: int = Field(125, ge=2)
    test_cap: int = Field(50, ge=2)


class VllmEngineArgs(_Section):
    """Arguments of the in-process `vllm.LLM` engine (backend "vllm"); None leaves vLLM's default.

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
    block_size: int | None = Field(None, ge=1, description="KV block (prefix-cache granularity); vLLM default.")
    seed: int = 0
    dtype: str = "auto"


class ModelSpec(_Section):
    backend: Literal["hf", "vllm", "openai"] = "hf"
    name: str = "smollm2-135m-instruct"
    vllm: VllmEngineArgs = Field(default_factory=VllmEngineArgs)


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
