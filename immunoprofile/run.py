"""The run folder as an object: its layout, readers, writers and manifest in one place.

A run is the folder ``immunoprofile gate`` writes and the later verbs add to::

    RUN/
      run.json                      manifest (inputs, settings, versions, outcome)
      subsets.parquet|.csv          the per-sample subset table (long), subsets_wide.csv
      qc.csv, errors.csv            acquisition QC per sample; error rows
      templates/<name>.yaml         the templates as run
      events/<sample_id>.parquet    each sample's kept events (values + gate membership)
      plots/<sample_id>_<template>.png
      .parts/<sample_id>.*          per-sample parts (resume; .gates.json: the gates as placed)
      subsets_baseline_locked.parquet  gates locked at baseline (gate --baseline-locked)
      overrides.yaml, audit.csv     per-sample gate corrections and their audit trail
                                    (flowjo apply, review)
      .lock, .overrides.lock        one writer at a time; one correction at a time
      anndata/<timepoint>[_<panel>].h5ad, samples.h5ad          (assemble)
      clusters/<h5ad stem>.parquet  per-event FlowSOM labels   (cluster)
      clusters.parquet, cluster_annotation.csv, cluster_agreement.csv, cluster_plots/
      cytokines/                    a bead-array run (cba)
      compare/                      comparison tables and plots (compare)
      report.html, report_files/    the report (and its thumbnails, for large runs)

:class:`Run` is the only place that names these files (as FlowKit's ``Session`` owns a
workspace and AnnData its ``.h5ad``): every verb and the report read and write through it, and
the analysis tools take the DataFrames and AnnData it returns. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from immunoprofile._atomic import atomic_write, atomic_write_all
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tables import read_parquet_with_meta
from immunoprofile.template.model import Template
from immunoprofile.template.yaml_io import (
    load_template,
    template_from_dict,
    template_yaml,
    write_template,
)

PARTS = ".parts"


class Run:
    """A run folder: where each output lives, and how it is read and written.

    Parameters
    ----------
    path
        The run folder (created on the first write when it does not exist).

    Examples
    --------
    >>> run = ip.Run("run")                      # doctest: +SKIP
    >>> run.subsets.head()                       # the subset table, read once
    >>> ip.tl.differential_abundance(run.subsets, control="SOC", baseline="W0")
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._subsets: pd.DataFrame | None = None
        self._manifest: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def open(cls, path: str | Path | Run) -> Run:
        """A gated run folder (one holding ``subsets.parquet``), or a clear error.

        Parameters
        ----------
        path
            The folder (or a :class:`Run`, returned as it is).

        Raises
        ------
        ImmunoprofileError
            The folder holds no subset table: it was not gated.
        """
        run = path if isinstance(path, Run) else cls(path)
        run._require_gated()
        return run

    def _require_gated(self) -> None:
        if not self.subsets_path.is_file():
            raise ImmunoprofileError(f"{self.path} is not a run folder (no subsets.parquet): "
                                     "run `immunoprofile gate` first")

    # -- layout --------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / "run.json"

    @property
    def subsets_path(self) -> Path:
        return self.path / "subsets.parquet"

    @property
    def baseline_locked_path(self) -> Path:
        """Rows gated with each patient's gates locked at baseline (``gate --baseline-locked``)."""
        return self.path / "subsets_baseline_locked.parquet"

    @property
    def subsets_csv(self) -> Path:
        return self.path / "subsets.csv"

    @property
    def subsets_wide_csv(self) -> Path:
        return self.path / "subsets_wide.csv"

    @property
    def overrides_path(self) -> Path:
        """Per-sample gate overrides (:mod:`immunoprofile.overrides`)."""
        return self.path / "overrides.yaml"

    @property
    def overrides_lock_path(self) -> Path:
        """Held while overrides are read, merged, written and applied (one change at a time)."""
        return self.path / ".overrides.lock"

    @property
    def audit_path(self) -> Path:
        """Every gate change made to the run: who, when, why, what it changed."""
        return self.path / "audit.csv"

    @property
    def qc_path(self) -> Path:
        return self.path / "qc.csv"

    @property
    def errors_path(self) -> Path:
        return self.path / "errors.csv"

    @property
    def templates_dir(self) -> Path:
        return self.path / "templates"

    @property
    def events_dir(self) -> Path:
        return self.path / "events"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    @property
    def parts_dir(self) -> Path:
        return self.path / PARTS

    @property
    def anndata_dir(self) -> Path:
        return self.path / "anndata"

    @property
    def samples_h5ad(self) -> Path:
        return self.anndata_dir / "samples.h5ad"

    @property
    def labels_dir(self) -> Path:
        return self.path / "clusters"

    @property
    def clusters_path(self) -> Path:
        return self.path / "clusters.parquet"

    @property
    def cluster_annotation_path(self) -> Path:
        return self.path / "cluster_annotation.csv"

    @property
    def cluster_agreement_path(self) -> Path:
        return self.path / "cluster_agreement.csv"

    @property
    def cluster_plots_dir(self) -> Path:
        return self.path / "cluster_plots"

    @property
    def cytokines_dir(self) -> Path:
        return self.path / "cytokines"

    @property
    def compare_dir(self) -> Path:
        return self.path / "compare"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def part(self, sample_id: str, name: str) -> Path:
        """A per-sample part (``subsets.parquet``, ``qc.json``, ``done.json``).

        Parameters
        ----------
        sample_id
            The sample.
        name
            The part's name, after the sample id and a dot.

        Returns
        -------
        pathlib.Path
            ``.parts/<sample_id>.<name>`` in the run folder.
        """
        return self.parts_dir / f"{sample_id}.{name}"

    def part_subsets(self, sample_id: str) -> Path:
        """A sample's subset rows, before the run assembles them.

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        pathlib.Path
            ``.parts/<sample_id>.subsets.parquet`` in the run folder.
        """
        return self.part(sample_id, "subsets.parquet")

    def part_qc(self, sample_id: str) -> Path:
        """A sample's QC summary row.

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        pathlib.Path
            ``.parts/<sample_id>.qc.json`` in the run folder.
        """
        return self.part(sample_id, "qc.json")

    def part_gates(self, sample_id: str) -> Path:
        """A sample's templates as applied (adaptive gates where they landed, overrides).

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        pathlib.Path
            ``.parts/<sample_id>.gates.json`` in the run folder.
        """
        return self.part(sample_id, "gates.json")

    def placed_templates(self, sample_id: str) -> dict[str, Template]:
        """The templates as the run applied them to one sample (empty when the run predates
        this record or the sample failed).

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        dict of str to Template
            By template name.
        """
        path = self.part_gates(sample_id)
        if not path.is_file():
            return {}
        data = json.loads(path.read_text())
        return {name: template_from_dict(d, source=str(path)) for name, d in data.items()}

    def part_done(self, sample_id: str) -> Path:
        """A sample's done marker (status, errors, resume key), written last.

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        pathlib.Path
            ``.parts/<sample_id>.done.json`` in the run folder.
        """
        return self.part(sample_id, "done.json")

    def events_path(self, sample_id: str) -> Path:
        """The kept-event table of one sample.

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        pathlib.Path
            ``events/<sample_id>.parquet`` in the run folder.
        """
        return self.events_dir / f"{sample_id}.parquet"

    def plot_path(self, sample_id: str, template: str) -> Path:
        """The gating plot of one sample under one template.

        Parameters
        ----------
        sample_id
            The sample.
        template
            The template's name.

        Returns
        -------
        pathlib.Path
            ``plots/<sample_id>_<template>.png`` in the run folder.
        """
        return self.plots_dir / f"{sample_id}_{template}.png"

    @staticmethod
    def plot_sample(path: Path, templates: Iterable[str]) -> str:
        """The sample a gating plot of :meth:`plot_path` belongs to.

        Parameters
        ----------
        path
            A ``plots/<sample_id>_<template>.png`` file.
        templates
            The run's template names (they may hold ``_``, as sample ids may).

        Returns
        -------
        str
            The sample id: the stem without its longest matching ``_<template>`` suffix
            (without the last ``_…`` part when no template matches).
        """
        stem = Path(path).stem
        for name in sorted(templates, key=len, reverse=True):
            if stem.endswith(f"_{name}") and len(stem) > len(name) + 1:
                return stem[: -len(name) - 1]
        return stem.rsplit("_", 1)[0]

    def timepoint_h5ad(self, timepoint: str, panel: str | None = None) -> Path:
        """The event AnnData of a timepoint (per panel when the tubes differ).

        Parameters
        ----------
        timepoint
            The timepoint.
        panel
            The panel, added to the name as ``_<panel>``; None (or empty) for none.

        Returns
        -------
        pathlib.Path
            ``anndata/<timepoint>.h5ad`` or ``anndata/<timepoint>_<panel>.h5ad`` in the run
            folder.
        """
        return self.anndata_dir / (f"{timepoint}_{panel}.h5ad" if panel else
                                   f"{timepoint}.h5ad")

    def timepoint_files(self) -> list[Path]:
        """The timepoint ``.h5ad`` files assembled so far, in name order."""
        return sorted(p for p in self.anndata_dir.glob("*.h5ad") if p != self.samples_h5ad)

    def labels_path(self, h5ad: Path) -> Path:
        """The cluster labels file that goes with a timepoint ``.h5ad``.

        Parameters
        ----------
        h5ad
            The timepoint ``.h5ad`` (only its file name's stem is used).

        Returns
        -------
        pathlib.Path
            ``clusters/<stem>.parquet`` in the run folder.
        """
        return self.labels_dir / f"{Path(h5ad).stem}.parquet"

    # -- readers -------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """``run.json`` (empty before the run finished)."""
        if self._manifest is None:
            self._manifest = (json.loads(self.manifest_path.read_text())
                              if self.manifest_path.is_file() else {})
        return self._manifest

    @property
    def subsets(self) -> pd.DataFrame:
        """The subset table (read once per :class:`Run`)."""
        if self._subsets is None:
            self._require_gated()
            self._subsets = pd.read_parquet(self.subsets_path)
        return self._subsets

    @property
    def metadata_columns(self) -> list[str]:
        """The sample-sheet columns of the subset table (those before ``template``)."""
        cols = list(self.subsets.columns)
        return cols[: cols.index("template")]

    def samples(self) -> pd.DataFrame:
        """One row per gated sample with its sheet metadata (categoricals kept)."""
        return (self.subsets[self.metadata_columns].drop_duplicates("sample_id")
                .reset_index(drop=True))

    def templates(self) -> dict[str, Template]:
        """The run's templates by name, as written into ``templates/``, in the order the run
        applied them (``run.json``): regating with them gives the same rows in the same order."""
        found = {p.stem: load_template(p) for p in sorted(self.templates_dir.glob("*.yaml"))}
        order = list(self.manifest.get("templates", {})) if self.manifest_path.is_file() else []
        return {**{n: found[n] for n in order if n in found}, **found}

    def events(self, sample_id: str) -> tuple[pd.DataFrame, dict]:
        """One sample's kept events and their metadata (channels, templates).

        Parameters
        ----------
        sample_id
            The sample.

        Returns
        -------
        (events, metadata)
            The table of :meth:`events_path` (the columns of
            :data:`immunoprofile.tables.EVENTS`) and the ``immunoprofile`` entry of its
            Parquet metadata (``sample_id``, ``channels``, ``templates``,
            ``schema_version``; empty when absent).
        """
        return read_parquet_with_meta(self.events_path(sample_id))

    def table(self, path: Path) -> pd.DataFrame | None:
        """A CSV or Parquet output of the run, or None when it was not written.

        Parameters
        ----------
        path
            The file: read as Parquet when its suffix is ``.parquet``, else as CSV.

        Returns
        -------
        pandas.DataFrame or None
            The table, or None when the file does not exist.
        """
        if not path.is_file():
            return None
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)

    @property
    def qc(self) -> pd.DataFrame:
        """The acquisition-QC table (empty when absent)."""
        return self.table(self.qc_path) if self.qc_path.is_file() else pd.DataFrame()

    @property
    def errors(self) -> pd.DataFrame:
        """The error rows (empty when absent)."""
        return self.table(self.errors_path) if self.errors_path.is_file() else pd.DataFrame()

    @property
    def audit(self) -> pd.DataFrame:
        """Every gate change made to the run (``audit.csv``; empty when none)."""
        if not self.audit_path.is_file():
            return pd.DataFrame()
        return pd.read_csv(self.audit_path, dtype={"sample_id": str}, keep_default_na=False)

    def clusters(self) -> pd.DataFrame | None:
        """The sample × cluster counts (``clusters.parquet``), or None before clustering."""
        return self.table(self.clusters_path)

    def comparison(self, name: str) -> pd.DataFrame | None:
        """A table ``compare`` wrote (``differential_abundance``, ``responders``, …).

        Parameters
        ----------
        name
            The table's name without suffix; ``compare/<name>.parquet`` is looked for first,
            then ``compare/<name>.csv``.

        Returns
        -------
        pandas.DataFrame or None
            The table, or None when neither file exists.
        """
        for suffix in (".parquet", ".csv"):
            path = self.compare_dir / f"{name}{suffix}"
            if path.is_file():
                return self.table(path)
        return None

    def comparison_path(self, name: str) -> Path:
        """Where ``compare`` writes a table or a plot (``name`` with its suffix).

        Parameters
        ----------
        name
            The file name, with its suffix (``responders.csv``).

        Returns
        -------
        pathlib.Path
            ``compare/<name>`` in the run folder.
        """
        return self.compare_dir / name

    def comparison_plots(self, pattern: str) -> list[Path]:
        """The comparison plots matching a glob pattern, in name order.

        Parameters
        ----------
        pattern
            A glob pattern (``*.png``) matched in ``compare/plots``.

        Returns
        -------
        list of pathlib.Path
            The matching files, sorted.
        """
        return sorted(self.plots_under(self.compare_dir).glob(pattern))

    def cytokine_plots(self) -> list[Path]:
        """The bead-array run's plots (standard curves), in name order."""
        return sorted(self.plots_under(self.cytokines_dir).glob("*.png"))

    @staticmethod
    def plots_under(folder: Path) -> Path:
        """Where a stage writing into ``folder`` puts its plots.

        Parameters
        ----------
        folder
            The stage's output folder.

        Returns
        -------
        pathlib.Path
            ``<folder>/plots``.
        """
        return Path(folder) / "plots"

    def gating_plots(self) -> list[Path]:
        """Every gating plot, in name order."""
        return sorted(self.plots_dir.glob("*.png"))

    def timepoint(self, path: Path):
        """A timepoint ``.h5ad`` with its cluster labels joined into ``obs`` (when clustered).

        Clustering writes labels beside the assembled file rather than rewriting it, so the
        stages never overwrite one another's outputs; this reader gives the joined view.

        Parameters
        ----------
        path
            The timepoint ``.h5ad`` (one of :meth:`timepoint_files`).

        Returns
        -------
        anndata.AnnData
            The file's data; when :meth:`labels_path` exists, each label column is added to
            ``obs`` (by event name; categoricals restored) and the labels' ``uns`` entries to
            ``uns``.
        """
        import anndata as ad  # start-up time: the gate verb never reads AnnData

        adata = ad.read_h5ad(path)
        labels = self.labels_path(path)
        if labels.is_file():
            frame, meta = read_parquet_with_meta(labels)
            frame = frame.set_index(frame["cell"].astype(str)).drop(columns="cell")
            for col in frame.columns:
                adata.obs[col] = frame[col].reindex(adata.obs_names).to_numpy()
                if col in meta.get("categorical", []):
                    adata.obs[col] = pd.Categorical(
                        adata.obs[col].astype(str), categories=meta["categories"][col])
            for key, value in meta.get("uns", {}).items():
                adata.uns[key] = value
        return adata

    # -- writers -------------------------------------------------------------------------
    def write_text(self, path: Path, text: str) -> Path:
        """Write a text file of the run atomically.

        Parameters
        ----------
        path
            Destination; parent folders are created.
        text
            The content, written as UTF-8.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_json(self, path: Path, value: Any) -> Path:
        """Write a JSON file of the run atomically.

        Parameters
        ----------
        path
            Destination; parent folders are created.
        value
            The value, written indented; objects JSON cannot encode (numpy numbers) are
            converted with ``float``.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return self.write_text(path, json.dumps(value, indent=1, default=float))

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Write ``run.json``.

        Parameters
        ----------
        manifest
            The manifest (as :meth:`write_json` writes it); it also becomes
            :attr:`manifest`.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        self._manifest = manifest
        return self.write_json(self.manifest_path, manifest)

    def write_templates(self, templates: list[Template]) -> list[Path]:
        """Write the run's templates into ``templates/``.

        Parameters
        ----------
        templates
            The templates, each written as ``templates/<name>.yaml``.

        Returns
        -------
        list of pathlib.Path
            The paths written, in the order given.
        """
        return [write_template(t, self.templates_dir / f"{t.name}.yaml") for t in templates]

    def template_writers(self, templates: list[Template]) -> list[tuple[Path, Callable]]:
        """The writes of ``templates/`` (for :meth:`commit`).

        Parameters
        ----------
        templates
            The templates.

        Returns
        -------
        list of (pathlib.Path, callable)
            ``(templates/<name>.yaml, write)`` per template, ``write(tmp)`` writing its YAML
            to ``tmp``; nothing is written yet.
        """
        return [(self.templates_dir / f"{t.name}.yaml", lambda tmp, t=t: tmp.write_text(
            template_yaml(t))) for t in templates]

    def commit(self, writes: list[tuple[Path, Callable[[Path], None]]],
               manifest: dict[str, Any]) -> list[Path]:
        """Write a stage's files and ``run.json`` as one: all replaced, or none.

        Parameters
        ----------
        writes
            ``(path, write)`` pairs; ``write(tmp)`` writes the content to ``tmp``.
        manifest
            Written last, as indented JSON, to ``run.json``; it becomes :attr:`manifest`,
            and the cached subset table is dropped.

        Returns
        -------
        list of pathlib.Path
            The paths written, in order, ``run.json`` last.

        Raises
        ------
        OSError
            A write failed (a full disk); every earlier file is as it was.
        """
        text = json.dumps(manifest, indent=1, default=float)
        paths = atomic_write_all([*writes, (self.manifest_path,
                                            lambda tmp: tmp.write_text(text))])
        self.forget()
        self._manifest = manifest
        return paths

    def write_with(self, path: Path, writer: Callable[[Path], None]) -> Path:
        """Write any file of the run atomically with ``writer(temporary_path)``.

        Parameters
        ----------
        path
            Destination; parent folders are created.
        writer
            Writes the content to the temporary path it is given.

        Returns
        -------
        pathlib.Path
            The path written.
        """
        return atomic_write(path, writer)

    # -- the writer's lock and clean-up ---------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def _own_folders(self) -> list[Path]:
        return [self.path, self.parts_dir, self.events_dir, self.plots_dir, self.templates_dir,
                self.anndata_dir, self.labels_dir, self.compare_dir,
                self.plots_under(self.compare_dir), self.cluster_plots_dir]

    def clean_temporary(self) -> list[Path]:
        """Remove temporary files a killed writer left (``.NAME.XXXX.tmp`` from atomic
        writes), in the run's own folders only: nothing else under the folder is touched.

        Returns
        -------
        list of pathlib.Path
            The files removed.
        """
        removed = []
        for folder in self._own_folders():
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    @contextmanager
    def lock(self, verb: str) -> Iterator[Run]:
        """Hold the run folder for one writer: a second writer gets a clear error naming the
        holder. A lock left by a process that no longer runs on this host is taken over.

        Parameters
        ----------
        verb
            What holds it (``gate``), for the other writer's message.

        Raises
        ------
        ImmunoprofileError
            Another process holds the folder.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "verb": verb,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for attempt in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = self._holder()
                if attempt == 0 and holder is not None and _stale(holder):
                    self.lock_path.unlink(missing_ok=True)
                    continue
                who = (f"`{holder.get('verb')}` (process {holder.get('pid')} on "
                       f"{holder.get('host')}, since {holder.get('since')})"
                       if holder else "another process")
                raise ImmunoprofileError(
                    f"run folder {self.path} is in use by {who}: wait for it to finish, or "
                    f"write to another folder; if that process is gone, delete "
                    f"{self.lock_path}") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        try:
            yield self
        finally:
            self.lock_path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.lock_path.read_text())
        except (OSError, ValueError):
            return None

    def forget(self) -> None:
        """Drop cached tables (after another stage rewrote them)."""
        self._subsets = None
        self._manifest = None


class CytokineRun:
    """A bead-array run folder (what ``immunoprofile cytokines`` writes; ``RUN/cytokines`` in
    the demo): its layout, readers and writers.

    Parameters
    ----------
    path
        The folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"CytokineRun({str(self.path)!r})"

    @property
    def cytokines_path(self) -> Path:
        return self.path / "cytokines.parquet"

    @property
    def cytokines_csv(self) -> Path:
        return self.path / "cytokines.csv"

    @property
    def standards_csv(self) -> Path:
        return self.path / "cba_standards.csv"

    @property
    def curves_csv(self) -> Path:
        return self.path / "cba_curves.csv"

    @property
    def files_csv(self) -> Path:
        return self.path / "cba_files.csv"

    @property
    def errors_csv(self) -> Path:
        return self.path / "errors.csv"

    @property
    def manifest_path(self) -> Path:
        return self.path / "cba_run.json"

    def plot_path(self, plate: str) -> Path:
        """The standard-curve plot of one plate.

        Parameters
        ----------
        plate
            The plate.

        Returns
        -------
        pathlib.Path
            ``plots/standard_curves_<plate>.png`` in the folder.
        """
        return Run.plots_under(self.path) / f"standard_curves_{plate}.png"

    def tables(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(curves, standards, cytokines) as written; cytokines empty when absent.

        Raises
        ------
        ImmunoprofileError
            The folder holds no curves or standards table.
        """
        try:
            curves = pd.read_csv(self.curves_csv, dtype={"plate": str})
            stds = pd.read_csv(self.standards_csv, dtype={"plate": str})
        except OSError as exc:
            raise ImmunoprofileError(f"{self.path} is not a cytokines run folder ({exc})") \
                from exc
        cyto = (pd.read_csv(self.cytokines_csv, dtype={"plate": str, "sample_id": str})
                if self.cytokines_csv.exists() else pd.DataFrame())
        return curves, stds, cyto


def _stale(holder: dict) -> bool:
    """A lock whose process is gone (same host only: another host's pid means nothing)."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False
