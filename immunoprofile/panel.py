"""Channel ↔ marker resolution.

Templates are written in marker names (``CD4``, ``FOXP3``, ``viability``); files name their
channels by detector or fluorochrome ($PnN, e.g. ``B530-A`` or ``FITC-A``) and usually carry the
marker in $PnS (``CD4``, ``CD4 FITC-A``, ``FoxP3``). This module maps one onto the other per file,
through a table of canonical markers and their aliases and, where that is not enough, an explicit
mapping file for the panel.

Resolution of a requested marker, in order:

1. an explicit mapping (``{marker: channel}``) given for the panel;
2. a channel whose $PnN *is* the requested name (so templates imported from GatingML or
   FlowJo, whose dimensions are channel names, gate files from the same cytometer), or whose
   $PnS is, in a file exported with the two keywords swapped (see below);
3. the channels whose resolved ``marker`` equals the canonical form of the requested name.

Some sites export $PnN and $PnS swapped: the marker in $PnN (``CD19``) and the detector in $PnS
(``PE-Cy7-A``). A channel whose $PnS is only a detector or fluorochrome name while its $PnN is
not takes its marker from $PnN and its detector name from $PnS.

Dyes that stain dead cells (``7-AAD``, ``DAPI``, ``PI``, ``Aqua``) also name detectors on some
cytometers (``DAPI-A``), as ``AmCyan-A`` does: only a *label* naming the dye makes a channel the
viability channel, never a detector name, so an unlabelled ``DAPI-A`` cannot make ``viability``
ambiguous with the channel actually labelled ``Live/Dead``.

Zero candidates or more than one is a :class:`~immunoprofile.errors.PanelError` listing what the
file offers, so the user can add an alias or a mapping file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from immunoprofile.errors import PanelError

if TYPE_CHECKING:
    from immunoprofile.io.fcs import FCSSample

#: Canonical marker names and the aliases labs write for them. Matching ignores case, spaces,
#: hyphens, underscores, dots and slashes, so only spellings that differ beyond that are listed.
MARKER_ALIASES: dict[str, tuple[str, ...]] = {
    "FSC-A": ("FSC-A", "FSC", "FS INT", "FS-A", "FSC Area", "FS Lin"),
    "FSC-H": ("FSC-H", "FS PEAK", "FS-H", "FSC Height"),
    "FSC-W": ("FSC-W", "FS TOF", "FS-W", "FSC Width"),
    "SSC-A": ("SSC-A", "SSC", "SS INT", "SS-A", "SSC Area", "SS Log", "SS Lin"),
    "SSC-H": ("SSC-H", "SS PEAK", "SS-H", "SSC Height"),
    "SSC-W": ("SSC-W", "SS TOF", "SS-W", "SSC Width"),
    "Time": ("Time", "HDR-T", "TIME MSW", "Time LSW"),
    "viability": (
        "viability", "Live-Dead", "Live/Dead", "LiveDead", "LD", "L/D", "Live Dead",
        "7-AAD", "7AAD", "DAPI", "PI", "Propidium iodide", "Zombie", "Zombie Aqua",
        "Zombie NIR", "Zombie Violet", "Zombie UV", "Zombie Yellow", "FVS", "FVS780",
        "FVS510", "FVS575V", "FVS620", "FVD", "FVD eFluor780", "FVD eFluor506",
        "Fixable Viability", "Fixable viability dye", "Aqua", "LIVE/DEAD Aqua", "Dead",
        "Viability dye", "ViaDye", "Viakrome", "SYTOX", "Live", "Viab",
        "LIVE/DEAD Fixable Aqua", "Lv/Dd", "Amine", "Amine reactive dye", "Vital dye",
    ),
    "CD3": ("CD3", "CD3e", "CD3 epsilon"),
    "CD4": ("CD4",),
    "CD8": ("CD8", "CD8a", "CD8 alpha"),
    "CD25": ("CD25", "IL-2Ra", "IL2RA", "IL-2R alpha", "IL-2R"),
    "CD127": ("CD127", "IL-7Ra", "IL7RA", "IL-7R", "IL7R", "IL-7R alpha"),
    "FOXP3": ("FOXP3", "FoxP3", "Foxp3", "FOXP-3", "Fox P3"),
    "CD45": ("CD45", "PTPRC"),
    "CD45RA": ("CD45RA",),
    "CD45RO": ("CD45RO",),
    "CD19": ("CD19",),
    "CD20": ("CD20", "MS4A1"),
    "CD21": ("CD21", "CR2"),
    "CD23": ("CD23", "FcERII", "FCER2"),
    "CD27": ("CD27",),
    "CD38": ("CD38",),
    "CD24": ("CD24",),
    "CD138": ("CD138", "Syndecan-1", "SDC1"),
    "IgD": ("IgD",),
    "IgM": ("IgM",),
    "IgG": ("IgG",),
    "IgA": ("IgA",),
    "CD14": ("CD14",),
    "CD16": ("CD16", "FcgRIII"),
    "CD56": ("CD56", "NCAM", "NCAM1"),
    "HLA-DR": ("HLA-DR", "HLADR", "MHC-II"),
    "CCR4": ("CCR4", "CD194"),
    "CCR7": ("CCR7", "CD197"),
    "CXCR5": ("CXCR5", "CD185"),
    "PD-1": ("PD-1", "PD1", "CD279"),
    "Ki67": ("Ki67", "Ki-67", "MKI67"),
    "CD39": ("CD39",),
    "HELIOS": ("Helios", "IKZF2"),
}

#: Fluorochromes and detector names: stripped from $PnS labels such as ``CD4 FITC-A`` so what is
#: left is the marker. Matched after normalisation (see :func:`normalise`).
_FLUOROCHROMES = (
    "FITC", "PE", "PE-Cy5", "PE-Cy5.5", "PE-Cy7", "PE-CF594", "PE-Texas Red", "PE-Dazzle594",
    "ECD", "PerCP", "PerCP-Cy5.5", "PerCP-eFluor710", "APC", "APC-Cy7", "APC-H7", "APC-R700",
    "APC-Fire750", "APC-eFluor780", "APC-Vio770", "Alexa Fluor 488", "Alexa Fluor 647",
    "Alexa Fluor 700", "AF488", "AF647", "AF700", "A488", "A647", "A700", "BV421", "BV480",
    "BV510", "BV570", "BV605", "BV650", "BV711", "BV750", "BV786", "BUV395", "BUV496",
    "BUV563", "BUV661", "BUV737", "BUV805", "BB515", "BB700", "eFluor450", "eFluor506",
    "Pacific Blue", "Pacific Orange", "V450", "V500", "Krome Orange", "KO", "PB", "VioBlue",
    "VioGreen", "PE-Vio770", "Super Bright 600", "SB600", "Spark NIR 685", "cFluor",
    "AmCyan", "Qdot 525", "Qdot 565", "Qdot 585", "Qdot 605", "Qdot 625", "Qdot 655",
    "Qdot 705", "Qdot 800", "PE-TR", "PE-TxRed", "PacBlu", "PacOrange", "Alexa 488",
    "Alexa 647", "Alexa 700", "Ax488", "Ax647", "Ax700", "Ax750",
    *("7-AAD", "DAPI", "PI", "Aqua"),  # dead-cell dyes that also name detectors ("DAPI-A")
)
# Detectors named by laser and filter: FL1, B530, V2, PMT3, and the laser tags BD writes after a
# fluorochrome ("PE-TxRed YG-A").
_DETECTOR = re.compile(r"^(FL\d+|[BVRUYG]\d{3}|[BVRUYG]L?\d+|PMT\d+|YG|BL|RL|VL|UV)(-[AHW])?$",
                       re.IGNORECASE)
_SUFFIX = re.compile(r"-[AHW]$", re.IGNORECASE)
_SPLIT = re.compile(r"[\s_|:;,()\[\]]+")


def normalise(text: str) -> str:
    """Fold a marker or channel name for matching: upper case, no spaces, hyphens or dots.

    >>> normalise("IL-7Ra") == normalise("il7ra")
    True

    Parameters
    ----------
    text
        A marker or channel name (converted with ``str``).

    Returns
    -------
    str
        Upper case without whitespace, ``-``, ``_``, ``.`` or ``/``.
    """
    return re.sub(r"[\s\-_./]+", "", str(text)).upper()


def _build_lookup() -> dict[str, str]:
    lookup: dict[str, str] = {}
    for canonical, aliases in MARKER_ALIASES.items():
        for alias in (canonical, *aliases):
            lookup.setdefault(normalise(alias), canonical)
    return lookup


_LOOKUP = _build_lookup()
_SCATTER_TIME = frozenset({"FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "Time"})
_FLUOR_SET = {normalise(f) for f in _FLUOROCHROMES}


def _is_fluorochrome_or_detector(token: str) -> bool:
    bare = _SUFFIX.sub("", token)
    return normalise(bare) in _FLUOR_SET or bool(_DETECTOR.match(token))


def _is_detector_name(name: str) -> bool:
    """Whether a whole $PnN or $PnS names a detector (``PE-Cy7-A``, ``B530-A``, ``DAPI-A``).

    A dead-cell dye written bare (``7-AAD``, ``PI``) is a label naming the marker, not a
    detector: only with a detector's ``-A``/``-H``/``-W`` suffix is it the detector's name.
    """
    name = name.strip()
    if not name or not _is_fluorochrome_or_detector(name):
        return False
    return bool(_DETECTOR.match(name) or _SUFFIX.search(name)) or normalise(name) not in _LOOKUP


def _is_swapped(pnn: str, pns: str) -> bool:
    """Whether a channel was exported with $PnN and $PnS swapped (``CD19`` / ``PE-Cy7-A``)."""
    return _is_detector_name(pns) and not _is_detector_name(pnn)


def _known(token: str) -> str:
    """The canonical marker a single token names, or ""."""
    hit = _LOOKUP.get(normalise(token))
    if hit:
        return hit
    # "CD45RA-BV421" or "Zombie-Aqua-A": try shorter hyphen prefixes, longest first.
    parts = token.split("-")
    for k in range(len(parts) - 1, 0, -1):
        hit = _LOOKUP.get(normalise("-".join(parts[:k])))
        # Scatter and time are never found by prefix: "SSC-B-A" is its own detector.
        if hit and hit not in _SCATTER_TIME:
            return hit
    return ""


def _marker_from_label(label: str) -> str:
    label = label.strip()
    if not label:
        return ""
    hit = _known(label)
    if hit:
        return hit
    tokens = [t for t in _SPLIT.split(label) if t]
    for token in tokens:
        hit = _known(token)
        if hit:
            return hit
    # Unknown marker: keep what is left once fluorochromes and detectors are stripped, so that
    # "CCR6 BV605" resolves as CCR6 for a template that asks for it.
    rest = [t for t in tokens if not _is_fluorochrome_or_detector(t)]
    return " ".join(rest)


def canonical_name(name: str) -> str:
    """The canonical form of a marker name a user or template writes.

    Known markers map to their canonical spelling (``FoxP3`` → ``FOXP3``, ``7-AAD`` →
    ``viability``); unknown names are returned stripped, unchanged otherwise.

    Parameters
    ----------
    name
        A marker name as written (``"FoxP3"``, ``"CD45RA"``).

    Returns
    -------
    str
        The canonical name from :data:`MARKER_ALIASES`, or ``name`` stripped.
    """
    return _known(name.strip()) or name.strip()


def canonical_marker(pnn: str, pns: str = "") -> str:
    """The canonical marker a channel measures, from its $PnS label and $PnN name.

    Parameters
    ----------
    pnn
        The channel's short name ($PnN), e.g. ``"FITC-A"``, ``"FSC-A"`` or ``"CD4"``.
    pns
        The channel's label ($PnS), e.g. ``"CD4"``, ``"CD4 FITC-A"``, ``"FoxP3"``; may be empty.

    Returns
    -------
    str
        A canonical name from :data:`MARKER_ALIASES`, the label with fluorochrome words removed
        when the marker is not in the table, or ``""`` when the channel names no marker (e.g. an
        unlabelled fluorescence detector).
    """
    pnn = (pnn or "").strip()
    pns = (pns or "").strip()
    # Scatter and time are named by $PnN; a $PnS of "FSC-A" says the same thing.
    by_name = _LOOKUP.get(normalise(pnn), "")
    if by_name in _SCATTER_TIME:
        return by_name
    if _is_swapped(pnn, pns):
        # The marker is in $PnN and $PnS only names the detector, which carries no marker.
        pns = ""
    from_label = _marker_from_label(pns)
    if from_label:
        return from_label
    if by_name:
        return by_name
    if _is_fluorochrome_or_detector(pnn):
        return ""
    return _marker_from_label(pnn)


def _channel_table(source: FCSSample | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    channels = source if isinstance(source, pd.DataFrame) else source.channels
    where = "" if isinstance(source, pd.DataFrame) else str(getattr(source, "path", ""))
    if "marker" not in channels.columns:
        channels = channels.assign(
            marker=[canonical_marker(n, s) for n, s in zip(channels["pnn"], channels["pns"])]
        )
    return channels, where


def describe_channels(source: FCSSample | pd.DataFrame) -> str:
    """A one-line list of a file's channels and the markers they carry, for error messages.

    Parameters
    ----------
    source
        An :class:`~immunoprofile.io.fcs.FCSSample` or its ``channels`` table (``pnn``,
        ``pns`` and optionally ``marker``; markers are derived when absent).

    Returns
    -------
    str
        ``"FITC-A=CD45RA, PE-A=CD25, FSC-A, …"``: ``$PnN=marker``, or the $PnN alone when
        the channel carries no marker or is named by it.
    """
    channels, _ = _channel_table(source)
    parts = []
    for pnn, marker in zip(channels["pnn"], channels["marker"]):
        parts.append(f"{pnn}={marker}" if marker and marker != pnn else str(pnn))
    return ", ".join(parts)


def read_panel_mapping(path: str | Path) -> dict[str, str]:
    """Read an explicit marker → channel mapping for a panel.

    The file is YAML (``CD4: B530-A``) or CSV/TSV with columns ``marker`` and ``channel``.

    Parameters
    ----------
    path
        The mapping file; ``.csv``, ``.tsv`` and ``.txt`` are read as tables (delimiter
        sniffed), anything else as YAML.

    Returns
    -------
    dict
        ``{marker: channel}`` with names stripped of surrounding whitespace.

    Raises
    ------
    PanelError
        Unreadable file, missing columns, or YAML that is not a mapping of strings.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in {".csv", ".tsv", ".txt"}:
            table = pd.read_csv(path, sep=None, engine="python", dtype=str)
            missing = {"marker", "channel"} - set(table.columns)
            if missing:
                raise PanelError(
                    f"panel mapping {path}: missing column(s) {sorted(missing)}; "
                    "expected columns 'marker' and 'channel'"
                )
            return dict(zip(table["marker"].str.strip(), table["channel"].str.strip()))
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PanelError(f"panel mapping {path}: cannot be read ({exc}); write one "
                         "'MARKER: CHANNEL' line per marker, or a CSV with columns marker, "
                         "channel") from exc
    if not isinstance(data, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise PanelError(f"panel mapping {path}: expected lines 'MARKER: CHANNEL'")
    return {k.strip(): v.strip() for k, v in data.items()}


def resolve_markers(
    source: FCSSample | pd.DataFrame,
    markers: Iterable[str],
    *,
    mapping: Mapping[str, str] | None = None,
    optional: Iterable[str] = (),
    what: str = "",
) -> dict[str, str]:
    """Map marker names to the $PnN channel names of one file.

    Parameters
    ----------
    source
        An :class:`~immunoprofile.io.fcs.FCSSample` or its ``channels`` table.
    markers
        Marker names as a template writes them (``CD4``, ``FoxP3``, ``viability``) or channel
        names ($PnN) as imported gates use them.
    mapping
        Explicit ``{marker: channel}`` entries that take precedence (a channel may be given by
        $PnN or $PnS).
    optional
        Markers that may be absent: they are left out of the result instead of raising.
    what
        Who asks (e.g. ``"template treg"``), used in error messages.

    Returns
    -------
    dict
        ``{marker as requested: $PnN}``.

    Raises
    ------
    PanelError
        A required marker is missing, or more than one channel carries it; the message lists
        every problem and the file's channels.
    """
    channels, where = _channel_table(source)
    pnn = [str(x) for x in channels["pnn"]]
    pns = [str(x) for x in channels["pns"]]
    marker_of = [str(x) for x in channels["marker"]]
    # The detector's name is $PnS in a swapped export, so a template naming detectors (imported
    # from GatingML or FlowJo on a file exported the usual way) gates it too.
    swapped_detector = [s.strip() if _is_swapped(n, s) else "" for n, s in zip(pnn, pns)]
    optional = set(optional)
    mapping = dict(mapping or {})
    resolved: dict[str, str] = {}
    missing: list[str] = []
    ambiguous: list[str] = []
    for requested in markers:
        if requested in resolved:
            continue
        if requested in mapping:
            target = mapping[requested]
            hits = [i for i, (n, s) in enumerate(zip(pnn, pns)) if target in (n, s)]
        elif pnn.count(requested) == 1:
            hits = [pnn.index(requested)]
        elif swapped_detector.count(requested) == 1:
            hits = [swapped_detector.index(requested)]
        elif "_" in requested and [n.replace("/", "_") for n in pnn].count(requested) == 1:
            # FlowJo writes "/" in channel names as "_" (FL1/H becomes FL1_H).
            hits = [[n.replace("/", "_") for n in pnn].index(requested)]
        else:
            want = normalise(canonical_name(requested))
            hits = [i for i, m in enumerate(marker_of) if m and normalise(m) == want]
        if len(hits) == 1:
            resolved[requested] = pnn[hits[0]]
        elif not hits:
            if requested not in optional:
                missing.append(requested)
        else:
            names = ", ".join(f"{pnn[i]} ({pns[i]})" if pns[i] else pnn[i] for i in hits)
            ambiguous.append(f"{requested} is carried by several channels: {names}")
    if missing or ambiguous:
        who = f"{what} needs" if what else "needs"
        parts = []
        if missing:
            parts.append(f"{who} {', '.join(missing)}")
        parts.extend(ambiguous)
        in_file = f"file {where} " if where else "file "
        raise PanelError(
            "; ".join(parts)
            + f"; {in_file}has: {describe_channels(channels)}. "
            "Add the marker to the file's $PnS labels or give a panel mapping (MARKER: CHANNEL)."
        )
    return resolved
