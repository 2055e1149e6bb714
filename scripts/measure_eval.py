"""Measure the evaluation protocol end to end on real GOQA numbers with small offline models.

For each base model: per country, ICM on the training claims, then evaluate_country (ICM,
golden, random-matched, zero-shot base, zero-shot chat, option prior, accuracy vs demos); prints
method x country tables (claim acc, group acc, 95% CI, n_test) and wall times, and writes
predictions/demos/metrics as parquet under --out (gitignored). A benchmark, not a test.

    PYTHONPATH=. python scripts/measure_eval.py --goqa-path /path/to/global_opinions.csv \\
        --base-model qwen2.5-coder-0.5b-instruct --base-model gemma-3-270m \\
        --chat-model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from persona_icm.config import DEFAULT_COUNTRIES, build_config
from persona_icm.evaluate import evaluate_country
from persona_icm.metrics import evaluation_warehouse


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--goqa-path", type=Path, required=True)
    p.add_argument("--countries", nargs="+", default=DEFAULT_COUNTRIES)
    p.add_argument("--base-model", action="append", required=True)
    p.add_argument(
        "--chat-model", default=None, help="omit to see zero_shot_chat reported as skipped"
    )
    p.add_argument("--preset", default="smoke")
    p.add_argument("--train-cap", type=int, default=16)
    p.add_argument("--test-cap", type=int, default=40)
    p.add_argument("--icm-iterations", type=int, default=30)
    p.add_argument("--eval-repeats", type=int, default=3)
    p.add_argument("--demo-sizes", type=int, nargs="*", default=[4, 8])
    p.add_argument("--out", type=Path, default=Path("warehouse/results/measure_eval"))
    return p.parse_args()


def load_scorer(name: str):
    from persona_icm.scoring.hf import load_hf_scorer

    return load_hf_scorer(name, progress=False)


def country_splits(cfg):
    from persona_icm.claims import dataset_from_file

    _, dataset = dataset_from_file(cfg.data)
    return {country: dataset.country_split(country) for country in dataset.countries}


def run_icm_labels(train, scorer, cfg) -> tuple[dict[str, int], float]:
    from persona_icm.icm import run_icm

    result = run_icm(train, scorer, cfg.icm, show_progress=True)
    gold = {c.claim_id: c.gold for c in train}
    labels = result.label_of()
    acc = np.mean([labels[k] == gold[k] for k in labels]) if labels else float("nan")
    return labels, float(acc)


def print_tables(predictions: pl.DataFrame, demos: pl.DataFrame, n_boot: int, seed: int) -> None:
    """method x country headline (claim and group accuracy with 95% CI, std over orders, test size,
    demo label accuracy) and the accuracy-vs-demos curve, from the warehouse views."""
    with evaluation_warehouse(predictions, demos, n_boot, seed) as wh:
        fmt = lambda m, lo, hi: pl.format("{} [{}, {}]", *(pl.col(c).round(3) for c in (m, lo, hi)))  # noqa: E731
        print(wh.sql("SELECT * FROM headline ORDER BY method, country = 'ALL', country").select(
            "country", "method", "n_demos",
            claim=fmt("accuracy", "ci_low", "ci_high"), group=fmt("group_accuracy", "group_ci_low", "group_ci_high"),
            std=pl.col("accuracy_std").round(3), n_test=pl.col("n_test_claims"), label_acc=pl.col("demo_label_accuracy").round(3),
        ))
        print(wh.sql("SELECT country, method, n_demos, round(accuracy, 3) AS accuracy, round(accuracy_std, 3) AS std "
                     "FROM accuracy_vs_examples ORDER BY method, n_demos, country"))


def main() -> None:
    args = parse_args()
    overrides = {
        "data": {"goqa_path": str(args.goqa_path), "countries": args.countries, "dataset": "binary",
                 "train_cap": args.train_cap, "test_cap": args.test_cap},
        "icm": {"iterations": args.icm_iterations},
        "eval": {"eval_repeats": args.eval_repeats, "demo_sizes": args.demo_sizes},
    }
    cfg = build_config(args.preset, overrides)
    splits = country_splits(cfg)
    chat = load_scorer(args.chat_model) if args.chat_model else None
    pl.Config.set_tbl_rows(100)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(40)
    for model in args.base_model:
        run_id = f"measure-{model}"
        t0 = time.perf_counter()
        base = load_scorer(model)
        timings = {"load_s": round(time.perf_counter() - t0, 1)}
        predictions, demos = [], []
        for country, split in splits.items():
            t = time.perf_counter()
            labels, label_acc = run_icm_labels(split.train, base, cfg)
            timings[f"{country}: icm_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            rng = np.random.default_rng([cfg.eval.seed, len(timings)])
            with tqdm(desc=f"eval {country}", unit="prompt set") as bar:
                def advance(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                result = evaluate_country(
                    base, split.train, split.test, cfg.eval,
                    icm_labels=labels, chat_scorer=chat, rng=rng, run_id=run_id, progress=advance,
                )
            timings[f"{country}: eval_s"] = round(time.perf_counter() - t, 1)
            timings[f"{country}: n_train/n_pool/n_test/icm_label_acc"] = (
                f"{len(split.train)}/{len(labels)}/{len(split.test)}/{label_acc:.3f}"
            )
            if result.skipped:
                timings[f"{country}: skipped"] = result.skipped
            predictions.append(result.predictions)
            demos.append(result.demos)
            print(json.dumps({k: v for k, v in timings.items() if k.startswith(country)}), flush=True)
            partial = args.out / model / "partial"
            partial.mkdir(parents=True, exist_ok=True)
            result.predictions.write_parquet(partial / f"predictions-{country}.parquet")
            result.demos.write_parquet(partial / f"demos-{country}.parquet")
        preds, dem = pl.concat(predictions), pl.concat(demos)
        out = args.out / model
        out.mkdir(parents=True, exist_ok=True)
        preds.write_parquet(out / "predictions.parquet")
        dem.write_parquet(out / "demos.parquet")
        print(
            f"\n## base model {model}, chat model {args.chat_model}, preset {args.preset} + {json.dumps(overrides)}"
        )
        print_tables(preds, dem, cfg.eval.bootstrap_samples, cfg.eval.seed)
        timings["total_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
