"""A base model's parameter count: the x axis of a study's accuracy-against-model-size chart.

Known models have a registered count (their published weights, embeddings included); any other
model in a local folder is counted from its safetensors files' headers (no weights are loaded).
A hub id that is neither gets no count (its run is left off that chart, and says why).
"""

from __future__ import annotations

from pathlib import Path

# Lower-case model name (a hub id's last part, "-instruct" dropped) -> parameters.
REGISTERED: dict[str, int] = {
    "smollm2-135m": 134_515_008,
    "gemma-3-270m": 268_098_176,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-coder-0.5b": 494_032_768,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
}


def registered_key(name: str) -> str:
    """"meta-llama/Llama-3.1-8B-Instruct" -> "llama-3.1-8b"; "smollm2-135m-instruct" -> "smollm2-135m"."""
    key = name.rstrip("/").rsplit("/", 1)[-1].lower()
    return key.removesuffix("-instruct")


def counted_from_safetensors(folder: Path) -> int | None:
    """Sum of the tensors' element counts in the folder's *.safetensors headers, or None without any."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                count = 1
                for size in weights.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def parameter_count(name: str) -> tuple[int | None, str]:
    """(parameters, where the number comes from): "registered", "counted from <folder>'s safetensors", or
    (None, why there is none)."""
    key = registered_key(name)
    if key in REGISTERED:
        return REGISTERED[key], "registered"
    folder = Path(name).expanduser()
    if folder.is_dir():
        counted = counted_from_safetensors(folder)
        if counted is not None:
            return counted, "counted from its safetensors"
        return None, f"no *.safetensors in {folder}"
    return None, f"{name!r} is not a registered model ({', '.join(sorted(REGISTERED))}) nor a local folder"
