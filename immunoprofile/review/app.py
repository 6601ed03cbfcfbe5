"""The review app: a Bokeh server document on 127.0.0.1.

Bokeh because FlowKit already brings it (no new dependency), its server keeps each browser tab
as a Python session (the gating engine runs beside the plots, no JavaScript of ours), and its
widgets give draggable thresholds (sliders) and polygon vertices (``PolyEditTool``).

Left: the samples, those that most need a look first (:func:`.ranking.rank_samples`), with
filters. Right: the selected sample's editable gates, each on its parent's events, with the
population counts recomputed on all events as a gate moves; a reason and a name save the
change as an override with an audit row, for this sample or also for a selection.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    DataTable,
    Div,
    MultiChoice,
    PolyEditTool,
    Select,
    Slider,
    Span,
    TableColumn,
    TextInput,
)
from bokeh.plotting import figure

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.review.editing import EditableGate, RunContext, SampleEditor
from immunoprofile.template.model import PolygonGate, RectangleGate

ALL = "(all)"
FILTERS = ("templates", "batch", "arm", "timepoint")


def _range_of(values: np.ndarray, bounds: list[float]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = (np.quantile(finite, [0.001, 0.999]) if finite.size else (0.0, 1.0))
    known = [b for b in bounds if b is not None and np.isfinite(b)]
    lo, hi = min([lo, *known]), max([hi, *known])
    pad = 0.05 * (hi - lo or 1.0)
    return float(lo - pad), float(hi + pad)


class SamplePanel:
    """The right-hand side: one sample's gates, live counts, saving."""

    def __init__(self, app: ReviewApp, editor: SampleEditor):
        self.app, self.editor = app, editor
        self.changes: dict[str, Any] = {}
        self.events = editor.events()
        # the run's own counts until a gate moves: the engine prepares the sample on first use
        self.counts_source = ColumnDataSource(self._counts_frame(app.run_table(
            editor.sample_id, editor.template_name)))
        self.sliders: list[tuple[Slider, EditableGate, int, str]] = []
        self.polygons: dict[str, ColumnDataSource] = {}
        self.spans: dict[tuple[str, int, str], Span] = {}
        plots = [self._plot(g) for g in editor.gates()]
        counts = DataTable(source=self.counts_source, width=430, height=330, index_position=None,
                           css_classes=["review-counts"],
                           columns=[TableColumn(field=c, title=t) for c, t in (
                               ("population", "population"), ("run", "run"),
                               ("now", "now"), ("pct_parent", "% parent"))])
        self.reason = TextInput(title="Reason (required)", name="reason", width=300,
                                css_classes=["review-reason"])
        self.user = TextInput(title="Reviewer", value=getpass.getuser(), name="reviewer",
                              width=150, css_classes=["review-user"])
        others = [s for s in app.ranking["sample_id"]
                  if editor.template_name in app.templates_of(s) and s != editor.sample_id]
        self.also = MultiChoice(title="Also apply to (each gets its own audit row)",
                                options=others, width=450, name="also",
                                css_classes=["review-also"])
        save = Button(label="Save gate change", button_type="primary", name="save",
                      css_classes=["review-save"])
        save.on_click(self.save)
        self.status = Div(text="", name="status", css_classes=["review-status"])
        title = Div(text=f"<h3>{editor.sample_id} — {editor.template_name}</h3>",
                    name="sample_title")
        heading = [title]
        choices = app.templates_of(editor.sample_id)
        if len(choices) > 1:  # a tube gated by several templates: each is reviewable
            self.template_select = Select(title="Template", value=editor.template_name,
                                          options=choices, width=160, name="template")
            self.template_select.on_change(
                "value", lambda attr, old, new: app.open_sample(editor.sample_id, new))
            heading.append(self.template_select)
        self.layout = column(row(*heading), row(column(*plots), column(
            counts, self.user, self.reason, self.also, save, self.status)))

    def _counts_frame(self, now: pd.DataFrame) -> dict[str, list]:
        run = self.app.run_counts(self.editor.sample_id, self.editor.template_name)
        frame = now.assign(run=[run.get(p) for p in now["population"]])
        frame["now"] = frame["count"].astype(float)
        frame["pct_parent"] = frame["pct_parent"].round(2)
        return {c: frame[c].tolist() for c in ("population", "run", "now", "pct_parent")}

    def _plot(self, g: EditableGate) -> Any:
        ev = self.events
        parent = ev[f"{self.editor.template_name}/{g.parent}"] if g.parent else \
            pd.Series(True, index=ev.index)
        shown = ev[parent.to_numpy(bool)]
        x_m = g.markers[0]
        y_m = g.markers[1] if len(g.markers) > 1 else ("SSC-A" if "transformed/SSC-A" in
                                                         ev.columns else x_m)
        x = shown[f"transformed/{x_m}"].to_numpy(float)
        y = shown[f"transformed/{y_m}"].to_numpy(float)
        inside = shown[f"{self.editor.template_name}/{g.population}"].to_numpy(bool)
        fig = figure(width=430, height=330, title=f"{g.population} (on {g.parent or 'all'})",
                     x_axis_label=x_m, y_axis_label=y_m, tools="pan,wheel_zoom,reset",
                     name=f"plot:{g.population}")
        fig.scatter(x[~inside], y[~inside], size=2, color="#9e9e9e", alpha=0.5)
        fig.scatter(x[inside], y[inside], size=2, color="#1f77b4", alpha=0.7)
        controls = []
        if isinstance(g.gate, RectangleGate):
            for i, (lo, hi) in enumerate(zip(g.gate.mins, g.gate.maxs)):
                values = x if i == 0 else y
                start, end = _range_of(values, [lo, hi])
                for side, v in (("min", lo), ("max", hi)):
                    if v is None:
                        continue
                    span = Span(location=v, dimension="height" if i == 0 else "width",
                                line_color="#d62728", line_width=2)
                    fig.add_layout(span)
                    self.spans[(g.population, i, side)] = span
                    marker = g.markers[i]
                    slider = Slider(start=start, end=end, value=float(v),
                                    step=(end - start) / 500, width=400,
                                    title=f"{g.population}: {marker} {side}",
                                    name=f"slider:{g.population}:{marker}:{side}",
                                    css_classes=[slider_class(g.population, marker, side)])
                    slider.on_change("value_throttled", self._moved)
                    self.sliders.append((slider, g, i, side))
                    controls.append(slider)
        elif isinstance(g.gate, PolygonGate):
            xs = [v[0] for v in g.gate.vertices]
            ys = [v[1] for v in g.gate.vertices]
            src = ColumnDataSource({"xs": [xs], "ys": [ys]})
            patch = fig.patches("xs", "ys", source=src, fill_alpha=0.1, line_color="#d62728",
                                line_width=2)
            vertices = fig.scatter([], [], size=8, color="#d62728")
            tool = PolyEditTool(renderers=[patch], vertex_renderer=vertices)
            fig.add_tools(tool)
            fig.toolbar.active_drag = tool
            src.on_change("data", lambda attr, old, new, g=g: self._polygon_moved(g, new))
            self.polygons[g.population] = src
        return column(fig, *controls)

    def _gate_now(self, g: EditableGate) -> Any:
        return self.changes.get(g.population, g.gate)

    def _moved(self, attr: str, old: Any, new: Any) -> None:
        for slider, g, i, side in self.sliders:
            gate = self._gate_now(g)
            bounds = list(gate.mins if side == "min" else gate.maxs)
            if bounds[i] is None or np.isclose(bounds[i], slider.value):
                continue
            previous = bounds[i]
            bounds[i] = float(slider.value)
            key = "mins" if side == "min" else "maxs"
            self.changes[g.population] = _with(gate, key, tuple(bounds))
            self.spans[(g.population, i, side)].location = slider.value
            self._move_siblings(g, i, side, previous, float(slider.value))
        self._recount()

    def _move_siblings(self, g: EditableGate, i: int, side: str, old: float, new: float
                       ) -> None:
        """Quadrants: rectangles of the same parent and axes that share the cut move with it."""
        other = "max" if side == "min" else "min"
        for h in self.editor.gates():
            if h.population == g.population or h.parent != g.parent or h.markers != g.markers:
                continue
            gate = self._gate_now(h)
            bounds = list(gate.maxs if other == "max" else gate.mins)
            if bounds[i] is not None and np.isclose(bounds[i], old):
                bounds[i] = new
                self.changes[h.population] = _with(gate, "maxs" if other == "max" else "mins",
                                                   tuple(bounds))
                for slider, sg, si, sside in self.sliders:  # its handle follows, too
                    if sg.population == h.population and si == i and sside == other:
                        slider.value = new
                        self.spans[(h.population, i, other)].location = new

    def _polygon_moved(self, g: EditableGate, data: dict) -> None:
        if not data["xs"]:
            return
        verts = tuple((float(a), float(b)) for a, b in zip(data["xs"][0], data["ys"][0]))
        if len(verts) >= 3:
            self.changes[g.population] = PolygonGate(dims=g.gate.dims, vertices=verts)
            self._recount()

    def _recount(self) -> None:
        try:
            self.counts_source.data = self._counts_frame(self.editor.counts(self.changes))
            moved = ", ".join(self.changes) or "none"
            self.status.text = f"moved: {moved} (not saved)"
        except ImmunoprofileError as exc:
            self.status.text = f"<b>error:</b> {exc}"

    def save(self) -> None:
        if not self.changes:
            self.status.text = "no gate was moved: nothing to save"
            return
        if not self.reason.value.strip() or not self.user.value.strip():
            self.status.text = "<b>give a reason and your name to save</b>"
            return
        try:
            added = self.editor.save(self.changes, by=self.user.value.strip(),
                                     reason=self.reason.value.strip(),
                                     also=list(self.also.value))
        except ImmunoprofileError as exc:
            self.status.text = f"<b>not saved:</b> {exc}"
            return
        self.changes = {}
        self.status.text = (f"saved: {len(added)} override(s), audit rows added "
                            f"({', '.join(dict.fromkeys(added['sample_id']))})")
        self.app.refresh()
        self.counts_source.data = self._counts_frame(self.app.run_table(
            self.editor.sample_id, self.editor.template_name))


def slider_class(population: str, marker: str, side: str) -> str:
    """The CSS class of a threshold's slider (what a browser test or a user script finds)."""
    text = f"{population} {marker} {side}"
    return "slider-" + re.sub(r"[^A-Za-z0-9]+", "-", text.replace("+", "pos")).strip("-")


def _with(gate: RectangleGate, key: str, bounds: tuple) -> RectangleGate:
    return replace(gate, **{key: bounds})


class ReviewApp:
    """One browser tab: the ranked sample list and the sample panel."""

    def __init__(self, context: RunContext, doc: Any):
        self.context, self.doc = context, doc
        self.ranking = context.ranking
        self.filters = {}
        for col in FILTERS:
            if col not in self.ranking.columns:
                continue
            values = sorted({str(v) for v in self.ranking[col].dropna()})
            select = Select(title=col, value=ALL, options=[ALL, *values], width=140,
                            name=f"filter:{col}")
            select.on_change("value", lambda attr, old, new: self._show_list())
            self.filters[col] = select
        self.list_source = ColumnDataSource(self._list_frame())
        columns = [TableColumn(field=c, title=t, width=w) for c, t, w in (
            ("rank", "#", 30), ("sample_id", "sample", 140), ("score", "score", 50),
            ("reasons", "why", 420), ("templates", "template", 70))]
        self.table = DataTable(source=self.list_source, columns=columns, width=760, height=620,
                               index_position=None, name="samples",
                               css_classes=["review-samples"])
        self.list_source.selected.on_change("indices", self._selected)
        self.panel = column(Div(text="<p>Select a sample on the left.</p>"), name="panel")
        header = Div(text=f"<h2>Review {context.run.path.name}</h2><p>{len(self.ranking)} "
                          "samples; those that most need a look first.</p>")
        doc.title = f"immunoprofile review: {context.run.path.name}"
        doc.add_root(row(column(header, row(*self.filters.values()), self.table), self.panel))

    def templates_of(self, sample_id: str) -> list[str]:
        """The templates that gated a sample (a B-cell tube: ``bcell`` and ``plasma``)."""
        hit = self.ranking.loc[self.ranking["sample_id"] == sample_id, "templates"]
        return [t for t in str(hit.iloc[0]).split(", ") if t] if len(hit) else []

    def template_of(self, sample_id: str) -> str:
        return (self.templates_of(sample_id) or [""])[0]

    def open_sample(self, sample_id: str, template: str | None = None) -> None:
        """Show one sample's gates under one of its templates (the first by default)."""
        template = template or self.template_of(sample_id)
        try:
            editor = SampleEditor(self.context, sample_id, template)
            self.panel.children = [SamplePanel(self, editor).layout]
        except ImmunoprofileError as exc:
            self.panel.children = [Div(text=f"<b>{sample_id}:</b> {exc}")]
            return
        # the page is drawn from the run's files; the engine prepares the sample for live
        # counts right after, while the reviewer looks
        self.doc.add_next_tick_callback(editor.prepare)

    def run_table(self, sample_id: str, template: str) -> pd.DataFrame:
        sub = self.context.run.subsets
        return sub[(sub["sample_id"].astype(str) == sample_id) & (sub["template"] == template)
                   ][["population", "parent", "count", "pct_parent"]]

    def run_counts(self, sample_id: str, template: str) -> dict[str, Any]:
        mine = self.run_table(sample_id, template)
        return {p: (None if pd.isna(c) else int(c)) for p, c in
                zip(mine["population"], mine["count"])}

    def _list_frame(self) -> dict[str, list]:
        frame = self.ranking
        for col, select in self.filters.items():
            if select.value != ALL:
                frame = frame[frame[col].astype(str) == select.value]
        frame = frame.assign(rank=np.arange(1, len(frame) + 1))
        return {c: frame[c].astype(object).tolist() for c in
                ("rank", "sample_id", "score", "reasons", "templates")}

    def _show_list(self) -> None:
        self.list_source.selected.indices = []
        self.list_source.data = self._list_frame()

    def _selected(self, attr: str, old: list, new: list) -> None:
        if not new:
            return
        self.open_sample(str(self.list_source.data["sample_id"][new[0]]))

    def refresh(self) -> None:
        """After a save: the run's tables changed, so does the ranking."""
        self.context.refresh()
        self.ranking = self.context.ranking
        self.list_source.data = self._list_frame()
