"""Charts of one run, built from SQL on the warehouse views, and the run's offline HTML report.

Charts: (1) test claim and group accuracy by method with 95% intervals, one panel per
country plus the test-size-weighted aggregate; (2) accuracy against the number of demonstrations (gold, ICM,
random-matched) with 95% bands; (3) the ICM search trace (U, P, I, train accuracy). A run that repeats
the fork's experiment (view published_comparison) gets a fourth: its accuracy and 95% interval beside
the fork's published number per country and method, with a table saying whether each published
number falls inside the interval; a run whose searches were diagnosed (persona_icm/icm/diagnosis.py)
gets the U of gold, ICM's labels and gold flipped per country and seed, with the verdict table. A run of several countries gets a ranking of its countries by
ICM's accuracy (view country_ranking) and, when data.countries 'all' chose them or at least five are
on the map, a world map of ICM's accuracy and of ICM minus golden, the countries 'all' left out in grey (view countries_left_out;
the map is the vendored data/world-atlas file, embedded in each spec). Each is
written as PNG and SVG (vl-convert, no browser) and inlined as SVG into `report.html`, which
needs no network and no JavaScript.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import polars as pl
import vl_convert as vlc

from persona_icm.countries import atlas_ids, is_national_sample, map_id, world_atlas
from persona_icm.methods import listed, methods

# read(sql, params) -> frame: the warehouse's query function (charts never open DuckDB).
Read = Callable[[str, dict], pl.DataFrame]

OTHER_METHOD_COLOUR = "#8c564b"  # a method in the warehouse that is no longer registered
AGGREGATE = "All countries (weighted)"
METRICS = {"accuracy": "claim accuracy", "group_accuracy": "group accuracy"}

# The headline evaluation: each method's "main" experiment (whole pool as demos, or zero-shot).
HEADLINE_SQL = """
SELECT CASE WHEN country = 'ALL' THEN $aggregate ELSE country END AS country,
       method, n_demos, n_seeds, n_orders, n_test_claims, accuracy, ci_low, ci_high,
       group_accuracy, group_ci_low, group_ci_high, demo_label_accuracy
FROM headline WHERE run_id = $run_id
ORDER BY 1, method
"""

# Each ICM search's headline accuracy, drawn when a run has several seeds.
SEEDS_SQL = """
SELECT country, method, icm_seed, accuracy, group_accuracy FROM accuracy_by_seed
WHERE run_id = $run_id AND experiment = 'main' AND icm_seed >= 0
  AND (SELECT count(DISTINCT icm_seed) FROM accuracy_by_seed WHERE run_id = $run_id AND icm_seed >= 0) > 1
ORDER BY ALL
"""

VS_EXAMPLES_SQL = """
SELECT CASE WHEN country = 'ALL' THEN $aggregate ELSE country END AS country,
       method, n_demos, n_orders, accuracy, ci_low, ci_high, group_accuracy, group_ci_low, group_ci_high
FROM accuracy_vs_examples WHERE run_id = $run_id
ORDER BY country, method, n_demos
"""

TRACE_SQL = """
SELECT country, icm_seed, iteration, U, P, I, T, train_accuracy
FROM icm_trace WHERE run_id = $run_id
ORDER BY country, icm_seed, iteration
"""

# The ICM diagnosis per (country, seed): U, P, I of gold, ICM's labels and gold flipped, and the verdict.
DIAGNOSIS_SQL = """
SELECT country, icm_seed, verdict, icm_label_accuracy, claims, U_gold, U_icm, U_flipped, P_gold, P_icm, P_flipped,
       I_gold, I_icm, I_flipped, gold_ranked_first, groups
FROM icm_diagnosis_verdict WHERE run_id = $run_id
ORDER BY country, icm_seed
"""

# The fork's published numbers beside this run's (empty unless the run repeats the fork's experiment).
COMPARISON_SQL = """
SELECT CASE WHEN country = 'ALL' THEN $aggregate ELSE country END AS country,
       method, dataset, accuracy_pct, ci_low_pct, ci_high_pct, published_pct, published_in_interval
FROM published_comparison WHERE run_id = $run_id
ORDER BY country = $aggregate, country, method
"""


# A study's countries: ICM beside golden per country, ranked (view country_ranking), and the countries
# of the GOQA file that data.countries 'all' left out (view countries_left_out).
RANKING_SQL = """
SELECT * EXCLUDE (run_id) FROM country_ranking WHERE run_id = $run_id ORDER BY rank, country
"""
LEFT_OUT_SQL = """
SELECT country, n_groups, reason FROM countries_left_out WHERE run_id = $run_id ORDER BY country
"""
# Whether data.countries 'all' chose the run's countries.
CHOSEN_BY_ALL_SQL = """
SELECT count(*) > 0 AS chosen FROM dataset_countries WHERE dataset_id = (SELECT dataset_id FROM runs WHERE run_id = $run_id)
"""
MAP_MIN_COUNTRIES = 5  # a run of a few listed countries gets no world map; one of data.countries 'all' always
MAX_COUNTRY_PANELS = 8  # past this many countries the per-method charts draw only the aggregate


@dataclass(frozen=True)
class ReportFiles:
    directory: Path
    html: Path
    charts: dict[str, tuple[Path, Path]]  # name -> (png, svg)


def _method_scale(names: list[str]) -> alt.Scale:
    """Labels and colours of the methods present, in listing order (persona_icm/methods.py)."""
    registered = {m.name: m for m in listed()}
    present = [m for m in registered if m in names] + sorted(set(names) - set(registered))
    labels = [registered[m].label if m in registered else m for m in present]
    colours = [registered[m].colour if m in registered else OTHER_METHOD_COLOUR for m in present]
    return alt.Scale(domain=labels, range=colours)


def _without_lone_aggregate(frame: pl.DataFrame) -> pl.DataFrame:
    """The aggregate rows repeat the country's when a run has one country: drop them."""
    if frame.filter(pl.col("country") != AGGREGATE)["country"].n_unique() > 1:
        return frame
    return frame.filter(pl.col("country") != AGGREGATE)


def _aggregate_only_past(frame: pl.DataFrame, panels: int) -> pl.DataFrame:
    """A study's countries are too many for a panel each: past `panels` countries, keep the aggregate
    (the country ranking shows each country)."""
    if frame.filter(pl.col("country") != AGGREGATE)["country"].n_unique() <= panels:
        return frame
    return frame.filter(pl.col("country") == AGGREGATE)


def _labelled(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col("method").replace_strict({m.name: m.label for m in methods()}, default=pl.col("method")).alias("method_label")
    )


def _by_metric(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per metric (claim, group accuracy): columns metric, value, low, high."""
    parts = []
    for column, label in METRICS.items():
        prefix = "" if column == "accuracy" else "group_"
        bounds = [c for c in (f"{prefix}ci_low", f"{prefix}ci_high") if c in frame.columns]
        part = frame.with_columns(metric=pl.lit(label), value=pl.col(column))
        if len(bounds) == 2:
            part = part.with_columns(low=pl.col(bounds[0]), high=pl.col(bounds[1]))
        parts.append(part)
    return pl.concat(parts, how="diagonal_relaxed")


def accuracy_by_method_chart(headline: pl.DataFrame, title: str = "", seeds: pl.DataFrame | None = None) -> alt.Chart:
    """Points with 95% interval bars, a row per metric (claim accuracy, group accuracy) and a
    column per country plus the weighted aggregate (with more than one country); with several
    ICM seeds (`seeds`: SEEDS_SQL rows) a hollow diamond per seed shows their spread."""
    frame = _by_metric(_labelled(headline)).with_columns(kind=pl.lit("mean"))
    if seeds is not None and seeds.height:
        frame = pl.concat([frame, _by_metric(_labelled(seeds)).with_columns(kind=pl.lit("seed"))], how="diagonal_relaxed")
    countries = sorted(c for c in frame["country"].unique().to_list() if c != AGGREGATE) + [AGGREGATE]
    scale = _method_scale(frame["method"].unique().to_list())
    base = alt.Chart(frame).transform_filter(alt.datum.kind == "mean").encode(
        x=alt.X("method_label:N", title=None, sort=scale.domain, axis=alt.Axis(labelAngle=-35)),
        color=alt.Color("method_label:N", title="method", scale=scale),
        tooltip=[
            "country", "method", "metric", "n_demos", "n_test_claims", "n_orders",
            alt.Tooltip("value:Q", format=".3f", title="accuracy"),
            alt.Tooltip("low:Q", format=".3f", title="95% low"), alt.Tooltip("high:Q", format=".3f", title="95% high"),
        ],
    )
    bars = base.mark_errorbar(ticks=True, thickness=2).encode(
        y=alt.Y("low:Q", title="test accuracy (95% CI)", scale=alt.Scale(domain=[0, 1])),
        y2="high:Q",
    )
    points = base.mark_point(filled=True, size=70).encode(y="value:Q")
    per_seed = (
        alt.Chart(frame).transform_filter(alt.datum.kind == "seed").mark_point(shape="diamond", filled=False, size=45, strokeWidth=1.5)
        .encode(x=alt.X("method_label:N", sort=scale.domain), y="value:Q", color=alt.Color("method_label:N", scale=scale),
                tooltip=["country:N", "method:N", "metric:N", "icm_seed:Q", alt.Tooltip("value:Q", format=".3f")])
    )
    chance = alt.Chart().mark_rule(strokeDash=[4, 4], color="#999").encode(y=alt.datum(0.5))
    return (
        alt.layer(chance, bars, points, per_seed, data=frame)  # the chance line under the points that sit on it
        .properties(width=150, height=200)
        .facet(
            column=alt.Column("country:N", title=None, sort=countries),
            row=alt.Row("metric:N", title=None, sort=list(METRICS.values())),
        )
        .properties(title=title or "Test accuracy by method (dashed: chance; hollow diamonds: each ICM seed)")
    )


def accuracy_vs_examples_chart(vs_examples: pl.DataFrame, title: str = "") -> alt.Chart:
    """Mean claim and group accuracy with 95% interval bars against the number of demonstrations,
    a column per country (in the accuracy chart's order). Lines that coincide stay apart by dash
    and point shape; the bars are opaque, so overlapping ones never blend into colours the legend
    lacks."""
    frame = _by_metric(_labelled(vs_examples))
    countries = sorted(c for c in frame["country"].unique().to_list() if c != AGGREGATE) + [AGGREGATE]
    scale = _method_scale(frame["method"].unique().to_list())
    base = alt.Chart(frame).encode(
        x=alt.X("n_demos:Q", title="number of demonstrations"),
        color=alt.Color("method_label:N", title="demo labels", scale=scale),
    )
    bars = base.mark_errorbar(ticks=True, thickness=1.5).encode(
        y=alt.Y("low:Q", title="test accuracy (95% CI)", scale=alt.Scale(domain=[0, 1])),
        y2="high:Q",
    )
    line = base.mark_line(point=True, strokeWidth=2).encode(
        y="value:Q",
        strokeDash=alt.StrokeDash("method_label:N", title="demo labels", scale=alt.Scale(domain=scale.domain)),
        shape=alt.Shape("method_label:N", title="demo labels", scale=alt.Scale(domain=scale.domain)),
        tooltip=["country", "method", "metric", "n_demos", "n_orders", alt.Tooltip("value:Q", format=".3f", title="accuracy"),
                 alt.Tooltip("low:Q", format=".3f", title="95% low"), alt.Tooltip("high:Q", format=".3f", title="95% high")],
    )
    chance = alt.Chart().mark_rule(strokeDash=[4, 4], color="#999").encode(y=alt.datum(0.5))
    return (
        alt.layer(chance, bars, line, data=frame)
        .properties(width=220, height=180)
        .facet(
            column=alt.Column("country:N", title=None, sort=countries),
            row=alt.Row("metric:N", title=None, sort=list(METRICS.values())),
        )
        .properties(title=title or "Accuracy vs number of demonstrations (all countries: shared sizes, then whole pools)")
    )


def published_comparison_chart(comparison: pl.DataFrame, title: str = "") -> alt.Chart:
    """Per country (and the fork's aggregate) and method: this run's claim accuracy with its 95%
    interval, and the fork's published number as a black cross."""
    frame = _labelled(comparison)
    countries = sorted(c for c in frame["country"].unique().to_list() if c != AGGREGATE) + [AGGREGATE]
    scale = _method_scale(frame["method"].unique().to_list())
    tooltip = ["country", "method", alt.Tooltip("accuracy_pct:Q", format=".1f", title="this run %"),
               alt.Tooltip("ci_low_pct:Q", format=".1f", title="95% low"), alt.Tooltip("ci_high_pct:Q", format=".1f", title="95% high"),
               alt.Tooltip("published_pct:Q", format=".1f", title="published %"), "published_in_interval"]
    base = alt.Chart(frame).encode(
        x=alt.X("method_label:N", title=None, sort=scale.domain, axis=alt.Axis(labelAngle=-35)), tooltip=tooltip,
    )
    bars = base.mark_errorbar(ticks=True, thickness=2).encode(
        y=alt.Y("ci_low_pct:Q", title="test claim accuracy, % (95% CI)", scale=alt.Scale(domain=[0, 100])),
        y2="ci_high_pct:Q", color=alt.Color("method_label:N", title="this run", scale=scale),
    )
    ours = base.mark_point(filled=True, size=70).encode(y="accuracy_pct:Q", color=alt.Color("method_label:N", scale=scale))
    published = base.mark_point(shape="cross", size=90, color="black", filled=True).encode(y="published_pct:Q")
    return (
        alt.layer(bars, ours, published, data=frame)
        .properties(width=150, height=220)
        .facet(column=alt.Column("country:N", title=None, sort=countries))
        .properties(title=title or "This run vs the fork's published numbers (black cross: published)")
    )


TRACE_METRICS = {
    "U": "U = alpha*P - I",
    "P": "P (mutual predictability)",
    "I": "I (inconsistent pairs)",
    "train_accuracy": "train label accuracy vs gold",
}


def icm_trace_chart(trace: pl.DataFrame, title: str = "") -> alt.Chart:
    """U, P, I and train accuracy against the iteration, one line per (country, ICM seed)."""
    long = (
        trace.with_columns(pl.col("I").cast(pl.Float64), run=pl.format("{} / seed {}", "country", "icm_seed"))
        .unpivot(index=["run", "country", "iteration"], on=list(TRACE_METRICS), variable_name="metric")
        .with_columns(pl.col("metric").replace_strict(TRACE_METRICS).alias("metric"))
    )
    return (
        alt.Chart(long)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("iteration:Q", title="iteration", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("run:N", title="country / seed"),
            tooltip=["run", "metric", "iteration", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(width=520, height=120)
        .facet(row=alt.Row("metric:N", title=None, sort=list(TRACE_METRICS.values())))
        .resolve_scale(y="independent")
        .properties(title=title or "ICM search trace")
    )


DIAGNOSIS_LABELLINGS = {"U_gold": "gold", "U_icm": "ICM's labels", "U_flipped": "gold flipped"}


def icm_diagnosis_chart(diagnosis: pl.DataFrame, title: str = "") -> alt.Chart:
    """U of gold, ICM's labels and gold flipped under the run's objective, one row per (country, ICM seed)."""
    long = (
        diagnosis.with_columns(run=pl.format("{} / seed {}", "country", "icm_seed"))
        .unpivot(index=["run", "verdict"], on=list(DIAGNOSIS_LABELLINGS), variable_name="labelling", value_name="U")
        .with_columns(pl.col("labelling").replace_strict(DIAGNOSIS_LABELLINGS))
    )
    return (
        alt.Chart(long)
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X("U:Q", title="U = alpha*P - I under the run's objective", scale=alt.Scale(zero=False)),
            y=alt.Y("run:N", title="country / seed"),
            color=alt.Color("labelling:N", title="labelling", sort=list(DIAGNOSIS_LABELLINGS.values())),
            tooltip=["run", "labelling", alt.Tooltip("U:Q", format=".4f"), "verdict"],
        )
        .properties(width=520, height=max(160, 26 * long["run"].n_unique()),
                    title=title or "ICM diagnosis: the energy of gold, ICM's labels and gold flipped")
    )


IN_RUN, LEFT_OUT, NOT_IN_RUN = "in this run", "left out: too few question groups", "not in this run"
MAP_PANELS = {"icm_accuracy": "ICM test claim accuracy", "icm_minus_golden": "ICM minus golden (claim accuracy)"}


def map_scale(field: str, shapes: pl.DataFrame) -> alt.Scale:
    """Accuracy on [0, 1]; the difference on a diverging scale centred on 0 that reaches the largest
    |difference| drawn (rounded up to a tenth), so no country's colour is cut off at the scale's end."""
    if field == "icm_accuracy":
        return alt.Scale(scheme="viridis", domain=[0, 1])
    largest = shapes[field].abs().max() if shapes.height else None
    reach = max(0.1, math.ceil(round((largest or 0) * 10, 9)) / 10)
    return alt.Scale(scheme="redblue", domain=[-reach, reach], domainMid=0)


def map_countries(ranking: pl.DataFrame, left_out: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """One row per map shape: the run's country drawn there (a national sample first, then the most
    test claims, then by name: GOQA has several samples of some countries), or the country left
    out there; and the run's countries the map has no shape for."""
    shapes = atlas_ids()
    rows, off_map = [], []
    for r in ranking.iter_rows(named=True):
        shape = map_id(r["country"])
        if shape not in shapes:
            off_map.append(r["country"])
            continue
        rows.append({**{k: r[k] for k in ("country", "n_test_claims", *MAP_PANELS)}, "id": shape, "status": IN_RUN,
                     "reason": None, "_order": (not is_national_sample(r["country"]), -(r["n_test_claims"] or 0), r["country"])})
    for r in left_out.iter_rows(named=True):
        shape = map_id(r["country"])
        if shape in shapes:
            rows.append({"country": r["country"], "id": shape, "status": LEFT_OUT, "reason": r["reason"],
                         "_order": (True, 0, r["country"])})
    schema = {"id": pl.String, "country": pl.String, "status": pl.String, "n_test_claims": pl.Int64,
              "icm_accuracy": pl.Float64, "icm_minus_golden": pl.Float64, "reason": pl.String}
    if not rows:
        return pl.DataFrame(schema=schema), off_map
    rank = {IN_RUN: 0, LEFT_OUT: 1}
    rows.sort(key=lambda r: (r["id"], rank[r["status"]], r["_order"]))
    first = {}
    for r in rows:
        first.setdefault(r["id"], r)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in first.values()], schema=schema), off_map


def world_map_chart(ranking: pl.DataFrame, left_out: pl.DataFrame, title: str = "") -> alt.VConcatChart:
    """Two world maps (ICM's test claim accuracy; ICM minus golden) of the run's countries, the
    countries left out in grey, the rest light. The map (data/world-atlas) is embedded in the spec."""
    shapes, _ = map_countries(ranking, left_out)
    atlas = alt.Data(values=world_atlas(), format=alt.DataFormat(type="topojson", feature="countries"))
    lookup = alt.LookupData(alt.Data(values=shapes.to_dicts()), key="id",
                            fields=["country", "status", "n_test_claims", "reason", *MAP_PANELS])
    panels = []
    for field, label in MAP_PANELS.items():
        scale = map_scale(field, shapes.filter(pl.col("status") == IN_RUN))
        base = (alt.Chart(atlas).transform_filter("datum.id != '010'")  # Antarctica: no survey, a third of the map
                .transform_lookup(lookup="id", from_=lookup)
                .transform_calculate(status=f"datum.status ? datum.status : '{NOT_IN_RUN}'"))
        context = base.transform_filter(alt.datum.status != IN_RUN).mark_geoshape(stroke="white", strokeWidth=0.4).encode(
            color=alt.Color("status:N", title="countries", scale=alt.Scale(domain=[LEFT_OUT, NOT_IN_RUN], range=["#737373", "#d9d9d9"])),
            tooltip=[alt.Tooltip("country:N", title="GOQA country"), alt.Tooltip("status:N"), alt.Tooltip("reason:N")],
        )
        # outlined: a value near 0 on the diverging scale is as pale as a country not in the run
        drawn = base.transform_filter(alt.datum.status == IN_RUN).mark_geoshape(stroke="#333", strokeWidth=0.6).encode(
            color=alt.Color(f"{field}:Q", title=label, scale=scale),
            tooltip=[alt.Tooltip("country:N", title="GOQA country"), alt.Tooltip(f"{field}:Q", format=".3f", title=label),
                     alt.Tooltip("n_test_claims:Q", title="test claims")],
        )
        panels.append(alt.layer(context, drawn).project("equalEarth").properties(width=640, height=320, title=label)
                      .resolve_scale(color="independent"))
    return alt.vconcat(*panels).resolve_scale(color="independent").properties(
        title=title or "Where ICM elicits a country's opinions (outlined: in this run; dark grey: left out; light grey: not in this run)")


def country_ranking_chart(ranking: pl.DataFrame, title: str = "") -> alt.Chart:
    """Countries ranked by ICM's test claim accuracy: ICM with its 95% interval and golden beside it."""
    order = ranking.sort("rank", "country")["country"].to_list()
    long = pl.concat([
        ranking.select("rank", "country", "n_test_claims", method=pl.lit("ICM labels"), accuracy="icm_accuracy",
                       low="icm_ci_low", high="icm_ci_high"),
        ranking.select("rank", "country", "n_test_claims", method=pl.lit("golden labels"), accuracy="golden_accuracy",
                       low="golden_ci_low", high="golden_ci_high"),
    ]).drop_nulls("accuracy")
    scale = _method_scale(["icm", "golden"])
    base = alt.Chart(long).encode(
        y=alt.Y("country:N", sort=order, title=None),
        color=alt.Color("method:N", title="demo labels", scale=scale),
        tooltip=["rank:Q", "country:N", "method:N", "n_test_claims:Q", alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("low:Q", format=".3f", title="95% low"), alt.Tooltip("high:Q", format=".3f", title="95% high")],
    )
    bars = base.mark_rule(strokeWidth=2, opacity=0.6).encode(
        x=alt.X("low:Q", title="test claim accuracy (95% CI)", scale=alt.Scale(domain=[0, 1])), x2="high:Q")
    points = base.mark_point(filled=True, size=50).encode(x="accuracy:Q", yOffset=alt.YOffset("method:N"))
    chance = alt.Chart().mark_rule(strokeDash=[4, 4], color="#999").encode(x=alt.datum(0.5))
    return (alt.layer(chance, bars.encode(yOffset=alt.YOffset("method:N")), points, data=long)
            .properties(width=420, height=max(160, 26 * len(order)), title=title or "Countries ranked by ICM's test accuracy (dashed: chance)"))


def model_size_chart(comparison: pl.DataFrame, title: str = "") -> alt.Chart:
    """Headline test claim accuracy (countries pooled, 95% interval) against the base model's parameter
    count (log x), a line per method: does a bigger model hold the countries' opinions better?"""
    frame = _labelled(comparison.drop_nulls("base_model_parameters")).with_columns(
        model=pl.col("base_model").str.split(":").list.last())
    scale = _method_scale(frame["method"].unique().to_list())
    base = alt.Chart(frame).encode(
        x=alt.X("base_model_parameters:Q", title="base model parameters (log scale)", scale=alt.Scale(type="log"),
                axis=alt.Axis(format="~s")),
        color=alt.Color("method_label:N", title="method", scale=scale),
        tooltip=["model:N", "method:N", alt.Tooltip("base_model_parameters:Q", format=",", title="parameters"),
                 "n_countries:Q", "n_test_claims:Q", alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f", title="95% low"), alt.Tooltip("ci_high:Q", format=".3f", title="95% high")],
    )
    y_title = "test claim accuracy, countries pooled (95% CI)"
    lines = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=60)).encode(
        y=alt.Y("accuracy:Q", title=y_title, scale=alt.Scale(domain=[0, 1])))
    bars = base.mark_errorbar(ticks=True).encode(y=alt.Y("ci_low:Q", title=y_title), y2="ci_high:Q")
    chance = alt.Chart().mark_rule(strokeDash=[4, 4], color="#999").encode(y=alt.datum(0.5))
    return (alt.layer(chance, bars, lines, data=frame)
            .properties(width=420, height=260, title=title or "Accuracy against base model size (dashed: chance)"))


def render(chart: alt.Chart, stem: Path) -> tuple[Path, Path]:
    """Write `stem`.png (2x) and `stem`.svg; returns both paths."""
    spec = chart.to_dict()
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    png.write_bytes(vlc.vegalite_to_png(spec, scale=2))
    svg.write_text(vlc.vegalite_to_svg(spec))
    stem.with_suffix(".vl.json").write_text(json.dumps(spec))
    return png, svg


def _table_html(frame: pl.DataFrame) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in frame.iter_rows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; }
td { text-align: right; } th { background: #f4f4f4; } figure { margin: 2em 0; }
figcaption { font-size: 13px; color: #555; } pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _parameters(info: dict) -> str:
    """ " (8.03B parameters)" of a runs row, or "" when unknown; and the study it is part of."""
    out = ""
    if info.get("base_model_parameters"):
        out += f" ({info['base_model_parameters'] / 1e9:.3g}B parameters)"
    if info.get("study_id") and info["study_id"] != info.get("run_id"):
        out += f' · study <a href="../{html.escape(info["study_id"])}/report.html"><code>{html.escape(info["study_id"])}</code></a>'
    return out


def write_report(read: Read, run_id: str, out_dir: Path) -> ReportFiles:
    """Query the views for `run_id`, render the three charts and write `out_dir`/report.html."""
    run = read("SELECT * FROM runs WHERE run_id = $run_id", {"run_id": run_id})
    if run.height == 0:
        raise ValueError(f"run {run_id!r} is not in the warehouse (see `persona-icm runs`)")
    out_dir.mkdir(parents=True, exist_ok=True)
    info = run.row(0, named=True)
    summary_rows = _without_lone_aggregate(read(HEADLINE_SQL, {"run_id": run_id, "aggregate": AGGREGATE}))
    headline = _aggregate_only_past(summary_rows, MAX_COUNTRY_PANELS)
    seeds = _aggregate_only_past(read(SEEDS_SQL, {"run_id": run_id}), MAX_COUNTRY_PANELS)
    vs_examples = _aggregate_only_past(
        _without_lone_aggregate(read(VS_EXAMPLES_SQL, {"run_id": run_id, "aggregate": AGGREGATE})), MAX_COUNTRY_PANELS)
    n_countries = summary_rows.filter(pl.col("country") != AGGREGATE)["country"].n_unique()
    study_note = (f" With {n_countries} countries, only their aggregate is drawn here; the country ranking shows each."
                  if n_countries > MAX_COUNTRY_PANELS else "")
    trace = read(TRACE_SQL, {"run_id": run_id})
    comparison = read(COMPARISON_SQL, {"run_id": run_id, "aggregate": AGGREGATE})
    diagnosis = read(DIAGNOSIS_SQL, {"run_id": run_id})
    ranking = read(RANKING_SQL, {"run_id": run_id})
    left_out = read(LEFT_OUT_SQL, {"run_id": run_id})
    shapes, off_map = map_countries(ranking, left_out)

    charts: dict[str, tuple[Path, Path]] = {}
    captions = {
        "accuracy_by_method": "Test accuracy per method (headline: whole labelled pool as demos): claim accuracy, and "
        "group accuracy (the question's top option scores highest). Bars: 95% interval over demo orders, ICM seeds "
        "and test questions; aggregate weighted by test size." + study_note,
        "accuracy_vs_examples": "Mean claim and group accuracy over demo orders against the number of demonstrations; "
        "bars: 95% interval. "
        "All countries: the sizes every country has, then the whole pools pooled, at their mean size." + study_note,
        "icm_trace": "ICM search per iteration: objective U, mutual predictability P, inconsistencies I, "
        "and the accuracy of the current labels against gold (monitoring only). With icm.consistency=false "
        "(preset fork) U is alpha*P and I is only counted.",
        "icm_diagnosis": "ICM diagnosis per country and seed, on the claims ICM labelled: U of the gold labels, of "
        "ICM's final labels and of gold flipped, under the run's model, objective and alpha. U(ICM) below U(gold): "
        "the search fell short of gold; at or above: the objective prefers ICM's labels (the table below).",
        "published_comparison": "This run's test claim accuracy with its 95% interval per country and method, and the "
        "persona-elicitation fork's published number (Llama-3.1-70B base) as a black cross; all countries: "
        "weighted by test size. The table below says whether each published number falls inside the interval.",
        "world_map": "ICM's headline test claim accuracy per country, and ICM's minus golden's (blue: ICM higher); the run's countries are outlined. "
        "Dark grey: countries of the GOQA file that data.countries 'all' left out (too few usable question groups; "
        "table below); light grey: not in this run. Where GOQA has several samples of one country, the map shows "
        "the national one with the most test claims; the ranking lists every one."
        + (f" Not on the map (no shape at 1:110m): {', '.join(off_map)}." if off_map else ""),
        "country_ranking": "Countries ranked by ICM's headline test claim accuracy, with golden labels beside it; "
        "bars: 95% interval over demo orders, ICM seeds and test questions.",
    }
    if headline.height:
        charts["accuracy_by_method"] = render(accuracy_by_method_chart(headline, seeds=seeds), out_dir / "accuracy_by_method")
    if vs_examples.height:
        charts["accuracy_vs_examples"] = render(accuracy_vs_examples_chart(vs_examples), out_dir / "accuracy_vs_examples")
    if trace.height:
        charts["icm_trace"] = render(icm_trace_chart(trace), out_dir / "icm_trace")
    if diagnosis.height:
        charts["icm_diagnosis"] = render(icm_diagnosis_chart(diagnosis), out_dir / "icm_diagnosis")
    if comparison.height:
        charts["published_comparison"] = render(published_comparison_chart(comparison), out_dir / "published_comparison")
    chosen_by_all = read(CHOSEN_BY_ALL_SQL, {"run_id": run_id})["chosen"].item()
    on_map = (shapes["status"] == IN_RUN).sum()
    if on_map and (chosen_by_all or on_map >= MAP_MIN_COUNTRIES):
        charts["world_map"] = render(world_map_chart(ranking, left_out), out_dir / "world_map")
    if ranking.height > 1:
        charts["country_ranking"] = render(country_ranking_chart(ranking), out_dir / "country_ranking")

    figures = "".join(
        f'<figure id="{name}">{svg.read_text()}<figcaption>{html.escape(captions[name])} '
        f'<a href="{png.name}">PNG</a> · <a href="{svg.name}">SVG</a></figcaption></figure>'
        for name, (png, svg) in charts.items()
    )
    summary = summary_rows.select(
        pl.lit(info.get("base_model")).alias("base_model"), "country", "method", "n_demos", "n_test_claims", "accuracy",
        "ci_low", "ci_high", "group_accuracy", "group_ci_low", "group_ci_high",
    )
    versus = ""
    if comparison.height:
        versus = "<h2>Against the published numbers</h2>" + _table_html(comparison.select(
            "country", "method", "accuracy_pct", "ci_low_pct", "ci_high_pct", "published_pct", "published_in_interval",
        ))
    diagnosed = ""
    if diagnosis.height:
        diagnosed = ("<h2>ICM diagnosis: gold vs ICM's labels vs gold flipped</h2>" + _table_html(diagnosis)
                     + "<p>gold_ranked_first: question groups whose gold-True option gets the higher leave-one-out "
                     "score with every other claim's gold label as context, of the groups ICM labelled whole.</p>")
    study = ""
    if ranking.height > 1:
        study = "<h2>Countries ranked by ICM</h2>" + _table_html(ranking.select(
            "rank", "country", "n_test_claims", "icm_accuracy", "icm_ci_low", "icm_ci_high", "golden_accuracy",
            "icm_minus_golden", "zero_shot_base_accuracy", "zero_shot_chat_accuracy",
        ))
    if left_out.height:
        study += (f'<h2 id="left_out">Countries left out ({left_out.height})</h2><p>Countries of the GOQA file that '
                  "data.countries 'all' did not select (view <code>countries_left_out</code>).</p>" + _table_html(left_out))
    config = json.dumps(json.loads(info["config_json"]), indent=2) if info.get("config_json") else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>persona-icm run {html.escape(run_id)}</title>
<style>{_CSS}</style></head><body>
<h1>persona-icm run <code>{html.escape(run_id)}</code></h1>
<p>preset <b>{html.escape(str(info.get("preset")))}</b> · base model <b>{html.escape(str(info.get("base_model")))}</b>{_parameters(info)}
· chat model <b>{html.escape(str(info.get("chat_model")))}</b> · status {html.escape(str(info.get("status")))}
· data {html.escape(str(info.get("dataset_id")))} · code {html.escape(str(info.get("code_version")))}</p>
{figures}
<h2>Headline results</h2>{_table_html(summary)}
{diagnosed}
{versus}
{study}
<h2>Run configuration</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    report = out_dir / "report.html"
    report.write_text(page)
    return ReportFiles(out_dir, report, charts)


# A study (base_models): its runs, one per base model, and each method's pooled accuracy per model.
STUDY_RUNS_SQL = """
SELECT run_id, base_model, base_model_parameters, base_model_parameters_source, status, preset, dataset_id, code_version
FROM runs WHERE coalesce(study_id, run_id) = $study_id ORDER BY base_model_parameters NULLS LAST, base_model
"""
MODEL_COMPARISON_SQL = """
SELECT base_model, base_model_parameters, method, n_countries, n_test_claims, accuracy, ci_low, ci_high,
       group_accuracy, mean_country_accuracy, min_country_accuracy, max_country_accuracy, run_id
FROM model_comparison WHERE study_id = $study_id ORDER BY method, base_model_parameters NULLS LAST, base_model
"""


def write_study_report(read: Read, study_id: str, out_dir: Path) -> ReportFiles:
    """`out_dir`/report.html of a study: accuracy against model size per method (view model_comparison),
    the model table, and a link to each model's run report (../<run_id>/report.html)."""
    runs = read(STUDY_RUNS_SQL, {"study_id": study_id})
    if runs.height == 0:
        raise ValueError(f"no run or study {study_id!r} in the warehouse (see `persona-icm runs`)")
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = read(MODEL_COMPARISON_SQL, {"study_id": study_id})
    charts: dict[str, tuple[Path, Path]] = {}
    unsized = runs.filter(pl.col("base_model_parameters").is_null())
    if comparison.drop_nulls("base_model_parameters").height:
        charts["model_size"] = render(model_size_chart(comparison), out_dir / "model_size")
    caption = ("Each method's headline test claim accuracy, countries pooled (weighted by test size), against the base "
               "model's parameter count; bars: 95% interval over demo orders, ICM seeds and test questions. The zero-shot "
               "chat baseline uses no base model: it is the same in every run." + (
                   f" Left off (no parameter count): {', '.join(unsized['base_model'].to_list())}." if unsized.height else ""))
    figures = "".join(
        f'<figure id="{name}">{svg.read_text()}<figcaption>{html.escape(caption)} '
        f'<a href="{png.name}">PNG</a> · <a href="{svg.name}">SVG</a></figcaption></figure>'
        for name, (png, svg) in charts.items()
    )
    links = "".join(
        f'<li><a href="../{html.escape(r["run_id"])}/report.html">{html.escape(r["base_model"])}</a> '
        f'(run <code>{html.escape(r["run_id"])}</code>, {html.escape(str(r["status"]))})</li>'
        for r in runs.iter_rows(named=True)
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>persona-icm study {html.escape(study_id)}</title>
<style>{_CSS}</style></head><body>
<h1>persona-icm study <code>{html.escape(study_id)}</code></h1>
<p>{runs.height} base models, one run each:</p><ul>{links}</ul>
{figures}
<h2>Models compared (countries pooled)</h2>{_table_html(comparison.drop("run_id"))}
<h2>Runs</h2>{_table_html(runs)}
</body></html>
"""
    report = out_dir / "report.html"
    report.write_text(page)
    return ReportFiles(out_dir, report, charts)
