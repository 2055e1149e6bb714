"""The ICM objective U(D) = alpha * P(D) - I(D) (docs/method.md "Objective")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_icm.config import IcmConfig


@dataclass(frozen=True)
class Energy:
    """U, its two terms, and the leave-one-out score s_i of every labelled claim (context order)."""

    U: float
    P: float
    I: int  # noqa: E741 (the paper's name)
    scores: tuple[float, ...]


def signed_scores(labels: list[int], scores: list[float]) -> np.ndarray:
    """y ? s : -s, the log-odds the model gives to the label each claim carries."""
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.asarray(labels) == 1, s, -s)


OBJECTIVES = ("logodds_mean", "logprob_sum", "logodds_calibrated")


def needs_zero_shot(objective: str) -> bool:
    """Whether P needs each claim's context-free score z_i = s(x_i | no demonstrations)."""
    return objective == "logodds_calibrated"


def mutual_predictability(
    labels: list[int], scores: list[float], objective: str, zero_shot: list[float] | None = None
) -> float:
    """P(D). `logodds_mean`: mean signed log-odds (both codebases; alpha was tuned for it).
    `logprob_sum`: sum of log P(y_i | x_i, D \\ {i}) = sum of log sigmoid(signed log-odds) (the paper).
    `logodds_calibrated`: mean signed (s_i - z_i), each claim's log-odds minus its zero-shot log-odds
    (`zero_shot`, aligned with `scores`): what the demonstrations add, not the model's lean."""
    if objective == "logodds_calibrated":
        if zero_shot is None:
            raise ValueError("icm.objective 'logodds_calibrated' needs the claims' zero-shot scores")
        return float(np.mean(signed_scores(labels, list(np.subtract(scores, zero_shot)))))
    signed = signed_scores(labels, scores)
    if objective == "logodds_mean":
        return float(np.mean(signed))
    if objective == "logprob_sum":
        return float(np.sum(-np.logaddexp(0.0, -signed)))
    raise ValueError(f"icm.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")


def energy(
    context: tuple[tuple[int, int], ...], scores: list[float], inconsistent: int, config: IcmConfig,
    zero_shot: dict[int, float] | None = None,
) -> Energy:
    """U from the leave-one-out scores of the labelled claims (`scores` aligned with `context`);
    `zero_shot`: claim index -> context-free score, for the calibrated objective.

    P is summed in claim-index order, so U is a function of the labelling and its scores alone,
    bit for bit, whatever order the prompts presented the demonstrations in."""
    by_claim = sorted(zip(context, scores, strict=True))
    labels = [y for (_, y), _ in by_claim]
    baseline = None if zero_shot is None else [zero_shot[i] for (i, _), _ in by_claim]
    P = mutual_predictability(labels, [s for _, s in by_claim], config.objective, baseline)
    penalty = inconsistent if config.consistency else 0
    return Energy(config.alpha * P - penalty, P, inconsistent, tuple(float(s) for s in scores))
