"""GPUs through NVML without initialising CUDA, spawn for vLLM on every path, and leftover GPU processes
named before an engine starts.

No GPU and no NVIDIA driver here, so NVML is a STUB module (`StubNvml`, installed as `pynvml`) with
the call layout of nvidia-ml-py; torch.cuda is replaced by one that raises on any use, which shows
that counting GPUs never reaches CUDA.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from types import SimpleNamespace

import pytest

from persona_icm import gpus
from persona_icm.config import ModelSpec, VllmEngineArgs, build_config
from persona_icm.preflight import InputError, check_model_host

GIB = 1024**3


class StubNvmlError(Exception):
    pass


def stub_nvml(devices: list[dict], fail_init: bool = False) -> types.ModuleType:
    """STUB `pynvml` over `devices`: [{"uuid", "name", "total", "free", "procs": [(pid, bytes)], "names": {pid: name}}]."""
    nv = types.ModuleType("pynvml")
    nv.NVMLError = StubNvmlError
    nv.calls = []

    def init():
        nv.calls.append("init")
        if fail_init:
            raise StubNvmlError("NVML Shared Library Not Found")

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: nv.calls.append("shutdown")
    nv.nvmlDeviceGetCount = lambda: len(devices)
    nv.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    nv.nvmlDeviceGetUUID = lambda d: d["uuid"]
    nv.nvmlDeviceGetName = lambda d: d["name"].encode()  # older nvidia-ml-py returns bytes
    nv.nvmlDeviceGetMemoryInfo = lambda d: SimpleNamespace(total=d["total"], free=d["free"], used=d["total"] - d["free"])
    nv.nvmlDeviceGetComputeRunningProcesses = lambda d: [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in d.get("procs", [])]
    nv.nvmlDeviceGetGraphicsRunningProcesses = lambda d: []

    def process_name(pid):
        for d in devices:
            if pid in d.get("names", {}):
                return d["names"][pid]
        raise StubNvmlError("Not Found")

    nv.nvmlSystemGetProcessName = process_name
    return nv


def h100(i: int, free_gib: float = 79.0, procs=(), names=None) -> dict:
    return {"uuid": f"GPU-{i}a{i}b-uuid", "name": "NVIDIA H100 80GB HBM3", "total": 80 * GIB, "free": int(free_gib * GIB),
            "procs": list(procs), "names": names or {}}


class CudaTouched(AssertionError):
    pass


@pytest.fixture
def no_cuda_init(monkeypatch):
    """torch.cuda whose every entry that initialises (or asks) the driver raises."""
    import torch

    def touched(*args, **kwargs):
        raise CudaTouched("torch.cuda was used to count GPUs")

    for name in ("is_available", "init", "device_count", "_lazy_init", "get_device_properties", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, touched)


@pytest.fixture
def nvml(monkeypatch):
    def install(devices, **kwargs):
        module = stub_nvml(devices, **kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install


def vllm_installed(monkeypatch) -> None:
    """A STUB `vllm` module, so that the host check finds vLLM installed (this venv has none)."""
    import importlib.machinery

    stub = types.ModuleType("vllm")
    stub.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", stub)


def vllm_spec(**engine) -> ModelSpec:
    return ModelSpec(backend="vllm", name="m", vllm=VllmEngineArgs(**engine))


# -- counting ---------------------------------------------------------------------------------


def test_visible_gpus_counts_through_nvml_and_never_initialises_cuda(nvml, no_cuda_init, monkeypatch):
    from persona_icm.scoring.vllm import visible_gpus

    stub = nvml([h100(i) for i in range(4)])
    assert visible_gpus() == 4
    assert stub.calls == ["init", "shutdown"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a1b,0")  # a UUID prefix, then an index
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0


def test_without_nvml_there_are_no_gpus_and_cuda_is_not_asked(monkeypatch, no_cuda_init, nvml):
    from persona_icm.scoring.vllm import visible_gpus

    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed: import fails
    assert visible_gpus() == 0 and gpus.visible_gpu_memory() == []
    nvml([h100(0)], fail_init=True)  # installed, but no driver
    assert visible_gpus() == 0 and gpus.visible_gpu_memory() == []


@pytest.mark.parametrize(
    "value,expected",
    [(None, [0, 1, 2, 3]), ("1,3", [1, 3]), ("3,1", [3, 1]), ("0,7,1", [0]), ("1,1", [1]), ("-1", []), ("", []),
     ("GPU-2", [2]), ("GPU-", []), ("MIG-abc", []), (" 2 , 0", [2, 0])],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, expected):
    """Indices or unique GPU-UUID prefixes, up to the first entry that names no (new) device."""
    uuids = ["GPU-0aa", "GPU-1bb", "GPU-2cc", "GPU-3dd"]
    assert gpus.visible_indices(uuids, value) == expected


def test_the_tensor_parallel_check_sees_the_gpus_nvml_sees(nvml, no_cuda_init, monkeypatch):
    from persona_icm.scoring.vllm import host_problem

    nvml([h100(i) for i in range(4)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    problem = host_problem(vllm_spec(tensor_parallel_size=4))
    assert problem.startswith("vllm.tensor_parallel_size=4 but this process sees 2 GPU(s) (CUDA_VISIBLE_DEVICES=0,1)")


# -- spawn ------------------------------------------------------------------------------------


def test_the_cli_entry_sets_spawn_unless_the_user_chose_a_method(monkeypatch, tmp_path):
    """`persona-icm` (flows.cli.main, which runs persona_icm.cli.main) sets the start method before any command."""
    from flows.cli import main

    for chosen, expected in ((None, "spawn"), ("fork", "fork")):
        if chosen is None:
            monkeypatch.delenv(gpus.START_METHOD_ENV, raising=False)
        else:
            monkeypatch.setenv(gpus.START_METHOD_ENV, chosen)
        with pytest.raises(SystemExit):  # no warehouse there: one error line, after the entry
            main(["--warehouse", str(tmp_path / "none.duckdb"), "runs"])
        assert os.environ[gpus.START_METHOD_ENV] == expected


class ImportWatch:
    """A meta-path finder that records VLLM_WORKER_MULTIPROC_METHOD when `vllm` is imported (and finds nothing)."""

    def __init__(self):
        self.seen: list[str | None] = []

    def find_spec(self, name, path=None, target=None):
        if name == "vllm":
            self.seen.append(os.environ.get(gpus.START_METHOD_ENV))
        return None


@pytest.mark.parametrize("chosen,expected", [(None, "spawn"), ("fork", "fork")])
def test_the_vllm_scorer_entry_sets_spawn_before_vllm_is_imported(monkeypatch, chosen, expected):
    from persona_icm.scoring.vllm import load_engine

    watch = ImportWatch()
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.setattr(sys, "meta_path", [watch, *sys.meta_path])
    if chosen is None:
        monkeypatch.delenv(gpus.START_METHOD_ENV, raising=False)
    else:
        monkeypatch.setenv(gpus.START_METHOD_ENV, chosen)
    load_engine.cache_clear()
    with pytest.raises(ImportError):  # no vLLM in this venv
        load_engine("/m", VllmEngineArgs())
    assert watch.seen[:1] == [expected]


def test_releasing_models_does_not_initialise_cuda(no_cuda_init):
    """The chat model's engine may start in this process after the base model is released."""
    from persona_icm.scoring import release_local_models

    release_local_models()


# -- leftover GPU processes -------------------------------------------------------------------


def test_a_gpu_held_by_a_leftover_engine_is_an_error_naming_its_pid(nvml, no_cuda_init, monkeypatch):
    """vLLM needs gpu_memory_utilization x total free on each of its GPUs; a killed run's engine core holds 70 GiB."""
    vllm_installed(monkeypatch)
    nvml([h100(0), h100(1, free_gib=9.5, procs=[(4242, 70 * GIB)], names={4242: "VLLM::EngineCore"})])
    config = build_config("smoke", {"base_model": {"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}})
    with pytest.raises(InputError) as error:
        check_model_host(config, roles=("base_model",))
    line = str(error.value)
    assert "\n" not in line
    assert line.startswith("base_model: vllm.gpu_memory_utilization=0.9 needs 72.0 GiB free on each GPU but "
                           "GPU 1 (NVIDIA H100 80GB HBM3): 9.5 of 80.0 GiB free; held by pid 4242 (VLLM::EngineCore, 70.0 GiB)")
    assert "kill 4242" in line and "lower gpu_memory_utilization" in line


def test_other_processes_with_enough_free_memory_are_one_warning_line(nvml, no_cuda_init, monkeypatch):
    vllm_installed(monkeypatch)
    nvml([h100(0, free_gib=75.0, procs=[(31337, 4 * GIB), (os.getpid(), GIB)]), h100(1, free_gib=1.0, procs=[(7, 79 * GIB)])])
    config = build_config("smoke", {"base_model": {"backend": "vllm"}})  # tensor_parallel_size 1: GPU 0 only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lines = check_model_host(config, roles=("base_model",))
    (warning,) = [w for w in caught if issubclass(w.category, gpus.GpuMemoryWarning)]
    message = str(warning.message)
    assert message.startswith("GPU 0 (NVIDIA H100 80GB HBM3): 75.0 of 80.0 GiB free; held by pid 31337 (")
    assert f"pid {os.getpid()}" not in message  # this process is not a leftover
    assert "kill 31337" in message and "\n" not in message
    assert lines[0].startswith("GPU 0 (NVIDIA H100 80GB HBM3): 75.0 of 80.0 GiB free")  # every visible GPU, for the log
    assert lines[1].startswith("GPU 1 (NVIDIA H100 80GB HBM3): 1.0 of 80.0 GiB free; held by pid 7")


def test_without_nvml_the_gpu_memory_check_is_silent(monkeypatch, no_cuda_init):
    vllm_installed(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    config = build_config("smoke", {"base_model": {"backend": "vllm"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_model_host(config, roles=("base_model",)) == []
