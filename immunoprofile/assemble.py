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
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from immunoprofile._atomic import atomic_write
from immunoprofile._version import __version__
from immunoprofile.batch import BatchSettings, events_for_sample
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.run import Run
from immunoprofile.tables import read_parquet_arrays, read_parquet_columns, read_parquet_schema


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
    label = np.full(len(members), "", dtype=object)
    best = np.full(len(members), -1)
    for j, col in enumerate(member_cols):
        tname, pop = col.split("/", 1)
        template = templates.get(tname)
        depth = template.depth(pop) if template is not None and pop in template else 0
        hit = members[:, j] & (depth > best)
        label[hit] = pop
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
    seed = random_state if seed is None else seed
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

    # First pass: each sample's columns, channels and parent-population size (one column
    # read), so the subsample is drawn before any sample's events are held.
    columns: dict[str, None] = {}
    channels: dict[str, set] = {}
    parent_col, sizes = None, []
    for sid in samples["sample_id"]:
        names, meta = read_parquet_schema(run.events_path(sid))
        parent_col = _parent_column(names, population, templates)
        sizes.append(int(np.count_nonzero(read_parquet_columns(
            run.events_path(sid), [parent_col])[parent_col].to_numpy(bool))))
        columns.update(dict.fromkeys(names))
        for marker, pnn in meta.get("channels", {}).items():
            channels.setdefault(marker, set()).add(pnn)
    available = min(sizes)
    if n_per_sample is None:
        n_per_sample = available
    regated = None
    if n_per_sample > max(sizes) and not proportional:
        regated = _regate(run, samples, n_per_sample, parent_col, seed)
        sizes = [len(f) for f in regated]
        columns = dict.fromkeys(c for f in regated for c in f.columns)
    picks = []
    for n in sizes:
        if proportional:
            k = round(n * min(1.0, n_per_sample / max(available, 1)))
        else:
            k = min(n_per_sample, n)
        picks.append(np.sort(rng.choice(n, k, replace=False)) if k < n else np.arange(n))

    # Second pass: one sample's events at a time, straight into the output arrays (holding
    # every sample's kept events, then their subsamples and their concatenation, took ~3x
    # the output's memory).
    markers = [c.split("/", 1)[1] for c in columns if c.startswith("transformed/")]
    member_cols = [c for c in columns if "/" in c
                   and not c.startswith(("transformed/", "compensated/"))]
    total = sum(len(p) for p in picks)
    X = np.full((total, len(markers)), np.nan, dtype=np.float32)
    comp = np.full((total, len(markers)), np.nan, dtype=np.float32)
    members = np.zeros((total, len(member_cols)), dtype=bool)
    event_index = np.zeros(total, dtype=np.int64)
    start = 0
    for i, sid in enumerate(samples["sample_id"]):
        if regated is not None:  # already the parent population's events
            frame, regated[i] = regated[i], None
            cols, at = {c: frame[c].to_numpy() for c in frame.columns}, picks[i]
        else:
            cols = read_parquet_arrays(run.events_path(sid))
            at = np.flatnonzero(cols[parent_col].astype(bool))[picks[i]]
        rows = slice(start, start + at.size)
        for j, m in enumerate(markers):
            if f"transformed/{m}" in cols:
                X[rows, j] = cols[f"transformed/{m}"][at]
            if f"compensated/{m}" in cols:
                comp[rows, j] = cols[f"compensated/{m}"][at]
        for j, col in enumerate(member_cols):  # a gate the sample lacks: not a member
            if col in cols:
                members[rows, j] = cols[col][at].astype(bool)
        event_index[rows] = cols["event_index"][at]
        start = rows.stop
    sample_pos = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
    return _to_anndata(X, comp, markers, event_index, members, member_cols,
                       samples.reset_index(drop=True), sample_pos, channels, templates,
                       parent_col, {
        "timepoint": str(timepoint), "panel": panel or (panels.iloc[0] if len(panels) else ""),
        "population": parent_col, "n_per_sample": int(n_per_sample),
        "proportional": proportional, "seed": seed}, run)


def _to_anndata(X: np.ndarray, comp: np.ndarray, markers: list[str], event_index: np.ndarray,
                members: np.ndarray, member_cols: list[str], samples: pd.DataFrame,
                sample_pos: np.ndarray, channels: dict, templates: dict, parent_col: str,
                params: dict, run: Run) -> ad.AnnData:
    """``sample_pos``: each event's row in ``samples`` (whose metadata it gets); ``members``:
    events × ``member_cols`` gate membership."""
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
    obs["population"] = pd.Categorical(_deepest(members, member_cols, templates))
    var = pd.DataFrame(index=pd.Index(markers, name="marker"))
    var["channel"] = [";".join(sorted(channels.get(m, []))) for m in markers]
    adata = ad.AnnData(X=X, obs=obs, var=var, layers={"compensated": comp})
    adata.uns["immunoprofile"] = {
        "version": __version__, "run": str(run.path.resolve()),
        "schema_version": run.manifest.get("schema_version", ""),
        "templates": {n: {"version": t.version} for n, t in templates.items()},
        **params,
    }
    return adata


def _regate(run: Run, samples: pd.DataFrame, n: int, parent_col: str, seed: int
            ) -> list[pd.DataFrame]:
    """More events than the run kept: re-read, re-QC and re-gate each file (the parent
    population's events of each sample, in sheet order)."""
    settings = BatchSettings(**{**run.manifest.get("settings", {}), "keep_events": n,
                                "seed": seed})
    templates = list(run.templates().values())
    paths = {i["sample_id"]: i["path"] for i in run.manifest.get("inputs", [])}
    out = []
    for _, s in samples.iterrows():
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
            adata = timepoint_anndata(run, str(tp), panel=panel, population=population,
                                      n_per_sample=n_per_sample)
            written.append(write_h5ad(adata, out / name))
    written.append(write_h5ad(sample_anndata(run), out / run.samples_h5ad.name))
    return written
