"""Thousands of damaged FCS files: each must read or raise FCSError, and quickly.

Mutants come from the real files in tests/data (truncated, HEADER/TEXT bytes changed,
offsets broken, random bytes spliced in) and from byte-built files with hostile keyword
values. Every generator is seeded, so a failure names a mutant that can be rebuilt. The
per-mutant time limit is a hang detector (e.g. a loop over $PAR=10**18), not a speed test.
"""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fcs_read import build_fcs, keywords_for, pack_ints

from immunoprofile.errors import FCSError
from immunoprofile.io import _fcs_text
from immunoprofile.io.fcs import FCSWarning, read_fcs

DATA = Path(__file__).resolve().parent / "data"
LINE = (DATA / "data_set_simple_line_100.fcs").read_bytes()
DATA1 = (DATA / "data1.fcs").read_bytes()
COMP = (DATA / "test_comp_example.fcs").read_bytes()
MACSQUANT = (DATA / "SG_2014-09-26_Duplicate_Names.fcs").read_bytes()
REAL = {"line": LINE, "data1": DATA1, "comp": COMP, "macsquant": MACSQUANT}
SLOW_SECONDS = 5.0


class Fuzzer:
    """Writes mutants to one file, reads them and collects every violation."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "mutant.fcs"
        self.failures: list[str] = []
        self.outcomes: dict[str, int] = {"read": 0, "error": 0}

    def check(self, label: str, content: bytes, *, dataset: int = 0) -> str:
        self.path.write_bytes(content)
        start = time.perf_counter()
        outcome = "crash"
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                sample = read_fcs(self.path, dataset=dataset)
            except FCSError as exc:
                outcome = "error"
                if str(self.path) not in str(exc):
                    self.failures.append(f"{label}: error does not name the file: {exc}")
            except Exception as exc:  # the point of the test: nothing else may escape
                self.failures.append(f"{label}: {type(exc).__name__}: {exc}")
            else:
                outcome = "read"
                events = sample.events
                if not (
                    events.dtype == np.float32
                    and events.ndim == 2
                    and events.shape == (sample.n_events, len(sample.channels))
                ):
                    self.failures.append(f"{label}: inconsistent sample {events.shape}")
        elapsed = time.perf_counter() - start
        if elapsed > SLOW_SECONDS:
            self.failures.append(f"{label}: took {elapsed:.1f} s (hang?)")
        strays = {w.category.__name__ for w in record if not issubclass(w.category, FCSWarning)}
        if strays:
            self.failures.append(f"{label}: stray warnings {sorted(strays)}")
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome

    def expect_error(self, label: str, content: bytes, **kwargs: int) -> None:
        if self.check(label, content, **kwargs) == "read":
            self.failures.append(f"{label}: read, but it must raise FCSError")

    def assert_clean(self) -> None:
        shown = "\n".join(self.failures[:20])
        assert not self.failures, f"{len(self.failures)} bad mutants, first ones:\n{shown}"


@pytest.fixture
def fuzz(tmp_path: Path) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(tmp_path)
    yield fuzzer
    fuzzer.assert_clean()


def _offsets(content: bytes) -> tuple[int, int, int, int]:
    fields = [int(content[10 + 8 * i : 18 + 8 * i]) for i in range(4)]
    return fields[0], fields[1], fields[2], fields[3]


def _data_needed(content: bytes) -> int:
    """One past the last byte the events occupy (from the file's own keywords)."""
    text_start, text_end, data_start, _ = _offsets(content)
    pairs = _fcs_text.parse_text(content[text_start : text_end + 1], [])
    kw = {k: v for k, v, _ in pairs}
    bits = sum(int(kw[f"p{n}b"]) for n in range(1, int(kw["par"]) + 1))
    return data_start + int(kw["tot"]) * bits // 8


# --------------------------------------------------------------------------- truncation


def test_every_truncation_of_a_small_file(fuzz: Fuzzer) -> None:
    # Its events run to the last byte, so every cut loses data.
    for cut in range(len(LINE)):
        fuzz.expect_error(f"line[:{cut}]", LINE[:cut])


@pytest.mark.parametrize("name", ["data1", "comp", "macsquant"])
def test_truncations_of_real_files(fuzz: Fuzzer, name: str) -> None:
    content = REAL[name]
    text_start, text_end, data_start, data_end = _offsets(content)
    needed = _data_needed(content)
    rng = np.random.default_rng(len(content))
    cuts = {0, 1, 3, 6, 10, 57, 58, 59, text_start - 1, text_start, text_start + 1}
    cuts |= {(text_start + text_end) // 2, text_end - 1, text_end, text_end + 1}
    cuts |= {data_start - 1, data_start, data_start + 1, (data_start + data_end) // 2}
    cuts |= {needed - 1, needed, data_end, data_end + 1, len(content) - 1}
    cuts |= set(rng.integers(0, len(content), 150).tolist())
    for cut in sorted(c for c in cuts if 0 <= c < len(content)):
        label = f"{name}[:{cut}]"
        if cut < needed:
            fuzz.expect_error(label, content[:cut])
        elif fuzz.check(label, content[:cut]) != "read":
            fuzz.failures.append(f"{label}: holds every event but was refused")


# --------------------------------------------------------------------------- HEADER bytes


@pytest.mark.parametrize("name", ["line", "data1"])
def test_every_header_byte_corrupted(fuzz: Fuzzer, name: str) -> None:
    content = REAL[name]
    rng = np.random.default_rng(58)
    for pos in range(58):
        for value in (b" ", b"0", b"9", b"-", b"\x00", b"\xff", bytes([rng.integers(33, 127)])):
            mutant = content[:pos] + value + content[pos + 1 :]
            fuzz.check(f"{name} header[{pos}]={value!r}", mutant)


@pytest.mark.parametrize("name", ["line", "data1"])
def test_broken_header_offsets(fuzz: Fuzzer, name: str) -> None:
    content = REAL[name]
    size = len(content)
    values = [0, 1, 57, 58, 59, size - 1, size, size + 1, 99_999_999]
    texts = [f"{v:>8}".encode() for v in values]
    texts += [b" " * 8, b"-1".rjust(8), b"abcdefgh", b"00000000", b"1e3".rjust(8), b"\x00" * 8]
    for field in range(6):
        for text in texts:
            at = 10 + 8 * field
            fuzz.check(
                f"{name} header field {field}={text!r}", content[:at] + text + content[at + 8 :]
            )
    text_start, text_end, data_start, data_end = _offsets(content)
    swapped = b"".join(f"{v:>8}".encode() for v in (text_end, text_start, data_end, data_start))
    fuzz.check(f"{name} offsets swapped", content[:10] + swapped + content[42:])


# --------------------------------------------------------------------------- TEXT bytes


@pytest.mark.parametrize("name", ["line", "data1", "macsquant"])
def test_text_bytes_corrupted(fuzz: Fuzzer, name: str) -> None:
    content = REAL[name]
    text_start, text_end, _, _ = _offsets(content)
    delim = content[text_start : text_start + 1]
    rng = np.random.default_rng(text_end)
    for i in range(250):
        pos = int(rng.integers(text_start, text_end + 1))
        value = bytes([int(rng.integers(0, 256))])
        fuzz.check(f"{name} text[{pos}]={value!r}", content[:pos] + value + content[pos + 1 :])
        pos = int(rng.integers(text_start, text_end + 1))
        if i % 2:
            mutant = content[:pos] + content[pos + 1 :]  # shifts everything after
            fuzz.check(f"{name} text[{pos}] deleted", mutant)
        else:
            fuzz.check(f"{name} text[{pos}] inserted", content[:pos] + value + content[pos:])
    positions = [
        m.start() for m in re.finditer(re.escape(delim), content[text_start : text_end + 1])
    ]
    if len(positions) > 200:
        positions = sorted(rng.choice(positions, 200, replace=False).tolist())
    for pos in positions:
        at = text_start + pos
        fuzz.check(f"{name} delimiter {at} -> x", content[:at] + b"x" + content[at + 1 :])
        fuzz.check(f"{name} delimiter {at} doubled", content[:at] + delim + content[at:])


# --------------------------------------------------------------------------- keywords

HOSTILE: dict[str, list[str]] = {
    "$TOT": ["1000000000000000000", "-1", "0", "abc", "", " ", "1e5", "99", "101", "2"],
    "$PAR": ["-1", "0", "1", "3", "1000000000000000000", "x", ""],
    "$P1B": ["7", "0", "-8", "12", "24", "64", "128", "*", "x", "", "1000000000000"],
    "$BYTEORD": ["garbage", "1,2", "3,4,1,2", "1,1,1,1", "", "9,9,9,9", "4,3,2,1", "2,1"],
    "$DATATYPE": ["Q", "A", "D", "I", "F", "", "f"],
    "$MODE": ["C", "U", "", "x"],
    "$P1R": ["0", "-1", "x", "1e400", "1", "nan", "0.5", "1000000000000000000000"],
    "$P1E": ["4,0", "x", "1,2,3", "-1,0", "1e308,1", "4", "", "400,1", "4,-1"],
    "$P1G": ["0", "-1", "x", "1e-300", "inf", " "],
    "$P1N": ["", "Time", "FSC-A"],
    "$SPILLOVER": ["1000000000,a", "2,x", ",,,", "2,1,2,1,0,0", "-3", "1,1,nan", "2,1,1,1,0,0,1"],
    "$TIMESTEP": ["nan", "inf", "0", "x", ""],
    "$NEXTDATA": ["58", "-1", "1000000000000", "1", "x"],
    "$BEGINSTEXT": ["0", "58", "-1", "1000000000"],
}


def _real_keywords(content: bytes, tot: int) -> tuple[dict[str, str], bytes]:
    """Keywords (with their $) and the first ``tot`` events' bytes of a real file."""
    text_start, text_end, data_start, _ = _offsets(content)
    pairs = _fcs_text.parse_text(content[text_start : text_end + 1], [])
    per_event = (_data_needed(content) - data_start) // int(
        dict((k, v) for k, v, _ in pairs)["tot"]
    )
    skip = {"begindata", "enddata", "nextdata", "beginstext", "endstext"}
    kw = {("$" if std else "") + k.upper(): v for k, v, std in pairs if k not in skip}
    kw["$TOT"] = str(tot)
    return kw, content[data_start : data_start + tot * per_event]


def _keyword_bases() -> dict[str, tuple[dict[str, str], bytes]]:
    mixed = np.random.default_rng(1).integers(0, 2**8, (20, 4), dtype=np.uint64)
    ascii_kw = keywords_for(2, [4, 3], datatype="A")
    return {
        "line": _real_keywords(LINE, 20),
        "data1": _real_keywords(DATA1, 20),
        "comp": _real_keywords(COMP, 20),
        "mixed": (keywords_for(20, [8, 16, 32, 24]), pack_ints(mixed, [1, 2, 4, 3], "<")),
        "ascii": (ascii_kw, b"  12 34 560  7"),
    }


def test_hostile_keyword_values(fuzz: Fuzzer) -> None:
    for base, (kw, data) in _keyword_bases().items():
        fuzz.check(f"{base} unchanged", build_fcs(kw, data))
        for key, values in HOSTILE.items():
            for value in values:
                fuzz.check(f"{base} {key}={value!r}", build_fcs({**kw, key: value}, data))
            if key in kw:
                fuzz.check(
                    f"{base} without {key}",
                    build_fcs({k: v for k, v in kw.items() if k != key}, data),
                )


def test_broken_text_offsets_and_data_sets(fuzz: Fuzzer) -> None:
    kw, data = _keyword_bases()["line"]
    one = build_fcs(kw, data)
    first = build_fcs(kw, data, nextdata=len(one))
    two = first + one
    begin = int(re.search(rb"\$BEGINDATA/(\d{10})", two).group(1))
    end = int(re.search(rb"\$ENDDATA/(\d{10})", two).group(1))
    values = [0, 1, 57, begin - 1, begin + 1, end - 1, end + 1, len(two), 10**9, 9_999_999_999]
    texts = [f"{v:010d}".encode() for v in values] + [b"-000000001", b" " * 10, b"abcdefghij"]
    for key in (b"$BEGINDATA", b"$ENDDATA", b"$NEXTDATA"):
        at = two.index(key) + len(key) + 1
        for text in texts:
            mutant = two[:at] + text + two[at + 10 :]
            for dataset in (0, 1, 2):
                fuzz.check(f"{key!r}={text!r} dataset={dataset}", mutant, dataset=dataset)
    # A chain that loops back onto itself must end, not spin.
    looped = first.replace(b"$NEXTDATA/%010d" % len(one), b"$NEXTDATA/%010d" % 0)
    fuzz.check("nextdata 0 in first", looped + one, dataset=1)


# --------------------------------------------------------------------------- random bytes


def test_random_bytes(fuzz: Fuzzer) -> None:
    rng = np.random.default_rng(7)
    for i in range(250):
        blob = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        fuzz.expect_error(f"random blob {i}", blob)
        prefix = b"FCS3.1    " if i % 2 else b"FCS2.0          58"
        fuzz.check(f"FCS + random {i}", prefix + blob)
    for name in ("line", "data1", "macsquant"):
        content = REAL[name]
        for i in range(120):
            pos = int(rng.integers(0, len(content)))
            chunk = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
            fuzz.check(
                f"{name} random chunk {i} at {pos}",
                content[:pos] + chunk + content[pos + len(chunk) :],
            )


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(LINE)), st.integers(0, 8), st.binary(max_size=8)),
        min_size=1,
        max_size=4,
    )
)
def test_hypothesis_splices(edits: list[tuple[int, int, bytes]]) -> None:
    content = LINE
    for pos, drop, insert in edits:
        content = content[:pos] + insert + content[pos + drop :]
    with tempfile.TemporaryDirectory() as folder:
        fuzzer = Fuzzer(Path(folder))
        fuzzer.check(f"splices {edits}", content)
        fuzzer.assert_clean()
