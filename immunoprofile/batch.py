"""Gating many samples: executors, progress, resume, error capture and atomic outputs.

One sample is one task: read → acquisition QC → every template that fits → per-sample parts
(written atomically under ``DIR/.parts``) → done marker. The final tables are assembled from the
parts in sample-sheet order, so a run killed at any moment and resumed with ``resume=True``
gives the same tables as an uninterrupted one. Tasks run in-process (``workers=1``), in a local
process pool (one sample at a time per worker, a bounded number in flight), or on a
dask.distributed cluster given its scheduler address.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from immunoprofile._version import __version__
from immunoprofile.errors import ImmunoprofileError, TemplateError
from immunoprofile.io.samplesheet import SampleSheet, read_samplesheet
from immunoprofile.tables import SCHEMA_VERSION, atomic_write, wide, write_csv, write_parquet
from immunoprofile.template.model import Template
from immunoprofile.template.yaml_io import (
    load_template,
    shipped_templates,
    template_hash,
    write_template,
)

RARE_THRESHOLD = 50
PARTS = ".parts"


@dataclass
class BatchSettings:
    """What a run does to every sample (part of the resume key)."""

    keep_events: int = 20_000
    seed: int = 0
    qc: bool | None = None  # None: each template's own `qc:` section decides
    plots: bool = True
    adaptive: bool = True
    rare_threshold: int = RARE_THRESHOLD

    def key(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SampleOutcome:
    """What one sample task reports back (small: the big parts are on disk)."""

    sample_id: str
    status: str  # "ok", "partial", "failed", "resumed"
    n_events: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BatchResult:
    """A finished run: its folder, tables and what happened to each sample."""

    out: Path
    subsets: pd.DataFrame
    qc: pd.DataFrame
    errors: pd.DataFrame
    outcomes: list[SampleOutcome]

    @property
    def exit_code(self) -> int:
        """0: every sample gated; 3: some failed; 1: nothing usable."""
        if self.subsets.empty:
            return 1
        return 3 if len(self.errors) else 0


# -- templates ---------------------------------------------------------------------------------

def resolve_templates(specs: Iterable[str | Path | Template]) -> list[Template]:
    """Templates from shipped names, YAML files, or folders of YAML files (in that order).

    Parameters
    ----------
    specs
        Each a :class:`~immunoprofile.template.Template`, a shipped template name, a YAML
        path, or a folder whose ``*.yaml`` then ``*.yml`` files are loaded in name order.

    Returns
    -------
    list of Template
        The templates, in the order given.

    Raises
    ------
    TemplateError
        A folder holds no ``.yaml`` file, or two templates share a name.
    """
    out: list[Template] = []
    for spec in specs:
        if isinstance(spec, Template):
            out.append(spec)
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            if not files:
                raise TemplateError(f"template folder {path} holds no .yaml files")
            out.extend(load_template(f) for f in files)
        else:
            out.append(load_template(spec))
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TemplateError(f"several templates are named {', '.join(dupes)}: names must be "
                            f"unique in a run (shipped: {', '.join(shipped_templates())})")
    return out


def named_in_panel(panel: Any, template: Template) -> bool:
    """Whether a sample-sheet `panel` value names this template (``treg`` or ``bcell;plasma``).

    Parameters
    ----------
    panel
        The row's ``panel`` cell: template names separated by ``;`` or ``,``; anything but a
        non-empty string (NaN, None) names no template.
    template
        The template whose name is looked for.

    Returns
    -------
    bool
        True when the template's name is one of the listed names (exact, case-sensitive).
    """
    if not isinstance(panel, str) or not panel:
        return False
    return template.name in {p.strip() for p in panel.replace(",", ";").split(";")}


# -- the per-sample task -----------------------------------------------------------------------

def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, part of the key that lets ``resume`` reuse a sample.

    Parameters
    ----------
    path
        The file to hash.
    chunk
        Bytes read at a time (1 MiB by default), so a large FCS file is never held whole.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _hint(stage: str, exc: BaseException) -> str:
    if stage == "read":
        return ("check that the file is a complete FCS file (re-export it from the "
                "acquisition software) and that the path in the sample sheet is right")
    if stage == "fit":
        return ("add the missing markers to the file's $PnS labels, give a panel mapping, or "
                "set the row's `panel` to templates that fit this tube")
    if stage == "gate":
        return "inspect this sample's gating plot and the template; rerun with --resume"
    return "see the error; rerun with --resume once fixed"


def _error(row: dict, template: str, stage: str, exc: BaseException | str) -> dict[str, str]:
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    if not isinstance(exc, str | ImmunoprofileError):
        text = f"{type(exc).__name__}: {text}"
    return {"sample_id": str(row["sample_id"]), "path": str(row["path"]),
            "template": template, "stage": stage, "error": text,
            "hint": _hint(stage, exc) if not isinstance(exc, str) else _hint(stage, Exception())}


def _part(out: Path, sample_id: str, name: str) -> Path:
    return out / PARTS / f"{sample_id}.{name}"


def _resume_key(row: dict, digest: str, templates: list[Template],
                settings: BatchSettings) -> dict:
    # The code version is part of the key: an upgrade regates rather than reuse old parts.
    return {"sha256": digest, "templates": {t.name: template_hash(t) for t in templates},
            "settings": settings.key(), "schema_version": SCHEMA_VERSION,
            "immunoprofile": __version__,
            "metadata": {k: str(v) for k, v in row.items() if k not in ("path", "row")}}


def process_sample(row: dict, templates: list[Template], out: str | Path,
                   settings: BatchSettings, resume: bool = False) -> SampleOutcome:
    """Gate one sample with every template that fits it and write its parts.

    Never raises on bad input: failures become error rows in the outcome.

    Parameters
    ----------
    row
        One sample-sheet row as a dict: ``sample_id``, ``path`` and the metadata columns
        (``panel`` chooses templates).
    templates
        The run's templates; each whose required markers the file carries is applied, and one
        the row names in ``panel`` that does not fit becomes an error row.
    out
        The run folder; the sample's parts are written under its parts folder.
    settings
        The run's :class:`BatchSettings`.
    resume
        Reuse the sample's parts when an earlier run gated it with the same file hash,
        templates, settings, metadata and immunoprofile version.

    Returns
    -------
    SampleOutcome
        Status (``ok``, ``partial``, ``failed`` or ``resumed``), event count, error rows and
        the seconds taken.
    """
    from immunoprofile.batch_task import gate_one  # heavy imports stay in workers

    out = Path(out)
    start = time.perf_counter()
    sid = str(row["sample_id"])
    path = Path(str(row["path"]))
    if not path.is_file():
        return SampleOutcome(sid, "failed", errors=[_error(
            row, "", "read", f"FCS file {path} does not exist")])
    try:
        digest = sha256(path)
    except OSError as exc:
        return SampleOutcome(sid, "failed", errors=[_error(row, "", "read", exc)])
    key = _resume_key(row, digest, templates, settings)
    done = _part(out, sid, "done.json")
    if resume and done.is_file():
        try:
            previous = json.loads(done.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("key") == key:
            return SampleOutcome(sid, "resumed", n_events=int(previous.get("n_events", 0)),
                                 errors=previous.get("errors", []))
    try:
        with _one_thread():
            n_events, errors = gate_one(row, templates, out, settings, digest)
    except Exception as exc:  # a bug must not stop the batch: it becomes this sample's error
        errors = [_error(row, "", "gate", f"{type(exc).__name__}: {exc}\n"
                         f"{traceback.format_exc(limit=3)}")]
        n_events = 0
    status = ("failed" if not _part(out, sid, "subsets.parquet").is_file()
              else "partial" if errors else "ok")
    record = {"key": key, "n_events": n_events, "errors": errors, "status": status}
    atomic_write(done, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return SampleOutcome(sid, status, n_events=n_events, errors=errors,
                         seconds=time.perf_counter() - start)


# -- executors ---------------------------------------------------------------------------------

# Parallelism is across samples. Inside one sample the linear algebra is on tiny matrices
# (2-D mixtures, a ~20×20 spillover), where extra BLAS/OpenMP threads only spin against the
# other workers: with the libraries' default threads a sample took 2-3× longer on 2 cores.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _worker_init() -> None:
    """Pool-worker start: libraries loaded from now on (SciPy's OpenBLAS, OpenMP) get one
    thread (dask's nanny does the same for its workers)."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"


@contextmanager
def _one_thread() -> Iterator[None]:
    """One BLAS/OpenMP thread for the libraries already loaded, restored afterwards."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it the defaults stay
        yield
        return
    with threadpool_limits(limits=1):
        yield


Task = tuple[dict, list[Template], str, BatchSettings, bool]


def _run_local(tasks: list[Task], workers: int) -> Iterator[SampleOutcome]:
    if workers <= 1:
        for task in tasks:
            yield process_sample(*task)
        return
    # One sample per worker at a time, and a bounded number of tasks in flight so memory
    # stays bounded. On Linux workers are forked from this process once it has imported the
    # gating code, so they start at once instead of each re-importing it (about 1.3 s, a
    # large share of a short batch); `_worker_init` then limits each to one BLAS thread.
    # Elsewhere, spawn (fork is unsafe on macOS and absent on Windows).
    if sys.platform.startswith("linux"):
        import immunoprofile.batch_task  # noqa: F401 (inherited by the forked workers)

        ctx = get_context("fork")
    else:
        ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_worker_init) as pool:
        pending = set()
        queue = iter(tasks)
        for task in queue:
            pending.add(pool.submit(process_sample, *task))
            if len(pending) >= 2 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in finished)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in finished)


def _run_dask(tasks: list[Task], scheduler: str) -> Iterator[SampleOutcome]:
    from distributed import Client, as_completed

    with Client(scheduler, set_as_default=False) as client:
        futures = [client.submit(process_sample, *task, pure=False,
                                 key=f"sample-{task[0]['sample_id']}-{time.time_ns()}")
                   for task in tasks]
        for future in as_completed(futures, loop=client.loop):
            yield future.result()


# -- the run -----------------------------------------------------------------------------------

def _clean_stale(out: Path) -> None:
    """Temporary files left by a killed run (ours start with '.' and end with '.tmp')."""
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _file_size(path: object) -> int:
    try:
        return os.path.getsize(str(path))
    except OSError:
        return -1  # missing: fails at once, last


def plan(sheet: SampleSheet, templates: list[Template]) -> pd.DataFrame:
    """Which templates are named for which sample (``panel``) — the dry-run view.

    Marker fit is checked on each file when it is read; the plan shows the panel choice.

    Parameters
    ----------
    sheet
        The study's sample sheet.
    templates
        The run's templates.

    Returns
    -------
    pandas.DataFrame
        One row per sample: ``sample_id``, ``path``, ``exists`` (the file is there) and
        ``templates`` (names joined by ';', or ``(by markers)`` when the row names none).
    """
    rows = []
    for _, r in sheet.table.iterrows():
        named = [t.name for t in templates if named_in_panel(r.get("panel"), t)]
        rows.append({"sample_id": r["sample_id"], "path": r["path"],
                     "exists": Path(r["path"]).is_file(),
                     "templates": ";".join(named) if named else "(by markers)"})
    return pd.DataFrame(rows)


def gate_samples(
    sheet: SampleSheet | str | Path,
    templates: Iterable[str | Path | Template],
    out: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    strict: bool = False,
    settings: BatchSettings | None = None,
    progress: Callable[[SampleOutcome, int, int], None] | None = None,
) -> BatchResult:
    """Gate every sample of a sheet with every template that fits it; write the run folder.

    Parameters
    ----------
    sheet
        A :class:`~immunoprofile.io.samplesheet.SampleSheet` or the path of one.
    templates
        Shipped template names, YAML files or folders of them.
    out
        The run folder (``subsets.parquet``, ``subsets.csv``, ``subsets_wide.csv``, ``qc.csv``,
        ``errors.csv``, ``plots/``, ``events/``, ``templates/``, ``run.json``).
    workers
        Local processes (default: all cores); 1 runs in this process.
    scheduler
        Address of a dask.distributed scheduler: run the same tasks on that cluster instead.
    resume
        Skip samples whose parts exist for the same file checksum, templates and settings.
    strict
        Missing FCS files are sheet errors (raised before any work).
    settings
        Events kept per sample, seed, QC, plots, adaptive gates.
    progress
        Called after each sample with (outcome, done, total).
    """
    t0 = time.time()
    if not isinstance(sheet, SampleSheet):
        sheet = read_samplesheet(sheet, strict=strict)
    templates = resolve_templates(templates)
    settings = settings or BatchSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    (out / PARTS).mkdir(exist_ok=True)
    workers = workers or os.cpu_count() or 1
    rows = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
            for r in sheet.table.astype(object).where(sheet.table.notna(), None)
            .to_dict("records")]
    tasks: list[Task] = [(r, templates, str(out), settings, resume) for r in rows]
    # Largest files first (longest job first): workers then finish together instead of one
    # idling while the other gates a big file last. Tables are assembled in sheet order.
    tasks.sort(key=lambda t: -_file_size(t[0]["path"]))
    outcomes: dict[str, SampleOutcome] = {}
    runner = _run_dask(tasks, scheduler) if scheduler else _run_local(tasks, workers)
    for outcome in runner:
        outcomes[outcome.sample_id] = outcome
        if progress:
            progress(outcome, len(outcomes), len(tasks))
    ordered = [outcomes[str(r["sample_id"])] for r in rows]
    result = _assemble(out, sheet, templates, ordered)
    _write_run_json(out, sheet, templates, settings, ordered, result, time.time() - t0,
                    workers=None if scheduler else workers, scheduler=scheduler)
    return result


def _assemble(out: Path, sheet: SampleSheet, templates: list[Template],
              outcomes: list[SampleOutcome]) -> BatchResult:
    parts, qcs, errors = [], [], []
    for o in outcomes:
        subsets = _part(out, o.sample_id, "subsets.parquet")
        if subsets.is_file():
            parts.append(pd.read_parquet(subsets))
        qc = _part(out, o.sample_id, "qc.json")
        if qc.is_file():
            qcs.append(json.loads(qc.read_text()))
        errors.extend(o.errors)
    meta = sheet.metadata_columns
    subsets = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=meta)
    subsets = _restore_types(subsets, sheet)
    qc_table = pd.DataFrame(qcs)
    error_table = pd.DataFrame(errors, columns=["sample_id", "path", "template", "stage",
                                                "error", "hint"])
    write_parquet(subsets, out / "subsets.parquet",
                  metadata={"templates": {t.name: t.version for t in templates}})
    write_csv(subsets, out / "subsets.csv")
    if not subsets.empty:
        write_csv(wide(subsets, meta), out / "subsets_wide.csv")
    write_csv(qc_table, out / "qc.csv")
    write_csv(error_table, out / "errors.csv")
    tdir = out / "templates"
    for t in templates:
        write_template(t, tdir / f"{t.name}.yaml")
    return BatchResult(out=out, subsets=subsets, qc=qc_table, errors=error_table,
                       outcomes=outcomes)


def _restore_types(subsets: pd.DataFrame, sheet: SampleSheet) -> pd.DataFrame:
    """Categoricals of the sheet (timepoint order included) and numeric columns survive the
    per-sample parts (an all-empty numeric column must stay float NaN, not object None)."""
    for col in sheet.table.columns:
        if col in subsets.columns and pd.api.types.is_numeric_dtype(sheet.table[col]):
            subsets[col] = pd.to_numeric(subsets[col], errors="coerce").astype(float)
        if col in subsets.columns and isinstance(sheet.table[col].dtype, pd.CategoricalDtype):
            subsets[col] = pd.Categorical(subsets[col].astype(str),
                                          categories=[str(c) for c in
                                                      sheet.table[col].cat.categories],
                                          ordered=sheet.table[col].cat.ordered)
    for col in ("count", "parent_count"):
        if col in subsets.columns:
            subsets[col] = subsets[col].astype("Int64")
    return subsets


def _write_run_json(out: Path, sheet: SampleSheet, templates: list[Template],
                    settings: BatchSettings, outcomes: list[SampleOutcome],
                    result: BatchResult, seconds: float, *, workers: int | None,
                    scheduler: str | None) -> None:
    from importlib.metadata import PackageNotFoundError, version

    def _installed(dist: str) -> str | None:
        # metadata, not imports: importing anndata to print its version cost ~2 s per run
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    inputs = []
    for o in outcomes:
        done = _part(out, o.sample_id, "done.json")
        digest = json.loads(done.read_text())["key"]["sha256"] if done.is_file() else None
        row = sheet.table.loc[sheet.table["sample_id"] == o.sample_id].iloc[0]
        inputs.append({"sample_id": o.sample_id, "path": row["path"], "sha256": digest,
                       "status": o.status, "n_events": o.n_events,
                       "seconds": round(o.seconds, 3)})
    manifest = {
        "immunoprofile": __version__, "schema_version": SCHEMA_VERSION,
        "versions": {"python": platform.python_version(),
                     **{d: _installed(d) for d in ("numpy", "pandas", "flowkit", "anndata")}},
        "sample_sheet": str(sheet.source.resolve()),
        "templates": {t.name: {"version": t.version, "sha256": template_hash(t),
                               "source": t.source} for t in templates},
        "settings": settings.key(), "workers": workers, "scheduler": scheduler,
        "timepoints": sheet.timepoints,
        "samples": len(outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "exit_code": result.exit_code, "seconds": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "inputs": inputs,
    }
    atomic_write(out / "run.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def clear_parts(out: str | Path) -> None:
    """Remove the per-sample parts of a run (the final tables stay).

    Parameters
    ----------
    out
        The run folder; a missing parts folder is not an error.
    """
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)
