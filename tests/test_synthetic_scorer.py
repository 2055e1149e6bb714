from persona_icm.scoring.base import ClaimScorer, ScoreRequest
from persona_icm.scoring.synthetic import SyntheticScorer, make_claims


def test_synthetic_scorer_follows_context_and_is_deterministic():
    claims = make_claims(6)
    truth = {c.claim_id: c.gold for c in claims}
    scorer = SyntheticScorer(truth, noise=0.0, context_noise=0.0)
    assert isinstance(scorer, ClaimScorer)
    query, demos = claims[0], claims[2:]
    right = tuple((c, c.gold) for c in demos)
    wrong = tuple((c, 1 - c.gold) for c in demos)
    s_right, s_wrong = scorer.score([ScoreRequest(right, query), ScoreRequest(wrong, query)])
    assert (s_right > 0) == bool(query.gold)
    assert s_wrong == -s_right
    noisy = SyntheticScorer(truth)
    assert noisy.score([ScoreRequest(right, query)]) == noisy.score([ScoreRequest(right, query)])
    assert len(noisy.calls) == 2


def test_record_calls_collects_the_blocks_calls_and_restores_the_phase():
    from persona_icm.scoring.base import CallLog, record_calls

    class Counting(CallLog):
        def score(self, requests):
            self.record(len(requests), 10 * len(requests), 0, 0.0)
            return [0.0] * len(requests)

    scorer = Counting(phase="outer")
    scorer.score([1])
    with record_calls(scorer, "icm") as calls:
        scorer.score([1, 2])
        with record_calls(scorer, "eval:golden") as inner:
            scorer.score([1, 2, 3])
        assert scorer.phase == "icm" and calls == []  # filled when the block ends
    assert scorer.phase == "outer"
    assert [(c.n_prompts, c.phase) for c in calls] == [(2, "icm"), (3, "eval:golden")]
    assert [(c.n_prompts, c.phase) for c in inner] == [(3, "eval:golden")]
    with record_calls(None, "icm") as nothing:
        pass
    assert nothing == []
