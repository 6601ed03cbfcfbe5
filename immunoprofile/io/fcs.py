"""Reading FCS 2.0, 3.0 and 3.1 files.

:func:`read_fcs` parses the HEADER and TEXT segments itself and decodes the DATA segment
with numpy, reading it straight from the file into the output array. Event values follow
FlowKit's ``Sample`` "raw" convention exactly, so gates give the same answer as FlowKit:

- integer channels are masked to the next power of two at or above $PnR, as FlowIO does;
- log-amplified channels ($PnE ``f1,f2`` with ``f1 > 0``) become
  ``10 ** (f1 * value / $PnR) * f2``, with ``f2 = 1`` when the file says 0 (FCS 3.1);
- then every channel is divided by its $PnG unless that is 0 or 1 (for $PnE 0,0 this is
  the FCS 3.1 rule; FlowKit applies it to log channels too and so do we);
- a channel named ``Time`` (any case) ignores its $PnG and is multiplied by $TIMESTEP.

Quirks that FlowKit refuses but that leave the events intact are read with an
:class:`FCSWarning` (also recorded in :attr:`FCSSample.warnings`); anything that would give
wrong or partial events raises :class:`~immunoprofile.errors.FCSError`.

Repeated channel names ($PnN) are kept as written: ``channels`` is indexed by position,
never by name, so nothing here breaks on them; code that looks channels up by name must
treat a repeated name as ambiguous (a warning names the repeats).
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from immunoprofile.errors import FCSError
from immunoprofile.io import _fcs_text as _t
from immunoprofile.io._fcs_text import Corrupt
from immunoprofile.markers import canonical_marker


class FCSWarning(UserWarning):
    """An FCS file had a quirk (named in the message) but was read."""


@dataclass(eq=False)
class FCSSample:
    """One data set of an FCS file, decoded to linear values.

    Attributes
    ----------
    path
        The file the data came from.
    events
        ``(n_events, n_channels)`` float32 array of linear values, as FlowKit's ``Sample``
        calls raw: log-amplified ($PnE) channels decoded and $PnG gains divided out (a
        ``Time`` channel is multiplied by $TIMESTEP instead).
    channels
        One row per channel (in file order, index 0..n-1) with columns ``pnn`` ($PnN),
        ``pns`` ($PnS, "" if absent), ``pnr`` ($PnR as float), ``pne`` ($PnE as "f1,f2"),
        ``png`` ($PnG as float, 1.0 if absent), ``pnb`` (bits) and ``marker`` (the canonical
        marker name resolved by :mod:`immunoprofile.panel`, or "" when none is recognised).
    metadata
        All TEXT keywords, lower-cased names without the leading ``$``, values as strings.
    spillover
        The $SPILLOVER / $SPILL / SPILL matrix as a square DataFrame labelled by channel name
        ($PnN) on both axes, or None when the file has none.
    dataset
        Which data set of a multi-data-set file this is (0 for the first).
    warnings
        Quirks met while reading (also issued through :mod:`warnings`).
    """

    path: Path
    events: np.ndarray
    channels: pd.DataFrame
    metadata: dict[str, str]
    spillover: pd.DataFrame | None = None
    dataset: int = 0
    warnings: list[str] = field(default_factory=list)
    _value_range: tuple[float, float] | None = field(default=None, init=False, repr=False)

    @property
    def n_events(self) -> int:
        """Number of events (rows of :attr:`events`)."""
        return int(self.events.shape[0])

    def finite_events(self) -> np.ndarray | None:
        """Boolean per event: every value finite; None when all are (the usual case).

        Floating-point files can hold NaN or infinite values; gating leaves such events out
        of the root population (a warning at read time counts them).
        """
        if self.events.dtype.kind != "f":
            return None
        # The block's minimum and maximum settle the usual case: both are finite exactly when
        # every value is (NaN propagates through them), at a tenth of a per-value test.
        if np.isfinite(self.value_range()).all():
            return None
        ok = np.isfinite(self.events).all(axis=1)
        return None if ok.all() else ok

    def value_range(self) -> tuple[float, float]:
        """The smallest and largest value of the event matrix (NaN when any value is NaN),
        computed once: gating needs it for its error bounds and its finiteness check.

        Returns
        -------
        tuple of float
            ``(min, max)`` over every channel of every event; ``(0.0, 0.0)`` without events.
        """
        if self._value_range is None:
            flat = self.events.reshape(-1)
            self._value_range = ((float(flat.min()), float(flat.max())) if flat.size
                                 else (0.0, 0.0))
        return self._value_range

    @property
    def channel_names(self) -> list[str]:
        """The $PnN names in file order."""
        return list(self.channels["pnn"])

    @property
    def acquisition_date(self) -> str | None:
        """$DATE as written in the file (None when absent)."""
        return self.metadata.get("date") or None

    @property
    def cytometer(self) -> str | None:
        """$CYT, the instrument that acquired the file (None when absent)."""
        return self.metadata.get("cyt") or None

    def range_tops(self) -> dict[str, float]:
        """``{$PnN: largest decodable value}`` (see :func:`channel_top`)."""
        return {str(row["pnn"]): channel_top(row) for _, row in self.channels.iterrows()}


def channel_top(row: pd.Series) -> float:
    """The largest value the reader can decode for a channel (∞ when $PnR is unusable).

    ``row`` is one row of :attr:`FCSSample.channels`. Linear channels: ($PnR − 1) / $PnG;
    log-amplified ones ($PnE f1,f2): 10^(f1·($PnR − 1)/$PnR) · f2, as values are decoded.
    The top of a channel's real scale, whatever its $PnR says: transforms that follow the
    instrument (a range-relative arcsinh cofactor) and QC margins use it.

    Parameters
    ----------
    row
        One channel: ``pnr``, ``pne`` (``"f1,f2"``) and ``png`` (a gain of 0 counts as 1).

    Returns
    -------
    float
        The top of the decoded scale, ``inf`` when $PnR is missing or at most 1.
    """
    pnr = float(row["pnr"])
    if not math.isfinite(pnr) or pnr <= 1:
        return math.inf
    try:
        f1, f2 = (float(v) for v in str(row["pne"]).split(","))
    except ValueError:
        f1 = f2 = 0.0
    if f1 > 0:
        return 10 ** (f1 * (pnr - 1) / pnr) * (f2 or 1.0)
    png = float(row.get("png", 1.0) or 1.0)
    return (pnr - 1) / (png if png not in (0.0, 1.0) else 1.0)


def read_fcs(path: str | Path, *, dataset: int = 0) -> FCSSample:
    """Read one data set of an FCS file.

    Parameters
    ----------
    path
        The FCS 2.0, 3.0 or 3.1 file.
    dataset
        Which data set to read when the file chains several with $NEXTDATA (0 = first).

    Returns
    -------
    FCSSample
        Events as float32 linear values equal to FlowKit's raw events, channel table,
        keywords, spillover matrix and the quirks met.

    Raises
    ------
    FCSError
        The file cannot be opened, is not an FCS file, is truncated or corrupt, or has no
        data set number ``dataset``. The message names the file and the problem.

    Warns
    -----
    FCSWarning
        For each quirk read around (off-by-one or missing HEADER offsets, HEADER/TEXT
        disagreement, several data sets, repeated channel names, unusable spillover...).

    Notes
    -----
    - Keywords of the supplemental TEXT segment ($BEGINSTEXT) are merged into
      ``metadata``; the primary TEXT wins when both hold a keyword.
    - A channel named ``Time`` is scaled by $TIMESTEP and not divided by its $PnG, as in
      FlowKit; a $TIMESTEP that is not a number leaves it unscaled (FlowKit refuses it).
    - Repeated $PnN names are kept as written (with a warning); select channels by
      position, or treat a name that matches several channels as ambiguous.
    """
    path = Path(path)
    dataset = operator.index(dataset)
    notes: list[str] = []
    try:
        with open(path, "rb") as fh:
            sample = _parse(fh, path, dataset, notes)
    except FCSError:
        raise
    except Corrupt as exc:
        raise FCSError(f"FCS file '{path}': {exc}") from None
    except OSError as exc:
        raise FCSError(f"FCS file '{path}' cannot be read: {exc}") from exc
    except Exception as exc:  # a hostile file must never surface as a bare ValueError etc.
        raise FCSError(
            f"FCS file '{path}' could not be decoded ({type(exc).__name__}: {exc}); "
            "the file is probably corrupt"
        ) from exc
    # Outside the guard above: a bug in marker resolution must not pass for a bad file.
    sample.channels["marker"] = _markers(list(sample.channels["pnn"]), list(sample.channels["pns"]))
    sample.warnings = [f"FCS file '{path}': {note}" for note in dict.fromkeys(notes)]
    for message in sample.warnings:
        warnings.warn(message, FCSWarning, stacklevel=2)
    return sample


def _markers(pnn: list[str], pns: list[str]) -> list[str]:
    return [canonical_marker(n, s) or "" for n, s in zip(pnn, pns, strict=True)]


# --------------------------------------------------------------------------- data sets


def _load_text(
    fh: BinaryIO, size: int, base: int, notes: list[str], supplemental: bool = True
) -> tuple[_t.Header, dict[str, str]]:
    """HEADER and keywords of the data set starting at byte ``base``."""
    fh.seek(base)
    header = _t.parse_header(fh.read(_t.HEADER_SIZE), notes)
    start, end = base + header.text_start, base + header.text_end
    if end >= size:
        raise Corrupt(
            f"the TEXT segment (bytes {start}-{end}) runs past the end of the file "
            f"({size} bytes): the file is truncated"
        )
    fh.seek(start)
    segment = fh.read(end - start + 1)
    keywords = _t.keyword_dict(_t.parse_text(segment, notes), notes)
    if supplemental:
        _add_supplemental(fh, size, base, segment[:1], keywords, notes)
    return header, keywords


def _add_supplemental(
    fh: BinaryIO, size: int, base: int, delim: bytes, keywords: dict[str, str], notes: list[str]
) -> None:
    """Merge the supplemental TEXT (FCS 3.x $BEGINSTEXT) under the primary keywords."""
    begin, end = _t.to_int(keywords.get("beginstext")), _t.to_int(keywords.get("endstext"))
    if not begin or not end or end <= begin:
        return
    if begin < _t.HEADER_SIZE or base + end >= size:
        notes.append(f"the supplemental TEXT offsets {begin}-{end} lie outside the file; ignored")
        return
    fh.seek(base + begin)
    segment = fh.read(end - begin + 1)
    if segment[:1] != delim:
        segment = delim + segment
    try:
        extra = _t.keyword_dict(_t.parse_text(segment, notes, "supplemental TEXT"), notes)
    except Corrupt as exc:
        notes.append(f"{exc}; supplemental TEXT ignored")
        return
    for key, value in extra.items():
        keywords.setdefault(key, value)


def _next_base(base: int, keywords: dict[str, str], size: int) -> int | None:
    """Start of the next data set, or None when this is the last (or the link is broken)."""
    step = _t.to_int(keywords.get("nextdata"))
    if not step or step < 0 or base + step + _t.HEADER_SIZE > size:
        return None
    return base + step


def _count_datasets(fh: BinaryIO, size: int, base: int, keywords: dict[str, str]) -> int:
    count = 1
    while count < 10_000:
        base = _next_base(base, keywords, size)
        if base is None:
            break
        try:
            _, keywords = _load_text(fh, size, base, [], supplemental=False)
        except Corrupt:
            break
        count += 1
    return count


def _parse(fh: BinaryIO, path: Path, dataset: int, notes: list[str]) -> FCSSample:
    size = os.fstat(fh.fileno()).st_size
    if dataset < 0:
        raise Corrupt(f"there is no data set {dataset} (data sets count from 0)")
    base = 0
    for index in range(dataset):
        _, keywords = _load_text(fh, size, base, [], supplemental=False)
        nxt = _next_base(base, keywords, size)
        if nxt is None:
            raise Corrupt(
                f"data set {dataset} was asked for but the file holds {index + 1} "
                f"(data sets count from 0)"
            )
        base = nxt
    header, keywords = _load_text(fh, size, base, notes)
    if dataset == 0 and _next_base(base, keywords, size) is not None:
        total = _count_datasets(fh, size, base, keywords)
        if total > 1:
            notes.append(
                f"the file holds {total} data sets ($NEXTDATA); read the first "
                f"(pass dataset=1..{total - 1} to read the others)"
            )
    layout = _t.channel_layout(keywords, notes)
    events = _read_events(fh, size, base, header, keywords, layout, notes)
    channels = pd.DataFrame(
        {
            "pnn": layout.pnn,
            "pns": layout.pns,
            "pnr": np.array(layout.pnr, dtype=np.float64),
            "pne": layout.pne,
            "png": np.array(layout.png, dtype=np.float64),
            "pnb": np.array(layout.pnb, dtype=np.int64),
        }
    )
    repeated = sorted({n for n in layout.pnn if layout.pnn.count(n) > 1})
    if repeated:
        notes.append(f"channel names repeated in $PnN: {repeated}; kept as written")
    sample = FCSSample(
        path=path,
        events=events,
        channels=channels,
        metadata=keywords,
        spillover=_t.spillover_frame(keywords, layout, notes),
        dataset=dataset,
    )
    finite = sample.finite_events()  # its minimum and maximum, kept for gating, settle it
    if finite is not None:
        notes.append(f"{int((~finite).sum())} events hold NaN or infinite values; gating "
                     "leaves them out")
    return sample


# --------------------------------------------------------------------------- events


def _read_events(
    fh: BinaryIO,
    size: int,
    base: int,
    header: _t.Header,
    kw: dict[str, str],
    lay: _t.Layout,
    notes: list[str],
) -> np.ndarray:
    par = len(lay.pnn)
    tot_text = kw.get("tot")
    tot = _t.to_int(tot_text)
    if tot_text is not None and (tot is None or tot < 0):
        raise Corrupt(f"$TOT (the number of events) is {tot_text!r}, not a whole number")
    if tot == 0:
        return np.zeros((0, par), dtype=np.float32)
    order = _t.byte_order(kw, lay, notes)
    start, length = _t.data_span(size, base, header, kw, tot, lay, notes)
    if lay.datatype == "A" and 0 in lay.pnb:
        if start + length > size:
            raise Corrupt(f"the DATA segment ends past the end of the file ({size} bytes)")
        fh.seek(start)
        raw, column = _t.ascii_values(fh.read(length), tot, par)
    else:
        if tot is None:
            tot = length // lay.event_bytes
            notes.append(f"$TOT is missing; {tot} events inferred from the DATA segment size")
        need = tot * lay.event_bytes
        if length == need + 1:
            notes.append(
                "the DATA end offset is one byte past the data (off by one); read the $TOT events"
            )
        elif length == need - 1:
            notes.append("the DATA segment is one byte short of $TOT events (off by one)")
        elif length >= need + lay.event_bytes and tot_text is not None:
            # Room for whole further events: $TOT or $PAR disagrees with the data, and
            # reading $TOT events would give a part of the file, or misaligned channels.
            raise Corrupt(
                f"the DATA segment holds {length} bytes, {length / lay.event_bytes:g} events "
                f"of {par} channels, but $TOT says {tot}: $TOT or $PAR is wrong; re-export "
                "the file from the acquisition software"
            )
        elif length > need:
            notes.append(
                f"the DATA segment holds {length} bytes but $TOT events need {need}; "
                "read $TOT events and ignored the padding"
            )
        elif length < need:
            raise Corrupt(
                f"the DATA segment holds {length} bytes but $TOT={tot} events of {par} "
                f"channels need {need}: the file is corrupt or $TOT is wrong"
            )
        if start + need > size:
            raise Corrupt(
                f"the DATA segment needs bytes {start}-{start + need - 1} but the file has "
                f"only {size} bytes: the file is truncated"
            )
        fh.seek(start)
        raw, column = _decode(fh, tot, lay, order)
    return _linearise(raw, column, lay, kw, notes)


def _fromfile(fh: BinaryIO, dtype: np.dtype | str, count: int) -> np.ndarray:
    arr = np.fromfile(fh, dtype=dtype, count=count)
    if arr.size != count:
        raise Corrupt("the file ended while reading the DATA segment: it is truncated")
    return arr


def _decode(
    fh: BinaryIO, tot: int, lay: _t.Layout, order: str | list[int]
) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """Read the binary DATA segment: float32 events plus an accessor for exact raw columns."""
    par, widths = len(lay.pnn), lay.width
    kind = {"I": "u", "F": "f", "D": "f", "A": "S"}[lay.datatype]
    masks: list[int | None] = [None] * par
    if kind == "u":
        for j, (pnr, bits) in enumerate(zip(lay.pnr, lay.pnb, strict=True)):
            if pnr > 0 and _t.next_pow2(pnr) < 2**bits:  # NaN compares False: no mask
                masks[j] = _t.next_pow2(pnr) - 1
    native = {1, 2, 4, 8} if kind != "S" else set()
    if isinstance(order, str) and len(set(widths)) == 1 and widths[0] in native:
        raw = _fromfile(fh, f"{order}{kind}{widths[0]}", tot * par).reshape(tot, par)
        if kind == "f" and widths[0] == 4:
            if not raw.dtype.isnative:  # swap in place: the read stays the only copy
                raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder())
            out = raw
        else:
            if not raw.dtype.isnative:
                raw = raw.byteswap(inplace=True).view(raw.dtype.newbyteorder())
            if kind == "u" and any(m is not None for m in masks):
                ones = 2 ** (8 * widths[0]) - 1
                raw &= np.array([ones if m is None else m for m in masks], dtype=raw.dtype)
            out = raw.astype(np.float32)
        return out, lambda j: raw[:, j]
    if isinstance(order, str) and (kind == "S" or set(widths) <= native):
        offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
        fmt = [f"S{w}" if kind == "S" else f"{order}{kind}{w}" for w in widths]
        dt = np.dtype(
            {
                "names": [f"c{j}" for j in range(par)],
                "formats": fmt,
                "offsets": offsets,
                "itemsize": lay.event_bytes,
            }
        )
        rec = _fromfile(fh, dt, tot)
        cols = [rec[f"c{j}"] for j in range(par)]
    else:
        rec = _fromfile(fh, np.uint8, tot * lay.event_bytes).reshape(tot, lay.event_bytes)
        cols, offset = [], 0
        for w in widths:
            chunk = rec[:, offset : offset + w]
            offset += w
            if isinstance(order, list):
                little = np.empty_like(chunk)
                little[:, order] = chunk
            else:
                little = chunk if order == "<" else chunk[:, ::-1]
            if w in native:
                cols.append(np.ascontiguousarray(little).view(f"<{kind}{w}")[:, 0])
            else:
                value = np.zeros(tot, dtype=np.uint64)
                for k in range(w):
                    value |= little[:, k].astype(np.uint64) << np.uint64(8 * k)
                cols.append(value)
    if kind == "S":
        try:
            cols = [c.astype(np.float64) for c in cols]
        except ValueError as exc:
            raise Corrupt(f"the ASCII DATA segment holds a non-number ({exc})") from None
    cols = [c if m is None else c & m for c, m in zip(cols, masks, strict=True)]
    out = np.empty((tot, par), dtype=np.float32)
    for j, col in enumerate(cols):
        out[:, j] = col
    return out, lambda j: cols[j]


def _linearise(
    out: np.ndarray,
    column: Callable[[int], np.ndarray],
    lay: _t.Layout,
    kw: dict[str, str],
    notes: list[str],
) -> np.ndarray:
    """Apply $TIMESTEP, $PnE and $PnG in float64 in FlowIO's order, then store as float32."""
    times = [j for j, name in enumerate(lay.pnn) if name.lower() == "time"]
    time_step = None
    if times and "timestep" in kw:
        time_step = _t.to_float(kw["timestep"])
        if time_step is None and kw["timestep"].strip():
            notes.append(
                f"$TIMESTEP is {kw['timestep']!r}, not a number; the time channel is not scaled"
            )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for j in range(len(lay.pnn)):
            # FlowIO ignores the gain of time channels: it is the time step, not an amplifier.
            gain = 1.0 if j in times else lay.png[j]
            step = time_step if time_step is not None and j == times[-1] else None
            if not (lay.decades[j] > 0 or gain not in (0.0, 1.0) or step is not None):
                continue
            raw = column(j)
            if raw.dtype.kind == "u" and lay.pnb[j] <= 16:
                # Few distinct values: transform each once (same float64 maths, so the same
                # result) and look events up, far faster than 10**x per event.
                size = 2 ** lay.pnb[j]
                if lay.pnr[j] > 0:  # masked to the next power of two at or above $PnR
                    size = min(size, _t.next_pow2(lay.pnr[j]))
                table = _transform(np.arange(size, dtype=np.float64), j, lay, step, gain)
                out[:, j] = np.take(table.astype(np.float32), raw)
            else:
                out[:, j] = _transform(raw.astype(np.float64), j, lay, step, gain)
    return out


def _transform(
    x: np.ndarray, j: int, lay: _t.Layout, time_step: float | None, gain: float
) -> np.ndarray:
    if time_step is not None:
        x = x * time_step
    if lay.decades[j] > 0:
        x = (10 ** (lay.decades[j] * x / lay.pnr[j])) * lay.log0[j]
    if gain not in (0.0, 1.0):
        x = x / gain
    return x
