"""The sections of the robustness card (:mod:`medfm.robustness.card`) as HTML fragments.

Every string from the results is HTML-escaped; numbers are formatted so that a missing value
reads ``—``, NaN ``n/a`` and an infinite ratio ``∞``. The reading guide cites the two
robustness-index definitions (de Jong et al. 2025; PathoROB, Kömen et al. 2025).
"""

from __future__ import annotations

import base64
import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from medfm.figures import embedding_map_figure, figure_png
from medfm.robustness.card_plots import errors_by_center_plot, ri_curve_plot

CITATIONS = (
    "de Jong, E. D., et al. (2025). Current Pathology Foundation Models are unrobust to Medical "
    "Center Differences. arXiv preprint.",
    "Kömen, J., et al. (2025). Towards Robust Foundation Models for Digital Pathology "
    "(PathoROB benchmark). arXiv preprint.",
)

_HEAD_ORDER = ("knn", "linear")


# ------------------------------------------------------------------------------- formatting


def escape(value: Any) -> str:
    """HTML-escaped text of any value."""
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    """A number for the card: ``—`` when absent, ``n/a`` when NaN, ``∞`` when infinite."""
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return escape(value)
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
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


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


def dataset_summary(results: Mapping) -> dict[str, Any]:
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


def section_dataset(ds: Mapping) -> str:
    """The dataset section: counts, samples per center and class, the privacy note."""
    centers, classes = _counts(ds.get("centers")), _counts(ds.get("classes"))
    rows = [
        ("Dataset", escape(ds["name"]) if ds.get("name") else "—"),
        ("Samples", _num(ds.get("n_samples"), 0)),
        ("Centers", _num(ds.get("n_centers", len(centers) or None), 0)),
        ("Classes", _num(ds.get("n_classes", len(classes) or None), 0)),
    ]
    parts = ['<h2 id="dataset">Dataset</h2>', '<dl class="kv">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows]
    parts.append("</dl>")
    if ds.get("notes"):
        parts.append(f"<p>{escape(ds['notes'])}</p>")
    for title, counts in (("center", centers), ("class", classes)):
        if counts and any(v is not None for v in counts.values()):
            cells = "".join(f"<th>{escape(k)}</th>" for k in sorted(counts))
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
    head = "".join(f"<th>{escape(c)}</th>" for c in classes)
    body = "".join(
        f'<tr><td class="name">{escape(center)}</td>'
        + "".join(f"<td>{_num(rows[center].get(c), 0)}</td>" for c in classes)
        + "</tr>"
        for center in sorted(rows)
    )
    return f'<table><tr><th class="name">center / class</th>{head}</tr>{body}</table>'


def section_table(encoders: Mapping[str, Mapping], chance: Mapping | None = None) -> str:
    """The comparison table: one row per encoder, and the chance row when given."""
    heads = _all_heads(encoders)
    header = (
        '<tr><th class="name">Encoder</th><th>RI ratio [95 % CI]</th><th>RI normalized</th>'
        "<th>k</th>"
        + "".join(f"<th>{escape(_head_label(h))} acc.<br>center / bio</th>" for h in heads)
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
            f'<tr><td class="name"><a href="#enc-{i}">{escape(name)}</a></td>'
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


def section_guide() -> str:
    """The plain-language reading guide, citing de Jong et al. 2025 and PathoROB."""
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
        "<b>Embedding maps</b>: the same points coloured by class (left) and by center (right). "
        "Colours that separate by center rather than by class are the warning sign.",
    ]
    refs = "".join(f"<li>{escape(c)}</li>" for c in CITATIONS)
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
        png = figure_png(embedding_map_figure(points, enc["bio"], enc["center"]), dpi=100)
        parts.append(_img(png, f"embedding map of {name} coloured by class and by center"))
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


def section_encoder(index: int, name: str, enc: Mapping) -> str:
    """One encoder's section: its facts and its figures (anchor ``enc-<index>``)."""
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
                f"{escape(_head_label(head))} accuracy center / bio",
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
    parts = [f'<h3 id="enc-{index}">{escape(name)}</h3>', '<dl class="kv">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts]
    parts.append("</dl>")
    try:
        plots = _encoder_plots(name, enc)
    except (ValueError, TypeError) as err:
        raise ValueError(f"results['encoders'][{name!r}]: {err}") from err
    parts += plots or ['<p class="muted">No curves or embeddings were given for this encoder.</p>']
    return "\n".join(parts)
