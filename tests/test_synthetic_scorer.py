from persona_icm.scoring.base import ClaimScorer, ScoreRequest
from tests.synthetic import SyntheticScorer, make_claims


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
