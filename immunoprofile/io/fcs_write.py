"""A small FCS 3.1 writer: float32 list-mode data with $SPILLOVER.

Only what the simulator and tests need: one data set, ``$DATATYPE F``, little-endian,
no ANALYSIS segment. The file is written to a temporary name beside the target and then
renamed, so a reader never sees a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile._atomic import atomic_write

__all__ = ["format_spillover", "write_fcs"]

# '|' is rare in keyword values; values that contain it are escaped by doubling (FCS 3.1 §3.2.9).
_DELIM = "|"
_TEXT_START = 256  # conventional (BD writes TEXT at 256 or 58); leaves room for a future HEADER
_HEADER_MAX = 99_999_999  # HEADER offsets have 8 digits; beyond that the TEXT copies rule


def _fmt_number(value: float) -> str:
    """Shortest text that round-trips a float64 (so $SPILLOVER is read back exactly)."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def format_spillover(spillover: pd.DataFrame) -> str:
    """Format a square spillover matrix as an FCS 3.1 ``$SPILLOVER`` value.

    Parameters
    ----------
    spillover
        Square matrix labelled by $PnN on both axes; rows are the dyes spilling, columns the
        detectors receiving (``raw = true @ spillover``).

    Returns
    -------
    str
        ``n,name_1,...,name_n,v_11,v_12,...,v_nn`` (row by row).
    """
    names = [str(c) for c in spillover.columns]
    if list(map(str, spillover.index)) != names:
        raise ValueError("spillover must have the same channel names, in the same order, "
                         "on rows and columns")
    values = spillover.to_numpy(dtype=float).ravel()
    return ",".join([str(len(names)), *names, *(_fmt_number(v) for v in values)])


def _escape(value: str) -> str:
    return value.replace(_DELIM, _DELIM * 2)


def _text_segment(keywords: Mapping[str, str]) -> bytes:
    parts = [_DELIM]
    for key, value in keywords.items():
        parts.append(f"{_escape(key)}{_DELIM}{_escape(value)}{_DELIM}")
    return "".join(parts).encode("utf-8")


def write_fcs(
    path: str | os.PathLike[str],
    events: np.ndarray,
    pnn: Sequence[str],
    pns: Sequence[str],
    *,
    spillover: pd.DataFrame | None = None,
    metadata: Mapping[str, object] | None = None,
    pnr: Sequence[float] | None = None,
) -> Path:
    """Write one FCS 3.1 file with float32 little-endian list-mode data.

    Parameters
    ----------
    path
        Target file; its folder must exist. Written atomically (temporary name, then rename).
    events
        ``(n_events, n_channels)`` array; stored as float32.
    pnn, pns
        $PnN (detector) and $PnS (marker) per channel. An empty $PnS is omitted, because FCS 3.1
        forbids empty keyword values.
    spillover
        Written as ``$SPILLOVER`` when given (see :func:`format_spillover`).
    metadata
        Extra TEXT keywords (``"$CYT"``, ``"$DATE"``, ``"$BTIM"``, ``"$FIL"``, custom ones...).
        Missing ``$DATE``/``$BTIM`` default to now and ``$CYT`` to "immunoprofile"; pass them
        explicitly for byte-identical output.
    pnr
        $PnR per channel; defaults to 262144 for every channel.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    data = np.ascontiguousarray(events, dtype="<f4")
    if data.ndim != 2:
        raise ValueError(f"events must be 2-D (n_events, n_channels), got shape {data.shape}")
    n_events, n_par = data.shape
    if len(pnn) != n_par or len(pns) != n_par:
        raise ValueError(f"{n_par} channels but {len(pnn)} $PnN and {len(pns)} $PnS names")
    ranges = [262144.0] * n_par if pnr is None else [float(r) for r in pnr]
    if len(ranges) != n_par:
        raise ValueError(f"{n_par} channels but {len(ranges)} $PnR values")

    now = _dt.datetime.now()
    extra = {str(k): str(v) for k, v in (metadata or {}).items()}
    fixed: dict[str, str] = {
        "$BYTEORD": "1,2,3,4",
        "$DATATYPE": "F",
        "$MODE": "L",
        "$NEXTDATA": "0",
        "$PAR": str(n_par),
        "$TOT": str(n_events),
        "$CYT": extra.pop("$CYT", "immunoprofile"),
        "$DATE": extra.pop("$DATE", now.strftime("%d-%b-%Y").upper()),
        "$BTIM": extra.pop("$BTIM", now.strftime("%H:%M:%S")),
    }
    for i in range(n_par):
        n = i + 1
        fixed[f"$P{n}N"] = str(pnn[i])
        if pns[i]:
            fixed[f"$P{n}S"] = str(pns[i])
        fixed[f"$P{n}B"] = "32"
        fixed[f"$P{n}E"] = "0,0"
        fixed[f"$P{n}G"] = "1"
        fixed[f"$P{n}R"] = _fmt_number(ranges[i])
    if spillover is not None:
        fixed["$SPILLOVER"] = format_spillover(spillover)
    for key in ("$BEGINDATA", "$ENDDATA", "$BEGINANALYSIS", "$ENDANALYSIS",
                "$BEGINSTEXT", "$ENDSTEXT"):
        extra.pop(key, None)
    body = {**fixed, **extra}

    payload = data.tobytes()
    # The data offsets are written inside TEXT, whose length depends on them: iterate until
    # the digits stop changing (two or three rounds).
    begin = end = 0
    while True:
        keywords = {"$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0",
                    "$ENDSTEXT": "0", "$BEGINDATA": str(begin), "$ENDDATA": str(end), **body}
        text = _text_segment(keywords)
        new_begin = _TEXT_START + len(text)
        new_end = new_begin + len(payload) - 1 if payload else new_begin
        if (new_begin, new_end) == (begin, end):
            break
        begin, end = new_begin, new_end

    text_end = _TEXT_START + len(text) - 1
    in_header = end <= _HEADER_MAX
    header = "FCS3.1    " + "".join(
        f"{v:>8d}" for v in (_TEXT_START, text_end, begin if in_header else 0,
                             end if in_header else 0, 0, 0)
    )
    header_bytes = header.encode("ascii").ljust(_TEXT_START, b" ")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header_bytes)
            fh.write(text)
            fh.write(payload)

    return atomic_write(path, write)
