"""The vllm backend's pure logic, without vLLM: request order, log-prob path choice, read-back.

vLLM's SamplingParams and RequestOutput are replaced by minimal stand-ins (stubs) with the same
attribute layout; the real ones are exercised by tests/test_vllm_backend.py.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from persona_icm.config import VllmEngineArgs, build_config
from persona_icm.scoring.base import ScoreRequest, check_lengths
from persona_icm.scoring.vllm import (
    choose_logprob_path,
    engine_kwargs,
    load_engine,
    log_odds,
    sampling_kwargs,
    supports_logprob_token_ids,
)
from persona_icm.tiny_model import make_claims


class NewSamplingParams:  # stub: the msgspec field tuple of vLLM >= 0.20
    __struct_fields__ = ("max_tokens", "logprobs", "allowed_token_ids", "logprob_token_ids")


class OldSamplingParams:  # stub: vLLM < 0.20
    __struct_fields__ = ("max_tokens", "logprobs", "allowed_token_ids")


def stub_output(logprobs: dict[int, float]):
    """Stub of a vLLM RequestOutput holding one generated step's {token id: Logprob}."""
    step = {t: SimpleNamespace(logprob=v) for t, v in logprobs.items()}
    return SimpleNamespace(outputs=[SimpleNamespace(logprobs=[step])], num_cached_tokens=0)


def test_logprob_path_prefers_logprob_token_ids_and_falls_back():
    assert supports_logprob_token_ids(NewSamplingParams)
    assert not supports_logprob_token_ids(OldSamplingParams)
    assert choose_logprob_path(NewSamplingParams) == "token_ids"
    assert choose_logprob_path(OldSamplingParams) == "allowed_token_ids"
    assert choose_logprob_path(NewSamplingParams, "allowed_token_ids") == "allowed_token_ids"
    with pytest.raises(ValueError, match="vLLM >= 0.20"):
        choose_logprob_path(OldSamplingParams, "token_ids")


def test_sampling_kwargs_are_exact_requests_never_top_k():
    (one,) = sampling_kwargs("token_ids", 7, 9)
    assert one["logprob_token_ids"] == [7, 9] and "logprobs" not in one and one["max_tokens"] == 1
    true_req, false_req = sampling_kwargs("allowed_token_ids", 7, 9)
    assert (true_req["allowed_token_ids"], false_req["allowed_token_ids"]) == ([7], [9])
    assert true_req["logprobs"] == false_req["logprobs"] == 0
    assert all(r["temperature"] == 0.0 for r in (one, true_req, false_req))


def test_log_odds_reads_both_paths_and_refuses_a_missing_candidate():
    # token_ids: one output holding the sampled token (3) plus both candidates
    assert log_odds("token_ids", [stub_output({3: -0.1, 7: -1.5, 9: -2.0})], 7, 9) == pytest.approx(0.5)
    # allowed_token_ids: each output holds only its forced candidate
    pair = [stub_output({7: -1.5}), stub_output({9: -2.0})]
    assert log_odds("allowed_token_ids", pair, 7, 9) == pytest.approx(0.5)
    with pytest.raises(RuntimeError, match="no log-prob for token 9"):
        log_odds("token_ids", [stub_output({3: -0.1, 7: -1.5})], 7, 9)


def test_engine_args_come_from_config_and_force_raw_logprobs():
    spec = build_config("seed", {"base_model": {"backend": "vllm", "vllm": {"max_model_len": 4096, "kv_cache_dtype": "fp8"}}})
    kwargs = engine_kwargs("/models/x", spec.base_model.vllm, spec.base_model.dtype, on_cpu=True)
    assert kwargs["model"] == "/models/x" and kwargs["max_model_len"] == 4096 and kwargs["kv_cache_dtype"] == "fp8"
    assert kwargs["enable_prefix_caching"] is True and kwargs["logprobs_mode"] == "raw_logprobs"
    assert kwargs["dtype"] == "float32"  # "auto" as for the hf backend: fp32 on CPU, bf16 on GPU
    assert engine_kwargs("m", VllmEngineArgs(), "auto", on_cpu=False)["dtype"] == "bfloat16"
    assert engine_kwargs("m", VllmEngineArgs(), "float16", on_cpu=True)["dtype"] == "float16"
    assert "quantization" not in kwargs and "block_size" not in kwargs  # None = vLLM's own default
    assert "num_gpu_blocks_override" not in kwargs
    assert kwargs["hf_overrides"] == {"head_dtype": "float32"}  # ModelSpec.head_dtype's default: an fp32 LM head
    assert engine_kwargs("m", VllmEngineArgs(), head_dtype="model")["hf_overrides"] == {"head_dtype": "model"}
    pinned = VllmEngineArgs(block_size=32, num_gpu_blocks_override=65)
    assert engine_kwargs("m", pinned, on_cpu=True)["num_gpu_blocks_override"] == 65  # 64 x 32 = 2,048 KV tokens
    assert hash(spec.base_model.vllm) == hash(VllmEngineArgs(max_model_len=4096, kv_cache_dtype="fp8"))
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        VllmEngineArgs(tensor_parallel_size=0)


def test_too_long_prompt_is_refused_naming_its_query():

    claims = make_claims(4)
    requests = [ScoreRequest((), claims[0]), ScoreRequest(((claims[0], 1),), claims[2])]
    check_lengths([[1] * 10, [1] * 11], requests, 11, "max_model_len - 1")
    with pytest.raises(ValueError, match=r"query Fr-2 with 1 demos has 12 tokens, more than 11 \(max_model_len - 1\)"):
        check_lengths([[1] * 10, [1] * 12], requests, 11, "max_model_len - 1")


def test_engine_start_failure_names_the_model_and_engine_args(monkeypatch):
    """vLLM itself is replaced by a stub module whose LLM() fails like an engine that cannot start."""
    def failing_llm(**kwargs):
        raise ValueError("max_model_len 999999 exceeds the model's limit")

    stub = types.ModuleType("vllm")
    stub.LLM = failing_llm
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", stub)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    load_engine.cache_clear()
    with pytest.raises(RuntimeError, match=r"failed to start for model '/m'.*'max_model_len': 999999.*exceeds"):
        load_engine("/m", VllmEngineArgs(max_model_len=999999))
    load_engine.cache_clear()


def test_processed_logprobs_are_an_error_on_both_paths():
    from persona_icm.scoring.base import ProcessedLogprobs

    with pytest.raises(ProcessedLogprobs, match="exactly 0.0"):
        log_odds("allowed_token_ids", [stub_output({7: 0.0}), stub_output({9: 0.0})], 7, 9)
    with pytest.raises(ProcessedLogprobs):
        log_odds("token_ids", [stub_output({7: 0.0, 9: 0.0})], 7, 9)
    assert log_odds("allowed_token_ids", [stub_output({7: 0.0}), stub_output({9: -3.0})], 7, 9) == 3.0


head_dtype_of_stub: dict[str, str] = {}  # model -> the head dtype a stub engine reports, when not the one asked


def install_stub_vllm(monkeypatch, generate) -> list:
    """Replace vLLM by a stub module (no vLLM in this venv); LLM() records the engines it builds,
    and each engine's generate(prompts, params) is `generate(engine, prompts, params)`."""
    built = []

    class StubLLM:
        def __init__(self, **kwargs):
            built.append(self)
            self.shut_down = False
            core = SimpleNamespace(shutdown=lambda: setattr(self, "shut_down", True))
            self.kwargs = kwargs
            head = "torch." + kwargs["hf_overrides"]["head_dtype"].replace("model", kwargs["dtype"])
            config = SimpleNamespace(max_model_len=512, head_dtype=head_dtype_of_stub.get(kwargs["model"], head))
            self.llm_engine = SimpleNamespace(model_config=config, engine_core=core)

        def generate(self, prompts, params, use_tqdm=False):
            return generate(self, prompts, params)

    class StubSamplingParams(dict):
        __struct_fields__ = NewSamplingParams.__struct_fields__

    stub = types.ModuleType("vllm")
    stub.LLM, stub.SamplingParams = StubLLM, StubSamplingParams
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = dict
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(is_cpu=lambda: True)
    for name, module in (("vllm", stub), ("vllm.inputs", inputs), ("vllm.platforms", platforms)):
        monkeypatch.setitem(sys.modules, name, module)
    load_engine.cache_clear()
    return built


@pytest.fixture
def stub_engines():
    yield
    from persona_icm.scoring import release_local_models

    release_local_models()
    load_engine.cache_clear()


def answer_first_candidate(engine, prompts, params):
    return [stub_output({p["logprob_token_ids"][0]: -1.0, p["logprob_token_ids"][1]: -2.0}) for p in params]


def test_an_engine_that_died_is_dropped_and_the_retry_builds_a_new_one(monkeypatch, tmp_path, stub_engines):
    """The first engine's generate() dies like an engine core that crashed (EngineDeadError)."""
    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer
    from persona_icm.tiny_model import write_tiny_model

    class EngineDead(RuntimeError):
        pass

    def generate(engine, prompts, params):
        if engine is built[0]:
            raise EngineDead("EngineCore encountered an issue")
        return answer_first_candidate(engine, prompts, params)

    built = install_stub_vllm(monkeypatch, generate)
    spec = ModelSpec(backend="vllm", name=str(write_tiny_model(tmp_path / "tiny", head_dim=64)))
    request = [ScoreRequest((), make_claims(2)[0])]
    first = make_scorer(spec)
    with pytest.raises(EngineDead):
        first.score(request)
    assert built[0].shut_down and first.closed
    retry = make_scorer(spec)
    assert retry is not first and retry.llm is built[1]
    assert retry.score(request) == [pytest.approx(1.0)]


def test_prompts_go_to_the_engine_in_the_callers_order(monkeypatch, tmp_path, stub_engines):
    """The caller schedules for the prefix cache (the ICM fast engine alternates its walk); the
    backend must not re-sort. Scores come back matched to their prompts."""
    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer
    from persona_icm.tiny_model import write_tiny_model

    sent = []

    def generate(engine, prompts, params):
        sent.extend(p["prompt_token_ids"] for p in prompts)
        return [stub_output({p["logprob_token_ids"][0]: -float(len(q["prompt_token_ids"])), p["logprob_token_ids"][1]: 0.0})
                for q, p in zip(prompts, params, strict=True)]

    install_stub_vllm(monkeypatch, generate)
    scorer = make_scorer(ModelSpec(backend="vllm", name=str(write_tiny_model(tmp_path / "tiny", head_dim=64))))
    claims = make_claims(6)
    demos = tuple((c, 1) for c in claims[:4])
    requests = [ScoreRequest(demos[:k], claims[5]) for k in (4, 0, 3, 1)]  # neither in token order nor its reverse
    expected = [scorer.encoder("base").encode(r) for r in requests]
    scores = scorer.score(requests)
    assert sent == expected
    assert scores == [pytest.approx(-len(ids)) for ids in expected]


def test_the_spec_head_dtype_reaches_the_engine_and_an_engine_that_ignores_it_is_a_warning(monkeypatch, tmp_path, stub_engines):
    """ModelSpec.head_dtype goes to vLLM as hf_overrides; a vLLM that still runs the head in bf16 (an older release)
    is named in a warning, since its scores are rounded."""
    import warnings

    from persona_icm.config import ModelSpec
    from persona_icm.scoring import make_scorer
    from persona_icm.tiny_model import write_tiny_model

    built = install_stub_vllm(monkeypatch, answer_first_candidate)
    folder = str(write_tiny_model(tmp_path / "tiny", head_dim=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_scorer(ModelSpec(backend="vllm", name=folder, dtype="bfloat16"))
        make_scorer(ModelSpec(backend="vllm", name=folder, dtype="bfloat16", head_dtype="model"))
    assert [e.kwargs["hf_overrides"] for e in built] == [{"head_dtype": "float32"}, {"head_dtype": "model"}]
    load_engine.cache_clear()
    monkeypatch.setitem(head_dtype_of_stub, folder, "torch.bfloat16")
    with pytest.warns(UserWarning, match="head_dtype float32 asked, but this vLLM runs the LM head in bfloat16"):
        load_engine(folder, VllmEngineArgs(), "bfloat16", "float32")
