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


def test_scores_are_bit_for_bit_those_of_the_np_mean_formula():
    """score_one counts agreeing demos in Python and remembers each claim's noise; the scores
    stay exactly those of the formula as first written (np.mean, the noise drawn every time)."""
    import random

    import numpy as np

    from persona_icm.scoring.synthetic import _unit_normal

    claims = make_claims(40)
    truth = {c.claim_id: c.gold for c in claims}
    rng = random.Random(1)
    for order_invariant in (False, True):
        scorer = SyntheticScorer(truth, signal=1.0, prior=0.5, seed=3, order_invariant=order_invariant)
        for _ in range(300):
            query, *demos = rng.sample(claims, rng.randrange(1, 40))
            request = ScoreRequest(tuple((c, rng.randrange(2)) for c in demos), query)
            sign = 1.0 if truth[query.claim_id] == 1 else -1.0
            strength = (2.0 * np.mean([y == truth[c.claim_id] for c, y in request.context]) - 1.0
                        if request.context else scorer.zero_shot_strength)
            key = tuple((c.claim_id, y) for c, y in request.context)
            key = tuple(sorted(key)) if order_invariant else key
            expected = float(0.5 * sign + 1.0 * sign * strength + 1.0 * _unit_normal(3, "claim", query.claim_id)
                             + 0.3 * _unit_normal(3, "ctx", query.claim_id, "base", key))
            assert scorer.score_one(request) == expected
