"""One self-contained HTML report for a run: every image embedded, no network.

Sections appear when the run holds their outputs: run summary and QC; a gallery of gating
plots (small thumbnails, full size on click, outliers first); subset trajectories per arm;
differential abundance and state tables; clustering heatmap and UMAPs; cytokine standard curves
and trajectories; clinical outcomes and their correlations with the subsets.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile._version import __version__
from immunoprofile.run import Run

THUMB_WIDTH = 320
QC_WARN_PCT = 10.0  # a sample losing more events than this to QC is named in the summary

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;
background:#f6f7f9}
header{background:#1f3b5b;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}nav{padding:8px 28px;background:#e8ecf2;font-size:14px}
nav a{margin-right:14px;color:#1f3b5b}main{padding:8px 28px 40px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.06)}h2{font-size:18px;margin:4px 0 10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border-bottom:1px solid #e3e6ea;
padding:4px 8px;text-align:right}th{background:#f0f2f5;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}.sig{font-weight:600;color:#9b1c1c}
.grid{display:flex;flex-wrap:wrap;gap:10px}.thumb{width:""" + str(THUMB_WIDTH) + """px;
font-size:12px}.thumb img{width:100%;border:1px solid #d5d9df;border-radius:4px;cursor:zoom-in}
.flag{color:#b45309;font-weight:600}.fig{max-width:100%;margin:6px 0}
.warn{background:#fff3cd;border-left:4px solid #d39e00;padding:6px 10px}
.kpi{display:inline-block;margin:0 24px 8px 0}.kpi b{display:block;font-size:20px}
#lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:9;
align-items:center;justify-content:center}#lightbox img{max-width:95vw;max-height:95vh;
background:#fff}#lightbox.open{display:flex}.scroll{max-height:420px;overflow:auto}
"""

_JS = """
document.addEventListener('click', function (e) {
  var box = document.getElementById('lightbox');
  var t = e.target;
  if (t.dataset && t.dataset.full) {
    box.querySelector('img').src = t.dataset.full; box.classList.add('open');
  } else if (box.classList.contains('open')) { box.classList.remove('open'); }
});
"""


def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode()}"


def _thumbnail(path: Path) -> tuple[str, str]:
    """(thumbnail URI, full-size URI): a small JPEG for the gallery, the PNG on click."""
    # start-up time: a heavy library, loaded on first use
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        # Full size as JPEG too: gating plots are dense scatter, where PNG is 3–4× larger.
        big = io.BytesIO()
        img.save(big, format="JPEG", quality=70, optimize=True)
        img.thumbnail((THUMB_WIDTH * 2, THUMB_WIDTH * 2))
        small = io.BytesIO()
        img.save(small, format="JPEG", quality=60, optimize=True)
    return _data_uri(small.getvalue(), "image/jpeg"), _data_uri(big.getvalue(), "image/jpeg")


def _img(path: Path, alt: str) -> str:
    return (f'<img class="fig" alt="{html.escape(alt)}" '
            f'src="{_data_uri(path.read_bytes())}">')


def _table(frame: pd.DataFrame, *, max_rows: int = 200, sig: str | None = None) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    frame = frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        cls = ' class="sig"' if sig and pd.notna(r.get(sig)) and r[sig] < 0.05 else ""
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.to_numpy())
        rows.append(f"<tr{cls}>{cells}</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _fmt(v: object) -> str:
    if isinstance(v, float | np.floating):
        if np.isnan(v):
            return ""
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _summary(run: Run, manifest: dict) -> str:
    qc, errors = run.qc, run.errors
    kpis = {"samples": manifest.get("samples", len(qc)), "failed": manifest.get("failed", 0),
            "events": f"{int(qc['n_events'].sum()):,}" if "n_events" in qc else "",
            "removed by QC": f"{qc['pct_removed'].mean():.2f}%" if "pct_removed" in qc else "",
            "templates": ", ".join(manifest.get("templates", {}))}
    body = "".join(f'<div class="kpi"><b>{html.escape(str(v))}</b>{html.escape(k)}</div>'
                   for k, v in kpis.items())
    if not errors.empty:
        body += "<h3>Failed samples</h3>" + _table(errors[["sample_id", "template", "stage",
                                                            "error"]])
    if "pct_removed" in qc and (qc["pct_removed"] > QC_WARN_PCT).any():
        heavy = qc.loc[qc["pct_removed"] > QC_WARN_PCT, "sample_id"].astype(str)
        body += (f'<p class="warn">Acquisition QC removed more than {QC_WARN_PCT:g}% of the '
                 f"events of {len(heavy)} sample(s): {html.escape(', '.join(heavy))}. Check "
                 "their QC flags and gating plots before using their numbers.</p>")
    if not qc.empty:
        cols = [c for c in ("sample_id", "n_events", "n_removed", "pct_removed",
                            "removed_margin", "removed_flow_rate", "removed_signal_shift",
                            "qc_flags") if c in qc.columns]
        body += "<h3>Acquisition QC</h3>" + _table(
            qc[cols].sort_values(cols[3] if len(cols) > 3 else cols[0], ascending=False))
    return body


def _overrides(run: Run, out: Path) -> str:
    """The gates corrected by hand, newest first, with before/after counts and the audit."""
    audit = run.audit
    if audit.empty:
        return ""
    link = os.path.relpath(run.audit_path, out.parent)
    cols = ["sample_id", "template", "population", "old_count", "new_count", "user", "reason",
            "timestamp_utc"]
    return (f"<h3>Gates corrected by hand ({len(audit)} change(s); "
            f'<a href="{html.escape(link)}">audit.csv</a>)</h3>'
            + _table(audit[cols].iloc[::-1]))


def _outlier_order(run: Run, names: list[Path]) -> list[Path]:
    """Gating plots of overridden samples first, then QC removals, adaptive fallbacks or rare
    populations."""
    score: dict[str, float] = {}
    qc = run.qc
    if not qc.empty:
        fallback = qc.filter(like="/fallback").fillna(0).sum(axis=1) if len(qc) else 0
        qc["score"] = qc.get("pct_removed", 0) + 10 * fallback
        score = dict(zip(qc["sample_id"].astype(str), qc["score"]))
    errors = run.errors
    if "sample_id" in errors.columns:
        for sid in errors["sample_id"].astype(str):
            score[sid] = score.get(sid, 0) + 100
    for sid in set(run.audit.get("sample_id", [])):
        score[str(sid)] = score.get(str(sid), 0) + 1000

    def key(p: Path) -> tuple:
        sid = p.stem.rsplit("_", 1)[0]
        return (-score.get(sid, 0.0), p.name)

    return sorted(names, key=key)


def _gallery(run: Run, limit: int) -> str:
    plots = _outlier_order(run, run.gating_plots())
    if not plots:
        return "<p><em>no gating plots (the run used --no-plots)</em></p>"
    items = []
    for p in plots[:limit]:
        thumb, full = _thumbnail(p)
        items.append(f'<div class="thumb"><img alt="{html.escape(p.stem)}" src="{thumb}" '
                     f'data-full="{full}"><div>{html.escape(p.stem)}</div></div>')
    more = f"<p>{len(plots) - limit} more in plots/</p>" if len(plots) > limit else ""
    return f'<p>Click a plot for full size. Outliers first.</p><div class="grid">' \
           f'{"".join(items)}</div>{more}'


def _figures(paths: list[Path]) -> str:
    return "".join(_img(p, p.stem) for p in paths)


def _comparison(run: Run) -> str:
    body = _figures(run.comparison_plots("trajectory_*.png"))
    summary = run.comparison("response_summary")
    if summary is not None:
        body += "<h3>Response per arm (geometric mean fold change from baseline)</h3>" + _table(
            summary, max_rows=80)
    for name, title in (("differential_abundance", "Differential abundance"),
                        ("differential_state", "Differential state")):
        table = run.comparison(name)
        if table is None:
            continue
        table = table.sort_values("pvalue")
        cols = [c for c in ("template", "population", "gate_mode", "marker", "reference",
                            "contrast_type",
                            "arm", "reference_arm", "timepoint", "baseline", "estimate",
                            "ci_low", "ci_high", "pvalue", "fdr", "warning")
                if c in table.columns]
        body += f"<h3>{title} (FDR &lt; 0.05 in red; top 150 by p)</h3>" \
                + _table(table[cols], max_rows=150, sig="fdr")
    body += _figures(run.comparison_plots("effects_heatmap*.png"))
    body += _figures(run.comparison_plots("volcano_*.png"))
    return body


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 gallery_limit: int = 400) -> Path:
    """Write ``report.html`` for a run folder (``RUN_DIR/report.html`` by default).

    Parameters
    ----------
    run_dir
        A batch run folder; its ``compare``, ``cluster_plots`` and ``cytokines`` outputs get
        sections when present.
    out
        The HTML file to write; default ``RUN_DIR/report.html``.
    gallery_limit
        Most gating plots shown as thumbnails (outliers first); the rest are counted.

    Returns
    -------
    pathlib.Path
        The report written (one self-contained HTML page).
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    manifest = run.manifest
    target = Path(out) if out else run.report_path
    sections = [("summary", "Run summary and QC",
                 _overrides(run, target) + _summary(run, manifest)),
                ("gating", "Gating plots", _gallery(run, gallery_limit))]
    if run.compare_dir.is_dir():
        sections.append(("compare", "Arms over time", _comparison(run)))
    cluster_plots = _figures(sorted(run.cluster_plots_dir.glob("*.png")))
    if cluster_plots:
        sections.append(("clusters", "Clusters and UMAP", cluster_plots))
    cytokine_figs = _figures(run.cytokine_plots()
                             + run.comparison_plots("cytokine_*.png"))
    if cytokine_figs:
        sections.append(("cytokines", "Cytokines (bead array)",
                         cytokine_figs + _extra_tables(run, "cytokines")))
    clinical_figs = _figures(run.comparison_plots("clinical_*.png")
                             + run.comparison_plots("correlations_*.png"))
    if clinical_figs:
        sections.append(("clinical", "Clinical response and correlations with the subsets",
                         clinical_figs + _extra_tables(run, "clinical")))
    nav = "".join(f'<a href="#{sid}">{html.escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(_section(*s) for s in sections)
    title = f"immunoprofile report: {run.path.resolve().name}"
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><p>immunoprofile {__version__} · schema "
            f"{html.escape(str(manifest.get('schema_version', '')))} · "
            f"{html.escape(str(manifest.get('finished', '')))}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main>"
            f"<div id=\"lightbox\"><img alt=\"full size\"></div>"
            f"<script>{_JS}</script></body></html>")
    return run.write_text(Path(out) if out else run.report_path, page)


def _extra_tables(run: Run, section: str) -> str:
    out = ""
    cytokines = run.comparison("cytokines")
    if section == "cytokines" and cytokines is not None:
        table = cytokines.sort_values("pvalue")
        out += "<h3>Cytokines across arms (censored below LLOQ)</h3>" + _table(
            table, max_rows=60, sig="fdr")
    if section == "clinical":
        clinical = run.comparison("clinical")
        if clinical is not None:
            table = clinical.sort_values("pvalue")
            out += "<h3>Clinical indexes across arms</h3>" + _table(table, max_rows=60,
                                                                    sig="fdr")
        responders = run.comparison("responders")
        if responders is not None:
            out += "<h3>Responders per arm</h3>" + _table(responders)
        correlations = run.comparison("correlations")
        if correlations is not None:
            corr = correlations.sort_values("pvalue")
            out += "<h3>Correlations with the subsets (top 100 by p)</h3>" + _table(
                corr, max_rows=100, sig="fdr")
    return out
