"""The robustness card: one self-contained HTML page an auditor reads to judge an encoder's
robustness to medical-center differences.

The card has a title, a dataset summary (aggregate counts and pseudonymous center IDs only), a
table comparing encoders, a plain-language reading guide that cites the two robustness-index
definitions (de Jong et al. 2025; PathoROB, Kömen et al. 2025), and one section per encoder with
its RI-vs-k curve, its embedding map coloured by class and by center, and its errors by center.
Styles are inline and figures are base64 PNGs, so the file opens offline, can be mailed or archived
alone, and loads nothing from the network.

Example:
    >>> results = {"dataset": {"name": "demo", "n_samples": 4},
    ...            "encoders": {"mae": {"robustness_index": 1.3, "k": 10}}}
    >>> render_robustness_card(results, "runs/demo/robustness_card.html")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from medfm.io import write_text
from medfm.robustness.card_sections import (
    dataset_summary,
    escape,
    section_dataset,
    section_encoder,
    section_guide,
    section_table,
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

# ------------------------------------------------------------------------------------- API


def render_robustness_card(results: Mapping, out_path: str | os.PathLike) -> Path:
    """Write the robustness card for ``results`` to ``out_path`` (HTML) and return the path.
    (Over 60 lines only because this docstring holds the schema; the body is short.)

    The file is self-contained: inline CSS, figures as ``data:image/png;base64`` images, no
    scripts and no external links. It is written atomically (:func:`medfm.io.write_text`).
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
    body = [f"<header><h1>{escape(title)}</h1>"]
    if results.get("subtitle"):
        body.append(f'<p class="muted">{escape(results["subtitle"])}</p>')
    body.append("</header><main>")
    body.append(section_dataset(dataset_summary(results)))
    body.append(section_table(encoders, results.get("chance")))
    body.append(section_guide())
    if encoders:
        body.append('<h2 id="encoders">Encoders</h2>')
        body += [section_encoder(i, n, e) for i, (n, e) in enumerate(encoders.items())]
    body.append('</main><footer><p class="muted">Generated by medfm.robustness.card.</p></footer>')
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return write_text(page, out_path)
