"""One HTML report for a run, no network: self-contained for small runs, images beside it
for large ones, so its size grows with the samples that need a look, not with all samples.

Sections appear when the run holds their outputs: run summary and QC; a gallery of gating
plots (thumbnails of the flagged samples, overrides first, full size on click; every other plot
listed); subset trajectories per arm;
differential abundance and state tables; clustering heatmap and UMAPs; cytokine standard curves
and trajectories; clinical outcomes and their correlations with the subsets.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile._atomic import atomic_write
from immunoprofile._version import __version__
from immunoprofile.run import Run

THUMB_WIDTH = 320
#: Runs with at most this many gating plots get one self-contained file by default.
SELF_CONTAINED_UP_TO = 40
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
.flag{color:#b45309;font-weight:600}ul.plots{columns:4;font-size:12px}
.fig{max-width:100%;margin:6px 0}
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


def _jpeg(path: Path, *, thumb: bool) -> bytes:
    """A plot as JPEG (gating plots are dense scatter, where PNG is 3–4× larger)."""
    # start-up time: a heavy library, loaded on first use
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if thumb:
            img.thumbnail((THUMB_WIDTH * 2, THUMB_WIDTH * 2))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=60 if thumb else 70, optimize=True)
    return buf.getvalue()


class _Images:
    """Where the page's images live: embedded (one self-contained file) or beside it
    (``<report>_files/`` thumbnails; full-size plots and figures linked where the run keeps
    them, loaded only when opened or scrolled to)."""

    def __init__(self, out: Path, embed: bool):
        self.out, self.embed = out, embed
        self.folder = out.parent / f"{out.stem}_files"
        self.written: set[Path] = set()

    @property
    def lazy(self) -> str:
        """Images beside the page load when scrolled to; embedded ones are already there."""
        return "" if self.embed else ' loading="lazy"'

    def _link(self, path: Path) -> str:
        return html.escape(os.path.relpath(path, self.out.parent).replace(os.sep, "/"))

    def thumb(self, path: Path) -> str:
        data = _jpeg(path, thumb=True)
        if self.embed:
            return _data_uri(data, "image/jpeg")
        digest = hashlib.sha256(data).hexdigest()[:12]
        target = self.folder / f"{path.stem}-{digest}.jpg"
        if not target.is_file():
            atomic_write(target, lambda tmp: tmp.write_bytes(data))
        self.written.add(target)
        return self._link(target)

    def full(self, path: Path) -> str:
        return _data_uri(_jpeg(path, thumb=False), "image/jpeg") if self.embed \
            else self._link(path)

    def figure(self, path: Path) -> str:
        return _data_uri(path.read_bytes()) if self.embed else self._link(path)

    def tidy(self) -> None:
        """Thumbnails of earlier reports no page refers to any more."""
        if self.folder.is_dir():
            for old in self.folder.glob("*.jpg"):
                if old not in self.written:
                    old.unlink(missing_ok=True)


def _img(images: _Images, path: Path, alt: str) -> str:
    return (f'<img class="fig"{images.lazy} alt="{html.escape(alt)}" '
            f'src="{images.figure(path)}">')


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


def _needs_a_look(run: Run) -> tuple[list[str], dict[str, str]]:
    """The gated samples in review order (overrides and failures first, then the review's
    ranking) and why each needs a look ('' when nothing flags it)."""
    if run.subsets.empty:
        return [], {}
    # start-up time: the ranking (and its template reading) only for reports with plots
    from immunoprofile.review.ranking import rank_samples

    ranking = rank_samples(run)
    overridden = set(run.audit.get("sample_id", pd.Series(dtype=str)).astype(str))
    failed = set(run.errors.get("sample_id", pd.Series(dtype=str)).astype(str))
    ranking["first"] = ranking["sample_id"].isin(overridden | failed)
    ranking = ranking.sort_values(["first", "score"], ascending=False, kind="stable")
    why = {sid: ("gate corrected by hand; " if sid in overridden else "") + reason
           for sid, reason in zip(ranking["sample_id"], ranking["reasons"])}
    return list(ranking["sample_id"]), why


def _gallery(run: Run, limit: int, images: _Images) -> str:
    plots = run.gating_plots()
    if not plots:
        return "<p><em>no gating plots (the run used --no-plots)</em></p>"
    ranked, why = _needs_a_look(run)
    # names only: the files' stems, not every template parsed
    names = [t.stem for t in run.templates_dir.glob("*.yaml")]
    owner = {p: Run.plot_sample(p, names) for p in plots}
    by_sample: dict[str, list[Path]] = {}
    for p in plots:
        by_sample.setdefault(owner[p], []).append(p)
    # a small run shows every plot, those that need a look first; a large one only those
    order = [*ranked, *by_sample] if images.embed else [s for s in ranked if why[s]]
    shown = [p for sid in dict.fromkeys(order) for p in by_sample.get(sid, [])][:limit]
    items = []
    for p in shown:
        sid = owner[p]
        reason = f'<div class="flag">{html.escape(why[sid])}</div>' if why.get(sid) else ""
        items.append(f'<div class="thumb"><img{images.lazy} alt="{html.escape(p.stem)}" '
                     f'src="{images.thumb(p)}" data-full="{images.full(p)}">'
                     f"<div>{html.escape(p.stem)}</div>{reason}</div>")
    on_show = set(shown)
    rest = [p for p in plots if p not in on_show]
    listing = ""
    if rest:
        if images.embed:
            links = "".join(f"<li>{html.escape(p.stem)}</li>" for p in rest)
            where = "in the run's plots/ folder"
        else:
            links = "".join(f'<li><a href="{images.full(p)}">{html.escape(p.stem)}</a></li>'
                            for p in rest)
            where = "each opens on demand"
        listing = (f"<details><summary>{len(rest)} more gating plots ({where})</summary>"
                   f'<ul class="plots">{links}</ul></details>')
    lead = (f"<p>{len(shown)} plots, the samples that most need a look first (the reason "
            "under each); click one for full size.</p>")
    return f'{lead}<div class="grid">{"".join(items)}</div>{listing}'


def _figures(paths: list[Path], images: _Images) -> str:
    return "".join(_img(images, p, p.stem) for p in paths)


def _comparison(run: Run, images: _Images) -> str:
    body = _figures(run.comparison_plots("trajectory_*.png"), images)
    summary = run.comparison("response_summary")
    if summary is not None:
        body += "<h3>Response per arm (geometric mean fold change from baseline)</h3>" + _table(
            summary, max_rows=80)
    for name, title in (("differential_abundance", "Differential abundance"),
                        ("differential_state", "Differential state")):
        table = run.comparison(name)
        if table is None:
            continue
        note = ""
        if "complement_of" in table.columns:
            mirror = table["complement_of"].fillna("").astype(str) != ""
            if mirror.any():
                pairs = sorted({f"{p} (of {c})" for p, c in zip(
                    table.loc[mirror, "population"], table.loc[mirror, "complement_of"])})
                note = ("<p>Not repeated: complements whose test mirrors a sibling's within "
                        f"their parent: {html.escape(', '.join(pairs))}.</p>")
                table = table[~mirror]
        table = table.sort_values("pvalue")
        cols = [c for c in ("template", "population", "gate_mode", "marker", "reference",
                            "contrast_type",
                            "arm", "reference_arm", "timepoint", "baseline", "estimate",
                            "ci_low", "ci_high", "pvalue", "fdr", "warning")
                if c in table.columns]
        body += f"<h3>{title} (FDR &lt; 0.05 in red; top 150 by p)</h3>" + note \
                + _table(table[cols], max_rows=150, sig="fdr")
    body += _figures(run.comparison_plots("effects_heatmap*.png"), images)
    body += _figures(run.comparison_plots("volcano_*.png"), images)
    return body


def write_report(run_dir: str | Path, out: str | Path | None = None, *,
                 gallery_limit: int = 60, self_contained: bool | None = None) -> Path:
    """Write ``report.html`` for a run folder (``RUN_DIR/report.html`` by default).

    The page grows with the samples that need a look, not with all samples: the run summary
    first, thumbnails of the flagged samples' gating plots (overrides and failures first, then
    the review's ranking, the reason under each), every other plot listed and opened on demand.

    Parameters
    ----------
    run_dir
        A batch run folder; its ``compare``, ``cluster_plots`` and ``cytokines`` outputs get
        sections when present.
    out
        The HTML file to write; default ``RUN_DIR/report.html``.
    gallery_limit
        Most gating plots shown as thumbnails.
    self_contained
        One file with every image embedded (full-size plots of the thumbnails included); or
        the page with its thumbnails beside it in ``<report>_files/`` and the full-size plots
        and figures linked where the run keeps them. Default: one file for runs of at most
        :data:`SELF_CONTAINED_UP_TO` gating plots.

    Returns
    -------
    pathlib.Path
        The report written.
    """
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    manifest = run.manifest
    target = Path(out) if out else run.report_path
    if self_contained is None:
        self_contained = len(run.gating_plots()) <= SELF_CONTAINED_UP_TO
    images = _Images(target, embed=self_contained)
    sections = [("summary", "Run summary and QC",
                 _overrides(run, target) + _summary(run, manifest)),
                ("gating", "Gating plots", _gallery(run, gallery_limit, images))]
    if run.compare_dir.is_dir():
        sections.append(("compare", "Arms over time", _comparison(run, images)))
    cluster_plots = _figures(sorted(run.cluster_plots_dir.glob("*.png")), images)
    if cluster_plots:
        sections.append(("clusters", "Clusters and UMAP", cluster_plots))
    cytokine_figs = _figures(run.cytokine_plots() + run.comparison_plots("cytokine_*.png"),
                             images)
    if cytokine_figs:
        sections.append(("cytokines", "Cytokines (bead array)",
                         cytokine_figs + _extra_tables(run, "cytokines")))
    clinical_figs = _figures(run.comparison_plots("clinical_*.png")
                             + run.comparison_plots("correlations_*.png"), images)
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
    written = run.write_text(target, page)
    images.tidy()
    return written


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
