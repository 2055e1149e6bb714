"""Scoring on an in-process vLLM engine: exact next-token log P(" True") - log P(" False").

Prompts go in as token ids built by `PromptEncoder`, so vLLM and transformers see identical
tokens. Two ways to read the two log-probs exactly, both from the full-vocabulary log-softmax of
the raw logits (`logprobs_mode="raw_logprobs"`):

- "token_ids" (vLLM >= 0.20): one request per prompt with `logprob_token_ids=[true, false]`.
- "allowed_token_ids" (any vLLM V1): two requests per prompt, each restricted to one candidate by
  `allowed_token_ids=[c]` with `logprobs=0`; the restriction acts after the raw log-probs are
  taken, so the forced token's log-prob is its unrestricted one. The second request of a pair
  reuses the first one's prefix cache.

Never top-k `logprobs=k` (a candidate outside the top k has no value) and never
`prompt_logprobs` (skips the prefix cache, materialises tokens x vocab).

Requests are sent in the caller's order: the caller schedules for the prefix cache (the ICM fast
engine sends prompts that share demos next to each other, and alternates the walk's direction
so the next call starts where this one's blocks are freshest), and a re-sort here would undo it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from persona_icm import gpus
from persona_icm.config import VllmEngineArgs
from persona_icm.scoring.base import (
    CallLog,
    ScoreRequest,
    check_lengths,
    check_raw_pair,
    prompt_limit,
    resolve_dtype,
    sum_or_none,
)

LogprobPath = Literal["token_ids", "allowed_token_ids"]
REQUESTS_PER_PROMPT: dict[LogprobPath, int] = {"token_ids": 1, "allowed_token_ids": 2}


def supports_logprob_token_ids(sampling_params_cls: type) -> bool:
    """True when this vLLM's SamplingParams has `logprob_token_ids` (vLLM >= 0.20)."""
    return "logprob_token_ids" in getattr(sampling_params_cls, "__struct_fields__", ())


def choose_logprob_path(sampling_params_cls: type, requested: LogprobPath | None = None) -> LogprobPath:
    """`requested` if given (and possible), else the one-request path where available."""
    available = supports_logprob_token_ids(sampling_params_cls)
    if requested == "token_ids" and not available:
        raise ValueError("logprob_path='token_ids' needs vLLM >= 0.20 (SamplingParams.logprob_token_ids)")
    if requested is not None:
        return requested
    return "token_ids" if available else "allowed_token_ids"


def sampling_kwargs(path: LogprobPath, true_id: int, false_id: int) -> list[dict[str, Any]]:
    """SamplingParams keyword sets for one prompt: one request ("token_ids") or a pair (True, False)."""
    common = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
    if path == "token_ids":
        return [common | {"logprob_token_ids": [true_id, false_id]}]
    return [common | {"allowed_token_ids": [c], "logprobs": 0} for c in (true_id, false_id)]


def candidate_logprob(output, token_id: int) -> float:
    """Log-prob of `token_id` at the first generated position of one vLLM RequestOutput."""
    steps = output.outputs[0].logprobs
    if not steps or token_id not in steps[0]:
        raise RuntimeError(
            f"vLLM returned no log-prob for token {token_id} (got {list(steps[0]) if steps else steps}); "
            "is logprobs_mode 'raw_logprobs' and speculative decoding off?"
        )
    return float(steps[0][token_id].logprob)


def log_odds(path: LogprobPath, outputs: Sequence, true_id: int, false_id: int) -> float:
    """s = log P(true) - log P(false) from the RequestOutputs of one prompt (see `sampling_kwargs`)."""
    if path == "token_ids":
        (out_true,) = (out_false,) = outputs
    else:
        out_true, out_false = outputs
    lp_true, lp_false = candidate_logprob(out_true, true_id), candidate_logprob(out_false, false_id)
    check_raw_pair(lp_true, lp_false, "vLLM engine")
    return lp_true - lp_false


def engine_kwargs(
    model: str, args: VllmEngineArgs, dtype: str = "auto", on_cpu: bool = False, head_dtype: str = "float32"
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: the configured engine args plus what exact scoring needs.

    dtype "auto" means what it means for the hf backend (ModelSpec.dtype): float32 on CPU,
    bfloat16 on GPU, so both backends score the same weights the same way. head_dtype "float32"
    (ModelSpec.head_dtype) sets vLLM's `head_dtype` through `hf_overrides`: vLLM 0.32 reads it in
    `ModelConfig.head_dtype` (vllm/config/model.py) and its LogitsProcessor projects the hidden state
    with the head's weight in that dtype (`LogitsProcessor._apply_head`, unquantized heads only);
    generation models otherwise use the weights' dtype. The raw log-softmax is float32 either way
    (`Sampler.compute_logprobs`).
    """
    dtype = resolve_dtype(dtype, on_gpu=not on_cpu)
    return {
        "model": model,
        **args.model_dump(exclude_none=True),
        "dtype": dtype,
        "logprobs_mode": "raw_logprobs",
        "hf_overrides": {"head_dtype": head_dtype},
    }


def head_dtype_in_engine(llm) -> str | None:
    """The dtype the engine runs its LM head in ("float32", "bfloat16"...), or None when this vLLM does not say."""
    value = getattr(llm.llm_engine.model_config, "head_dtype", None)
    return None if value is None else str(value).removeprefix("torch.")


def prepare_vllm_environment() -> None:
    """What vLLM reads when it is imported, unless the user set it: spawn (gpus.use_spawn), and no
    logging setup of its own. vllm.LLM() otherwise re-runs logging.config.dictConfig, which flushes
    the host's log handlers while it holds logging's lock; a handler whose worker thread waits for
    that lock (Prefect's API log handler) deadlocks the engine start (seen in the rehearsal)."""
    gpus.use_spawn()
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


@functools.cache
def load_engine(model: str, args: VllmEngineArgs, dtype: str = "auto", head_dtype: str = "float32"):
    """The process's `vllm.LLM` for (model, args, dtype, head_dtype), built once; call it first on the main thread."""
    prepare_vllm_environment()
    import vllm
    from vllm.platforms import current_platform

    if threading.current_thread() is not threading.main_thread():
        warnings.warn("building the vLLM engine off the main thread; some vLLM versions fail there", stacklevel=2)
    kwargs = engine_kwargs(model, args, dtype, on_cpu=current_platform.is_cpu(), head_dtype=head_dtype)
    try:
        llm = vllm.LLM(**kwargs)
    except Exception as err:
        raise RuntimeError(
            f"vLLM engine failed to start for model {model!r} with engine args {kwargs}: "
            f"{type(err).__name__}: {err}. Check max_model_len, gpu_memory_utilization (or "
            "VLLM_CPU_KVCACHE_SPACE on CPU), tensor_parallel_size and quantization (a quantized LM head "
            "needs head_dtype: model)."
        ) from err
    running = head_dtype_in_engine(llm)
    if head_dtype == "float32" and running != "float32":
        warnings.warn(f"head_dtype float32 asked, but this vLLM runs the LM head in {running or 'the weights dtype'}; "
                      "scores are rounded to that precision", stacklevel=2)
    return llm


class VllmScorer(CallLog):
    """ClaimScorer on an in-process vLLM engine (see module doc).

    `model` is a hub id or a local folder holding the weights and the tokenizer. `logprob_path`
    None picks "token_ids" when the installed vLLM has it. Prompts longer than `max_prompt_tokens`
    or than the engine's max_model_len - 1 are refused before anything runs. A call's CallRecord
    counts the prompt tokens of every engine request (both of a pair on the "allowed_token_ids"
    path) and how many of them vLLM served from its prefix cache.
    """

    def __init__(
        self,
        model: str,
        engine_args: VllmEngineArgs | None = None,
        dtype: str = "auto",
        logprob_path: LogprobPath | None = None,
        max_prompt_tokens: int | None = None,
        head_dtype: str = "float32",
    ):
        super().__init__()
        prepare_vllm_environment()
        from vllm import SamplingParams

        self.closed = False
        self.model = model
        self.engine_args = engine_args or VllmEngineArgs()
        self.logprob_path = choose_logprob_path(SamplingParams, logprob_path)
        self.llm = load_engine(model, self.engine_args, dtype, head_dtype)
        engine_limit = self.llm.llm_engine.model_config.max_model_len - 1
        self.max_prompt_tokens = prompt_limit(max_prompt_tokens, engine_limit)
        self._tokenizer = None

    def close(self) -> None:
        """Shut the engine down (its engine-core and GPU worker processes exit, freeing their
        memory) and forget it, so the next scorer for this model builds a fresh one."""
        self.closed = True
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        load_engine.cache_clear()
        if core is not None:
            try:
                core.shutdown()
            except Exception as err:  # already dead: nothing left to free
                warnings.warn(f"vLLM engine shutdown for {self.model!r}: {err}", stacklevel=2)
        self.llm = None

    @property
    def prompts_per_call(self) -> int:
        """The engine's max_num_seqs (as it resolved it: 256 on most GPUs, 1024 on an H100) in
        prompts: a call of at most that many starts every request in the engine's first step."""
        seqs = self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        return max(1, seqs // REQUESTS_PER_PROMPT[self.logprob_path])

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def score(self, requests: list[ScoreRequest]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        start = time.perf_counter()
        encoders = [self.encoder(r.kind) for r in requests]
        prompts = [enc.encode(r) for enc, r in zip(encoders, requests, strict=True)]
        check_lengths(prompts, requests, self.max_prompt_tokens, "max_prompt_tokens, or the vLLM engine's max_model_len - 1")
        per_prompt = [sampling_kwargs(self.logprob_path, enc.true_id, enc.false_id) for enc in encoders]
        engine_prompts, engine_params = [], []
        for prompt, kwargs_list in zip(prompts, per_prompt, strict=True):
            for kwargs in kwargs_list:
                engine_prompts.append(TokensPrompt(prompt_token_ids=prompt))
                engine_params.append(SamplingParams(**kwargs))
        try:
            outputs = self.llm.generate(engine_prompts, engine_params, use_tqdm=len(engine_prompts) >= 64)
        except (ValueError, TypeError):  # a request vLLM refused; the engine is fine
            raise
        except Exception:
            self.close()  # a dead engine core must not serve the retry: make_scorer builds a new one
            raise
        scores, pos = [], 0
        for enc, kwargs_list in zip(encoders, per_prompt, strict=True):
            n = len(kwargs_list)
            scores.append(log_odds(self.logprob_path, outputs[pos : pos + n], enc.true_id, enc.false_id))
            pos += n
        cached = [o.num_cached_tokens for o in outputs]
        self.record(
            n_prompts=len(requests),
            prompt_tokens=sum(len(p["prompt_token_ids"]) for p in engine_prompts),
            cached_tokens=sum_or_none(cached),
            wall=time.perf_counter() - start,
        )
        return scores


def scorer_from_spec(spec, api_key: str | None = None) -> VllmScorer:
    """The backend registry's factory (persona_icm/backends.py) for a ModelSpec with backend "vllm"."""
    from persona_icm.scoring.models import resolve

    return VllmScorer(resolve(spec.name), spec.vllm, dtype=spec.dtype, max_prompt_tokens=spec.max_prompt_tokens,
                      head_dtype=spec.head_dtype)


def engine_window(spec, folder: str) -> int | None:
    """The vllm backend's prompt-window rule: the smaller of max_prompt_tokens and the engine's
    max_model_len - 1 (max_model_len defaults to the model's window)."""
    from persona_icm.scoring.models import position_limit

    engine_len = spec.vllm.max_model_len or position_limit(folder)
    return prompt_limit(spec.max_prompt_tokens, engine_len - 1 if engine_len else None)


def visible_gpus() -> int:
    """CUDA devices this process may use (after CUDA_VISIBLE_DEVICES), counted through NVML so that CUDA
    stays uninitialised before vLLM starts its processes; 0 without NVML."""
    return gpus.visible_gpu_count()


def gpu_memory_problem(spec, visible: list[gpus.GpuMemory]) -> str | None:
    """What the GPUs the engine will use (the first tensor_parallel_size visible ones) lack in free memory.

    vLLM refuses to start when a GPU has less free memory than gpu_memory_utilization x its total.
    That is an error here, naming the processes that hold the memory (a killed run's engine core
    lives on and keeps its GPUs full). Other processes holding memory while enough is free is a
    GpuMemoryWarning: the engine starts, next to them."""
    tp, utilization = spec.vllm.tensor_parallel_size, spec.vllm.gpu_memory_utilization
    for gpu in visible[:tp]:
        needed = utilization * gpu.total_bytes
        pids = " ".join(str(p.pid) for p in gpu.processes)
        if gpu.free_bytes < needed:
            held = f"; stop them with `kill {pids}` (a killed run's vLLM engine core stays behind)" if pids else ""
            return (f"vllm.gpu_memory_utilization={utilization:g} needs {needed / gpus.GIB:.1f} GiB free on each GPU but "
                    f"{gpu.describe()}{held}, or lower gpu_memory_utilization")
        if gpu.processes:
            warnings.warn(gpus.GpuMemoryWarning(
                f"{gpu.describe()}: other processes hold memory on a GPU this engine uses (enough is free "
                f"for gpu_memory_utilization={utilization:g}); `kill {pids}` if they are left over from an earlier run"),
                stacklevel=2)
    return None


def host_problem(spec) -> str | None:
    """What this process lacks to run `spec` on vLLM: GPUs for its tensor-parallel group, free memory on
    them (`gpu_memory_problem`), or vLLM itself."""
    tp, seen = spec.vllm.tensor_parallel_size, visible_gpus()
    if tp > 1 and tp > seen:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return (
            f"vllm.tensor_parallel_size={tp} but this process sees {seen} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={devices}); give its worker {tp} GPUs or lower tensor_parallel_size"
        )
    if importlib.util.find_spec("vllm") is None:
        return "backend 'vllm' needs the vllm package in this environment (pip install 'persona-icm[gpu]')"
    return gpu_memory_problem(spec, gpus.visible_gpu_memory())
