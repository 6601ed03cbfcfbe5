"""Marker names: the canonical names templates use, the aliases labs write for them, and the
marker a channel carries given its $PnN and $PnS.

Low in the house: the FCS reader labels each channel with its marker on reading, and
:mod:`immunoprofile.panel` resolves a template's markers to a file's channels with the same
rules (re-exporting these names).
"""

from __future__ import annotations

import re

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


def is_swapped(pnn: str, pns: str) -> bool:
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
    if is_swapped(pnn, pns):
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
