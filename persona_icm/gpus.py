"""This host's GPUs as NVML sees them, read without initialising CUDA; and the start method vLLM must use.

A process that has initialised CUDA cannot hand it to a forked child, and vLLM forks its engine
core and GPU workers unless VLLM_WORKER_MULTIPROC_METHOD says otherwise. So nothing here touches
`torch.cuda`: GPU counts and memory come from NVML (`pynvml`, the package nvidia-ml-py, a vLLM
dependency), which is a separate library. Without NVML (no NVIDIA driver, or nvidia-ml-py not
installed) there are no GPUs to report.

Devices are the ones CUDA_VISIBLE_DEVICES leaves visible (indices or GPU-UUID prefixes; the list
ends at the first entry that names no device, as in CUDA), in NVML's numbering, which is
nvidia-smi's. MIG instances are not counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

START_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
GIB = 1024**3


def use_spawn() -> None:
    """vLLM starts its processes with spawn, unless the user chose a method: a forked child of a
    process that has initialised CUDA cannot use the GPUs. Call before vLLM is imported."""
    os.environ.setdefault(START_METHOD_ENV, "spawn")


class GpuMemoryWarning(UserWarning):
    """Other processes hold memory on a GPU the engine will use, and enough is still free."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str | None  # None when the process is not readable from here (another PID namespace)
    used_bytes: int | None  # None when the driver does not say (e.g. without the permission to ask)

    def describe(self) -> str:
        used = "" if self.used_bytes is None else f", {self.used_bytes / GIB:.1f} GiB"
        return f"pid {self.pid} ({self.name or 'name not readable here'}{used})"


@dataclass(frozen=True)
class GpuMemory:
    index: int  # NVML's (nvidia-smi's) index
    name: str
    total_bytes: int
    free_bytes: int
    processes: tuple[GpuProcess, ...]  # those holding memory on it, this process excluded

    def describe(self) -> str:
        """`GPU 0 (NVIDIA H100 80GB HBM3): 9.1 of 79.6 GiB free; held by pid 4242 (python3, 70.2 GiB)`."""
        held = "; held by " + ", ".join(p.describe() for p in self.processes) if self.processes else ""
        return f"GPU {self.index} ({self.name}): {self.free_bytes / GIB:.1f} of {self.total_bytes / GIB:.1f} GiB free{held}"


@contextmanager
def nvml() -> Iterator[ModuleType | None]:
    """The initialised `pynvml` module, or None when NVML cannot be loaded here."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def visible_indices(uuids: list[str], cuda_visible_devices: str | None) -> list[int]:
    """Indices into `uuids` (NVML's devices) that CUDA_VISIBLE_DEVICES makes visible, in its order."""
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    out: list[int] = []
    for token in (t.strip() for t in cuda_visible_devices.split(",")):
        if token.isdigit():
            matches = [int(token)] if int(token) < len(uuids) else []
        elif token.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(token)]
        else:
            matches = []
        if len(matches) != 1 or matches[0] in out:
            break
        out.append(matches[0])
    return out


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older nvidia-ml-py returns bytes


def _visible_handles(nv: ModuleType) -> list[tuple[int, object]]:
    handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    uuids = [_text(nv.nvmlDeviceGetUUID(h)) for h in handles]
    return [(i, handles[i]) for i in visible_indices(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))]


def visible_gpu_count() -> int:
    """GPUs this process may use (after CUDA_VISIBLE_DEVICES); 0 without NVML. CUDA stays uninitialised."""
    with nvml() as nv:
        if nv is None:
            return 0
        try:
            return len(_visible_handles(nv))
        except nv.NVMLError:
            return 0


def process_name(nv: ModuleType, pid: int) -> str | None:
    try:
        return _text(nv.nvmlSystemGetProcessName(pid)) or None
    except nv.NVMLError:
        pass
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None


def holders(nv: ModuleType, handle: object) -> tuple[GpuProcess, ...]:
    """The processes other than this one that hold memory on the device (compute and graphics), by pid."""
    running = {}
    for query in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            running.update({p.pid: p.usedGpuMemory for p in query(handle)})
        except nv.NVMLError:
            continue
    return tuple(
        GpuProcess(pid, process_name(nv, pid), used) for pid, used in sorted(running.items()) if pid != os.getpid()
    )


def visible_gpu_memory() -> list[GpuMemory]:
    """Free memory and the processes holding it, per visible GPU; [] without NVML."""
    with nvml() as nv:
        if nv is None:
            return []
        try:
            out = []
            for index, handle in _visible_handles(nv):
                memory = nv.nvmlDeviceGetMemoryInfo(handle)
                name = _text(nv.nvmlDeviceGetName(handle))
                out.append(GpuMemory(index, name, int(memory.total), int(memory.free), holders(nv, handle)))
            return out
        except nv.NVMLError:
            return []
