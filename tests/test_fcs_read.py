"""read_fcs on the small real files in tests/data and on FCS files built byte by byte here.

The synthetic files pin each decoding rule (integer widths, bit masks, byte orders, $PnE,
$PnG, $TIMESTEP, data sets, offset quirks) to exact values; wherever FlowKit can read the
same file its raw events must agree too.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import flowkit
import numpy as np
import pandas as pd
import pytest

from immunoprofile.errors import FCSError
from immunoprofile.io.fcs import FCSSample, FCSWarning, read_fcs
from immunoprofile.panel import canonical_marker

DATA = Path(__file__).resolve().parent / "data"
LINE = DATA / "data_set_simple_line_100.fcs"
DATA1 = DATA / "data1.fcs"
COMP = DATA / "test_comp_example.fcs"
MACSQUANT = DATA / "SG_2014-09-26_Duplicate_Names.fcs"


# --------------------------------------------------------------------------- builders


def build_fcs(
    keywords: dict[str, str],
    data: bytes,
    *,
    version: str = "3.1",
    delim: str = "/",
    header_data: bool = True,
    text_data: bool = True,
    end_error: int = 0,
    nextdata: int = 0,
    header_tail: str = "       0       0",
) -> bytes:
    """One FCS data set: HEADER, TEXT (``keywords`` + offsets) and ``data``.

    ``header_data=False`` writes HEADER DATA offsets of 0, ``text_data=False`` leaves out
    $BEGINDATA/$ENDDATA, ``end_error`` is added to the stated DATA end offset.
    """

    def text(begin: int, end: int) -> bytes:
        kw = dict(keywords)
        if text_data:
            kw["$BEGINDATA"] = f"{begin:010d}"
            kw["$ENDDATA"] = f"{end:010d}"
        kw["$NEXTDATA"] = f"{nextdata:010d}"
        esc = delim * 2
        body = "".join(
            f"{k.replace(delim, esc)}{delim}{v.replace(delim, esc)}{delim}" for k, v in kw.items()
        )
        return (delim + body).encode("utf-8")

    text_start = 58
    text_end = text_start + len(text(0, 0)) - 1
    begin, end = text_end + 1, text_end + len(data) + end_error
    head_begin, head_end = (begin, end) if header_data else (0, 0)
    offsets = "".join(f"{v:>8}" for v in (text_start, text_end, head_begin, head_end))
    header = f"FCS{version}    {offsets}{header_tail}".encode("ascii")
    assert len(header) == 58
    return header + text(begin, end) + data


def keywords_for(
    tot: int,
    bits: list[int],
    *,
    datatype: str = "I",
    byteord: str = "1,2,3,4",
    ranges: list[int] | None = None,
    pne: list[str] | None = None,
    png: list[str] | None = None,
    names: list[str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """Standard keywords for ``len(bits)`` channels; extra keyword names have no ``$``."""
    par = len(bits)
    kw = {
        "$TOT": str(tot),
        "$PAR": str(par),
        "$MODE": "L",
        "$DATATYPE": datatype,
        "$BYTEORD": byteord,
    }
    for j in range(par):
        n = j + 1
        kw[f"$P{n}N"] = names[j] if names else f"CH{n}"
        kw[f"$P{n}B"] = str(bits[j])
        kw[f"$P{n}R"] = str(ranges[j] if ranges else 2 ** min(bits[j], 32))
        kw[f"$P{n}E"] = pne[j] if pne else "0,0"
        if png:
            kw[f"$P{n}G"] = png[j]
    kw.update(extra)
    return kw


def pack_ints(raw: np.ndarray, widths: list[int], order: str) -> bytes:
    """Event-major bytes of unsigned ints, ``widths`` in bytes per channel."""
    little = np.ascontiguousarray(raw.astype("<u8")).view(np.uint8).reshape(raw.shape[0], -1, 8)
    parts = []
    for j, w in enumerate(widths):
        chunk = little[:, j, :w]
        parts.append(chunk if order == "<" else chunk[:, ::-1])
    return np.hstack(parts).tobytes()


def write(tmp_path: Path, content: bytes, name: str = "x.fcs") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def read_quiet(path: Path, **kwargs: int) -> FCSSample:
    """read_fcs that fails the test on any FCSWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FCSWarning)
        return read_fcs(path, **kwargs)


def read_warned(path: Path, *phrases: str, **kwargs: int) -> FCSSample:
    """read_fcs that must warn with every phrase (and the file name) in one message."""
    with pytest.warns(FCSWarning) as record:
        sample = read_fcs(path, **kwargs)
    messages = [str(w.message) for w in record]
    assert any(all(p in m for p in phrases) and str(path) in m for m in messages), messages
    assert sample.warnings == list(dict.fromkeys(messages))
    return sample


def flowkit_raw(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sample = flowkit.Sample(str(path))
        except Exception:
            sample = flowkit.Sample(str(path), ignore_offset_error=True)
    return sample.get_events(source="raw")


def rng_ints(shape: tuple[int, int], high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=np.uint64)


# --------------------------------------------------------------------------- real files


def test_simple_float_file_attributes() -> None:
    sample = read_quiet(LINE)
    assert isinstance(sample, FCSSample)
    assert sample.path == LINE
    assert sample.events.dtype == np.float32 and sample.events.flags.c_contiguous
    assert sample.events.shape == (100, 2) and sample.n_events == 100
    raw = LINE.read_bytes()[497:1297]
    np.testing.assert_array_equal(sample.events, np.frombuffer(raw, "<f4").reshape(100, 2))
    assert list(sample.channels.columns) == ["pnn", "pns", "pnr", "pne", "png", "pnb", "marker"]
    assert sample.channel_names == ["channel_A", "channel_B"]
    assert list(sample.channels["pns"]) == ["", ""]
    assert list(sample.channels["pnr"]) == [262144.0, 262144.0]
    assert list(sample.channels["pne"]) == ["0,0", "0,0"]
    assert list(sample.channels["png"]) == [1.0, 1.0]
    assert list(sample.channels["pnb"]) == [32, 32]
    assert list(sample.channels.index) == [0, 1]
    assert sample.metadata["tot"] == "100" and sample.metadata["datatype"] == "F"
    assert all(k == k.lower() and not k.startswith("$") for k in sample.metadata)
    assert all(isinstance(v, str) for v in sample.metadata.values())
    assert sample.spillover is None and sample.warnings == [] and sample.dataset == 0
    assert sample.cytometer is None and sample.acquisition_date is None


def test_fcs20_integer_log_file_equals_flowkit() -> None:
    sample = read_quiet(DATA1)
    assert sample.events.shape == (13367, 8)
    assert sample.cytometer == "FACSCalibur"
    assert sample.acquisition_date == "23-Aug-02"
    assert sample.metadata["byteord"] == "4,3,2,1"
    ch = sample.channels
    assert ch.loc[0, "pnn"] == "FSC-H" and ch.loc[0, "pns"] == "FSC-Height"
    assert ch.loc[0, "png"] == 3.67 and ch.loc[2, "pne"] == "4,0"
    expected_markers = [canonical_marker(n, s) for n, s in zip(ch["pnn"], ch["pns"], strict=True)]
    assert list(ch["marker"]) == expected_markers
    assert ch.loc[2, "marker"] == "CD4"
    # Hand decoding of event 0: 16-bit big-endian, masked to $PnR=1024, then
    # FL1-H (log, 4 decades, offset 0 -> 1) and FSC-H (linear, gain 3.67).
    first = np.frombuffer(DATA1.read_bytes()[2560 : 2560 + 16], ">u2").astype(int) & 1023
    assert sample.events[0, 2] == np.float32(10 ** (4 * first[2] / 1024.0))
    assert sample.events[0, 0] == np.float32(first[0] / 3.67)
    np.testing.assert_array_equal(sample.events, flowkit_raw(DATA1).astype(np.float32))


def test_spillover_timestep_and_off_by_one_offset() -> None:
    sample = read_warned(COMP, "off by one")
    assert sample.events.shape == (10703, 18)
    spill = sample.spillover
    assert isinstance(spill, pd.DataFrame) and spill.shape == (14, 14)
    assert list(spill.index) == list(spill.columns)
    assert set(spill.index) <= set(sample.channel_names)
    parts = sample.metadata["spill"].split(",")
    assert list(spill.index) == parts[1:15]
    assert spill.iloc[0, 1] == float(parts[16]) and spill.iloc[13, 13] == float(parts[-1])
    np.testing.assert_array_equal(np.diag(spill.to_numpy()), np.ones(14))
    time = sample.channel_names.index("Time")
    raw_time = np.frombuffer(COMP.read_bytes()[3318 : 3318 + 18 * 4 * 3], ">f4").reshape(3, 18)
    assert sample.channels.loc[time, "png"] == 0.01  # recorded, but FlowKit ignores it...
    expected = (raw_time[:, time].astype(np.float64) * 0.01).astype(np.float32)
    np.testing.assert_array_equal(sample.events[:3, time], expected)  # ...and scales by $TIMESTEP
    np.testing.assert_allclose(sample.events, flowkit_raw(COMP), rtol=1e-6)


def test_escaped_delimiters_and_repeated_keyword() -> None:
    sample = read_warned(MACSQUANT, "off by one")
    assert sample.events.shape == (8129, 9)
    assert sample.channels.loc[7, "pns"] == "GFP/FITC-A"  # written GFP//FITC-A
    assert sample.metadata["p4f"] == "561//10 nm"  # written 561////10 nm
    assert sample.metadata["vol"] == "20083"  # $VOL appears twice with one value: no warning
    assert not any("more than once" in w for w in sample.warnings)
    assert sample.cytometer == "MACSQuant VYB,2.5.1345.9863"
    np.testing.assert_allclose(sample.events, flowkit_raw(MACSQUANT), rtol=1e-6)


# --------------------------------------------------------------------------- integer data


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("bits", [8, 16, 32])
def test_uniform_integer_widths(tmp_path: Path, bits: int, order: str) -> None:
    raw = rng_ints((50, 3), 2**bits, seed=bits)
    byteord = "1,2,3,4" if order == "<" else "4,3,2,1"
    kw = keywords_for(50, [bits] * 3, byteord=byteord)
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [bits // 8] * 3, order)))
    sample = read_quiet(path)
    np.testing.assert_array_equal(sample.events, raw.astype(np.float32))
    np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


@pytest.mark.parametrize("order", ["<", ">"])
def test_24_bit_integers(tmp_path: Path, order: str) -> None:
    raw = rng_ints((40, 2), 2**24, seed=24)
    raw[0] = [0xABCDEF, 0x010203]
    kw = keywords_for(40, [24, 24], byteord="1,2,3,4" if order == "<" else "4,3,2,1")
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [3, 3], order)))
    sample = read_quiet(path)
    assert sample.events[0, 0] == 0xABCDEF and sample.events[0, 1] == 0x010203
    np.testing.assert_array_equal(sample.events, raw.astype(np.float32))
    assert list(sample.channels["pnb"]) == [24, 24]


@pytest.mark.parametrize("order", ["<", ">"])
def test_mixed_integer_widths(tmp_path: Path, order: str) -> None:
    bits = [8, 16, 32, 16]
    raw = np.column_stack([rng_ints((30, 1), 2**b, seed=b)[:, 0] for b in bits])
    kw = keywords_for(30, bits, byteord="1,2,3,4" if order == "<" else "4,3,2,1")
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [b // 8 for b in bits], order)))
    sample = read_quiet(path)
    np.testing.assert_array_equal(sample.events, raw.astype(np.float32))
    np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


def test_mixed_widths_with_24_bit(tmp_path: Path) -> None:
    bits = [16, 24, 8, 32]
    raw = np.column_stack([rng_ints((25, 1), 2**b, seed=b)[:, 0] for b in bits])
    kw = keywords_for(25, bits, byteord="4,3,2,1")
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [b // 8 for b in bits], ">")))
    np.testing.assert_array_equal(read_quiet(path).events, raw.astype(np.float32))


def test_bit_masks_follow_pnr(tmp_path: Path) -> None:
    # $PnR 1024 in 16 bits keeps the low 10 bits; 1000 rounds up to 1024; 65536 masks nothing.
    raw = np.array([[0xFFFF, 0xFFFF, 0xFFFF], [1023, 1024, 5000]], dtype=np.uint64)
    kw = keywords_for(2, [16, 16, 16], ranges=[1024, 1000, 65536])
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [2, 2, 2], "<")))
    sample = read_quiet(path)
    np.testing.assert_array_equal(sample.events, [[1023, 1023, 65535], [1023, 0, 5000]])
    np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


def test_odd_byte_order_permutation(tmp_path: Path) -> None:
    raw = np.array([[0x123456, 0xA0B0C0]], dtype=np.uint64)  # exact in float32
    little = pack_ints(raw, [4, 4], "<")
    # 3,4,1,2: the file's first byte is the third least significant, and so on.
    data = bytes(little[i + k] for i in (0, 4) for k in (2, 3, 0, 1))
    path = write(tmp_path, build_fcs(keywords_for(1, [32, 32], byteord="3,4,1,2"), data))
    np.testing.assert_array_equal(read_quiet(path).events, [[0x123456, 0xA0B0C0]])


# --------------------------------------------------------------------------- float data


@pytest.mark.parametrize("order", ["<", ">"])
def test_float_and_double_data(tmp_path: Path, order: str) -> None:
    values = np.random.default_rng(3).normal(1000, 500, size=(64, 3))
    byteord = "1,2,3,4" if order == "<" else "4,3,2,1"
    for datatype, dtype, bits in (("F", "f4", 32), ("D", "f8", 64)):
        kw = keywords_for(64, [bits] * 3, datatype=datatype, byteord=byteord)
        path = write(tmp_path, build_fcs(kw, values.astype(order + dtype).tobytes()), datatype)
        sample = read_quiet(path)
        np.testing.assert_array_equal(sample.events, values.astype(dtype).astype(np.float32))
        np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


@pytest.mark.parametrize("bits", [16, 32])  # 16 bits goes through a lookup table
def test_log_amplification_and_gains(tmp_path: Path, bits: int) -> None:
    raw = np.array([[0, 0, 0, 0], [512, 512, 512, 100], [1023, 1023, 1023, 1000]], np.uint64)
    kw = keywords_for(
        3,
        [bits] * 4,
        byteord="4,3,2,1",
        ranges=[1024] * 4,
        pne=["4,0", "3,2", "4,1", "0,0"],
        png=["1", "1", "2.5", "4"],
    )
    path = write(tmp_path, build_fcs(kw, pack_ints(raw, [bits // 8] * 4, ">"), version="3.0"))
    sample = read_quiet(path)
    x = raw.astype(np.float64)
    expected = np.column_stack(
        [
            10 ** (4 * x[:, 0] / 1024) * 1,  # offset 0 means 1 (FCS 3.1)
            10 ** (3 * x[:, 1] / 1024) * 2,
            10 ** (4 * x[:, 2] / 1024) * 1 / 2.5,  # FlowKit divides log channels by $PnG too
            x[:, 3] / 4,  # linear: divided by the gain
        ]
    ).astype(np.float32)
    np.testing.assert_array_equal(sample.events, expected)
    assert sample.events[0, 0] == 1.0 and sample.events[2, 3] == 250.0
    np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


def test_time_channel_uses_timestep_not_gain(tmp_path: Path) -> None:
    values = np.array([[100.0, 5.0], [200.0, 7.0]])
    kw = keywords_for(2, [32, 32], datatype="F", names=["Time", "FSC-A"], png=["0.01", "2"])
    kw["$TIMESTEP"] = "0.5"
    path = write(tmp_path, build_fcs(kw, values.astype("<f4").tobytes()))
    sample = read_quiet(path)
    np.testing.assert_array_equal(sample.events, [[50.0, 2.5], [100.0, 3.5]])
    np.testing.assert_array_equal(sample.events, flowkit_raw(path).astype(np.float32))


@pytest.mark.parametrize("fixed", [True, False])
def test_ascii_data(tmp_path: Path, fixed: bool) -> None:
    if fixed:
        kw = keywords_for(2, [4, 3], datatype="A")
        data = b"  12 34 560  7"
    else:
        kw = keywords_for(2, [32, 32], datatype="A")
        kw["$P1B"] = kw["$P2B"] = "*"
        data = b"12,34\n560 7\n"
    sample = read_quiet(write(tmp_path, build_fcs(kw, data)))
    np.testing.assert_array_equal(sample.events, [[12, 34], [560, 7]])


# --------------------------------------------------------------------------- quirks


def _two_channel_float(tot: int = 4) -> tuple[dict[str, str], bytes, np.ndarray]:
    values = np.arange(tot * 2, dtype=np.float32).reshape(tot, 2) * 1.5
    return keywords_for(tot, [32, 32], datatype="F"), values.tobytes(), values


def test_several_data_sets(tmp_path: Path) -> None:
    kw1, data1, values1 = _two_channel_float(4)
    kw2, data2, values2 = _two_channel_float(6)
    first = build_fcs(kw1, data1)
    first = build_fcs(kw1, data1, nextdata=len(first))
    path = write(tmp_path, first + build_fcs(kw2, data2, version="3.0"))
    sample = read_warned(path, "2 data sets")
    np.testing.assert_array_equal(sample.events, values1)
    assert sample.dataset == 0
    second = read_quiet(path, dataset=1)
    assert second.dataset == 1
    np.testing.assert_array_equal(second.events, values2)
    for bad in (2, -1):
        with pytest.raises(FCSError, match="data set"):
            read_fcs(path, dataset=bad)


def test_header_data_offsets_zero(tmp_path: Path) -> None:
    kw, data, values = _two_channel_float()
    path = write(tmp_path, build_fcs(kw, data, header_data=False))
    sample = read_warned(path, "HEADER", "$BEGINDATA")
    np.testing.assert_array_equal(sample.events, values)


@pytest.mark.parametrize("padding", [b"", b"\0"])
def test_off_by_one_end_offset(tmp_path: Path, padding: bytes) -> None:
    # The end offset names the byte after the data, whether or not the file has it.
    kw, data, values = _two_channel_float()
    path = write(tmp_path, build_fcs(kw, data + padding, end_error=1 - len(padding)))
    np.testing.assert_array_equal(read_warned(path, "off by one").events, values)


def test_header_and_text_disagree(tmp_path: Path) -> None:
    kw, data, values = _two_channel_float()
    content = bytearray(build_fcs(kw, data))
    content[26:34] = b"%8d" % (int(content[26:34]) - 10)  # HEADER DATA start 10 bytes early
    sample = read_warned(write(tmp_path, bytes(content)), "HEADER", "TEXT", "disagree")
    np.testing.assert_array_equal(sample.events, values)


def test_blank_analysis_offsets(tmp_path: Path) -> None:
    kw, data, values = _two_channel_float()
    path = write(tmp_path, build_fcs(kw, data, header_tail=" " * 16))
    np.testing.assert_array_equal(read_warned(path, "ANALYSIS").events, values)


def test_text_encoding_and_other_delimiters(tmp_path: Path) -> None:
    kw, data, _ = _two_channel_float()
    kw["$P1S"] = "CD4 – naïve|memory"
    kw["NOTE"] = "a|b||c"
    path = write(tmp_path, build_fcs(kw, data, delim="|"))
    sample = read_quiet(path)
    assert sample.channels.loc[0, "pns"] == "CD4 – naïve|memory"
    assert sample.metadata["note"] == "a|b||c"
    # Not UTF-8: fall back to latin-1.
    content = build_fcs({**kw, "$P1S": "CD4 mu"}, data).replace(b"CD4 mu", b"CD4 \xb5u")
    assert read_quiet(write(tmp_path, content)).channels.loc[0, "pns"] == "CD4 µu"


def test_repeated_channel_names_are_kept(tmp_path: Path) -> None:
    kw, data, values = _two_channel_float()
    kw["$P1N"] = kw["$P2N"] = "FL1-A"
    sample = read_warned(write(tmp_path, build_fcs(kw, data)), "repeated", "FL1-A")
    assert sample.channel_names == ["FL1-A", "FL1-A"]
    np.testing.assert_array_equal(sample.events, values)


@pytest.mark.parametrize("labels", ["CH1,CH2", "CD3,CD8", "1,2"])
def test_spillover_labels_map_to_pnn(tmp_path: Path, labels: str) -> None:
    kw, data, _ = _two_channel_float()
    kw.update({"$P1S": "CD3", "$P2S": "CD8", "$SPILLOVER": f"2,{labels},1,0.25,0.5,1"})
    spill = read_quiet(write(tmp_path, build_fcs(kw, data))).spillover
    assert spill is not None
    assert list(spill.index) == list(spill.columns) == ["CH1", "CH2"]
    np.testing.assert_array_equal(spill.to_numpy(), [[1, 0.25], [0.5, 1]])


def test_unusable_spillover_is_dropped_with_warning(tmp_path: Path) -> None:
    kw, data, values = _two_channel_float()
    kw["$SPILLOVER"] = "2,CH1,NOPE,1,0,0,1"
    sample = read_warned(write(tmp_path, build_fcs(kw, data)), "SPILLOVER", "NOPE")
    assert sample.spillover is None
    np.testing.assert_array_equal(sample.events, values)


def test_supplemental_text_keywords_are_merged(tmp_path: Path) -> None:
    kw, data, _ = _two_channel_float()
    stext = b"/OPERATOR NOTE/from stext/$CYT/ignored/"
    kw.update({"$BEGINSTEXT": "0000000000", "$ENDSTEXT": "0000000000", "$CYT": "Aurora"})
    content = build_fcs(kw, data)
    begin = len(content)
    kw.update({"$BEGINSTEXT": f"{begin:010d}", "$ENDSTEXT": f"{begin + len(stext) - 1:010d}"})
    sample = read_quiet(write(tmp_path, build_fcs(kw, data) + stext))
    assert sample.metadata["operator note"] == "from stext"
    assert sample.cytometer == "Aurora"  # the primary TEXT wins


# --------------------------------------------------------------------------- errors


def test_errors_name_the_file(tmp_path: Path) -> None:
    kw, data, _ = _two_channel_float()
    good = build_fcs(kw, data)
    cases = {
        "missing.fcs": None,
        "notfcs.fcs": b"PK\x03\x04" + b"\0" * 100,
        "empty.fcs": b"",
        "truncated.fcs": good[:-5],
        "header_only.fcs": good[:58],
        "text_cut.fcs": good[:80],
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(FCSError, match=name):
            read_fcs(path)


def test_empty_data_set(tmp_path: Path) -> None:
    kw = keywords_for(0, [32, 32], datatype="F")
    sample = read_quiet(write(tmp_path, build_fcs(kw, b"")))
    assert sample.events.shape == (0, 2) and sample.n_events == 0
