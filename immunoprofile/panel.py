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

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from immunoprofile.errors import PanelError
from immunoprofile.markers import (
    MARKER_ALIASES,
    canonical_marker,
    canonical_name,
    is_swapped,
    normalise,
)

if TYPE_CHECKING:
    from immunoprofile.io.fcs import FCSSample

# The marker vocabulary lives in markers.py (the FCS reader needs it too); its names stay
# importable from here, where they were first documented.
__all__ = ["MARKER_ALIASES", "canonical_marker", "canonical_name", "describe_channels",
           "normalise", "read_panel_mapping", "resolve_markers"]


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
    swapped_detector = [s.strip() if is_swapped(n, s) else "" for n, s in zip(pnn, pns)]
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
