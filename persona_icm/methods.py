"""The evaluation methods: one record each, the one place that says what a method is.

A record holds the name stored in `predictions.method`, the name `eval.methods` accepts (several
records may share one: `option_prior` runs as `option_prior_golden` and `option_prior_icm`), the
chart label and colour, what the method uses (ICM labels, the chat model, demonstrations),
whether it is in the accuracy-vs-demos curve, and the function that produces its labels or scores.
Config validation, evaluate.py's dispatch, metrics.py, the charts, the Prefect tasks and the
warehouse views (through the `methods` table, filled from `registry_rows()` when the warehouse is
opened) all read these records. Registration order is the order in which a demo set's methods are
scored; `position` orders the config's default list and the charts (unset: after the others).

What `produce` is, by kind:
- a demo method (uses_demos, no `scores_demos_of`): `produce(claims, icm, rng) -> labels | None`,
  the label of each demo claim in prompt order (icm: claim_id -> ICM label, {} without an ICM run;
  None: the method cannot run without ICM labels). Called for every registered demo method on
  every demo set, enabled or not, so that enabling a method never moves another's random draws;
  a new method that draws from `rng` moves every later draw, so draw from a Generator of its own.
- a zero-shot method (uses_demos=False): no function; its one prompt has no demos and goes to the
  chat model if uses_chat_model, else to the base model.
- a model-free method (`scores_demos_of` names a demo method): `produce(context, test) -> scores`,
  one score per test claim from that method's demo sets (one per set: orders do not matter).

This module imports nothing from persona_icm at run time, so the warehouse may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from persona_icm.claims import Claim

Labels = dict[str, int]


@dataclass(frozen=True)
class Method:
    name: str  # as stored in predictions.method
    label: str  # in charts
    colour: str  # in charts, a CSS colour
    option: str = ""  # the name in eval.methods; "" = name
    uses_icm_labels: bool = False
    uses_chat_model: bool = False
    uses_demos: bool = True
    in_curve: bool = False  # drawn in the accuracy-vs-demos chart (view accuracy_vs_examples)
    scores_demos_of: str | None = None  # model-free: scores the demo sets of this method itself
    position: int | None = None  # place in eval.methods' default and in the charts; None: last
    produce: Callable[..., Any] | None = None

    @property
    def config_name(self) -> str:
        return self.option or self.name

    @property
    def model_free(self) -> bool:
        return self.scores_demos_of is not None


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method`; a stored name is registered once."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    if method.uses_demos and not method.model_free and method.produce is None:
        raise ValueError(f"method {method.name!r} uses demos: give it the function that labels them (produce)")
    if method.scores_demos_of is not None and method.scores_demos_of not in _REGISTRY:
        raise ValueError(f"method {method.name!r} scores the demos of {method.scores_demos_of!r}, which is not registered")
    _REGISTRY[method.name] = method
    return method


def registers(name: str, **fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form of `register`: the decorated function is the method's `produce`."""

    def wrap(produce: Callable[..., Any]) -> Callable[..., Any]:
        register(Method(name, produce=produce, **fields))
        return produce

    return wrap


def unregister(name: str) -> None:
    """Remove a stored method name (tests that register a method of their own)."""
    _REGISTRY.pop(name)


def methods() -> list[Method]:
    """Every registered method, in registration order (the order of evaluation)."""
    return list(_REGISTRY.values())


def listed() -> list[Method]:
    """Every registered method in listing order: by `position`, then unpositioned ones as registered."""
    order = list(_REGISTRY.values())
    return sorted(order, key=lambda m: (m.position is None, m.position or 0, order.index(m)))


def method(name: str) -> Method:
    """The record of a stored method name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}") from None


def config_names() -> list[str]:
    """The names eval.methods accepts, in listing order (the default list)."""
    return list(dict.fromkeys(m.config_name for m in listed()))


def stored_methods(config_name: str) -> list[Method]:
    """The records an eval.methods name runs (one, or several such as option_prior)."""
    return [m for m in _REGISTRY.values() if m.config_name == config_name]


def uses_chat_model(config_name: str) -> bool:
    """Whether the eval.methods name is scored by the chat model (then by it alone)."""
    return any(m.uses_chat_model for m in stored_methods(config_name))


def zero_shot_names() -> list[str]:
    """Stored names of the methods without demonstrations."""
    return [m.name for m in _REGISTRY.values() if not m.uses_demos]


REGISTRY_COLUMNS = ("method", "position", "label", "colour", "config_name", "uses_icm_labels",
                    "uses_chat_model", "uses_demos", "in_curve")


def registry_rows() -> list[tuple[Any, ...]]:
    """The `methods` table of the warehouse (warehouse/schema.sql): one row per stored name."""
    rows = []
    for position, m in enumerate(listed()):
        record = {**asdict(m), "method": m.name, "position": position, "config_name": m.config_name}
        rows.append(tuple(record[c] for c in REGISTRY_COLUMNS))
    return rows


# ---------------------------------------------------------------- the methods
# Registered golden first: each demo set is scored golden, ICM, random-matched (`position` lists ICM first).


@registers("golden", label="golden labels", colour="#2ca02c", in_curve=True, position=1)
def golden_labels(claims: Sequence[Claim], icm: Labels, rng: np.random.Generator) -> list[int]:
    """The gold label of each demo claim."""
    return [c.gold for c in claims]


@registers("icm", label="ICM labels", colour="#1f77b4", uses_icm_labels=True, in_curve=True, position=0)
def icm_labels(claims: Sequence[Claim], icm: Labels, rng: np.random.Generator) -> list[int] | None:
    """The ICM search's label of each demo claim."""
    return [icm[c.claim_id] for c in claims] if icm else None


@registers("random_matched", label="random, ICM-matched", colour="#ff7f0e", uses_icm_labels=True, in_curve=True,
           position=2)
def accuracy_matched_labels(claims: Sequence[Claim], icm: Labels, rng: np.random.Generator) -> list[int] | None:
    """Gold labels of `claims` with a random subset flipped, as many as ICM gets wrong on them."""
    if not icm:
        return None
    n_wrong = sum(icm[c.claim_id] != c.gold for c in claims)
    flip = set(rng.choice(len(claims), size=n_wrong, replace=False).tolist())
    return [1 - c.gold if i in flip else c.gold for i, c in enumerate(claims)]


register(Method("zero_shot_base", label="zero-shot base", colour="#7f7f7f", uses_demos=False, position=3))
register(Method("zero_shot_chat", label="zero-shot chat", colour="#9467bd", uses_demos=False, uses_chat_model=True,
                position=4))


def option_prior_scores(context: Sequence[tuple[Claim, int]], test: Sequence[Claim]) -> list[float]:
    """Per test claim: demos with the same option text labelled True minus those labelled False."""
    votes: dict[str, int] = {}
    for claim, label in context:
        votes[claim.option] = votes.get(claim.option, 0) + (1 if label == 1 else -1)
    return [float(votes.get(c.option, 0)) for c in test]


register(Method("option_prior_golden", label="option prior (golden)", colour="#bcbd22", option="option_prior",
                scores_demos_of="golden", position=5, produce=option_prior_scores))
register(Method("option_prior_icm", label="option prior (ICM)", colour="#17becf", option="option_prior",
                uses_icm_labels=True, scores_demos_of="icm", position=6, produce=option_prior_scores))
