"""`velo report`: a batch's feature and prediction statistics, and their drift from a reference batch.

Workers gather each file's statistics while scoring it (velosiped.sketch); here they are merged,
per batch, straight from Redis: no input is read again. Per feature, against the reference:

- PSI over 10 bins cut at the reference's deciles (shares floored at 0.0001);
- KS: the largest gap between the two CDFs;
- the share of nulls, and the share of current values outside the reference's [min, max].

A feature drifts when PSI >= ``threshold`` (default 0.1), or when KS >= ``KS_THRESHOLD`` (0.1)
and KS is also beyond the two-sample critical value at alpha = 0.001 (so a small batch does not
drift by chance). The prediction drifts by the same rule on its sketch, or, for class labels, when
the PSI of the class shares is >= ``threshold``.

The histogram's buckets are relative to a value's magnitude, so a feature whose spread is tiny
beside its values (a year, 2020 ± 3; a timestamp; a latitude) falls into a few buckets, where a
histogram sees no shift. When the reference's middle 90 % spans fewer than ``MIN_BUCKETS``
buckets, KS is also estimated from the exact moments, as the KS distance between two normal laws
with the batches' means and standard deviations, and the larger estimate is kept
(``"resolution": "moments"`` in the JSON).

A batch scored with ``--shadow`` adds "champion vs challenger" (velosiped.comparison): rows compared,
agreement rate and the confusion of the two models' labels, mean and max |Δproba| (or |Δprediction|
for regressors), and the features whose distribution on the rows where the labels differ is the
furthest from all rows' (PSI, KS, as above), most different first.
"""

from __future__ import annotations

import html
import json
import math
import time
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dispatcher.profile import load_profile
from velosiped import keys
from velosiped.comparison import Comparison
from velosiped.errors import EXIT_FILES_FAILED, EXIT_OK, ConfigError
from velosiped.sketch import Sketch, Stats, load_batch

__all__ = ["DEFAULT_THRESHOLD", "KS_THRESHOLD", "compare", "render_html", "report"]

DEFAULT_THRESHOLD = 0.1
"""PSI at or above which a feature drifts."""

KS_THRESHOLD = 0.1
"""KS at or above which a feature drifts (when beyond chance too)."""

KS_ALPHA_C = 1.949
"""c(alpha) of the two-sample KS test at alpha = 0.001: sqrt(-ln(alpha / 2) / 2)."""

TOP_FEATURES = 10
"""Features shown where champion and challenger disagree, most different first."""

MIN_BUCKETS = 8
"""Buckets the reference's middle 90 % must span for its histogram to judge it alone."""

BINS = 10
FLOOR = 1e-4
"""A bin's share at least, so an empty bin does not make PSI infinite."""


def _num(x: float) -> float | None:
    """A float for JSON: None for NaN and the infinities."""
    return float(x) if math.isfinite(x) else None


def describe(s: Sketch) -> dict[str, Any]:
    """One column's statistics alone."""
    total = s.count + s.nulls
    q = s.quantile([0.05, 0.25, 0.5, 0.75, 0.95]) if s.count else [math.nan] * 5
    return {
        "count": s.count,
        "nulls": s.nulls,
        "null_share": s.nulls / total if total else 0.0,
        "min": _num(s.min),
        "max": _num(s.max),
        "mean": _num(s.mean) if s.count else None,
        "std": _num(s.std),
        "p05": _num(q[0]),
        "p25": _num(q[1]),
        "p50": _num(q[2]),
        "p75": _num(q[3]),
        "p95": _num(q[4]),
    }


def psi(current: np.ndarray, reference: np.ndarray) -> float:
    c, r = np.maximum(current, FLOOR), np.maximum(reference, FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def _shares(s: Sketch, edges: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], s.cdf(edges), [1.0]]))


def drift(cur: Sketch, ref: Sketch, threshold: float) -> dict[str, Any]:
    """PSI, KS and the share outside the reference's range of ``cur`` against ``ref``."""
    if not cur.count or not ref.count:
        return {"psi": None, "ks": None, "ks_critical": None, "outside": None, "drift": False}
    edges = np.unique(ref.quantile(np.arange(1, BINS) / BINS))
    value = psi(_shares(cur, edges), _shares(ref, edges))
    points = np.union1d(cur.values(), ref.values())
    ks = float(np.max(np.abs(cur.cdf(points) - ref.cdf(points))))
    coarse = _coarse(ref)
    if coarse:
        ks = max(ks, normal_ks(cur.mean, cur.std, ref.mean, ref.std))
    critical = KS_ALPHA_C * math.sqrt((cur.count + ref.count) / (cur.count * ref.count))
    outside = (cur.cdf(np.nextafter(ref.min, -np.inf)) + 1.0 - cur.cdf(ref.max)) if cur.count else 0.0
    drifted = value >= threshold or (ks >= KS_THRESHOLD and ks > critical)
    found: dict[str, Any] = {
        "psi": value,
        "ks": ks,
        "ks_critical": critical,
        "outside": float(outside),
        "drift": bool(drifted),
    }
    if coarse:
        found["resolution"] = "moments"
    return found


def _coarse(ref: Sketch) -> bool:
    """Whether the reference's middle 90 % falls into too few buckets for its histogram to see a shift."""
    low, high = ref.quantile([0.05, 0.95])
    values = ref.values()
    return int(np.count_nonzero((values >= low) & (values <= high))) < MIN_BUCKETS


def normal_ks(mean: float, std: float, ref_mean: float, ref_std: float) -> float:
    """The KS distance between N(mean, std) and N(ref_mean, ref_std): the largest gap of their CDFs."""
    if not all(math.isfinite(x) for x in (mean, std, ref_mean, ref_std)):
        return 0.0
    if std <= 0 or ref_std <= 0:
        return 0.0 if mean == ref_mean and std == ref_std else 1.0
    # The CDFs' gap is largest where their densities cross: at most two points, found in closed form
    # (one when the spreads are equal); the gap is checked there.
    points = [(mean + ref_mean) / 2]
    if not math.isclose(std, ref_std):
        a = 1 / ref_std**2 - 1 / std**2
        b = 2 * (mean / std**2 - ref_mean / ref_std**2)
        c = ref_mean**2 / ref_std**2 - mean**2 / std**2 - 2 * math.log(std / ref_std)
        disc = b * b - 4 * a * c
        if disc >= 0:
            points = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1, -1)]
    phi = lambda x, m, s: 0.5 * (1 + math.erf((x - m) / (s * math.sqrt(2))))  # noqa: E731
    return max(abs(phi(x, mean, std) - phi(x, ref_mean, ref_std)) for x in points)


def _class_drift(cur: dict[str, int], ref: dict[str, int], threshold: float) -> dict[str, Any]:
    labels = sorted(set(cur) | set(ref))
    nc, nr = sum(cur.values()) or 1, sum(ref.values()) or 1
    c = np.array([cur.get(k, 0) / nc for k in labels])
    r = np.array([ref.get(k, 0) / nr for k in labels])
    value = psi(c, r) if labels else 0.0
    return {
        "psi": value,
        "shares": {k: float(x) for k, x in zip(labels, c, strict=True)},
        "reference_shares": {k: float(x) for k, x in zip(labels, r, strict=True)},
        "drift": bool(value >= threshold),
    }


def compare(current: Stats, reference: Stats | None, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """The report as one JSON-able object: features sorted by drift (drifting first, then by PSI)."""
    features = []
    for name, sketch in current.features.items():
        row: dict[str, Any] = {"feature": name, **describe(sketch)}
        ref = reference.features.get(name) if reference is not None else None
        if reference is not None:
            if ref is None:
                row.update(psi=None, ks=None, ks_critical=None, outside=None, drift=False, missing_in_reference=True)
            else:
                row.update(drift(sketch, ref, threshold))
                row["reference"] = describe(ref)
        features.append(row)
    if reference is not None:
        features.sort(key=lambda r: (not r["drift"], -(r["psi"] or 0.0), -(r["ks"] or 0.0)))
    prediction: dict[str, Any] = {}
    if current.labels or current.classes:
        total = sum(current.classes.values()) or 1
        prediction = {"kind": "classes", "counts": dict(sorted(current.classes.items()))}
        prediction["shares"] = {k: v / total for k, v in prediction["counts"].items()}
        if reference is not None:
            prediction.update(_class_drift(current.classes, reference.classes, threshold))
    elif current.prediction.count:
        prediction = {"kind": "number", **describe(current.prediction)}
        if reference is not None:
            prediction.update(drift(current.prediction, reference.prediction, threshold))
            prediction["reference"] = describe(reference.prediction)
    drifted = [r["feature"] for r in features if r.get("drift")]
    if prediction.get("drift"):
        drifted.append("prediction")
    shadow = {"challenger": challenger(current.comparison, threshold)} if current.comparison is not None else {}
    return {
        "rows": current.rows or (current.comparison.rows if current.comparison is not None else 0),
        "files": current.files,
        "reference_rows": reference.rows if reference is not None else None,
        "reference_files": reference.files if reference is not None else None,
        "threshold": threshold,
        "ks_threshold": KS_THRESHOLD,
        "rule": f"drift: PSI >= {threshold:g}, or KS >= {KS_THRESHOLD:g} and beyond chance (alpha 0.001)",
        "drift": bool(drifted),
        "drifted": drifted,
        "features": features,
        "prediction": prediction,
        **shadow,
    }


def challenger(c: Comparison, threshold: float = DEFAULT_THRESHOLD, top: int = TOP_FEATURES) -> dict[str, Any]:
    """Champion vs challenger, as one JSON-able object (see the module's text)."""
    differing = []
    for name, where in c.disagree.items():
        everywhere = c.all.get(name)
        if everywhere is None or not where.count:
            continue
        d = drift(where, everywhere, threshold)
        differing.append(
            {
                "feature": name,
                "psi": d["psi"],
                "ks": d["ks"],
                "mean_disagree": _num(where.mean),
                "mean_all": _num(everywhere.mean),
                "rows_disagree": where.count,
            }
        )
    differing.sort(key=lambda r: (-(r["psi"] or 0.0), -(r["ks"] or 0.0)))
    return {
        "champion": c.champion,
        "challenger": c.challenger,
        "files": c.files,
        "rows": c.rows,
        "labels": c.labels,
        "agree": c.agree if c.labels else None,
        "agreement": c.agreement,
        "confusion": {x: dict(sorted(row.items())) for x, row in sorted(c.confusion.items())},
        "delta_of": "proba" if c.proba else ("prediction" if c.delta_rows else None),
        "delta_mean": c.delta_mean,
        "delta_max": c.delta_max if c.delta_rows else None,
        "features": differing[:top],
        "failed_files": c.failed_files,
        "failed": c.failed,
    }


def _load(redis: Any, batch: str) -> Stats:
    if not redis.exists(keys.batch(batch)):
        raise ConfigError(f"no batch {batch!r} in Redis; `velo status` lists the batches")
    stats = load_batch(redis, batch)
    if not stats.files:
        raise ConfigError(
            f"batch {batch!r} has no statistics: no file of it is done yet, or it was dispatched with --no-stats"
        )
    return stats


def report(
    redis: Any,
    batch: str,
    reference: str | None,
    *,
    as_json: bool,
    html_path: str | None,
    threshold: float,
    fail_on_drift: bool,
    console: Console,
    reference_profile: str | None = None,
) -> int:
    """`velo report`: print (and write) the report; EXIT_FILES_FAILED if it drifts and ``fail_on_drift``.

    The reference is a batch (``reference``) or a profile `velo profile` wrote (``reference_profile``)."""
    started = time.perf_counter()
    current = _load(redis, batch)
    ref = _load(redis, reference) if reference else load_profile(reference_profile) if reference_profile else None
    result = {"batch": batch, "reference": reference or reference_profile, **compare(current, ref, threshold)}
    result["seconds"] = round(time.perf_counter() - started, 4)
    if html_path:
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(render_html(result, current, ref))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        render(result, console)
    return EXIT_FILES_FAILED if fail_on_drift and result["drift"] else EXIT_OK


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)


def render(r: dict[str, Any], console: Console) -> None:
    """The report as rich tables."""
    against = f" vs reference {r['reference']} ({r['reference_rows']:,} rows)" if r["reference"] else ""
    table = Table(title=escape(f"batch {r['batch']}: {r['rows']:,} rows in {_files(r['files'])}{against}"))
    table.add_column("feature")
    for col in ("nulls %", "mean", "std", "min", "max"):
        table.add_column(col, justify="right")
    if r["reference"]:
        for col in ("ref mean", "ref std", "PSI", "KS", "outside %", "drift"):
            table.add_column(col, justify="right")
    for f in r["features"]:
        cells = [
            escape(f["feature"]),
            f"{100 * f['null_share']:.2f}",
            _fmt(f["mean"]),
            _fmt(f["std"]),
            _fmt(f["min"]),
            _fmt(f["max"]),
        ]
        if r["reference"]:
            ref = f.get("reference", {})
            outside = f["outside"]
            cells += [
                _fmt(ref.get("mean")),
                _fmt(ref.get("std")),
                _fmt(f["psi"], ".4f"),
                _fmt(f["ks"], ".4f"),
                "" if outside is None else f"{100 * outside:.2f}",
                "[bold red]DRIFT[/]" if f["drift"] else "ok",
            ]
        table.add_row(*cells)
    if r["features"] or "challenger" not in r:  # a batch with a challenger but without --stats: no features
        console.print(table)
    else:
        console.print(escape(f"batch {r['batch']}: {r['rows']:,} rows in {_files(r['files'])}"))
    p = r["prediction"]
    if p.get("kind") == "classes":
        ref_shares = p.get("reference_shares", {})
        shares = ", ".join(
            f"{k}: {100 * v:.1f} %" + (f" (ref {100 * ref_shares.get(k, 0):.1f} %)" if r["reference"] else "")
            for k, v in p["shares"].items()
        )
        console.print(f"prediction classes: {shares}", markup=False)
    elif p.get("kind") == "number":
        console.print(f"prediction: mean {_fmt(p['mean'])}, std {_fmt(p['std'])}, p50 {_fmt(p['p50'])}", markup=False)
    if r["reference"] and "psi" in p:
        console.print(f"prediction PSI {_fmt(p['psi'], '.4f')}: {'DRIFT' if p['drift'] else 'ok'}", markup=False)
    if r["reference"]:
        verdict = f"drift in: {', '.join(r['drifted'])}" if r["drift"] else "no drift"
        console.print(f"{verdict} ({r['rule']})", markup=False)
    if "challenger" in r:
        render_challenger(r["challenger"], console)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f} %"


def render_challenger(c: dict[str, Any], console: Console) -> None:
    """The champion vs challenger section, as rich tables."""
    console.print(f"\nchampion vs challenger: {c['champion']} vs {c['challenger']}", markup=False)
    line = f"{c['rows']:,} rows compared in {_files(c['files'])}"
    if c["agreement"] is not None:
        line += f"; agreement {_pct(c['agreement'])} ({c['rows'] - c['agree']:,} rows differ)"
    if c["delta_of"]:
        line += f"; |Δ{c['delta_of']}| mean {_fmt(c['delta_mean'], '.4g')}, max {_fmt(c['delta_max'], '.4g')}"
    console.print(line, markup=False)
    if c["confusion"]:
        labels = sorted({y for row in c["confusion"].values() for y in row})
        table = Table(title="rows: champion's label (row) vs challenger's (column)")
        table.add_column("champion \\ challenger")
        for y in labels:
            table.add_column(escape(y), justify="right")
        for x, row in c["confusion"].items():
            table.add_row(escape(x), *(f"{row.get(y, 0):,}" for y in labels))
        console.print(table)
    if c["features"]:
        table = Table(title="features differing most where the two models disagree (vs all rows)")
        for col in ("feature", "PSI", "KS", "mean (disagree)", "mean (all)", "rows"):
            table.add_column(col, justify="left" if col == "feature" else "right")
        for f in c["features"]:
            table.add_row(
                escape(f["feature"]),
                _fmt(f["psi"], ".4f"),
                _fmt(f["ks"], ".4f"),
                _fmt(f["mean_disagree"]),
                _fmt(f["mean_all"]),
                f"{f['rows_disagree']:,}",
            )
        console.print(table)
    if c["failed_files"]:
        console.print(f"challenger failed on {_files(c['failed_files'])} (champion outputs kept):", markup=False)
        for reason in c["failed"].values():
            console.print(f"  {reason}", markup=False)


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child{text-align:left}
.drift{color:#b00;font-weight:bold}.chart{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}
.cur{fill:#d62728;fill-opacity:.55}.ref{fill:#1f77b4;fill-opacity:.55}"""


def _histogram(cur: Sketch, ref: Sketch | None, bins: int = 30) -> tuple[np.ndarray, np.ndarray | None]:
    base = ref if ref is not None and ref.count else cur
    low, high = base.quantile(0.001), base.quantile(0.999)
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        low, high = base.min - 0.5, base.max + 0.5
    edges = np.linspace(low, high, bins + 1)
    h = np.diff(cur.cdf(edges)) if cur.count else np.zeros(bins)
    g = np.diff(ref.cdf(edges)) if ref is not None and ref.count else None
    return h, g


def _svg(name: str, cur: Sketch, ref: Sketch | None) -> str:
    w, h_px, bins = 300, 90, 30
    h, g = _histogram(cur, ref, bins)
    top = max(float(h.max()) if h.size else 0.0, float(g.max()) if g is not None and g.size else 0.0) or 1.0
    bar = w / bins
    parts = [f'<svg width="{w}" height="{h_px + 16}" role="img"><title>{html.escape(name)}</title>']
    for series, cls in ((g, "ref"), (h, "cur")):
        if series is None:
            continue
        for i, v in enumerate(series):
            height = h_px * float(v) / top
            x, y = i * bar, h_px - height
            parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{height:.1f}"/>')
    parts.append(f'<text x="0" y="{h_px + 13}" font-size="11">{html.escape(name)}</text></svg>')
    return "".join(parts)


def render_html(r: dict[str, Any], current: Stats, reference: Stats | None) -> str:
    """One self-contained HTML file: the drift table and inline SVG histograms (current red, reference blue)."""
    e = html.escape
    head = ["feature", "nulls %", "mean", "std", "min", "max"]
    if reference is not None:
        head += ["ref mean", "ref std", "PSI", "KS", "outside %", "drift"]
    rows = []
    for f in r["features"]:
        cells = [e(f["feature"]), f"{100 * f['null_share']:.2f}"] + [_fmt(f[k]) for k in ("mean", "std", "min", "max")]
        if reference is not None:
            ref = f.get("reference", {})
            cells += [_fmt(ref.get("mean")), _fmt(ref.get("std")), _fmt(f["psi"], ".4f"), _fmt(f["ks"], ".4f")]
            cells += ["" if f["outside"] is None else f"{100 * f['outside']:.2f}"]
            cells += ['<span class="drift">DRIFT</span>' if f["drift"] else "ok"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    charts = []
    for f in r["features"]:
        ref_sketch = reference.features.get(f["feature"]) if reference is not None else None
        charts.append(f'<div class="chart">{_svg(f["feature"], current.features[f["feature"]], ref_sketch)}</div>')
    if current.prediction.count:
        ref_p = reference.prediction if reference is not None else None
        charts.append(f'<div class="chart">{_svg("prediction", current.prediction, ref_p)}</div>')
    against = f" against reference {e(str(r['reference']))}" if r["reference"] else ""
    verdict = ""
    if r["reference"]:
        verdict = f"<p>{'Drift in: ' + e(', '.join(r['drifted'])) if r['drift'] else 'No drift'} ({e(r['rule'])}).</p>"
    p = r["prediction"]
    prediction = ""
    if p.get("kind") == "classes":
        items = "".join(
            f"<tr><td>{e(k)}</td><td>{100 * v:.2f}</td>"
            + (f"<td>{100 * p.get('reference_shares', {}).get(k, 0):.2f}</td>" if r["reference"] else "")
            + "</tr>"
            for k, v in p["shares"].items()
        )
        ref_head = "<th>reference %</th>" if r["reference"] else ""
        psi_line = f"<p>Prediction PSI {_fmt(p.get('psi'), '.4f')}</p>" if "psi" in p else ""
        prediction = (
            f"<h2>Prediction classes</h2><table><tr><th>class</th><th>%</th>{ref_head}</tr>{items}</table>{psi_line}"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>velo report {e(r['batch'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Batch {e(r['batch'])}{against}</h1>"
        f"<p>{r['rows']:,} rows in {_files(r['files'])}"
        + (f"; reference {r['reference_rows']:,} rows in {_files(r['reference_files'])}" if r["reference"] else "")
        + f".</p>{verdict}<table><tr>{''.join(f'<th>{c}</th>' for c in head)}</tr>{''.join(rows)}</table>"
        f"{prediction}<h2>Distributions</h2><p>Red: this batch; blue: the reference.</p>{''.join(charts)}"
        f"{_challenger_html(r['challenger'], current) if 'challenger' in r else ''}"
        "</body></html>\n"
    )


def _challenger_html(c: dict[str, Any], current: Stats) -> str:
    """The champion vs challenger section: numbers, confusion table, the features differing most where
    the models disagree, with their histograms (red: disagreeing rows; blue: all rows)."""
    e = html.escape
    parts = [f"<h2>Champion vs challenger</h2><p>{e(c['champion'])} vs {e(c['challenger'])}: "]
    parts.append(f"{c['rows']:,} rows compared in {_files(c['files'])}")
    if c["agreement"] is not None:
        parts.append(f"; agreement <b>{_pct(c['agreement'])}</b> ({c['rows'] - c['agree']:,} rows differ)")
    if c["delta_of"]:
        parts.append(f"; |Δ{c['delta_of']}| mean {_fmt(c['delta_mean'], '.4g')}, max {_fmt(c['delta_max'], '.4g')}")
    parts.append(".</p>")
    if c["confusion"]:
        labels = sorted({y for row in c["confusion"].values() for y in row})
        head = "".join(f"<th>{e(y)}</th>" for y in labels)
        body = "".join(
            f"<tr><td>{e(x)}</td>" + "".join(f"<td>{row.get(y, 0):,}</td>" for y in labels) + "</tr>"
            for x, row in c["confusion"].items()
        )
        parts.append(f"<table><tr><th>champion \\ challenger</th>{head}</tr>{body}</table>")
    if c["features"]:
        rows = "".join(
            f"<tr><td>{e(f['feature'])}</td><td>{_fmt(f['psi'], '.4f')}</td><td>{_fmt(f['ks'], '.4f')}</td>"
            f"<td>{_fmt(f['mean_disagree'])}</td><td>{_fmt(f['mean_all'])}</td><td>{f['rows_disagree']:,}</td></tr>"
            for f in c["features"]
        )
        parts.append(
            "<h3>Features differing most where the models disagree</h3><table><tr><th>feature</th><th>PSI</th>"
            f"<th>KS</th><th>mean (disagree)</th><th>mean (all)</th><th>rows</th></tr>{rows}</table>"
        )
        comparison = current.comparison
        if comparison is not None:
            parts.append("<p>Red: rows where the models disagree; blue: all rows.</p>")
            for f in c["features"][:4]:
                name = f["feature"]
                svg = _svg(name, comparison.disagree[name], comparison.all[name])
                parts.append(f'<div class="chart">{svg}</div>')
    if c["failed_files"]:
        items = "".join(f"<li>{e(reason)}</li>" for reason in c["failed"].values())
        failed = _files(c["failed_files"])
        parts.append(f"<p>Challenger failed on {failed} (champion outputs kept):</p><ul>{items}</ul>")
    return "".join(parts)
