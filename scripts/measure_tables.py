"""Tables of a measure_eval run from the per-country parquet it writes as each country finishes.

For a run cut short (or to re-print one): the same method x country and curve tables as
measure_eval.py, over whichever countries finished.

    PYTHONPATH=. python scripts/measure_tables.py warehouse/results/measure_eval/gemma-3-270m/partial
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from scripts.measure_eval import print_tables


def main() -> None:
    partial = Path(sys.argv[1])
    n_boot = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    preds = pl.concat([pl.read_parquet(p) for p in sorted(partial.glob("predictions-*.parquet"))])
    demos = pl.concat([pl.read_parquet(p) for p in sorted(partial.glob("demos-*.parquet"))])
    pl.Config.set_tbl_rows(100)
    pl.Config.set_tbl_width_chars(200)
    pl.Config.set_fmt_str_lengths(40)
    print(f"countries: {sorted(preds['country'].unique())}, bootstrap samples {n_boot}")
    print_tables(preds, demos, n_boot, 0)


if __name__ == "__main__":
    main()
