"""Internal Coherence Maximization (Wen et al. 2025, Algorithms 1-2) as docs/method.md describes it.

    run_icm(claims, scorer, config) -> IcmResult(labels, trace, counters, run_key)

1. Seeding: `num_seed` claims drawn at random (`seed_claims="first"`: the first `num_seed` claims
   given, the fork's choice) get random balanced labels; ConsistencyFix.
2. K iterations: sample a claim (weight `unlabelled_sibling_weight`=100 for an unlabelled claim
   whose group has a labelled member, 1 otherwise); propose y' = [s(x | D \\ {x}) > 0]; if y'
   differs from x's label, D' = ConsistencyFix(D with x=y') and accept with probability
   min(1, exp((U(D') - U(D)) / T)), T annealed by the number of accepted moves so far.
3. ConsistencyFix: per round, the inconsistent pairs in random order; the first pair whose best
   consistent assignment ((1,0) or (0,1), best by U, ties to (1,0)) does not lower U is applied;
   the round's "found" flag starts false every round; stop when nothing is inconsistent or no
   pair can be fixed.

One numpy Generator seeded with `config.seed` makes every random choice, in this order per
iteration: the claim draw, the ConsistencyFix permutations, the acceptance uniform (drawn for
every proposed move, also when dU >= 0). Engines (engine.py) never touch it, so the fast and
the reference engine follow the identical trajectory. Gold labels are read only for the
monitoring column `train_accuracy`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from persona_icm.claims import Claim
from persona_icm.config import IcmConfig
from persona_icm.icm.checkpoint import (
    CorruptCheckpoint,
    load_checkpoint,
    previous_path,
    save_checkpoint,
)
from persona_icm.icm.energy import Energy
from persona_icm.icm.engine import make_engine
from persona_icm.icm.state import UNLABELLED, Labelling, Pool
from persona_icm.scoring.base import ClaimScorer, call_totals, record_calls

log = logging.getLogger(__name__)

ALGORITHM_VERSION = "icm-1"

TRACE_SCHEMA = {
    "iteration": pl.Int32,  # 0 = the seeded pool after its ConsistencyFix
    "claim_id": pl.Utf8,  # the sampled claim (null at iteration 0)
    "previous_label": pl.Int8,  # its label before the iteration (null: unlabelled)
    "score": pl.Float64,  # s(x | D \ {x}) behind the proposal
    "proposal": pl.Int8,
    "changed": pl.Boolean,  # proposal differs from the previous label, so a move was tried
    "fixes": pl.Int16,  # ConsistencyFix steps applied to the tried move
    "delta_U": pl.Float64,  # U(D') - U(D) of the tried move
    "accepted": pl.Boolean,  # null when no move was tried
    "T": pl.Float64,  # temperature of this iteration
    "U": pl.Float64,  # state after the iteration
    "P": pl.Float64,
    "I": pl.Int32,
    "pool_size": pl.Int32,
    "accepted_total": pl.Int32,
    "train_accuracy": pl.Float64,  # labelled claims whose label equals gold (monitoring only)
    "backend_calls": pl.Int64,  # model work of this iteration, from scorer.calls
    "prompts": pl.Int64,
    "prompt_tokens": pl.Int64,
    "cached_tokens": pl.Int64,  # null when the backend does not report it
}
# The columns that define the trajectory (the rest are cost counters, which depend on the engine).
TRAJECTORY_COLUMNS = [c for c in TRACE_SCHEMA if c not in {"backend_calls", "prompts", "prompt_tokens", "cached_tokens"}]

LABELS_SCHEMA = {
    "claim_id": pl.Utf8,
    "group_id": pl.Utf8,
    "label": pl.Int8,  # null: never labelled
    "context_rank": pl.Int32,  # position in the final context order (the order demos are shown)
    "entered_iteration": pl.Int32,  # iteration at which the claim joined the pool (0 = seed)
    "score": pl.Float64,  # leave-one-out s(x | D \ {x}) under the final labelling
    "gold": pl.Int8,  # for monitoring joins; never read by the search
}


@dataclass(frozen=True)
class IcmProgress:
    iteration: int
    iterations: int
    pool_size: int
    U: float
    accepted: int
    proposed: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@dataclass
class IcmCounters:
    iterations: int = 0
    proposed: int = 0  # iterations whose proposal differed from the label (a move was tried)
    accepted: int = 0
    fixes_applied: int = 0
    backend_calls: int = 0  # summed over the trace (the whole run, across resumes)
    prompts: int = 0
    prompt_tokens: int = 0
    prompts_needed: int = 0  # this process: prompts the algorithm asked for (= reference engine's)
    score_memo_hits: int = 0  # this process
    energy_evaluations: int = 0  # this process
    energy_memo_hits: int = 0  # this process
    resumed_from: int | None = None  # iteration of the checkpoint this process started from
    wall_seconds: float = 0.0  # this process


@dataclass
class IcmResult:
    labels: pl.DataFrame  # warehouse table icm_labels (caller adds run_id, country)
    trace: pl.DataFrame  # warehouse table icm_trace
    counters: IcmCounters
    run_key: str

    def label_of(self) -> dict[str, int]:
        return label_of(self.labels)


def label_of(labels: pl.DataFrame) -> dict[str, int]:
    """claim_id -> label of a LABELS_SCHEMA frame, labelled claims only (the demos for evaluation)."""
    rows = labels.filter(pl.col("label").is_not_null())
    return dict(zip(rows["claim_id"], rows["label"], strict=True))


def default_run_key(claims: list[Claim], config: IcmConfig, scorer_id: str = "") -> str:
    """Hash of everything that fixes the result: claims, search config, algorithm version and the
    caller's scorer identity. Gold labels are in it too: they never steer the search, but the
    trace's train_accuracy and the labels' gold column are computed from them. Engine, memo size and checkpoint cadence change only cost;
    `seeds` lists other searches (each keyed by its own `seed`)
    (bit for bit with a prompt-deterministic scorer; see engine.py on batched backends)."""
    relevant = config.model_dump(mode="json", exclude={"engine", "score_memo_size", "checkpoint_every", "seeds"})
    blob = json.dumps(
        {
            "algorithm": ALGORITHM_VERSION,
            "config": relevant,
            "scorer": scorer_id,
            "claims": [[c.claim_id, c.group_id, c.country, c.question, c.option, c.gold] for c in claims],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def temperature(config: IcmConfig, accepted: int) -> float:
    """log: max(final_T, initial_T / (1 + beta ln(1 + accepted))); exp: max(final_T, initial_T decay^accepted).

    `accepted` counts accepted moves so far (the fork's flip count), not iterations. final_T is a
    floor: with the log schedule it binds only after exp((initial_T/final_T - 1)/beta) - 1 accepted
    moves (e^36 for the seed preset), so the seed and paper presets never reach it, exactly as in
    the fork (beta 2.75) and the original code (beta 2); T after 1000 accepted moves is 0.50 (seed)
    and 1.28 (paper). Rescaling beta to hit final_T at K would change the protocol being reproduced."""
    if config.schedule == "log":
        t = config.initial_T / (1.0 + config.beta * math.log1p(accepted))
    else:
        t = config.initial_T * config.decay**accepted
    return max(config.final_T, t)


def acceptance_probability(delta_u: float, T: float) -> float:
    """min(1, exp(dU/T)) without overflow: exp is only taken of a non-positive number."""
    if delta_u >= 0:
        return 1.0
    return math.exp(delta_u / T)  # dU/T may be -inf at tiny T; exp(-inf) = 0.0


def metropolis_accept(rng: np.random.Generator, delta_u: float, T: float) -> bool:
    """One uniform draw per tried move (also when dU >= 0), so the RNG sequence never depends on dU."""
    return bool(rng.random() < acceptance_probability(delta_u, T))


class IcmSearch:
    """The mutable search: current labelling and energy, the RNG, counters, trace rows."""

    def __init__(self, claims: list[Claim], scorer: ClaimScorer, config: IcmConfig):
        self.pool = Pool.from_claims(claims, config.context_order)
        if config.num_seed > len(self.pool):
            raise ValueError(f"icm.num_seed={config.num_seed} exceeds the {len(self.pool)} claims given")
        self.scorer = scorer
        self.config = config
        self.engine = make_engine(self.pool, scorer, config)
        self.rng = np.random.default_rng(config.seed)
        self.labelling = Labelling.empty(len(self.pool))
        self.energy: Energy | None = None
        self.iteration = 0
        self.proposed = 0
        self.accepted = 0
        self.fixes = 0
        self.entered: dict[int, int] = {}
        self.rows: list[dict[str, Any]] = []

    # -- Algorithm 2 -------------------------------------------------------------------------
    def consistency_fix(self, labelling: Labelling, rounds: int) -> tuple[Labelling, Energy, int]:
        """Returns the fixed labelling, its energy and the number of fixes applied.

        The energy of the labelling itself is asked for together with the first pair's options
        (one backend call in the fast engine); no random draw depends on it, so this is exact."""
        applied = 0
        current: Energy | None = None
        for _ in range(rounds if self.config.consistency else 0):
            pairs = labelling.inconsistent_pairs(self.pool)
            if not pairs:
                break
            found = False
            for k in self.rng.permutation(len(pairs)):
                a, b = pairs[int(k)]
                options = [
                    labelling.with_labels(self.pool, [(a, 1), (b, 0)]),
                    labelling.with_labels(self.pool, [(a, 0), (b, 1)]),
                ]
                energies = self.engine.energies(options if current is not None else [labelling, *options])
                if current is None:
                    current, energies = energies[0], energies[1:]
                best = 0 if energies[0].U >= energies[1].U else 1
                if energies[best].U >= current.U:
                    labelling, current = options[best], energies[best]
                    applied += 1
                    found = True
                    break
            if not found:
                break
        if current is None:
            current = self.engine.energies([labelling])[0]
        return labelling, current, applied

    # -- Algorithm 1 -------------------------------------------------------------------------
    def seed_pool(self) -> None:
        cfg = self.config
        if cfg.seed_claims == "first":  # the fork: the first num_seed training claims, in split order
            picks = np.arange(cfg.num_seed)
        else:
            picks = self.rng.choice(len(self.pool), size=cfg.num_seed, replace=False)
        labels = self.rng.permutation([1] * (cfg.num_seed // 2) + [0] * (cfg.num_seed - cfg.num_seed // 2))
        seeded = Labelling.empty(len(self.pool)).with_labels(
            self.pool, [(int(i), int(y)) for i, y in zip(picks, labels, strict=True)]
        )
        self.labelling, self.energy, self.fixes = self.consistency_fix(seeded, cfg.initial_fix_rounds)
        self.entered = {int(i): 0 for i in picks}
        self.rows.append(self._row(0, claim=None, previous=None, score=None, proposal=None, changed=None,
                                   fixes=self.fixes, delta=None, accepted=None, T=temperature(cfg, 0)))

    def sampling_weights(self) -> np.ndarray:
        labels = self.labelling.labels
        weights = np.ones(len(self.pool))
        for i, y in enumerate(labels):
            sibling = self.pool.sibling(i)
            if y == UNLABELLED and sibling is not None and labels[sibling] != UNLABELLED:
                weights[i] = self.config.unlabelled_sibling_weight
        return weights

    def step(self) -> None:
        cfg = self.config
        self.iteration += 1
        weights = self.sampling_weights()
        index = int(self.rng.choice(len(self.pool), p=weights / weights.sum()))
        previous = self.labelling.labels[index]
        score = self.engine.proposal_score(self.labelling, index)
        proposal = int(score > 0)
        T = temperature(cfg, self.accepted)
        if proposal == previous:
            self.rows.append(self._row(self.iteration, index, previous, score, proposal, False, 0, None, None, T))
            return
        self.proposed += 1
        moved = self.labelling.with_labels(self.pool, [(index, proposal)])
        moved, moved_energy, fixes = self.consistency_fix(moved, cfg.loop_fix_rounds)
        delta = moved_energy.U - self.energy.U
        accepted = metropolis_accept(self.rng, delta, T)
        if accepted:
            self.labelling, self.energy = moved, moved_energy
            self.accepted += 1
            self.fixes += fixes
            self.entered.setdefault(index, self.iteration)
        self.rows.append(self._row(self.iteration, index, previous, score, proposal, True, fixes, delta, accepted, T))

    def _row(self, iteration, claim, previous, score, proposal, changed, fixes, delta, accepted, T) -> dict[str, Any]:
        labelled = self.labelling.labelled()
        gold_hits = sum(self.labelling.labels[i] == self.pool.claims[i].gold for i in labelled)
        return {
            "iteration": iteration,
            "claim_id": None if claim is None else self.pool.claims[claim].claim_id,
            "previous_label": None if previous in (None, UNLABELLED) else int(previous),
            "score": score,
            "proposal": proposal,
            "changed": changed,
            "fixes": fixes,
            "delta_U": delta,
            "accepted": accepted,
            "T": T,
            "U": self.energy.U,
            "P": self.energy.P,
            "I": self.energy.I,
            "pool_size": len(labelled),
            "accepted_total": self.accepted,
            "train_accuracy": gold_hits / len(labelled),
        }

    # -- checkpoint state ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return {
            "claim_ids": [c.claim_id for c in self.pool.claims],
            "iteration": self.iteration,
            "labels": list(self.labelling.labels),
            "group_order": list(self.labelling.group_order),
            "energy": asdict(self.energy),
            "proposed": self.proposed,
            "accepted": self.accepted,
            "fixes": self.fixes,
            "entered": sorted(self.entered.items()),
            "rng": self.rng.bit_generator.state,
            "trace": self.rows,
        }

    def restore(self, payload: dict[str, Any]) -> None:
        if payload["claim_ids"] != [c.claim_id for c in self.pool.claims]:
            raise CorruptCheckpoint("checkpoint claims differ from the claims given")
        self.iteration = payload["iteration"]
        self.labelling = Labelling(tuple(payload["labels"]), tuple(payload["group_order"]))
        e = payload["energy"]
        self.energy = Energy(e["U"], e["P"], e["I"], tuple(e["scores"]))
        self.proposed, self.accepted, self.fixes = payload["proposed"], payload["accepted"], payload["fixes"]
        self.entered = {int(i): int(it) for i, it in payload["entered"]}
        self.rng.bit_generator.state = payload["rng"]
        self.rows = payload["trace"]
        self.engine.restore(self.labelling, self.energy)

    # -- results -------------------------------------------------------------------------------
    def labels_frame(self) -> pl.DataFrame:
        context = self.labelling.context(self.pool)
        rank = {i: r for r, (i, _) in enumerate(context)}
        loo = dict(zip((i for i, _ in context), self.energy.scores, strict=True))
        return pl.DataFrame(
            [
                {
                    "claim_id": c.claim_id,
                    "group_id": c.group_id,
                    "label": None if self.labelling.labels[i] == UNLABELLED else self.labelling.labels[i],
                    "context_rank": rank.get(i),
                    "entered_iteration": self.entered.get(i),
                    "score": loo.get(i),
                    "gold": c.gold,
                }
                for i, c in enumerate(self.pool.claims)
            ],
            schema=LABELS_SCHEMA,
        )

    def trace_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=TRACE_SCHEMA)


def run_icm(
    claims: list[Claim],
    scorer: ClaimScorer,
    config: IcmConfig,
    *,
    checkpoint_path: Path | str | None = None,
    run_key: str | None = None,
    on_progress: Callable[[IcmProgress], None] | None = None,
    show_progress: bool = True,
) -> IcmResult:
    """Run (or resume) the ICM search over `claims` (groups of two) with a "base" scorer.

    checkpoint_path: the full state (labelling, energy, counters, RNG state, trace) is written
    there atomically every `config.checkpoint_every` iterations, after seeding and at the end.
    If the file exists for the same run key the search resumes from it (a finished run returns
    at once); another run key raises CheckpointMismatch; a damaged file is logged and ignored
    (the search resumes from the checkpoint before it, kept as `<name>.prev`, or from scratch).
    run_key: identifies the run; default `default_run_key(claims, config)` (callers should pass
    one that also covers the model, e.g. `default_run_key(claims, config, model_spec_json)`).
    on_progress: called after every iteration with an IcmProgress.
    """
    start = time.perf_counter()
    search = IcmSearch(claims, scorer, config)
    run_key = run_key or default_run_key(claims, config)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    payload = _load_or_none(path, run_key)
    with record_calls(scorer, "icm"):
        if payload is not None:
            search.restore(payload)
            log.info("resuming ICM run %s from iteration %d", run_key, search.iteration)
        else:
            with record_calls(scorer) as calls:
                search.seed_pool()
            _attach_costs(search.rows[-1], calls)
            if path is not None:
                save_checkpoint(path, run_key, search.payload())
        _iterate(search, path, run_key, on_progress, show_progress)

    trace = search.trace_frame()
    stats = search.engine.stats
    counters = IcmCounters(
        iterations=search.iteration,
        proposed=search.proposed,
        accepted=search.accepted,
        fixes_applied=search.fixes,
        backend_calls=int(trace["backend_calls"].sum()),
        prompts=int(trace["prompts"].sum()),
        prompt_tokens=int(trace["prompt_tokens"].sum()),
        prompts_needed=stats.prompts_needed,
        score_memo_hits=stats.score_memo_hits,
        energy_evaluations=stats.energy_evaluations,
        energy_memo_hits=stats.energy_memo_hits,
        resumed_from=None if payload is None else payload["iteration"],
        wall_seconds=time.perf_counter() - start,
    )
    return IcmResult(search.labels_frame(), trace, counters, run_key)


def _load_or_none(path: Path | None, run_key: str) -> dict[str, Any] | None:
    """The latest good checkpoint: `path`, else the one before it, else None (start from scratch)."""
    if path is None:
        return None
    try:
        return load_checkpoint(path, run_key)
    except CorruptCheckpoint as exc:
        damage = exc
    try:
        payload = load_checkpoint(previous_path(path), run_key)
    except CorruptCheckpoint as exc:
        log.warning("ignoring damaged ICM checkpoint %s and its predecessor (%s), starting from scratch", damage, exc)
        return None
    if payload is None:
        log.warning("ignoring damaged ICM checkpoint, starting from scratch: %s", damage)
    else:
        log.warning("ignoring damaged ICM checkpoint, resuming from the previous one (iteration %d): %s",
                    payload["iteration"], damage)
    return payload


def _iterate(search: IcmSearch, path: Path | None, run_key: str, on_progress, show_progress: bool) -> None:
    """Algorithm 1's loop from the search's current iteration to K, with progress and checkpoints."""
    config, scorer = search.config, search.scorer
    bar = tqdm(total=config.iterations, initial=search.iteration, desc="ICM", unit="it", disable=not show_progress)
    try:
        while search.iteration < config.iterations:
            with record_calls(scorer) as calls:
                search.step()
            _attach_costs(search.rows[-1], calls)
            progress = IcmProgress(
                search.iteration, config.iterations, search.labelling.size, search.energy.U,
                search.accepted, search.proposed,
            )
            bar.update(1)
            bar.set_postfix(pool=progress.pool_size, U=f"{progress.U:.3f}", accepted=f"{progress.acceptance_rate:.0%}", refresh=False)
            if on_progress is not None:
                on_progress(progress)
            if path is not None and search.iteration % config.checkpoint_every == 0:
                save_checkpoint(path, run_key, search.payload())
    finally:
        bar.close()
    if path is not None and search.iteration % config.checkpoint_every != 0:
        save_checkpoint(path, run_key, search.payload())


def _attach_costs(row: dict[str, Any], calls: list) -> None:
    totals = call_totals(calls)
    row["backend_calls"] = totals.calls
    row["prompts"] = totals.prompts
    row["prompt_tokens"] = totals.prompt_tokens
    row["cached_tokens"] = totals.cached_tokens
