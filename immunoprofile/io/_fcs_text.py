"""HEADER, TEXT and keyword interpretation for :mod:`immunoprofile.io.fcs` (private).

Everything here works on bytes already read from the file and reports problems by
raising :class:`Corrupt` (turned into ``FCSError`` naming the file by the caller) or by
appending a sentence to a ``notes`` list (turned into ``FCSWarning``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HEADER_SIZE = 58
# FCS 3.1 section 3.2.2: a segment reaching past this byte gets zeros in the HEADER.
HEADER_OFFSET_LIMIT = 99_999_999
KNOWN_VERSIONS = ("2.0", "3.0", "3.1", "3.2")
_BLANK = b" \t\r\n\x00"


class Corrupt(Exception):
    """The file cannot be decoded; the message says what is wrong (without the path)."""


@dataclass
class Header:
    """The fixed 58-byte HEADER of one data set; offsets are relative to the data set."""

    version: str
    text_start: int
    text_end: int
    data_start: int | None  # None when blank or unreadable
    data_end: int | None


def parse_header(head: bytes, notes: list[str]) -> Header:
    """Decode the HEADER (``head`` holds at least its 58 bytes when the file is long enough)."""
    if head[:3] != b"FCS"[: len(head)] or not head:
        raise Corrupt(f"does not start with 'FCS' (starts with {head[:6]!r}): not an FCS file")
    if len(head) < HEADER_SIZE:
        raise Corrupt(
            f"only {len(head)} bytes where an FCS HEADER needs {HEADER_SIZE}: the file is truncated"
        )
    version = head[3:6].decode("latin-1")
    if version not in KNOWN_VERSIONS:
        notes.append(f"unknown FCS version {version!r} in the HEADER; read as FCS 3.1")
        version = "3.1"
    fields = [head[10 + 8 * i : 18 + 8 * i] for i in range(6)]
    names = ("TEXT start", "TEXT end", "DATA start", "DATA end", "ANALYSIS start", "ANALYSIS end")
    values: list[int | None] = []
    for name, raw in zip(names, fields, strict=True):
        text = raw.strip(_BLANK)
        if not text:
            values.append(None)
        elif text.isdigit():
            values.append(int(text))
        else:
            if name.startswith("TEXT"):
                raise Corrupt(f"the HEADER's {name} offset {raw!r} is not a number")
            notes.append(f"the HEADER's {name} offset {raw!r} is not a number; ignored")
            values.append(None)
    text_start, text_end, data_start, data_end, ana_start, ana_end = values
    if text_start is None or text_end is None:
        raise Corrupt("the HEADER gives no TEXT segment offsets")
    if text_start < HEADER_SIZE or text_end <= text_start:
        raise Corrupt(
            f"the HEADER's TEXT offsets {text_start}-{text_end} are impossible "
            f"(TEXT must follow the {HEADER_SIZE}-byte HEADER and hold at least 2 bytes)"
        )
    if ana_start is None or ana_end is None:
        # FlowIO refuses these; the ANALYSIS segment is never needed to read events.
        notes.append("the HEADER's ANALYSIS offsets are blank; treated as no ANALYSIS segment")
    return Header(version, text_start, text_end, data_start, data_end)


def _tokens(body: bytes, delim: bytes) -> list[bytes]:
    """Split on single delimiters; a doubled delimiter stands for one literal delimiter."""
    if delim * 2 not in body:
        return body.split(delim)
    parts = re.split(b"(" + re.escape(delim) + b"+)", body)
    tokens: list[bytes] = []
    current = parts[0]
    for run, text in zip(parts[1::2], parts[2::2], strict=True):
        current += delim * (len(run) // 2)
        if len(run) % 2:
            tokens.append(current)
            current = text
        else:
            current += text
    tokens.append(current)
    return tokens


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_text(segment: bytes, notes: list[str], what: str = "TEXT") -> list[tuple[str, str, bool]]:
    """Split a TEXT (or supplemental TEXT) segment into ``(keyword, value, standard)``.

    Keywords come back lower-cased without their leading ``$`` (``standard`` says whether
    it was there); values as written.
    """
    if len(segment) < 2:
        raise Corrupt(f"the {what} segment is empty")
    delim = segment[:1]
    body = segment[1:]
    last = body.rfind(delim)
    if last < 0:
        raise Corrupt(f"the {what} segment holds no keywords (no second delimiter {delim!r})")
    if body[last + 1 :].strip(_BLANK):
        notes.append(f"the {what} segment does not end with its delimiter {delim!r}")
    else:
        # Writers pad after the closing delimiter with spaces or NULs: not part of any value.
        body = body[:last]
    tokens = _tokens(body, delim)
    if len(tokens) % 2:
        notes.append(
            f"the {what} segment ends with keyword {_decode(tokens[-1])[:40]!r} without a value;"
            " ignored"
        )
        tokens.pop()
    pairs = []
    for key_raw, value_raw in zip(tokens[::2], tokens[1::2], strict=True):
        key = _decode(key_raw).strip().lower()
        standard = key.startswith("$")
        if standard:
            key = key[1:]
        if key:
            pairs.append((key, _decode(value_raw), standard))
    return pairs


def keyword_dict(pairs: list[tuple[str, str, bool]], notes: list[str]) -> dict[str, str]:
    """Merge pairs into one dict; a repeated keyword keeps its last value (as FlowIO does).

    When ``$SPILL`` and ``SPILL`` both occur, the standard (``$``) one wins.
    """
    result: dict[str, str] = {}
    is_standard: dict[str, bool] = {}
    for key, value, standard in pairs:
        if key in result:
            if is_standard[key] and not standard:
                continue
            old = result[key]
            if is_standard[key] == standard and old.strip() != value.strip():
                notes.append(
                    f"keyword {key.upper()!r} appears more than once with different values "
                    f"({old[:30]!r}, {value[:30]!r}); using the last"
                )
        result[key] = value
        is_standard[key] = standard
    return result


def to_int(value: str | None) -> int | None:
    """An integer keyword value (surrounding blanks allowed), or None if not an integer."""
    if value is None:
        return None
    text = value.strip(" \t\r\n\x00")
    if text.startswith(("+", "-")):
        sign, digits = text[0], text[1:]
    else:
        sign, digits = "", text
    # isascii: str.isdigit() also accepts '¹' or '٣', which int() refuses.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
        return None
    return int(sign + digits)


def to_float(value: str | None) -> float | None:
    """A finite float keyword value, or None when absent, blank or not a finite number."""
    if value is None:
        return None
    try:
        number = float(value.strip(" \t\r\n\x00"))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def map_channel(name: str, pnn: list[str], pns: list[str]) -> str | None:
    """The $PnN a spillover label refers to ($PnN, then $PnS, then 1-based number)."""
    if name in pnn:
        return name
    for labels in ([p.strip() for p in pnn], [s.strip() for s in pns]):
        hits = [i for i, label in enumerate(labels) if label and label == name]
        if len(hits) == 1:
            return pnn[hits[0]]
    number = to_int(name)
    if number is not None and 1 <= number <= len(pnn):
        return pnn[number - 1]
    folded = [i for i, label in enumerate(pnn) if label.strip().casefold() == name.casefold()]
    if len(folded) == 1:
        return pnn[folded[0]]
    return None


def parse_spillover(value: str, pnn: list[str], pns: list[str]) -> tuple[list[str], np.ndarray]:
    """Parse a $SPILLOVER value ``n,name1..namen,v11,v12..vnn`` into labels and matrix.

    Raises :class:`Corrupt` (which the caller turns into a warning) when malformed.
    """
    parts = [p.strip() for p in value.split(",")]
    n = to_int(parts[0])
    if n is None or n < 1 or n > len(pnn):
        raise Corrupt(f"its size {parts[0][:20]!r} is not a channel count between 1 and {len(pnn)}")
    if len(parts) == 1 + n:
        raise Corrupt(f"it names {n} channels but gives no coefficients")
    if len(parts) < 1 + n + n * n:
        raise Corrupt(f"it lists {len(parts) - 1} items where {n} names and {n * n} values are due")
    labels = []
    for name in parts[1 : 1 + n]:
        mapped = map_channel(name, pnn, pns)
        if mapped is None:
            raise Corrupt(f"it names channel {name!r}, which is not a $PnN, $PnS or channel number")
        labels.append(mapped)
    if len(set(labels)) != n:
        raise Corrupt("it names the same channel twice")
    numbers = [to_float(v) for v in parts[1 + n : 1 + n + n * n]]
    if any(v is None for v in numbers):
        raise Corrupt("one of its coefficients is not a finite number")
    return labels, np.array(numbers, dtype=np.float64).reshape(n, n)


@dataclass
class Layout:
    datatype: str
    pnn: list[str] = field(default_factory=list)
    pns: list[str] = field(default_factory=list)
    pnr: list[float] = field(default_factory=list)
    pne: list[str] = field(default_factory=list)
    png: list[float] = field(default_factory=list)
    pnb: list[int] = field(default_factory=list)
    width: list[int] = field(default_factory=list)  # bytes per value (chars for ASCII)
    decades: list[float] = field(default_factory=list)
    log0: list[float] = field(default_factory=list)

    @property
    def event_bytes(self) -> int:
        return sum(self.width)


def channel_layout(kw: dict[str, str], notes: list[str]) -> Layout:
    par = to_int(kw.get("par"))
    if par is None or par < 1:
        raise Corrupt(f"$PAR (the number of channels) is {kw.get('par')!r}, not a positive number")
    if par > len(kw):
        raise Corrupt(f"$PAR says {par} channels but the TEXT segment has only {len(kw)} keywords")
    datatype = kw.get("datatype", "").strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise Corrupt(f"$DATATYPE is {kw.get('datatype')!r}; it must be I, F, D or A")
    mode = kw.get("mode", "L").strip().upper() or "L"
    if mode != "L":
        raise Corrupt(f"$MODE is {mode!r}: only list-mode (L) data can be read")
    lay = Layout(datatype)
    odd_bits: list[int] = []
    no_range: list[int] = []
    for n in range(1, par + 1):
        name = kw.get(f"p{n}n")
        if name is None:
            raise Corrupt(f"$P{n}N, the name of channel {n} of {par}, is missing")
        lay.pnn.append(name)
        lay.pns.append(kw.get(f"p{n}s", ""))
        bits_text = kw.get(f"p{n}b", "")
        bits = to_int(bits_text)
        if datatype in ("F", "D"):
            # FlowIO ignores $PnB for floats: the width follows from $DATATYPE.
            if bits != (32 if datatype == "F" else 64):
                odd_bits.append(n)
            bits = 32 if datatype == "F" else 64
        elif datatype == "I":
            if bits is None or bits < 8 or bits > 64 or bits % 8:
                raise Corrupt(
                    f"$P{n}B is {bits_text!r}: integer channels must be 8 to 64 bits in whole bytes"
                )
        elif bits_text.strip() == "*":
            bits = 0  # delimited ASCII
        elif bits is None or not 0 < bits <= 64:
            raise Corrupt(f"$P{n}B is {bits_text!r}: ASCII channels need 1 to 64 characters or *")
        lay.pnb.append(bits)
        lay.width.append(bits if datatype == "A" else bits // 8)
        pnr = to_float(kw.get(f"p{n}r"))
        if pnr is None:
            no_range.append(n)
        lay.pnr.append(math.nan if pnr is None else pnr)
        pne = kw.get(f"p{n}e", "0,0").strip()
        parts = [to_float(p) for p in pne.split(",")]
        if len(parts) != 2 or parts[0] is None or parts[1] is None:
            raise Corrupt(f"$P{n}E is {pne!r}, not 'decades,offset'")
        decades, log0 = parts
        if log0 == 0 and decades != 0:
            log0 = 1.0  # FCS 3.1: a zero offset for a log channel means 1
        if decades > 0 and not (pnr and pnr > 0):
            raise Corrupt(f"log channel {n} ($P{n}E={pne}) needs a positive $P{n}R")
        lay.pne.append(pne)
        lay.decades.append(decades)
        lay.log0.append(log0)
        gain_text = kw.get(f"p{n}g")
        gain = to_float(gain_text)
        if gain is None and gain_text is not None and gain_text.strip():
            raise Corrupt(f"$P{n}G is {gain_text!r}, not a number")
        lay.png.append(1.0 if gain is None else gain)
    if odd_bits:
        notes.append(
            f"$PnB of channels {odd_bits} disagrees with $DATATYPE {datatype}; "
            f"read as {lay.pnb[0]}-bit floats"
        )
    if no_range:
        notes.append(f"$PnR of channels {no_range} is missing or not a number")
    if datatype == "A" and 0 in lay.pnb and set(lay.pnb) != {0}:
        raise Corrupt("ASCII data mixes delimited (*) and fixed-width channels")
    return lay


def spillover_frame(kw: dict[str, str], lay: Layout, notes: list[str]) -> pd.DataFrame | None:
    for key in ("spillover", "spill"):
        value = kw.get(key)
        if value is None or not value.strip():
            continue
        try:
            labels, matrix = parse_spillover(value, lay.pnn, lay.pns)
        except Corrupt as exc:
            notes.append(f"the {key.upper()} spillover matrix is unusable ({exc}); ignored")
            return None
        return pd.DataFrame(matrix, index=labels, columns=labels)
    return None


def byte_order(kw: dict[str, str], lay: Layout, notes: list[str]) -> str | list[int]:
    """'<', '>' or, for odd orders such as 3,4,1,2, the significance of each byte."""
    value = kw.get("byteord")
    if lay.datatype == "A":
        return "<"
    digits = [to_int(x) for x in (value or "").split(",")]
    k = len(digits)
    if value is not None and None not in digits and sorted(digits) == list(range(1, k + 1)):
        if digits == sorted(digits):
            return "<"
        if digits == sorted(digits, reverse=True):
            return ">"
        if set(lay.width) == {k}:
            return [d - 1 for d in digits]
        raise Corrupt(f"$BYTEORD {value!r} does not fit {sorted(set(lay.width))}-byte values")
    if lay.datatype != "A" and max(lay.width) > 1:
        # FlowIO falls back to the machine's order; little-endian is also what most files use.
        notes.append(f"$BYTEORD is {value!r}, not a byte order; read as little-endian")
    return "<"


def _shown(span: tuple[int | None, int | None]) -> str:
    words = ["blank" if v is None else str(v) for v in span]
    return f"both {words[0]}" if words[0] == words[1] else " and ".join(words)


def data_span(
    size: int,
    base: int,
    header: Header,
    kw: dict[str, str],
    tot: int | None,
    lay: Layout,
    notes: list[str],
) -> tuple[int, int]:
    """Absolute first byte and byte count of the DATA segment as the file states them."""
    head = (header.data_start, header.data_end)
    text = (to_int(kw.get("begindata")), to_int(kw.get("enddata")))
    head_ok = None not in head and head[0] > 0
    text_ok = None not in text and text[0] > 0
    need = None if tot is None or 0 in lay.width else tot * lay.event_bytes

    def fit(span: tuple[int, int]) -> int:
        """0: exact, 1: one byte off, 2: inside the file, 3: impossible."""
        first, last = span
        if first < HEADER_SIZE or last < first or base + first >= size:
            return 3
        length = last - first + 1
        if need is not None and length == need:
            return 0
        if need is not None and abs(length - need) == 1 and base + first + need <= size:
            return 1
        return 2 if base + last <= size else 3

    if head_ok and text_ok and head != text:
        prefer_head = header.version == "2.0"
        scores = {"HEADER": fit(head), "TEXT": fit(text)}
        which = min(scores, key=lambda w: (scores[w], (w == "HEADER") != prefer_head))
        if scores[which] == 3:
            raise Corrupt(
                f"the HEADER (bytes {head[0]}-{head[1]}) and TEXT ($BEGINDATA/$ENDDATA "
                f"{text[0]}-{text[1]}) disagree about the DATA segment and neither fits the file"
            )
        reason = (
            "only they fit the events"
            if scores["HEADER"] != scores["TEXT"]
            else f"as FCS {header.version} readers do"
        )
        notes.append(
            f"the HEADER and TEXT disagree about the DATA offsets (HEADER {head[0]}-{head[1]}, "
            f"$BEGINDATA/$ENDDATA {text[0]}-{text[1]}); used the {which} ones ({reason})"
        )
        span = head if which == "HEADER" else text
    elif head_ok:
        span = head
    elif text_ok:
        if text[1] <= HEADER_OFFSET_LIMIT:
            notes.append(
                f"the HEADER's DATA offsets are {_shown(head)}; "
                f"used $BEGINDATA/$ENDDATA {text[0]}-{text[1]}"
            )
        span = text
    else:
        raise Corrupt("neither the HEADER nor $BEGINDATA/$ENDDATA locate the DATA segment")
    first, last = span
    if first < HEADER_SIZE or last < first:
        raise Corrupt(f"the DATA offsets {first}-{last} are impossible")
    return base + first, last - first + 1


def next_pow2(x: float) -> int:
    """The power of two at or above ``x`` (FlowIO's integer mask is this minus one)."""
    n = math.ceil(x)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def ascii_values(
    data: bytes, tot: int | None, par: int
) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """Delimited ASCII events (values split by blanks or commas) and a column accessor."""
    words = data.replace(b",", b" ").split()
    if tot is None:
        tot = len(words) // par
    if len(words) < tot * par:
        raise Corrupt(f"the ASCII DATA segment holds {len(words)} values, not {tot * par}")
    try:
        values = np.array([float(w) for w in words[: tot * par]]).reshape(tot, par)
    except ValueError as exc:
        raise Corrupt(f"the ASCII DATA segment holds a non-number ({exc})") from None
    return values.astype(np.float32), lambda j: values[:, j]
