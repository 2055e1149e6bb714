"""How `make run` lays the full deployment onto a machine's GPUs, checked without GPUs: a STUB
`nvidia-smi` on PATH lists N GPUs, and the Makefile (make -n) and scripts/prefect_local.sh plan
show what would be installed, started and run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def plan(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/prefect_local.sh", "plan"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def make_venv_commands(env: dict[str, str], tmp_path: Path) -> list[str]:
    done = subprocess.run(["make", "-n", "venv", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if "pip install" in line]


def test_make_run_installs_vllm_on_a_gpu_machine_and_cpu_torch_elsewhere(gpus, tmp_path):
    on_gpu = make_venv_commands(gpus(2), tmp_path)
    assert any("-c constraints/gpu.txt -e '.[dev,cpu-models,gpu,storage]'" in c for c in on_gpu), on_gpu
    assert not any("torch==" in c for c in on_gpu)  # vLLM brings the torch it was built for
    on_cpu = make_venv_commands(gpus(0), tmp_path)
    assert any("-e '.[dev,cpu-models]'" in c for c in on_cpu) and any("torch==2.13.0" in c for c in on_cpu)
    assert not any("constraints/gpu.txt" in c for c in on_cpu)  # the CPU venv resolves freely (docs/gpus.md)


def test_a_gpu_worker_owns_tensor_parallel_size_gpus(gpus):
    out = plan(gpus(8)).stdout
    assert "deployment: persona-icm/full (8 GPU(s): 2 gpu worker(s) of tensor_parallel_size 4)" in out
    assert "worker gpu0: pool gpu, CUDA_VISIBLE_DEVICES=0,1,2,3, --limit 1" in out
    assert "worker gpu1: pool gpu, CUDA_VISIBLE_DEVICES=4,5,6,7, --limit 1" in out
    out = plan(gpus(8, PERSONA_ICM_TP="8")).stdout
    assert "1 gpu worker(s) of tensor_parallel_size 8" in out and "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in out
    assert "gpu1" not in out
    out = plan(gpus(6, PERSONA_ICM_TP="4")).stdout  # 2 GPUs left over: no half worker
    assert out.count("pool gpu,") == 1


def test_full_runs_only_where_it_fits_and_says_why_not(gpus):
    out = plan(gpus(1)).stdout
    assert "deployment: persona-icm/smoke (1 GPU(s), fewer than the tensor_parallel_size 4" in out
    assert "PERSONA_ICM_TP=1" in out and "pool gpu," not in out
    assert "deployment: persona-icm/smoke (no GPU found by nvidia-smi)" in plan(gpus(0)).stdout
    bad = plan(gpus(4, PERSONA_ICM_TP="0"))
    assert bad.returncode == 2 and "PERSONA_ICM_TP=0: must be a positive integer" in bad.stderr


def test_full_parent_holds_no_gpu_and_its_children_run_on_gpu_workers():
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    full = deployments["full"]
    assert full["work_pool"]["name"] == "cpu" and full["parameters"]["fan_out"] is True
    for child in ("batch", "country", "search", "chat"):
        pool = deployments[child]["work_pool"]
        assert pool["name"] == "gpu"
        env = pool["job_variables"]["env"]
        assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn" and int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) >= 30
        assert "CUDA_VISIBLE_DEVICES" not in env  # job env would override the worker's GPUs
    rehearsal = deployments["rehearsal"]
    assert rehearsal["work_pool"]["name"] == "cpu" and rehearsal["parameters"]["fan_out"] is True


def test_full_chat_baseline_runs_in_process_on_vllm_with_the_tensor_parallel_size_given():
    """Blocker: full's chat model was an OpenAI endpoint in allowed_token_ids mode, which refused
    chat prompts. Now it is a local vLLM model of its own step, sized like the base model."""
    from flows.experiment import with_tensor_parallel_size
    from persona_icm.config import build_config

    full = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}["full"]["parameters"]
    config = build_config(full["preset"], with_tensor_parallel_size(full["overrides"], 8))
    assert config.chat_model.backend == "vllm" and config.base_model.backend == "vllm"
    assert config.base_model.vllm.tensor_parallel_size == config.chat_model.vllm.tensor_parallel_size == 8
    assert build_config(full["preset"], with_tensor_parallel_size(full["overrides"], None)).base_model.vllm.tensor_parallel_size == 1
    assert "zero_shot_chat" in config.eval.methods
