"""AnnData from a batch run: events per timepoint, and samples × populations.

Follows scverse conventions: ``var_names`` are marker names with the detector in
``var['channel']``; ``X`` holds transformed values and ``layers['compensated']`` the linear
compensated ones; ``obs`` carries ``sample_id``, the sample metadata as categoricals,
``event_index`` (the event's row in its FCS file), one boolean column per gated population
(``<template>/<population>``) and ``population``, the deepest gate the event reached;
``uns['immunoprofile']`` holds provenance. Events come from the subsamples the batch run kept
(``events/<sample_id>.parquet``); FCS files are re-read only when more events are asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem

from immunoprofile._atomic import atomic_write
from immunoprofile._h5ad_rows import grow_rows, row_datasets
from immunoprofile._version import __version__
from immunoprofile.batch import BatchSettings, events_for_sample
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.run import Run
from immunoprofile.tables import read_parquet_arrays, read_parquet_schema


def RunFolder(run_dir: str | Path | Run) -> Run:
    """A gated run folder (the former ``RunFolder`` class; now :class:`immunoprofile.Run`).

    Parameters
    ----------
    run_dir
        The folder.

    Returns
    -------
    Run
        The run, checked to hold a subset table.
    """
    return Run.open(run_dir)


def _panel_of(samples: pd.DataFrame) -> pd.Series:
    if "panel" in samples.columns:
        return samples["panel"].astype(str).replace({"nan": "", "None": ""})
    return pd.Series([""] * len(samples), index=samples.index)


def _parent_column(columns: list[str], population: str | None, templates: dict) -> str:
    """The membership column events are drawn from: ``population`` (bare or
    ``template/population``), by default the first template's declared reference."""
    wanted = population
    if wanted is None:
        declared = {f"{n}/{t.reference_population}" for n, t in templates.items()
                    if t.reference_population}
        refs = [c for c in columns if c in declared]
        if not refs:
            raise ImmunoprofileError("no template of the run declares a reference population "
                                     "(reference_population) that its events carry: name the "
                                     "population to draw events from")
        return refs[0]
    if wanted in columns:
        return wanted
    hits = [c for c in columns if "/" in c and c.split("/", 1)[1] == wanted]
    if not hits:
        raise ImmunoprofileError(f"population {wanted!r} is not among the gated populations "
                                 f"({', '.join(c for c in columns if '/' in c)})")
    return hits[0]


def _deepest(members: np.ndarray, member_cols: list[str], templates: dict) -> np.ndarray:
    """Per event, the deepest population it is a member of (ties: template order)."""
    names = np.array(["", *(c.split("/", 1)[1] for c in member_cols)], dtype=object)
    return names[_deepest_index(members, member_cols, templates)]


def _deepest_index(members: np.ndarray, member_cols: list[str], templates: dict) -> np.ndarray:
    """As :func:`_deepest`, as 1 + the column's position (0: no gate)."""
    label = np.zeros(len(members), dtype=np.int32)
    best = np.full(len(members), -1)
    for j, col in enumerate(member_cols):
        tname, pop = col.split("/", 1)
        template = templates.get(tname)
        depth = template.depth(pop) if template is not None and pop in template else 0
        hit = members[:, j] & (depth > best)
        label[hit] = j + 1
        best[hit] = depth
    return label


def timepoint_anndata(
    run_dir: str | Path,
    timepoint: str,
    *,
    population: str | None = None,
    panel: str | None = None,
    n_per_sample: int | None = None,
    proportional: bool = False,
    random_state: int = 0,
    seed: int | None = None,
) -> ad.AnnData:
    """Events of one timepoint as AnnData (subsampled per sample from a parent population).

    Parameters
    ----------
    run_dir
        A batch run folder.
    timepoint
        The visit, as named in the sample sheet.
    population
        Parent population the events come from (a name or ``"<template>/<population>"``);
        default the templates' declared reference (``reference_population``, ``Live
        lymphocytes`` in the shipped templates).
    panel
        Which tube when the study has several (the sheet's ``panel`` column).
    n_per_sample
        Events per sample. Default: as many as the smallest sample has, so that each sample
        contributes equally; with ``proportional=True`` the same fraction of every sample.
        Asking for more than the run kept re-reads and re-gates the FCS files.
    proportional
        Take from every sample the same fraction, ``n_per_sample`` over the smallest
        sample's events (at most all of them), instead of the same number.
    random_state
        Seed of the subsample.
    seed
        Former name of ``random_state`` (kept as an alias).

    Returns
    -------
    anndata.AnnData
        Events × markers of the timepoint (see the module's description of the slots).
    """
    plan = _draw_plan(run_dir, timepoint, population=population, panel=panel,
                      n_per_sample=n_per_sample, proportional=proportional,
                      seed=random_state if seed is None else seed)
    total = sum(p.size for p in plan.picks)
    X = np.full((total, len(plan.markers)), np.nan, dtype=np.float32)
    comp = np.full((total, len(plan.markers)), np.nan, dtype=np.float32)
    members = np.zeros((total, len(plan.member_cols)), dtype=bool)
    event_index = np.zeros(total, dtype=np.int64)
    for _, rows, drawn in _drawn(plan):
        X[rows], comp[rows], members[rows], event_index[rows] = drawn
    sample_pos = np.repeat(np.arange(len(plan.picks)), [p.size for p in plan.picks])
    return _to_anndata(plan, X, comp, event_index, members, sample_pos)


@dataclass
class _DrawPlan:
    """What a timepoint's AnnData draws: its samples, the rows of each (``picks``, within its
    parent population's kept events) and the columns they give."""

    run: Run
    samples: pd.DataFrame
    templates: dict
    channels: dict
    parent_cols: list[str]
    markers: list[str]
    member_cols: list[str]
    picks: list[np.ndarray]
    regated: list[pd.DataFrame] | None
    params: dict


def _draw_plan(run_dir: str | Path, timepoint: str, *, population: str | None,
               panel: str | None, n_per_sample: int | None, proportional: bool,
               seed: int) -> _DrawPlan:
    """Each sample's columns, channels and parent-population size (one column read), and the
    rows drawn from it: the subsample is decided before any sample's events are held."""
    run = Run.open(run_dir)
    samples = run.samples()
    samples = samples[samples["timepoint"].astype(str) == str(timepoint)]
    if samples.empty:
        raise ImmunoprofileError(f"no samples at timepoint {timepoint!r} in {run.path}")
    panels = _panel_of(samples)
    if panels.nunique() > 1:
        if panel is None:
            raise ImmunoprofileError(f"timepoint {timepoint!r} has several panels "
                                     f"({', '.join(sorted(panels.unique()))}): choose one")
        samples = samples[panels == panel]
    elif panel is not None and not (panels == panel).any():
        raise ImmunoprofileError(f"no samples of panel {panel!r} at {timepoint!r}")
    templates = run.templates()
    rng = np.random.default_rng(seed)
    columns: dict[str, None] = {}
    channels: dict[str, set] = {}
    parents, sizes = [], []  # a sample some template failed on has another reference column
    for sid in samples["sample_id"]:
        names, meta = read_parquet_schema(run.events_path(sid))
        parents.append(_parent_column(names, population, templates))
        sizes.append(int(np.count_nonzero(read_parquet_arrays(
            run.events_path(sid), [parents[-1]])[parents[-1]])))
        columns.update(dict.fromkeys(names))
        for marker, pnn in meta.get("channels", {}).items():
            channels.setdefault(marker, set()).add(pnn)
    available = min(sizes)
    if n_per_sample is None:
        n_per_sample = available
    regated = None
    if n_per_sample > max(sizes) and not proportional:
        regated = _regate(run, samples, n_per_sample, parents, seed)
        sizes = [len(f) for f in regated]
        columns = dict.fromkeys(c for f in regated for c in f.columns)
    picks = []
    for n in sizes:
        if proportional:
            k = round(n * min(1.0, n_per_sample / max(available, 1)))
        else:
            k = min(n_per_sample, n)
        picks.append(np.sort(rng.choice(n, k, replace=False)) if k < n else np.arange(n))
    return _DrawPlan(
        run=run, samples=samples.reset_index(drop=True), templates=templates,
        channels=channels, parent_cols=parents,
        markers=[c.split("/", 1)[1] for c in columns if c.startswith("transformed/")],
        member_cols=[c for c in columns if "/" in c
                     and not c.startswith(("transformed/", "compensated/"))],
        picks=picks, regated=regated, params={
            "timepoint": str(timepoint),
            "panel": panel or (panels.iloc[0] if len(panels) else ""),
            "population": parents[-1], "n_per_sample": int(n_per_sample),
            "proportional": proportional, "seed": seed})


def _drawn(plan: _DrawPlan) -> Iterator[tuple[int, slice, tuple[np.ndarray, ...]]]:
    """Per sample, its rows of the output and their ``X``, compensated values, gate
    membership and event numbers: one sample's events read at a time (holding every
    sample's kept events, then their subsamples and their concatenation, took ~3x the
    output's memory)."""
    start = 0
    for i, sid in enumerate(plan.samples["sample_id"]):
        if plan.regated is not None:  # already the parent population's events
            frame, plan.regated[i] = plan.regated[i], None
            cols, at = {c: frame[c].to_numpy() for c in frame.columns}, plan.picks[i]
        else:
            cols = read_parquet_arrays(plan.run.events_path(sid))
            at = np.flatnonzero(cols[plan.parent_cols[i]].astype(bool))[plan.picks[i]]
        X = np.full((at.size, len(plan.markers)), np.nan, dtype=np.float32)
        comp = np.full((at.size, len(plan.markers)), np.nan, dtype=np.float32)
        for j, m in enumerate(plan.markers):
            if f"transformed/{m}" in cols:
                X[:, j] = cols[f"transformed/{m}"][at]
            if f"compensated/{m}" in cols:
                comp[:, j] = cols[f"compensated/{m}"][at]
        members = np.zeros((at.size, len(plan.member_cols)), dtype=bool)
        for j, col in enumerate(plan.member_cols):  # a gate the sample lacks: not a member
            if col in cols:
                members[:, j] = cols[col][at].astype(bool)
        rows = slice(start, start + at.size)
        start = rows.stop
        yield i, rows, (X, comp, members, cols["event_index"][at].astype(np.int64))


def _to_anndata(plan: _DrawPlan, X: np.ndarray, comp: np.ndarray, event_index: np.ndarray,
                members: np.ndarray, sample_pos: np.ndarray) -> ad.AnnData:
    """``sample_pos``: each event's row in ``plan.samples`` (whose metadata it gets);
    ``members``: events × ``plan.member_cols`` gate membership."""
    samples, markers, member_cols = plan.samples, plan.markers, plan.member_cols
    sample_ids = samples["sample_id"].astype(str).to_numpy()
    obs = pd.DataFrame(index=pd.Index([f"{sid}:{i}" for sid, i in
                                       zip(sample_ids[sample_pos], event_index)],
                                      name="cell"))
    obs["sample_id"] = pd.Categorical.from_codes(sample_pos, categories=list(sample_ids))
    # Per-sample values are converted once (one value per sample), then taken per event.
    for col in samples.columns:
        if col == "sample_id":
            continue
        src = samples[col]
        if isinstance(src.dtype, pd.CategoricalDtype):
            obs[col] = pd.Categorical.from_codes(src.cat.codes.to_numpy()[sample_pos],
                                                 dtype=src.dtype)
        elif pd.api.types.is_numeric_dtype(src):
            obs[col] = src.to_numpy()[sample_pos]
        else:
            obs[col] = pd.Categorical(src.astype(str).to_numpy()[sample_pos])
    obs["event_index"] = event_index
    for j, col in enumerate(member_cols):
        obs[col] = members[:, j]
    obs["population"] = pd.Categorical(_deepest(members, member_cols, plan.templates))
    var = pd.DataFrame(index=pd.Index(markers, name="marker"))
    var["channel"] = [";".join(sorted(plan.channels.get(m, []))) for m in markers]
    adata = ad.AnnData(X=X, obs=obs, var=var, layers={"compensated": comp})
    adata.uns["immunoprofile"] = {
        "version": __version__, "run": str(plan.run.path.resolve()),
        "schema_version": plan.run.manifest.get("schema_version", ""),
        "templates": {n: {"version": t.version} for n, t in plan.templates.items()},
        **plan.params,
    }
    return adata


#: Rows gathered before a write (one h5py write per sample and column cost more than drawing).
_WRITE_ROWS = 65_536


def write_timepoint_h5ad(path: str | Path, run_dir: str | Path, timepoint: str, *,
                         population: str | None = None, panel: str | None = None,
                         n_per_sample: int | None = None, proportional: bool = False,
                         random_state: int = 0) -> Path:
    """Write :func:`timepoint_anndata`'s AnnData to ``path`` without holding it: the file is
    laid out by anndata with one row per sample, then its event rows are written one sample
    at a time (memory does not grow with the study). Reading it back gives the same AnnData.

    Parameters
    ----------
    path
        Destination ``.h5ad`` (written to a temporary file, then moved into place).
    run_dir, timepoint, population, panel, n_per_sample, proportional, random_state
        As :func:`timepoint_anndata`.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    plan = _draw_plan(run_dir, timepoint, population=population, panel=panel,
                      n_per_sample=n_per_sample, proportional=proportional, seed=random_state)
    sizes = np.array([p.size for p in plan.picks])
    total = int(sizes.sum())
    here = np.flatnonzero(sizes)  # samples that give events: one row each in the layout
    width = len(plan.markers)
    layout = _to_anndata(plan, np.zeros((here.size, width), np.float32),
                         np.zeros((here.size, width), np.float32), np.zeros(here.size, np.int64),
                         np.zeros((here.size, len(plan.member_cols)), bool), here)
    row_of = {int(i): r for r, i in enumerate(here)}

    def write(tmp: Path) -> None:
        write_h5ad(layout, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = f["obs"]
            index = obs.attrs["_index"]
            per_sample = [c for c in layout.obs.columns
                          if c not in ("event_index", "population", *plan.member_cols)]
            # the layout's per-sample values, before its datasets grow to every event
            kept = {d.name: d[()] for c in per_sample for d in row_datasets(obs[c])}
            grown = {key: grow_rows(f, key, total) for key in
                     ("X", "layers/compensated", f"obs/{index}", "obs/event_index",
                      *(f"obs/{c}" for c in plan.member_cols), *kept)}
            labels = np.zeros(total, dtype=np.int32)
            sample_ids = plan.samples["sample_id"].astype(str).to_numpy()
            # Samples' rows are written ~64k at a time (one write per sample and column
            # cost more than drawing them).
            pending: list[tuple[int, slice, tuple[np.ndarray, ...]]] = []

            def flush() -> None:
                if not pending:
                    return
                rows = slice(pending[0][1].start, pending[-1][1].stop)
                X, comp, members, event_index = (np.concatenate(parts) for parts in
                                                 zip(*(d for _, _, d in pending)))
                grown["X"][rows], grown["layers/compensated"][rows] = X, comp
                grown["obs/event_index"][rows] = event_index
                for j, c in enumerate(plan.member_cols):
                    grown[f"obs/{c}"][rows] = members[:, j]
                sample_rows = np.repeat([row_of[i] for i, _, _ in pending],
                                        [r.stop - r.start for _, r, _ in pending])
                for key, values in kept.items():
                    grown[key][rows] = values[sample_rows]
                grown[f"obs/{index}"][rows] = np.array(
                    [f"{sid}:{e}" for i, _, d in pending for sid in (sample_ids[i],)
                     for e in d[3]], dtype=object)
                labels[rows] = _deepest_index(members, plan.member_cols, plan.templates)
                pending.clear()

            for drawn in _drawn(plan):
                pending.append(drawn)
                if pending[-1][1].stop - pending[0][1].start >= _WRITE_ROWS:
                    flush()
            flush()
            names = ["", *(c.split("/", 1)[1] for c in plan.member_cols)]
            del obs["population"]
            write_elem(obs, "population", pd.Categorical(np.array(names, dtype=object)[labels]))

    return atomic_write(Path(path), write)


def _regate(run: Run, samples: pd.DataFrame, n: int, parent_cols: list[str], seed: int
            ) -> list[pd.DataFrame]:
    """More events than the run kept: re-read, re-QC and re-gate each file (the parent
    population's events of each sample, in sheet order)."""
    settings = BatchSettings(**{**run.manifest.get("settings", {}), "keep_events": n,
                                "seed": seed})
    templates = list(run.templates().values())
    paths = {i["sample_id"]: i["path"] for i in run.manifest.get("inputs", [])}
    out = []
    for (_, s), parent_col in zip(samples.iterrows(), parent_cols):
        row = {**s.to_dict(), "path": paths[s["sample_id"]]}
        frame = events_for_sample(row, templates, settings)
        out.append(frame[frame[parent_col].to_numpy(bool)])
    return out


def sample_anndata(run_dir: str | Path) -> ad.AnnData:
    """Visits × populations: counts in ``X``, parent counts and percentages in layers.

    One row per visit (``patient_id``, ``timepoint``): the tubes of a visit (Treg, B cell)
    join on it. ``var_names`` are ``<template>/<population>``; layers ``parent_count``,
    ``pct_parent`` and ``abs_per_ul`` (NaN where not available); ``var`` holds ``template``,
    ``population``, ``parent`` (as ``<template>/<parent>``); ``obs`` the visit's metadata and
    ``sample_id`` (the tubes' ids joined by ';').

    Parameters
    ----------
    run_dir
        A batch run folder (its subsets table and manifest are read).

    Returns
    -------
    anndata.AnnData
        One row per visit, one column per ``<template>/<population>``.
    """
    run = Run.open(run_dir)
    sub = run.subsets.copy()
    sub["var"] = sub["template"].astype(str) + "/" + sub["population"].astype(str)
    sub["visit"] = sub["patient_id"].astype(str) + "_" + sub["timepoint"].astype(str)
    visits = sub.drop_duplicates("visit")
    # A visit's tubes share patient, arm and timepoint; `panel` describes a tube, not a visit.
    meta_cols = [c for c in run.metadata_columns if c not in ("sample_id", "panel")]
    obs = visits.set_index("visit")[meta_cols].copy()
    obs.index.name = "visit"
    obs["sample_id"] = sub.groupby("visit", sort=False)["sample_id"].agg(
        lambda s: ";".join(dict.fromkeys(s.astype(str))))
    order = list(dict.fromkeys(sub["var"]))

    def matrix(value: str) -> np.ndarray:
        wide = sub.pivot_table(index="visit", columns="var", values=value, aggfunc="first",
                               sort=False, dropna=False)
        return wide.reindex(index=obs.index, columns=order).to_numpy(np.float64)

    var = sub.drop_duplicates("var").set_index("var")[["template", "population", "parent"]]
    var = var.reindex(order).astype(str)
    var["parent"] = np.where(var["parent"] != "", var["template"] + "/" + var["parent"], "")
    layers = {"parent_count": matrix("parent_count"), "pct_parent": matrix("pct_parent")}
    if "abs_per_ul" in sub.columns:
        layers["abs_per_ul"] = matrix("abs_per_ul")
    adata = ad.AnnData(X=matrix("count"), obs=obs, var=var, layers=layers)
    adata.uns["immunoprofile"] = {"version": __version__, "run": str(run.path.resolve()),
                                  "schema_version": run.manifest.get("schema_version", "")}
    return adata


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """Write an AnnData atomically.

    Gate-membership columns are named ``<template>/<population>`` (a public interface).
    anndata 0.12 stores such keys in HDF5 with a FutureWarning that a later release will
    refuse them; that warning is silenced here, and the names will need an encoding when the
    project moves to an anndata that refuses them.

    Parameters
    ----------
    adata
        The AnnData to write.
    path
        Destination ``.h5ad`` file; written to a temporary file first, then moved into place.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Forward slashes", category=FutureWarning)
            adata.write_h5ad(tmp)

    return atomic_write(Path(path), write)


def assemble_run(run_dir: str | Path, out: str | Path | None = None, *,
                 n_per_sample: int | None = None, population: str | None = None) -> list[Path]:
    """Write ``<timepoint>.h5ad`` (or ``<timepoint>_<panel>.h5ad`` when tubes differ) per
    timepoint and ``samples.h5ad`` into ``out`` (default ``RUN_DIR/anndata``).

    Parameters
    ----------
    run_dir
        A batch run folder.
    out
        Output folder; default ``RUN_DIR/anndata``.
    n_per_sample
        Events per sample in each timepoint file, as in :func:`timepoint_anndata` (default:
        as many as the timepoint's smallest sample has).
    population
        Parent population the events come from, as in :func:`timepoint_anndata` (default
        the templates' declared reference population).

    Returns
    -------
    list of pathlib.Path
        The files written, timepoints in sheet order, ``samples.h5ad`` last.
    """
    run = Run.open(run_dir)
    out = Path(out) if out else run.anndata_dir
    samples = run.samples()
    panels = _panel_of(samples)
    several = panels.nunique() > 1
    written = []
    for tp in samples["timepoint"].cat.categories if isinstance(
            samples["timepoint"].dtype, pd.CategoricalDtype) else samples["timepoint"].unique():
        here = samples["timepoint"].astype(str) == str(tp)
        if not here.any():
            continue
        for panel in (sorted(panels[here].unique()) if several else [None]):
            name = run.timepoint_h5ad(str(tp), panel).name
            written.append(write_timepoint_h5ad(out / name, run, str(tp), panel=panel,
                                                population=population,
                                                n_per_sample=n_per_sample))
    written.append(write_h5ad(sample_anndata(run), out / run.samples_h5ad.name))
    return written
