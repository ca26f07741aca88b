"""The robustness card: one self-contained HTML page an auditor reads to judge an encoder's
robustness to medical-center differences.

The card has a title, a dataset summary (aggregate counts and pseudonymous center IDs only), a
table comparing encoders, a plain-language reading guide that cites the two robustness-index
definitions (de Jong et al. 2025; PathoROB, Kömen et al. 2025), and one section per encoder with
its RI-vs-k curve, its embedding map coloured by center and by class, and its errors by center.
Styles are inline and figures are base64 PNGs, so the file opens offline, can be mailed or archived
alone, and loads nothing from the network.

Example:
    >>> results = {"dataset": {"name": "demo", "n_samples": 4},
    ...            "encoders": {"mae": {"robustness_index": 1.3, "k": 10}}}
    >>> render_robustness_card(results, "runs/demo/robustness_card.html")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfm.robustness.card_plots import embedding_maps_plot, errors_by_center_plot, ri_curve_plot

CITATIONS = (
    "de Jong, E. D., et al. (2025). Current Pathology Foundation Models are unrobust to Medical "
    "Center Differences. arXiv preprint.",
    "Kömen, J., et al. (2025). Towards Robust Foundation Models for Digital Pathology "
    "(PathoROB benchmark). arXiv preprint.",
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1d2330;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2em;
margin-top:2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #cfd6de;padding:.35em .6em;text-align:right;vertical-align:top}
th{background:#eef2f6}td.name,th.name{text-align:left}
.muted{color:#66707c}.note{background:#f6f8fa;border-left:4px solid #9aa5b1;padding:.6em 1em}
.good{color:#17703a;font-weight:600}.bad{color:#a8231d;font-weight:600}
.warn{color:#8a5a00;font-weight:600}
img{max-width:100%;height:auto;border:1px solid #e3e7ec;margin:.3em 0}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dl.kv dt{font-weight:600}
dl.kv dd{margin:0}
"""

_HEAD_ORDER = ("knn", "linear")


# ------------------------------------------------------------------------------- formatting


def _e(value: Any) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    """A number for the card: ``—`` when absent, ``n/a`` when NaN, ``∞`` when infinite."""
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{x:.{digits}f}"


def _pct(value: Any) -> str:
    """A fraction as a percentage (``0.425`` -> ``42.5 %``)."""
    if value is None:
        return "—"
    x = float(value)
    return _num(x) if not math.isfinite(x) else f"{100 * x:.1f} %"


def _with_ci(value: Any, ci: Sequence | None, digits: int = 2) -> str:
    text = _num(value, digits)
    if ci is not None and len(ci) == 2:
        text += f' <span class="muted">[{_num(ci[0], digits)}, {_num(ci[1], digits)}]</span>'
    return text


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


# --------------------------------------------------------------------------- reading values


def _heads(center_vs_bio: Mapping | None) -> dict[str, Mapping]:
    """``{head: {"center_accuracy", "bio_accuracy", ...}}``; a flat dict is one head, named by
    its ``"head"`` key (default ``"knn"``)."""
    if not center_vs_bio:
        return {}
    if "center_accuracy" in center_vs_bio or "bio_accuracy" in center_vs_bio:
        return {str(center_vs_bio.get("head", "knn")): center_vs_bio}
    return {str(h): v for h, v in center_vs_bio.items() if isinstance(v, Mapping)}


def _all_heads(encoders: Mapping[str, Mapping]) -> list[str]:
    found = {h for enc in encoders.values() for h in _heads(enc.get("center_vs_bio"))}
    return [h for h in _HEAD_ORDER if h in found] + sorted(found - set(_HEAD_ORDER))


def _head_label(head: str) -> str:
    return {"knn": "kNN", "linear": "linear"}.get(head, head)


def _verdict(enc: Mapping) -> str:
    """Plain-language reading of the ratio RI, using its 95 % CI when there is one."""
    ri, ci = enc.get("robustness_index"), enc.get("robustness_index_ci95")
    if ri is None or (isinstance(ri, float) and math.isnan(ri)):
        return '<span class="muted">not computed</span>'
    lo, hi = (float(ci[0]), float(ci[1])) if ci is not None and len(ci) == 2 else (ri, ri)
    suffix = "" if ci is not None and len(ci) == 2 else " (no CI)"
    if lo > 1:
        return f'<span class="good">biology dominates{suffix}</span>'
    if hi < 1:
        return f'<span class="bad">center dominates{suffix}</span>'
    return f'<span class="warn">inconclusive: CI includes 1{suffix}</span>'


def _counts(values: Mapping | Sequence | None) -> dict[str, int | None]:
    """``{id: count}`` from a mapping of counts or a list of IDs (counts unknown)."""
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return {str(k): (None if v is None else int(v)) for k, v in values.items()}
    return {str(v): None for v in values}


def _dataset_summary(results: Mapping) -> dict[str, Any]:
    """The ``dataset`` entry, with counts filled in from an encoder's ``bio``/``center`` lists
    when the entry lacks them."""
    ds = dict(results.get("dataset") or {})
    source = next(
        (e for e in (results.get("encoders") or {}).values() if e.get("center") is not None), None
    )
    if source is not None:
        if "centers" not in ds:
            ds["centers"] = dict(Counter(map(str, source["center"])))
        if "classes" not in ds and source.get("bio") is not None:
            ds["classes"] = dict(Counter(map(str, source["bio"])))
        ds.setdefault("n_samples", len(source["center"]))
    return ds


# --------------------------------------------------------------------------------- sections


def _section_dataset(ds: Mapping) -> str:
    centers, classes = _counts(ds.get("centers")), _counts(ds.get("classes"))
    rows = [
        ("Dataset", _e(ds["name"]) if ds.get("name") else "—"),
        ("Samples", _num(ds.get("n_samples"), 0)),
        ("Centers", _num(ds.get("n_centers", len(centers) or None), 0)),
        ("Classes", _num(ds.get("n_classes", len(classes) or None), 0)),
    ]
    parts = ['<h2 id="dataset">Dataset</h2>', '<dl class="kv">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows]
    parts.append("</dl>")
    if ds.get("notes"):
        parts.append(f"<p>{_e(ds['notes'])}</p>")
    for title, counts in (("center", centers), ("class", classes)):
        if counts and any(v is not None for v in counts.values()):
            cells = "".join(f"<th>{_e(k)}</th>" for k in sorted(counts))
            nums = "".join(f"<td>{_num(counts[k], 0)}</td>" for k in sorted(counts))
            parts.append(
                f'<table><tr><th class="name">{title}</th>{cells}</tr>'
                f'<tr><td class="name">samples</td>{nums}</tr></table>'
            )
    if ds.get("center_class_counts"):
        parts.append(_crosstab(ds["center_class_counts"]))
    parts.append(
        '<p class="muted">Only pseudonymous center IDs and aggregate counts are shown; '
        "the card holds no patient identifiers.</p>"
    )
    return "\n".join(parts)


def _crosstab(counts: Mapping) -> str:
    """Table of samples per center (rows) and class (columns)."""
    rows = {str(center): {str(c): n for c, n in row.items()} for center, row in counts.items()}
    classes = sorted({c for row in rows.values() for c in row})
    head = "".join(f"<th>{_e(c)}</th>" for c in classes)
    body = "".join(
        f'<tr><td class="name">{_e(center)}</td>'
        + "".join(f"<td>{_num(rows[center].get(c), 0)}</td>" for c in classes)
        + "</tr>"
        for center in sorted(rows)
    )
    return f'<table><tr><th class="name">center / class</th>{head}</tr>{body}</table>'


def _section_table(encoders: Mapping[str, Mapping], chance: Mapping | None = None) -> str:
    heads = _all_heads(encoders)
    header = (
        '<tr><th class="name">Encoder</th><th>RI ratio [95 % CI]</th><th>RI normalized</th>'
        "<th>k</th>"
        + "".join(f"<th>{_e(_head_label(h))} acc.<br>center / bio</th>" for h in heads)
        + "<th>Errors attributed to center</th><th>APD</th>"
        '<th class="name">Reading</th></tr>'
    )
    rows = []
    for i, (name, enc) in enumerate(encoders.items()):
        cvb = _heads(enc.get("center_vs_bio"))
        acc = "".join(
            f"<td>{_num(cvb[h].get('center_accuracy'), 3)} / {_num(cvb[h].get('bio_accuracy'), 3)}"
            "</td>"
            if h in cvb
            else "<td>—</td>"
            for h in heads
        )
        attribution = (enc.get("error_attribution") or {}).get("fraction")
        ratio = _with_ci(enc.get("robustness_index"), enc.get("robustness_index_ci95"))
        normalized = _with_ci(
            enc.get("robustness_index_normalized"), enc.get("robustness_index_normalized_ci95"), 3
        )
        rows.append(
            f'<tr><td class="name"><a href="#enc-{i}">{_e(name)}</a></td>'
            f"<td>{ratio}</td><td>{normalized}</td>"
            f"<td>{_num(enc.get('k'), 0)}</td>{acc}<td>{_pct(attribution)}</td>"
            f"<td>{_pct(enc.get('apd'))}</td>"
            f'<td class="name">{_verdict(enc)}</td></tr>'
        )
    if not rows:
        return '<h2 id="comparison">Comparison</h2><p class="muted">No encoders in the results.</p>'
    if chance:
        blanks = "<td></td>" * (len(heads) + 3)
        rows.append(
            '<tr class="muted"><td class="name">chance (random neighbours)</td>'
            f"<td>{_num(chance.get('robustness_index'))}</td>"
            f"<td>{_num(chance.get('robustness_index_normalized'), 3)}</td>{blanks}</tr>"
        )
    return f'<h2 id="comparison">Comparison</h2><table>{header}{"".join(rows)}</table>'


def _section_guide() -> str:
    items = [
        "<b>RI ratio</b> (de Jong et al. 2025): among each sample's k nearest neighbours in the "
        "embedding, the number sharing its biological class divided by the number sharing its "
        "center. <b>Ratio &gt; 1: biology dominates</b>; below 1 the encoder groups images by "
        "center more than by biology. The bracket is a 95 % bootstrap confidence interval; when "
        "it includes 1 the evidence is inconclusive.",
        "<b>RI normalized</b> (PathoROB, Kömen et al. 2025): SO / (SO + OS), where SO counts "
        "neighbours of the same class from another center and OS neighbours of another class "
        "from the same center. <b>0.5 is neutral</b>, 1 fully robust, below 0.5 center-driven.",
        "<b>Chance row</b> (when given): both indices for neighbours drawn at random. With "
        "unbalanced classes or centers it differs from 1 and 0.5; an encoder at or below it "
        "has not organised its embedding by biology, whatever the threshold says.",
        "<b>k</b>: the number of neighbours used; the RI-vs-k curve in each section shows "
        "whether the conclusion depends on it.",
        "<b>Center / bio accuracy</b>: how well a kNN or linear probe on the embeddings predicts "
        "the center and the biological class. A center accuracy far above chance means the "
        "embedding carries the acquisition signature, whatever the class accuracy.",
        "<b>Errors attributed to center</b>: the share of misclassified samples whose wrong "
        "prediction is explained by neighbours from their own center carrying another class.",
        "<b>APD</b> (average performance drop): how much a downstream head loses on centers it "
        "was not trained on; lower is better, negative is a gain.",
        "<b>Embedding maps</b>: the same points coloured by center (left) and by class (right). "
        "Colours that separate by center rather than by class are the warning sign.",
    ]
    refs = "".join(f"<li>{_e(c)}</li>" for c in CITATIONS)
    return (
        '<h2 id="guide">How to read this card</h2><div class="note"><ul>'
        + "".join(f"<li>{item}</li>" for item in items)
        + f"</ul></div><h3>References</h3><ol>{refs}</ol>"
    )


def _encoder_plots(name: str, enc: Mapping) -> list[str]:
    parts = []
    if enc.get("ri_curve"):
        parts.append("<h4>Robustness index against k</h4>")
        png = ri_curve_plot(
            enc["ri_curve"], normalized=enc.get("ri_curve_normalized"), selected_k=enc.get("k")
        )
        parts.append(_img(png, f"RI against k for {name}"))
    points = enc.get("embedding_2d")
    if points is None:
        points = enc.get("embeddings")
    if points is not None and enc.get("bio") is not None and enc.get("center") is not None:
        parts.append("<h4>Embedding map (PCA)</h4>")
        png = embedding_maps_plot(points, enc["bio"], enc["center"])
        parts.append(_img(png, f"embedding map of {name} coloured by center and by class"))
    attribution = enc.get("error_attribution") or {}
    if attribution.get("per_center"):
        parts.append("<h4>Errors by center</h4>")
        png = errors_by_center_plot(
            attribution["per_center"],
            overall=attribution.get("fraction"),
            counts=attribution.get("errors_per_center"),
        )
        parts.append(_img(png, f"errors attributed to center, by center, for {name}"))
    return parts


def _section_encoder(index: int, name: str, enc: Mapping) -> str:
    facts = [
        ("RI ratio", _with_ci(enc.get("robustness_index"), enc.get("robustness_index_ci95"))),
        (
            "RI normalized",
            _with_ci(
                enc.get("robustness_index_normalized"),
                enc.get("robustness_index_normalized_ci95"),
                3,
            ),
        ),
        ("k", _num(enc.get("k"), 0)),
        ("Reading", _verdict(enc)),
    ]
    for head, acc in _heads(enc.get("center_vs_bio")).items():
        chance = ""
        if acc.get("center_chance") is not None or acc.get("bio_chance") is not None:
            chance = (
                f' <span class="muted">(chance {_num(acc.get("center_chance"), 3)} / '
                f"{_num(acc.get('bio_chance'), 3)})</span>"
            )
        facts.append(
            (
                f"{_e(_head_label(head))} accuracy center / bio",
                f"{_num(acc.get('center_accuracy'), 3)} / {_num(acc.get('bio_accuracy'), 3)}"
                + chance,
            )
        )
    attribution = enc.get("error_attribution") or {}
    if "fraction" in attribution:
        n = attribution.get("n_errors")
        extra = f' <span class="muted">of {_num(n, 0)} errors</span>' if n is not None else ""
        facts.append(("Errors attributed to center", _pct(attribution["fraction"]) + extra))
    if "apd" in enc:
        facts.append(("APD", _pct(enc.get("apd"))))
    parts = [f'<h3 id="enc-{index}">{_e(name)}</h3>', '<dl class="kv">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts]
    parts.append("</dl>")
    try:
        plots = _encoder_plots(name, enc)
    except (ValueError, TypeError) as err:
        raise ValueError(f"results['encoders'][{name!r}]: {err}") from err
    parts += plots or ['<p class="muted">No curves or embeddings were given for this encoder.</p>']
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- API


def render_robustness_card(results: Mapping, out_path: str | os.PathLike) -> Path:
    """Write the robustness card for ``results`` to ``out_path`` (HTML) and return the path.

    The file is self-contained: inline CSS, figures as ``data:image/png;base64`` images, no
    scripts and no external links. It is written to a temporary file and renamed into place.
    Every string from ``results`` is HTML-escaped. Only ``encoders`` is required; every other key
    is optional and its row, cell (``—``) or figure is left out when missing. ``NaN`` shows as
    ``n/a`` and an infinite ratio as ``∞``.

    ``results`` schema (JSON-compatible; mapping keys may be ``int`` or ``str``)::

        {
          "title": str,                     # default "Robustness card"
          "subtitle": str,                  # e.g. what was evaluated and when
          "dataset": {
            "name": str,
            "n_samples": int,
            "n_centers": int, "n_classes": int,          # default: len(centers), len(classes)
            "centers": {center_id: n_samples} | [center_id, ...],   # pseudonymous IDs
            "classes": {class_id: n_samples} | [class_id, ...],
            "center_class_counts": {center_id: {class_id: n}},      # the confounding table
            "notes": str,
          },
          "chance": {                       # both indices for random neighbours (a table row)
            "robustness_index": float, "robustness_index_normalized": float,
          },
          "encoders": {                     # rows of the comparison, in this order
            name: {
              "robustness_index": float,               # ratio RI (de Jong et al. 2025)
              "robustness_index_ci95": [lo, hi],
              "robustness_index_normalized": float,    # SO / (SO + OS) (PathoROB)
              "robustness_index_normalized_ci95": [lo, hi],
              "k": int,                                # neighbours behind the two RIs
              "ri_curve": {k: ratio_ri},               # RI-vs-k figure
              "ri_curve_normalized": {k: normalized_ri},
              "center_vs_bio": {                       # probe accuracies on the embeddings
                head: {"center_accuracy": float, "bio_accuracy": float,   # head: knn, linear
                       "center_chance": float, "bio_chance": float},
              },                                       # or one flat head dict (+ "head": name)
              "error_attribution": {
                "fraction": float,                     # share of errors attributed to center
                "per_center": {center_id: float},      # the same share within each center
                "n_errors": int,
                "errors_per_center": {center_id: int},
              },
              "apd": float | None,                     # average performance drop, a fraction
              "embedding_2d": [[x, y], ...],           # (n, 2) map coordinates, or
              "embeddings": [[...], ...],              # (n, d), projected with pca_2d
              "bio": [class_id, ...],                  # (n,) colours of the map
              "center": [center_id, ...],              # (n,)
            },
          },
        }

    When ``dataset`` lacks ``centers`` / ``classes`` / ``n_samples``, they are counted from the
    first encoder that has ``center`` (and ``bio``) lists.
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("encoders"), Mapping):
        raise ValueError(
            "results must be a dict with an 'encoders' dict ({name: {...}}); "
            "see render_robustness_card's docstring for the schema"
        )
    encoders = results["encoders"]
    title = str(results.get("title") or "Robustness card")
    body = [f"<header><h1>{_e(title)}</h1>"]
    if results.get("subtitle"):
        body.append(f'<p class="muted">{_e(results["subtitle"])}</p>')
    body.append("</header><main>")
    body.append(_section_dataset(_dataset_summary(results)))
    body.append(_section_table(encoders, results.get("chance")))
    body.append(_section_guide())
    if encoders:
        body.append('<h2 id="encoders">Encoders</h2>')
        body += [_section_encoder(i, n, e) for i, (n, e) in enumerate(encoders.items())]
    body.append('</main><footer><p class="muted">Generated by medfm.robustness.card.</p></footer>')
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out_path)
    return out_path
