"""A run's id: a hash of what decides its results, never of where its files are.

The data enters through `dataset_id` (claims.dataset_params: the GOQA file's and the question
list's sha256, never their paths); a chat template file enters by its contents. The warehouse
path decides where rows go, not what they are, and is left out. So the same run given the same
file under another spelling (relative, absolute, a symlink) gets the same run_id and replaces its
rows instead of adding a second run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from persona_icm.config import RunConfig
from persona_icm.scorer_identity import file_sha256

# Paths whose file contents are counted elsewhere (dataset_id) or below, and the warehouse path.
# base_models: a run has one base model (base_model); the study's list is not its result.
_NOT_RESULTS = {"warehouse_path": True, "base_models": True, "data": {"goqa_path", "question_list"}}


def results_config(config: RunConfig) -> dict[str, Any]:
    """The config as JSON with every file path replaced by what it contributes to the results."""
    values = config.model_dump(mode="json", exclude=_NOT_RESULTS)
    for role in ("base_model", "chat_model"):
        prompts = (values.get(role) or {}).get("prompts") or {}
        if prompts.get("chat_template") is not None:
            prompts["chat_template"] = "sha256:" + file_sha256(prompts["chat_template"])
    return values


def run_id_for(config: RunConfig, dataset_id: str, code: str) -> str:
    """Same config, data and code -> same run_id, so a re-run replaces its rows."""
    digest = hashlib.sha256(json.dumps([results_config(config), dataset_id, code], sort_keys=True).encode())
    return f"{config.preset}-{digest.hexdigest()[:12]}"


def study_id_for(run_ids: list[str]) -> str:
    """The study of these runs (one per base model, in base_models order): the run_id itself for one
    model, else a hash of the run_ids, so the same study again has the same study_id."""
    if len(run_ids) == 1:
        return run_ids[0]
    preset = run_ids[0].rsplit("-", 1)[0]
    return f"{preset}-study-{hashlib.sha256(json.dumps(run_ids).encode()).hexdigest()[:12]}"
