"""Cytometric bead arrays (CBA): cytokine concentrations from bead FCS files.

A kit file (YAML, ``gating_templates/kits/``) names the analytes in bead order, the channels by
fluorochrome and the standard series. A CBA sheet lists the FCS files of each plate: standards,
blanks and samples. Per file the bead population is gated on scatter (and singlets when FSC-H
is recorded), every bead is assigned to its analyte by ordered clustering along the
classification channel(s) and the median reporter (PE) is taken per analyte. Per plate and
analyte, 4PL and 5PL curves are fitted to the standards (:mod:`immunoprofile.cba_fit`), LLOQ and
ULOQ derived from the back-calculated standards, and samples converted to pg/mL × dilution.

Values outside the range are censored, not clipped: ``conc_pg_ml`` is NaN with ``below_lloq``
or ``above_uloq`` set and ``lloq``/``uloq`` given. Files that cannot be read, lack a bead
cluster or have too few beads, and curves that fail, become rows of ``errors.csv``; the rest of
the plate goes on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.signal import find_peaks

from immunoprofile._atomic import atomic_write
from immunoprofile.cba_fit import (
    CURVES,
    CYTOKINES,
    STANDARDS,
    cytokine_table,
    plate_curves,
    sample_rows,
)
from immunoprofile.errors import ImmunoprofileError, PanelError, SampleSheetError, TemplateError
from immunoprofile.io.fcs import FCSSample, read_fcs
from immunoprofile.io.samplesheet import read_table_text
from immunoprofile.run import CytokineRun
from immunoprofile.tables import ERRORS, register, write_csv, write_parquet

__all__ = ["BeadError", "CBAResult", "Kit", "KitError", "load_kit", "measure_beads",
           "quantify", "read_cba_sheet", "resolve_channel", "shipped_kits"]

#: Spellings of each fluorochrome / scatter channel in $PnN or $PnS, most specific first.
#: Matching ignores case, spaces, hyphens and underscores; a kit's ``aliases`` come first.
CHANNEL_ALIASES: dict[str, tuple[str, ...]] = {
    "FSC-A": ("FSC-A", "FSC", "FS INT", "FS-A", "FSC-H", "FS PEAK"),  # Calibur: FSC-H only
    "FSC-H": ("FSC-H", "FS PEAK", "FS-H"),
    "SSC-A": ("SSC-A", "SSC", "SS INT", "SS-A", "SSC-H", "SS PEAK"),
    "APC": ("APC-A", "APC", "FL4-A", "FL4-H", "FL4", "R660-A", "R670-A", "RL1-A", "APC-H"),
    "APC-Cy7": ("APC-Cy7-A", "APC-H7-A", "APC-Cy7", "APC-H7", "R780-A", "RL3-A", "FL3-A",
                "FL3-H", "APC-Cy7-H"),
    "PE": ("PE-A", "PE", "FL2-A", "FL2-H", "FL2", "YG586-A", "B575-A", "YL1-A", "PE-H"),
}
ROLES = ("standard", "blank", "sample")
_ID_COLUMNS = ("sample_id", "path", "plate", "role", "patient_id", "arm", "timepoint")


class KitError(TemplateError):
    """A CBA kit file is missing or malformed (every problem is listed)."""


class BeadError(ImmunoprofileError):
    """A bead file lacks a bead cluster, has too few beads or no bead population."""

    def __init__(self, message: str, centres: Sequence[float] = ()):
        super().__init__(message)
        self.centres = list(centres)


@dataclass(frozen=True)
class Kit:
    """A bead-array kit.

    Attributes
    ----------
    analytes
        Analytes in bead order along the classification channel, dimmest first (for 2-D
        layouts: by position on the first channel, then the second).
    positions
        Per analyte, its 1-based level on each classification channel.
    classification, reporter, scatter, singlets
        Channels by fluorochrome/scatter name (resolved per file against $PnN and $PnS).
    """

    name: str
    version: str
    analytes: tuple[str, ...]
    positions: dict[str, tuple[int, ...]]
    classification: tuple[str, ...]
    reporter: str
    scatter: tuple[str, str]
    singlets: str | None
    standards_pg_ml: tuple[float, ...]
    description: str = ""
    units: str = "pg/mL"
    lod_pg_ml: dict[str, float] = field(default_factory=dict)
    min_beads: int = 100
    min_separation: float = 0.15
    trim_sd: float = 3.5
    models: tuple[str, ...] = ("4PL", "5PL")
    recovery: tuple[float, float] = (80.0, 120.0)
    recovery_at_lloq: tuple[float, float] = (70.0, 130.0)
    min_standards: int = 4
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = ""


def shipped_kits() -> dict[str, Path]:
    """``{name: path}`` of the kits shipped with the package."""
    # start-up time: interop needs FlowKit, loaded when first used
    from immunoprofile.template.yaml_io import shipped_templates_dir

    folder = shipped_templates_dir() / "kits"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def load_kit(name_or_path: str | Path | Kit) -> Kit:
    """Load a kit by shipped name (``"bd_cba_th1_th2_th17"``) or from a YAML file.

    Parameters
    ----------
    name_or_path
        A YAML file, the name of a shipped kit (see :func:`shipped_kits`), or a
        :class:`Kit`, returned as it is.

    Returns
    -------
    Kit
        The validated kit.

    Raises
    ------
    KitError
        Unknown name, unreadable file, or malformed entries (all listed in the message).
    """
    if isinstance(name_or_path, Kit):
        return name_or_path
    path = Path(name_or_path)
    if not path.is_file():
        kits = shipped_kits()
        if str(name_or_path) not in kits:
            raise KitError(f"kit {str(name_or_path)!r} is neither a file nor a shipped kit "
                           f"(shipped: {', '.join(kits) or 'none'})")
        path = kits[str(name_or_path)]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise KitError(f"kit {path}: cannot be read as YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise KitError(f"kit {path}: expected a mapping at the top level")
    problems: list[str] = []
    ch = data.get("channels") or {}
    cls = ch.get("classification", "APC")
    cls = (cls,) if isinstance(cls, str) else tuple(str(c) for c in cls)
    if len(cls) not in (1, 2):
        problems.append(f"channels.classification: one or two channels, got {list(cls)}")
    positions: dict[str, tuple[int, ...]] = {}
    for i, entry in enumerate(data.get("analytes") or []):
        name, pos = (entry, [i + 1]) if isinstance(entry, str) else (
            entry.get("name"), entry.get("position")) if isinstance(entry, dict) else (None, 0)
        pos = (pos,) if isinstance(pos, int) else tuple(pos or ())
        if not name or len(pos) != len(cls) or not all(isinstance(p, int) and p >= 1
                                                        for p in pos):
            problems.append(f"analytes[{i}]: expected a name (1-D) or {{name, position: "
                            f"[level per classification channel, 1 = dimmest]}}, got {entry!r}")
            continue
        positions[str(name)] = pos
    if len(set(positions.values())) != len(positions) or not positions:
        problems.append("analytes: none listed, or two share a bead position")
    beads, fit, acc = (data.get(k) or {} for k in ("beads", "fit", "acceptance"))
    try:
        stds = tuple(float(v) for v in data.get("standards_pg_ml") or [])
        rec, rec_l = (tuple(float(v) for v in acc.get(key, default)) for key, default in (
            ("recovery_pct", (80, 120)), ("recovery_pct_at_lloq", (70, 130))))
        if len(rec) != 2 or len(rec_l) != 2:
            raise ValueError("acceptance recoveries are [low, high]")
    except (TypeError, ValueError) as exc:
        problems.append(f"standards_pg_ml / acceptance: numbers expected ({exc})")
    models = tuple(fit.get("models", ["4PL", "5PL"]))
    if not models or any(m not in ("4PL", "5PL") for m in models):
        problems.append(f"fit.models: choose among 4PL, 5PL, got {list(models)}")
    scatter = tuple(ch.get("scatter", ["FSC-A", "SSC-A"]))
    if len(scatter) != 2:
        problems.append(f"channels.scatter: two channels, got {list(scatter)}")
    if problems:
        raise KitError(f"kit {path}: " + "; ".join(problems))
    return Kit(
        name=str(data.get("name", path.stem)), version=str(data.get("version", "")),
        analytes=tuple(sorted(positions, key=lambda a: positions[a])), positions=positions,
        classification=cls, reporter=str(ch.get("reporter", "PE")),
        scatter=(str(scatter[0]), str(scatter[1])), singlets=ch.get("singlets", "FSC-H"),
        standards_pg_ml=stds, description=str(data.get("description", "")),
        units=str(data.get("units", "pg/mL")),
        lod_pg_ml={str(k): float(v) for k, v in (data.get("lod_pg_ml") or {}).items()},
        min_beads=int(beads.get("min_per_analyte", 100)),
        min_separation=float(beads.get("min_separation_log10", 0.15)),
        trim_sd=float(beads.get("trim_sd", 3.5)), models=models, recovery=rec,
        recovery_at_lloq=rec_l, min_standards=int(acc.get("min_standards", 4)),
        aliases={str(k): tuple(v) for k, v in (data.get("aliases") or {}).items()},
        source=str(path))


# ------------------------------------------------------------------------------- channels

def _norm(text: str) -> str:
    return re.sub(r"[\s\-_]", "", str(text)).lower()


def resolve_channel(sample: FCSSample, name: str,
                    aliases: Mapping[str, Sequence[str]] | None = None) -> int:
    """Column index of a fluorochrome or scatter channel (``APC``, ``PE``, ``FSC-A``…).

    Each alias (the kit's first, then :data:`CHANNEL_ALIASES`, then ``name`` itself) is
    compared with every channel's $PnN and $PnS, ignoring case, spaces, hyphens and
    underscores; the first alias that matches exactly one channel wins.

    Parameters
    ----------
    sample
        The bead file.
    name
        Fluorochrome or scatter name as the kit writes it.
    aliases
        The kit's ``{name: [spellings]}``, tried before :data:`CHANNEL_ALIASES`.

    Returns
    -------
    int
        Index of the channel among the file's parameters (a column of ``sample.events``).

    Raises
    ------
    PanelError
        No channel matches, or one alias matches several channels.
    """
    spellings = [*(aliases or {}).get(name, ()), *CHANNEL_ALIASES.get(name, ()), name]
    pnn = [_norm(n) for n in sample.channels["pnn"]]
    pns = [_norm(s) for s in sample.channels["pns"]]
    for alias in dict.fromkeys(_norm(a) for a in spellings):
        hits = [i for i in range(len(pnn)) if alias in (pnn[i], pns[i])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            names = [sample.channels["pnn"][i] for i in hits]
            raise PanelError(f"{name} is ambiguous in '{sample.path}': channels {names} all "
                             f"match {alias!r}; add a kit alias that picks one")
    raise PanelError(f"no {name} channel in '{sample.path}' (looked for {spellings}; the file "
                     f"has {list(sample.channels['pnn'])}); add an alias to the kit")


# ------------------------------------------------------------------------------ bead gating

def _gate_scatter(fsc: np.ndarray, ssc: np.ndarray) -> np.ndarray:
    """The densest scatter population, as a robust 99.9% ellipse in log-log space."""
    ok = np.isfinite(fsc) & np.isfinite(ssc) & (fsc > 0) & (ssc > 0)
    if ok.sum() < 10:
        return ok
    pts = np.column_stack([np.log10(fsc[ok]), np.log10(ssc[ok])])
    hist, xe, ye = np.histogram2d(pts[:, 0], pts[:, 1], bins=64)
    i, j = np.unravel_index(np.argmax(gaussian_filter(hist, 1.0)), hist.shape)
    mode = np.array([(xe[i] + xe[i + 1]) / 2, (ye[j] + ye[j + 1]) / 2])
    inside = np.all(np.abs(pts - mode) < 0.15, axis=1)
    for _ in range(3):  # re-centre and re-shape on what the last ellipse kept
        if inside.sum() < 10:
            break
        centre = np.median(pts[inside], axis=0)
        cov = np.cov(pts[inside].T) + np.eye(2) * 1e-6
        diff = pts - centre
        d2 = np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff)
        inside = d2 < 13.8  # chi² (2 df) 99.9%
    out = np.zeros(fsc.shape, bool)
    out[np.flatnonzero(ok)[inside]] = True
    return out


def _robust_keep(values: np.ndarray, k: float) -> np.ndarray:
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    return np.abs(values - med) <= k * max(mad, 1e-3)


def _levels(x: np.ndarray, k: int, kit: Kit, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """Ordered 1-D clustering of log10 intensities into ``k`` levels (-1 = trimmed outlier)."""
    width = 0.005
    lo, hi = np.quantile(x, [0.001, 0.999])
    edges = np.arange(lo - 0.1, hi + 0.1 + width, width)
    counts, _ = np.histogram(x, edges)
    dens = gaussian_filter1d(counts.astype(float), 0.015 / width)
    peaks, _ = find_peaks(dens, distance=max(1, int(kit.min_separation / width)))
    mids = (edges[:-1] + edges[1:]) / 2

    def basins(pk: np.ndarray) -> np.ndarray:
        cuts = [mids[a + int(np.argmin(dens[a:b + 1]))] for a, b in pairwise(pk)]
        return np.searchsorted(np.asarray(cuts), x)

    mass = np.bincount(basins(peaks), minlength=peaks.size) if peaks.size else np.zeros(1)
    top = np.sort(np.argsort(mass)[::-1][:min(k, peaks.size)])
    centres = 10 ** mids[peaks[top]]
    floor = max(10.0, 0.15 * float(np.median(mass[top]))) if top.size else 10.0
    if top.size < k or mass[top].min() < floor:  # a real cluster holds a fair share of beads
        real = peaks[top][mass[top] >= floor]
        raise BeadError(f"found {real.size} bead clusters along {channel}, the kit has {k}: "
                        "a bead cluster is missing (wrong bead mix or capture beads left out?)",
                        centres=10 ** mids[real])
    labels = basins(peaks[top])
    for lv in range(k):  # trim beads far from their cluster (doublets, debris, strays)
        idx = np.flatnonzero(labels == lv)
        labels[idx[~_robust_keep(x[idx], kit.trim_sd)]] = -1
    return labels, centres


def measure_beads(sample: FCSSample, kit: Kit) -> dict[str, Any]:
    """Gate the beads of one file and take the median reporter per analyte.

    Parameters
    ----------
    sample
        One bead FCS file (a standard, blank or sample), uncompensated.
    kit
        The kit: its scatter, singlet, classification and reporter channels, analytes in
        bead order and the minimum beads per analyte.

    Returns
    -------
    dict
        ``n_events``, ``n_beads`` (after scatter and singlet gates), ``centres`` (median
        classification intensity per analyte), ``counts`` and ``reporter`` (per analyte).

    Raises
    ------
    BeadError
        No bead population, too few beads, or a bead cluster missing.
    PanelError
        A kit channel cannot be resolved.
    """
    ev = sample.events
    col = {n: resolve_channel(sample, n, kit.aliases)
           for n in (*kit.scatter, *kit.classification, kit.reporter)}
    beads = _gate_scatter(ev[:, col[kit.scatter[0]]], ev[:, col[kit.scatter[1]]])
    if kit.singlets:
        try:
            h = resolve_channel(sample, kit.singlets, kit.aliases)
        except PanelError:
            h = None  # optional: some cytometers export no height
        if h is not None and h != col[kit.scatter[0]]:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.log10(ev[beads, h] / ev[beads, col[kit.scatter[0]]])
            fine = np.isfinite(ratio)
            keep = np.zeros(ratio.shape, bool)
            keep[fine] = _robust_keep(ratio[fine], 4.0)
            beads[np.flatnonzero(beads)[~keep]] = False
    n_need = kit.min_beads * len(kit.analytes)
    cls = np.column_stack([ev[:, col[c]] for c in kit.classification])
    beads &= np.all(cls > 0, axis=1)
    if beads.sum() < n_need:
        raise BeadError(f"too few beads: {int(beads.sum())} in the bead gate of "
                        f"{sample.n_events} events, need {kit.min_beads} per analyte "
                        f"({n_need}); acquire more events")
    per_channel = []
    for j, channel in enumerate(kit.classification):
        k = len({p[j] for p in kit.positions.values()})
        labels, _ = _levels(np.log10(cls[beads, j]), k, kit, channel)
        per_channel.append(labels)
    index = {tuple(p - 1 for p in kit.positions[a]): i for i, a in enumerate(kit.analytes)}
    combos = zip(*per_channel)
    assigned = np.array([index.get(c, -1) for c in combos])
    rep = ev[beads, col[kit.reporter]]
    counts, reporter, centres = {}, {}, {}
    for i, analyte in enumerate(kit.analytes):
        sel = assigned == i
        counts[analyte] = int(sel.sum())
        reporter[analyte] = float(np.median(rep[sel])) if sel.any() else math.nan
        centres[analyte] = float(np.median(cls[beads][sel, 0])) if sel.any() else math.nan
    few = {a: n for a, n in counts.items() if n < kit.min_beads}
    if few:
        raise BeadError("too few beads for " + ", ".join(f"{a} ({n})" for a, n in few.items())
                        + f"; need {kit.min_beads} per analyte", centres=list(centres.values()))
    return {"n_events": sample.n_events, "n_beads": int(beads.sum()), "centres": centres,
            "counts": counts, "reporter": reporter}


# --------------------------------------------------------------------------------- the sheet

def read_cba_sheet(path: str | Path) -> pd.DataFrame:
    """Read and validate a CBA sheet (CSV/TSV).

    Columns: ``sample_id, path, plate, role`` (``standard``, ``blank`` or ``sample``),
    ``standard_pg_ml`` (standards: the concentration of every analyte in that standard),
    ``dilution`` (default 1) and, for samples, ``patient_id, arm, timepoint`` and any further
    columns (carried into the outputs). Relative paths are relative to the sheet's folder.

    Parameters
    ----------
    path
        The sheet; the delimiter (comma, tab, semicolon) is sniffed.

    Returns
    -------
    pandas.DataFrame
        The sheet with stripped cells, lower-case ``role``, numeric ``standard_pg_ml`` (NaN
        outside standards), ``dilution`` (1 where blank) and absolute ``path``.

    Raises
    ------
    SampleSheetError
        Every structural problem, each with its row.
    """
    path = Path(path)
    # the sample sheet's reader: BOM, CRLF, TSV, encodings and short rows handled alike
    df, structural = read_table_text(path, what="CBA sheet")
    if structural:
        raise SampleSheetError(f"CBA sheet {path} has {len(structural)} problem(s):\n  - "
                               + "\n  - ".join(structural))
    df = df.mask(df.eq(""))  # empty cells are missing values, as a CSV reader gives them
    for c in df.columns:  # numbers as numbers, as a CSV reader infers them (ids stay text)
        if c not in _ID_COLUMNS:
            values = pd.to_numeric(df[c], errors="coerce")
            if values.notna().sum() == df[c].notna().sum():
                df[c] = values
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("sample_id", "path", "plate", "role") if c not in df.columns]
    if missing:
        raise SampleSheetError(f"CBA sheet {path}: missing column(s) {missing}; a CBA sheet "
                               "has sample_id, path, plate, role, standard_pg_ml, dilution")
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].str.strip()
    df["role"] = df["role"].str.lower()
    problems = []

    def where(i: int) -> str:
        return f"row {i + 1} (line {i + 2})"

    for c in ("sample_id", "path", "plate"):
        problems += [f"{where(i)}: empty {c}" for i in np.flatnonzero(df[c].isna())]
    problems += [f"{where(i)}: role {r!r} is not standard, blank or sample"
                 for i, r in enumerate(df["role"]) if r not in ROLES]
    dup = df["sample_id"].duplicated(keep=False) & df["sample_id"].notna()
    problems += [f"{where(i)}: sample_id {df['sample_id'].iloc[i]!r} is repeated"
                 for i in np.flatnonzero(dup)]
    std = (df["role"] == "standard").to_numpy()
    if "standard_pg_ml" not in df.columns:
        df["standard_pg_ml"] = np.nan
        if std.any():
            problems.append("standard_pg_ml: column missing (the concentration of each standard)")
    conc = pd.to_numeric(df["standard_pg_ml"], errors="coerce")
    problems += [f"{where(i)}: standard_pg_ml {df['standard_pg_ml'].iloc[i]!r} is not a "
                 "concentration ≥ 0" for i in np.flatnonzero(std & ~(conc >= 0))]
    df["standard_pg_ml"] = conc.where(std)
    dil = pd.to_numeric(df.get("dilution", pd.Series(1.0, index=df.index)), errors="coerce")
    raw = df.get("dilution", pd.Series("", index=df.index))
    problems += [f"{where(i)}: dilution {raw.iloc[i]!r} is not a number > 0"
                 for i in np.flatnonzero(raw.notna().to_numpy() & ~(dil > 0).to_numpy())]
    df["dilution"] = dil.where(dil > 0, 1.0)
    smp = (df["role"] == "sample").to_numpy()
    for c in ("patient_id", "arm", "timepoint"):
        if c not in df.columns:
            df[c] = pd.Series(pd.NA, index=df.index, dtype="string")
            if smp.any():
                problems.append(f"{c}: column missing (needed for samples)")
        else:
            problems += [f"{where(i)}: sample without {c}"
                         for i in np.flatnonzero(smp & df[c].isna().to_numpy())]
    if not std.any():
        problems.append("no standards: nothing can be quantified")
    if problems:
        raise SampleSheetError(f"CBA sheet {path}: {len(problems)} problem(s):\n  - "
                               + "\n  - ".join(problems))
    df["path"] = [str(p if Path(p).is_absolute() else (path.parent / p).resolve())
                  for p in df["path"]]
    return df.reset_index(drop=True)



# ------------------------------------------------------------------------------ the run

register("cytokines.parquet / cytokines.csv (one row per CBA sample × analyte)", CYTOKINES)
register("cba_standards.csv (one row per standard or blank × analyte)", STANDARDS)
register("cba_curves.csv (one row per plate × analyte)", CURVES)
register("errors.csv of a cytokines run (stages: read, channels, beads, curve, output)", ERRORS)

_HINTS = {
    "read": "check that the file is a complete FCS file and that the sheet's path is right",
    "channels": "add the file's channel name to the kit's `aliases`",
    "beads": "check the bead mix and acquisition (events, threshold, voltages); re-acquire",
    "curve": "inspect the plate's standard-curve plot and cba_standards.csv; check the "
             "standards' concentrations in the sheet, or re-run the plate",
    "output": "see the error",
}


@dataclass
class CBAResult:
    """A finished cytokine run: its tables (also written to ``out`` when given)."""

    kit: Kit
    cytokines: pd.DataFrame
    standards: pd.DataFrame
    curves: pd.DataFrame
    errors: pd.DataFrame
    files: pd.DataFrame
    out: Path | None = None

    @property
    def exit_code(self) -> int:
        """0: all quantified; 3: some files or curves failed; 1: nothing usable."""
        if self.errors.empty:
            return 0
        usable = len(self.cytokines) and (self.cytokines["fit_model"] != "").any()
        return 3 if usable else 1


def _error(row: Mapping, kit: Kit, stage: str, text: str) -> dict[str, str]:
    return {"sample_id": str(row.get("sample_id", "")), "path": str(row.get("path", "")),
            "template": kit.name, "stage": stage, "error": text, "hint": _HINTS[stage]}


def _name_missing(message: str, centres: list[float], ref: dict[str, float]) -> str:
    """Say which bead is missing, matching found clusters to the plate's other files."""
    ref = {a: c for a, c in ref.items() if np.isfinite(c)}
    if not centres or len(centres) >= len(ref):
        return message
    free = dict(ref)
    for c in centres:
        nearest = min(free, key=lambda a: abs(math.log10(free[a] / c)))
        free.pop(nearest)
    gone = ", ".join(f"{a} (near {v:,.0f} in this plate's other files)" for a, v in free.items())
    return f"{message}; missing: {gone}"


def _measure_all(sheet: pd.DataFrame, kit: Kit) -> tuple[dict, list[dict], list[dict]]:
    measured, errors, files = {}, [], []
    pending = []
    for row in sheet.to_dict("records"):
        info = {"sample_id": row["sample_id"], "plate": row["plate"], "role": row["role"],
                "n_events": 0, "n_beads": 0, "status": "failed"}
        try:
            sample = read_fcs(row["path"])
            info["n_events"] = sample.n_events
            m = measure_beads(sample, kit)
        except PanelError as exc:
            errors.append(_error(row, kit, "channels", str(exc)))
        except BeadError as exc:
            pending.append((row, exc, len(errors)))
            errors.append(_error(row, kit, "beads", str(exc)))
        except ImmunoprofileError as exc:  # FCSError and friends: the file itself is bad
            errors.append(_error(row, kit, "read", str(exc)))
        except Exception as exc:  # one odd file must not stop the plate
            errors.append(_error(row, kit, "beads", f"{type(exc).__name__}: {exc}"))
        else:
            measured[row["sample_id"]] = m
            info |= {"n_beads": m["n_beads"], "status": "ok"}
        files.append(info)
    if len(kit.classification) == 1:
        for row, exc, i in pending:
            same = [m["centres"] for sid, m in measured.items()
                    if sheet.loc[sheet["sample_id"] == sid, "plate"].iloc[0] == row["plate"]]
            if same and exc.centres:
                ref = {a: float(np.median([c[a] for c in same])) for a in kit.analytes}
                errors[i]["error"] = _name_missing(str(exc), exc.centres, ref)
    return measured, errors, files


def quantify(sheet: str | Path | pd.DataFrame, kit: str | Path | Kit, out: str | Path | None = None,
             *, plots: bool = True) -> CBAResult:
    """Quantify every sample of a CBA sheet.

    Parameters
    ----------
    sheet
        The CBA sheet (path, or a table already read by :func:`read_cba_sheet`).
    kit
        A shipped kit's name or a kit YAML file.
    out
        Folder for ``cytokines.parquet/.csv``, ``cba_standards.csv``, ``cba_curves.csv``,
        ``cba_files.csv``, ``errors.csv``, ``cba_run.json`` and ``plots/`` (nothing is written
        when None).
    plots
        Write one standard-curve PNG per plate.

    Returns
    -------
    CBAResult
        Tables and :attr:`CBAResult.exit_code`.
    """
    kit = load_kit(kit)
    table = sheet if isinstance(sheet, pd.DataFrame) else read_cba_sheet(sheet)
    measured, errors, files = _measure_all(table, kit)
    first = ["sample_id", "patient_id", "arm", "timepoint"]
    meta = first + [c for c in table.columns
                    if c not in ("path", "role", "standard_pg_ml", "plate", *first)]
    cyto, stds, curves = [], [], []
    for plate, rows in table.groupby("plate", sort=False):
        ok = rows[rows["sample_id"].isin(list(measured))]
        c_rows, s_rows, fitted = plate_curves(plate, ok, measured, kit)
        curves += c_rows
        stds += s_rows
        errors += [_error({}, kit, "curve", f"plate {plate}, {c['analyte']}: {c['error']}")
                   for c in c_rows if c["status"] != "ok"]
        cyto += sample_rows(ok[ok["role"] == "sample"], measured, fitted, kit.analytes, plate,
                            meta)
        failed = [a for a in kit.analytes if a not in fitted]
        for row in ok[ok["role"] == "sample"].to_dict("records") if failed else []:
            errors.append(_error(row, kit, "curve", f"plate {plate} has no accepted standard "
                                 f"curve for {', '.join(failed)}: no concentration for them "
                                 "(see the plate's rows with an empty sample_id)"))
    result = CBAResult(kit=kit, cytokines=cytokine_table(cyto, meta),
                       standards=pd.DataFrame(stds, columns=[c.name for c in STANDARDS]),
                       curves=pd.DataFrame(curves), files=pd.DataFrame(files),
                       errors=pd.DataFrame(errors, columns=[c.name for c in ERRORS]),
                       out=Path(out) if out is not None else None)
    if out is not None:
        _write(result, Path(out), plots)
    return result


def _write(result: CBAResult, out: Path, plots: bool) -> None:
    folder = CytokineRun(out)
    folder.path.mkdir(parents=True, exist_ok=True)
    kit = result.kit
    if plots and len(result.curves):
        from immunoprofile.pl import standard_curves  # loaded only when plots are drawn

        for plate in dict.fromkeys(result.curves["plate"]):
            try:
                standard_curves(result, plate=plate, save=folder.plot_path(plate))
            except Exception as exc:  # a plot must not sink the run
                result.errors.loc[len(result.errors)] = _error(
                    {}, kit, "output", f"plate {plate}: plot failed ({type(exc).__name__}: "
                    f"{exc})")
    write_parquet(result.cytokines, folder.cytokines_path,
                  metadata={"kit": kit.name, "kit_version": kit.version})
    write_csv(result.cytokines, folder.cytokines_csv)
    write_csv(result.standards, folder.standards_csv)
    write_csv(result.curves, folder.curves_csv)
    write_csv(result.files, folder.files_csv)
    write_csv(result.errors, folder.errors_csv)
    run = {"kit": kit.name, "kit_version": kit.version, "kit_source": kit.source,
           "files": len(result.files), "samples": int(result.cytokines["sample_id"].nunique())
           if len(result.cytokines) else 0, "errors": len(result.errors),
           "exit_code": result.exit_code}
    atomic_write(folder.manifest_path, lambda tmp: tmp.write_text(json.dumps(run, indent=2)))
