"""Landmark-based adaptive gates: ``tail``, ``relative`` and ``scatter``.

Synthetic numpy data written to small FCS files and gated through ``gate_sample`` (the path a
real file takes), plus the real LSRII B-cell file and FlowSOM's lymphocyte export when
../shared/real-data is present. DOMAIN.md §2 ("Real data differ from these tidy numbers") says
why each method exists: IgD− memory cells form a shoulder, not a second peak; plasmablasts are
CD20-intermediate; scatter positions depend on the instrument.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import SHARED

import immunoprofile as ip
from immunoprofile.gating.landmarks import NoLandmark, find_valley, tail_threshold
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import RectangleGate, template_from_dict

# Fixed TEXT keywords: the files do not depend on the clock.
_META = {"$DATE": "01-JAN-2026", "$BTIM": "00:00:00", "$CYT": "synthetic"}
_HEAD = """
name: t
version: "1"
compensation: file
transforms:
  default: {type: arcsinh, cofactor: 150}
  FSC-A: linear
  FSC-H: linear
  SSC-A: linear
populations:
"""
_SCATTER_POLYGON = ("[[38000, 2000], [100000, 2000], [100000, 38000], [70000, 42000], "
                    "[38000, 30000]]")


def _gate(tmp_path: Path, columns: dict[str, np.ndarray], populations: str, *,
          pnr: float = 262144.0, adaptive: bool = True) -> ip.GatingResult:
    """Write ``columns`` (marker: linear values) as an FCS file and gate it."""
    names = list(columns)
    scatter = {"FSC-A", "FSC-H", "SSC-A"}
    pnn = [n if n in scatter else f"FL{i}-A" for i, n in enumerate(names)]
    pns = ["" if n in scatter else n for n in names]
    path = write_fcs(tmp_path / "s.fcs", np.column_stack([columns[n] for n in names]), pnn,
                     pns, metadata=_META, pnr=[pnr] * len(names))
    template = template_from_dict(yaml.safe_load(_HEAD + populations))
    return ip.gate_sample(ip.read_fcs(path), template, adaptive=adaptive)


def _lin(arcsinh_values: np.ndarray) -> np.ndarray:
    """Linear values whose arcsinh(x/150) are the given ones."""
    return 150 * np.sinh(arcsinh_values)


# -- tail ------------------------------------------------------------------------------------
def _igd_shoulder(n: int = 20_000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """80 % naive B (IgD N(4, 0.35)), 20 % IgD− memory as a shoulder (N(3.0, 0.45))."""
    rng = np.random.default_rng(seed)
    naive = rng.random(n) < 0.8
    igd = np.where(naive, rng.normal(4.0, 0.35, n), rng.normal(3.0, 0.45, n))
    return igd, naive


def test_tail_cuts_a_shoulder_where_the_valley_falls_back(tmp_path) -> None:
    igd, naive = _igd_shoulder()
    with pytest.raises(NoLandmark):
        find_valley(igd, (1.5, 4.0))  # a shoulder, not a second peak
    pops = """
  - name: IgD+
    gate: {range: {IgD: [3.0, null]}}
    adaptive: {method: tail, window: [1.5, 4.0], side: low}
  - name: IgD+ by valley
    gate: {range: {IgD: [3.0, null]}}
    adaptive: {method: valley, window: [1.5, 4.0]}
"""
    res = _gate(tmp_path, {"IgD": _lin(igd)}, pops)
    assert res.gate_positions["IgD+ by valley"]["fallback"]
    rec = res.gate_positions["IgD+"]
    assert not rec["fallback"], rec["reason"]
    placed = rec["placed"]
    assert placed["rule_IgD"] in ("slope", "mirror")
    assert placed["peak_IgD"] == pytest.approx(4.0, abs=0.1)
    assert placed["sd_IgD"] == pytest.approx(0.35, abs=0.05)
    assert 3.0 < placed["IgD"] < 3.6
    inside = res.membership["IgD+"]
    wrong = np.mean(inside != naive)
    assert wrong < 0.10, f"misclassified {wrong:.3f} at {placed['IgD']:.3f}"
    # The template's gate in the result is the placed one.
    gate = next(p.gate for p in res.template.populations if p.name == "IgD+")
    assert isinstance(gate, RectangleGate) and gate.mins[0] == placed["IgD"]


@pytest.mark.parametrize("rule", ["slope", "mirror", "sd"])
def test_tail_rules_separate_the_shoulder(rule: str) -> None:
    igd, naive = _igd_shoulder(seed=4)
    got = tail_threshold(igd, "low", window=(1.5, 4.0), rule=rule, n_sd=2.5)
    assert got["rule"] in (rule, "mirror")
    assert np.mean((igd >= got["threshold"]) != naive) < 0.12


def test_tail_high_side_ends_the_live_peak_before_a_dead_tail() -> None:
    rng = np.random.default_rng(5)
    live = rng.random(10_000) < 0.9
    # Live cells dye-negative around 0; dead cells a smear from dim to bright, no valley.
    dye = np.where(live, rng.normal(0.4, 0.4, live.size), rng.uniform(1.2, 5.5, live.size))
    got = tail_threshold(dye, "high", window=(1.0, 3.0))
    assert got["peak"] == pytest.approx(0.4, abs=0.15)
    assert 1.2 < got["threshold"] < 2.0
    assert np.mean((dye < got["threshold"]) != live) < 0.05


def test_tail_prefers_a_real_valley_and_falls_back_outside_its_window(tmp_path) -> None:
    rng = np.random.default_rng(6)
    n = 10_000
    igd = np.where(rng.random(n) < 0.6, rng.normal(4.0, 0.35, n), rng.normal(1.0, 0.4, n))
    cd27 = rng.normal(0.6, 0.5, n)
    pops = """
  - name: IgD split
    gate:
      quadrant:
        dims: [IgD, CD27]
        dividers: [3.0, 2.8]
        quadrants:
          IgD+ CD27-: [+, -]
          IgD- CD27-: [-, -]
    adaptive:
      method: tail
      dims:
        IgD: {window: [1.5, 4.0], side: low}
        CD27: {window: [1.2, 3.2], side: high}
  - name: Narrow
    gate: {range: {IgD: [3.0, null]}}
    adaptive: {method: tail, window: [1.5, 2.0], side: low, prefer_valley: false}
"""
    res = _gate(tmp_path, {"IgD": _lin(igd), "CD27": _lin(cd27)}, pops)
    pos = res.gate_positions["IgD+ CD27-"]
    placed = pos["placed"]
    assert placed["rule_IgD"] == "valley"
    assert 1.8 < placed["IgD"] < 3.0
    # CD27 is one negative peak: its high end; both quadrants share one placement.
    assert placed["rule_CD27"] in ("slope", "mirror")
    assert 1.2 < placed["CD27"] < 3.2
    assert res.gate_positions["IgD- CD27-"]["placed"] == placed
    narrow = res.gate_positions["Narrow"]
    assert narrow["fallback"] and "outside [1.5, 2.0]" in narrow["reason"]


# -- relative --------------------------------------------------------------------------------
def _b_cells(n: int = 30_000, seed: int = 7) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """B cells (arcsinh scale): naive, memory, transitional and 3 % CD20-intermediate
    plasmablasts (CD20 ≈ 1/20 of mature B, well above CD20-negative)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(4, n, p=[0.65, 0.27, 0.05, 0.03])  # naive, memory, transitional, PB
    pb = kind == 3
    cd20 = np.where(pb, rng.normal(2.9, 0.6, n), rng.normal(5.8, 0.35, n))
    cd27 = np.choose(kind, [rng.normal(0.6, 0.5, n), rng.normal(3.8, 0.4, n),
                            rng.normal(0.6, 0.5, n), rng.normal(5.3, 0.4, n)])
    cd38 = np.choose(kind, [rng.normal(3.0, 0.4, n), rng.normal(1.4, 0.5, n),
                            rng.normal(5.1, 0.4, n), rng.normal(6.7, 0.4, n)])
    cols = {"CD19": _lin(rng.normal(4.5, 0.3, n)), "CD20": _lin(cd20), "CD27": _lin(cd27),
            "CD38": _lin(cd38)}
    return cols, pb


_PB = """
  - name: B cells
    gate: {range: {CD19: [2.0, null]}}
  - name: Plasmablasts
    parent: B cells
    gate: {rectangle: {CD20: [null, 2.5], CD27: [4.2, null], CD38: [5.0, null]}}
    adaptive:
      method: relative
      reference: B cells
      dims:
        CD20: {below: 3.0}
        CD27: {above: 2.0}
        CD38: {above: 3.0}
      window: {CD38: [%s]}
"""


def test_relative_keeps_cd20_intermediate_plasmablasts(tmp_path) -> None:
    cols, pb = _b_cells()
    res = _gate(tmp_path, cols, _PB % "3.5, 8.0")
    rec = res.gate_positions["Plasmablasts"]
    assert not rec["fallback"], rec["reason"]
    placed = rec["placed"]
    assert placed["stat_CD20"] == "peak" and placed["stat_CD38"] == "median"
    assert placed["ref_CD20"] == pytest.approx(5.8, abs=0.1)
    assert placed["ref_sd_CD20"] == pytest.approx(0.35, abs=0.05)  # the clean upper half
    # Between the plasmablasts (2.9) and the mature-B peak (5.8), above most plasmablasts.
    assert 3.9 < placed["max_CD20"] < 5.1
    assert placed["max_CD20"] == pytest.approx(placed["ref_CD20"] - 3 * placed["ref_sd_CD20"])
    assert placed["min_CD27"] > 1.5 and 3.5 <= placed["min_CD38"] <= 8.0
    got = res.membership["Plasmablasts"]
    recovered, false = got[pb].mean(), got[~pb].sum()
    assert recovered >= 0.9, f"{recovered:.3f} of plasmablasts kept"
    assert false < 0.1 * pb.sum()
    # The absolute "CD20 negative" default misses most of them.
    frozen = _gate(tmp_path, cols, _PB % "3.5, 8.0", adaptive=False)
    assert frozen.membership["Plasmablasts"][pb].mean() < 0.5


def test_relative_records_a_partial_fallback(tmp_path) -> None:
    cols, _ = _b_cells(n=5000)
    res = _gate(tmp_path, cols, _PB % "7.5, 8.0")  # the CD38 cut cannot land there
    rec = res.gate_positions["Plasmablasts"]
    assert not rec["fallback"]
    assert "CD38" in rec["placed"]["partial_fallback"]
    gate = next(p.gate for p in res.template.populations if p.name == "Plasmablasts")
    assert gate.mins[2] == 5.0  # CD38 kept at its default
    assert gate.maxs[0] == rec["placed"]["max_CD20"]


# -- scatter ---------------------------------------------------------------------------------
def _scatter_clouds(lym_fsc: float, pnr: float, ssc_gain: float, n: int = 20_000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FSC-A, SSC-A and labels of lymphocytes, monocytes, granulocytes, debris and dead
    cells, placed relative to the lymphocytes' FSC (DOMAIN.md §5 ratios); the SSC detector
    has its own gain, and values saturate at $PnR."""
    rng = np.random.default_rng(seed)
    k = {"lym": 0.6, "mono": 0.15, "gran": 0.05, "debris": 0.15, "dead": 0.05}
    sizes = {name: int(f * n) for name, f in k.items()}
    label = np.repeat(list(sizes), list(sizes.values()))
    L = lym_fsc
    fsc = np.concatenate([
        rng.normal(L, 0.12 * L, sizes["lym"]), rng.normal(1.55 * L, 0.15 * L, sizes["mono"]),
        rng.normal(1.8 * L, 0.18 * L, sizes["gran"]),
        np.minimum(rng.lognormal(np.log(0.18 * L), 0.5, sizes["debris"]), 0.45 * L),
        rng.normal(0.62 * L, 0.1 * L, sizes["dead"])])
    ssc = ssc_gain * np.concatenate([
        rng.normal(0.23 * L, 0.06 * L, sizes["lym"]), rng.normal(0.77 * L, 0.12 * L,
                                                                 sizes["mono"]),
        rng.normal(2.0 * L, 0.38 * L, sizes["gran"]),
        rng.lognormal(np.log(0.09 * L), 0.8, sizes["debris"]),
        rng.normal(0.37 * L, 0.1 * L, sizes["dead"])])
    return np.clip(fsc, -1000, pnr), np.clip(ssc, -1000, pnr), label


_LYMPH = f"""
  - name: Lymphocytes
    gate: {{polygon: {{dims: [FSC-A, SSC-A], vertices: {_SCATTER_POLYGON}}}}}
    adaptive: {{method: scatter, components: 5, distance_square: 18.4}}
  - name: Singlets
    parent: Lymphocytes
    if_missing: pass
    gate:
      polygon:
        dims: [FSC-A, FSC-H]
        vertices: [[1, 0.75], [290000, 217500], [290000, 290000], [1, 1.1]]
    adaptive: {{method: singlets, window: [0.6, 1.3], n_mad: 5}}
  - name: Lymphocytes (absolute window)
    gate: {{polygon: {{dims: [FSC-A, SSC-A], vertices: {_SCATTER_POLYGON}}}}}
    adaptive:
      method: mixture
      window: [[30000, 160000], [1000, 60000]]
      components: 5
      distance_square: 18.4
"""


@pytest.mark.parametrize(("lym_fsc", "pnr", "ssc_gain"), [
    (45_000, 262144, 1.0),     # FACSCanto, low FSC voltage
    (65_000, 262144, 0.8),     # Fortessa
    (400_000, 1048576, 1.3),   # CytoFLEX-like
    (1_000_000, 4194304, 0.6),  # Aurora-like
])
def test_scatter_finds_lymphocytes_on_any_instrument_scale(tmp_path, lym_fsc, pnr,
                                                           ssc_gain) -> None:
    fsc, ssc, label = _scatter_clouds(lym_fsc, pnr, ssc_gain)
    fsc_h = fsc * np.random.default_rng(1).normal(0.9, 0.03, fsc.size)
    res = _gate(tmp_path, {"FSC-A": fsc, "FSC-H": fsc_h, "SSC-A": ssc}, _LYMPH, pnr=pnr)
    rec = res.gate_positions["Lymphocytes"]
    assert not rec["fallback"], rec["reason"]
    got = res.membership["Lymphocytes"]
    assert got[label == "lym"].mean() >= 0.9
    assert got[label == "mono"].mean() < 0.1
    assert got[label == "debris"].mean() < 0.05
    placed = rec["placed"]
    assert placed["range_x"] == pnr
    assert placed["landmark_x"] == pytest.approx(lym_fsc, rel=0.1)
    assert placed["center_x"] == pytest.approx(lym_fsc, rel=0.1)
    assert placed["fraction_x"] == pytest.approx(lym_fsc / pnr, rel=0.1)
    assert placed["fit_x_min"] < lym_fsc < placed["fit_x_max"]
    # The singlet band reaches the instrument's range (not a fixed 18-bit top).
    singlets = res.membership["Singlets"]
    assert not res.gate_positions["Singlets"]["fallback"]
    assert singlets[label == "lym"].mean() >= 0.9
    if lym_fsc > 160_000:  # an absolute window misses the cloud on other scales
        fixed = res.gate_positions["Lymphocytes (absolute window)"]
        missed = res.membership["Lymphocytes (absolute window)"][label == "lym"].mean()
        assert fixed["fallback"] or missed < 0.5


def _real(*parts: str) -> Path:
    path = SHARED.joinpath("real-data", *parts)
    if not path.is_file():
        pytest.skip(f"../shared/real-data is absent: {path} not found (it sits beside the "
                    "clone in CI; set IMMUNOPROFILE_SHARED to its parent folder)")
    return path


def _scatter_on(path: Path) -> tuple[ip.GatingResult, np.ndarray, np.ndarray]:
    sample = ip.read_fcs(path)
    template = template_from_dict(yaml.safe_load(_HEAD + _LYMPH.split("  - name: Lymph"
                                                                      "ocytes (absolute")[0]))
    res = ip.gate_sample(sample, template)
    names = sample.channel_names
    ev = sample.events
    return res, ev[:, names.index("FSC-A")].astype(float), ev[:, names.index("SSC-A")]


def test_scatter_on_a_real_lsrii_b_cell_file() -> None:
    res, fsc, ssc = _scatter_on(_real("flowai_bcells", "Bcells1.fcs"))
    rec = res.gate_positions["Lymphocytes"]
    assert not rec["fallback"], rec["reason"]
    placed = rec["placed"]
    # The dense low-SSC cloud of this LSRII file sits at FSC-A ≈ 125k, SSC-A ≈ 50k.
    assert 100_000 < placed["center_x"] < 150_000
    assert 35_000 < placed["center_y"] < 75_000
    got = res.membership["Lymphocytes"]
    assert 0.3 < got.mean() < 0.6
    lf, ls = np.log10(np.clip(fsc, 1, None)), np.log10(np.clip(ssc, 1, None))
    cloud = (lf > 4.95) & (lf < 5.15) & (ls > 4.5) & (ls < 4.85)
    myeloid = (lf > 5.15) & (ls > 4.95) & (fsc < 0.98 * 262144) & (ssc < 0.98 * 262144)
    assert got[cloud].mean() > 0.95
    assert got[myeloid].mean() < 0.05


def test_scatter_on_a_lymphocyte_gated_export() -> None:
    # Every event of this FlowJo export lies in its lymphocyte gate: one cloud, kept.
    res, _, _ = _scatter_on(_real("flowsom_68983", "68983.fcs"))
    rec = res.gate_positions["Lymphocytes"]
    assert not rec["fallback"], rec["reason"]
    assert res.membership["Lymphocytes"].mean() > 0.85


# -- bounds: which end moves, cuts that cross, `within` -----------------------------------------
def test_cuts_that_cross_fall_back_and_closed_ranges_need_a_bound(tmp_path) -> None:
    cols, _ = _b_cells(n=5000)
    crossing = """
  - name: B cells
    gate: {range: {CD19: [2.0, null]}}
  - name: Odd
    parent: B cells
    gate: {rectangle: {CD38: [1.0, 7.0]}}
    adaptive:
      method: relative
      reference: B cells
      dims:
        CD38: {below: 1.0, above: 1.0}
"""
    rec = _gate(tmp_path, cols, crossing).gate_positions["Odd"]
    assert rec["fallback"] and "cross" in rec["reason"]  # never an empty gate in silence
    closed = """
  - name: B cells
    gate: {range: {CD19: [2.0, null]}}
  - name: CD20 band
    parent: B cells
    gate: {range: {CD20: [3.0, 9.0]}}
    adaptive: {method: tail, window: [2.0, 6.0], side: low}
"""
    with pytest.raises(ip.ImmunoprofileError, match="bound: min or max"):
        _gate(tmp_path, cols, closed)
    with pytest.raises(ip.ImmunoprofileError, match="bound is min or max"):
        _gate(tmp_path, cols, closed.replace("side: low}", "side: low, bound: upper}"))
    placed = _gate(tmp_path, cols, closed.replace("side: low}", "side: low, bound: min}"))
    gate = placed.template["CD20 band"].gate
    assert gate.maxs[0] == 9.0 and gate.mins[0] == placed.gate_positions["CD20 band"][
        "placed"]["CD20"]


def test_within_at_the_top_level_applies_to_every_dimension(tmp_path) -> None:
    cols, _ = _b_cells(n=20_000)
    spec = """
  - name: B cells
    gate: {range: {CD19: [2.0, null]}}
  - name: Bright CD20
    parent: B cells
    gate: {rectangle: {CD20: [3.0, null], CD38: [null, 9.0]}}
    adaptive: {method: tail, side: low, window: [1.0, 6.0], %s
               dims: {CD20: {}}}
"""
    everything = _gate(tmp_path, cols, spec % "").gate_positions["Bright CD20"]["placed"]
    only_low_cd38 = _gate(tmp_path, cols, spec % "within: {CD38: [null, 4.0]},")
    placed = only_low_cd38.gate_positions["Bright CD20"]["placed"]
    # The plasmablasts (CD38 high, CD20 intermediate) are left out of the peak's data.
    assert placed["CD20"] != everything["CD20"]


def test_scatter_skips_debris_and_is_stable_when_a_few_events_change() -> None:
    # A real FlowJo 9 file whose debris cloud lies as far below the diagonal as the
    # lymphocytes and scatters less: it must not be taken for them; and the gate placed on
    # a parent missing 1% of its events moves its count by about 1%, not by 20%.
    path = _real("flowworkspacedata", "a2004_O1T2pb05i_A2_A02.fcs")
    sample = ip.read_fcs(path)
    template = template_from_dict(yaml.safe_load(_HEAD + _LYMPH))
    counts = []
    for seed in range(4):
        keep = np.random.default_rng(seed).random(sample.n_events) > 0.01
        res = ip.gate_sample(sample, template, event_mask=keep)
        assert res.gate_positions["Lymphocytes"]["placed"]["center_x"] > 22_800  # not debris
        counts.append(int(res.counts.set_index("population").loc["Lymphocytes", "count"]))
    assert (max(counts) - min(counts)) / np.mean(counts) < 0.05, counts


def test_among_finds_the_cut_on_another_population_and_applies_it_to_the_parent(
        tmp_path) -> None:
    """`among:` the cut is found on the parent's events that also belong to a population gated
    earlier (the lymphocytes), then applied to every event of the parent (lymphocytes and
    blasts): autofluorescent monocytes, which widen the CD19− peak, no longer move the cut
    into the CD19-dim blasts, and the blasts outside the lymphocyte gate are still gated."""
    rng = np.random.default_rng(11)
    n_lym, n_mono, n_blast = 16_000, 10_000, 600
    ssc = np.concatenate([rng.normal(15_000, 3_000, n_lym), rng.normal(50_000, 6_000, n_mono),
                          rng.normal(40_000, 2_000, n_blast)])
    cd19 = np.concatenate([
        np.where(rng.random(n_lym) < 0.15, rng.normal(4.5, 0.4, n_lym),
                 rng.normal(0.3, 0.5, n_lym)),
        rng.normal(0.7, 0.5, n_mono),       # CD19− but autofluorescent
        rng.normal(2.2, 0.25, n_blast)])    # CD19-dim blasts, outside the lymphocyte gate
    cols = {"FSC-A": rng.normal(70_000, 8_000, ssc.size), "SSC-A": ssc, "CD19": _lin(cd19)}
    spec = """
  - name: Lymphocytes
    gate: {range: {SSC-A: [null, 30000]}}
  - name: B cells
    parent: Lymphocytes
    gate: {range: {CD19: [2.2, null]}}
    adaptive: {method: tail, window: [1.0, 4.0], side: high, prefer_valley: false}
  - name: B lineage
    gate: {range: {CD19: [2.2, null]}}
    adaptive: {method: tail, window: [1.0, 4.0], side: high, prefer_valley: false%s}
"""
    res = _gate(tmp_path, cols, spec % ", among: Lymphocytes")
    pos = res.gate_positions
    assert pos["B lineage"]["placed"]["CD19"] == pos["B cells"]["placed"]["CD19"]
    assert pos["B lineage"]["n_events"] == ssc.size  # applied to every event of the parent
    assert pos["B lineage"]["n_among"] == res.membership["Lymphocytes"].sum()  # found on these
    blasts = np.arange(ssc.size) >= n_lym + n_mono
    kept = (res.membership["B lineage"] & blasts).sum() / n_blast
    alone = _gate(tmp_path, cols, spec % "")
    assert alone.gate_positions["B lineage"]["placed"]["CD19"] \
        > pos["B lineage"]["placed"]["CD19"] + 0.3
    kept_alone = (alone.membership["B lineage"] & blasts).sum() / n_blast
    assert kept >= 0.95 and kept > kept_alone + 0.15, (kept, kept_alone)


def test_mixture_cloud_fits_each_window_once_and_answers_the_same() -> None:
    """Templates gating one file fit the same scatter window again (B-cell and plasma
    lymphocytes): the kept fit gives the same cloud as a fresh one; another window is fitted
    anew; the kept arrays cannot be changed by a caller."""
    from immunoprofile.gating import landmarks

    rng = np.random.default_rng(4)
    pts = np.vstack([rng.normal([60e3, 15e3], [8e3, 4e3], (4000, 2)),
                     rng.normal([100e3, 50e3], [12e3, 10e3], (1500, 2))])
    peak = np.array([60e3, 15e3])
    landmarks._MIXTURES.clear()
    fresh = landmarks.mixture_cloud(pts, peak)
    again = landmarks.mixture_cloud(pts.copy(), peak, merge_distance=3.0)
    assert len(landmarks._MIXTURES) == 1
    np.testing.assert_array_equal(fresh[0], again[0])
    np.testing.assert_array_equal(fresh[1], again[1])
    assert fresh[2] == again[2]
    landmarks._MIXTURES.clear()
    assert np.array_equal(landmarks.mixture_cloud(pts, peak)[1], fresh[1])  # fit again: same
    other = pts.copy()
    other[0, 0] += 1.0
    landmarks.mixture_cloud(other, peak)
    assert len(landmarks._MIXTURES) == 2
    weights, _, _ = landmarks._mixture(np.ascontiguousarray(pts), 5)
    with pytest.raises(ValueError):
        weights[0] = 1.0


def test_mixture_cloud_in_threads() -> None:
    """Samples gated in threads (a dask worker's) share the kept fits: eight threads fitting
    more windows than are kept get the answers of a fit made alone, and nothing breaks."""
    from concurrent.futures import ThreadPoolExecutor

    from immunoprofile.gating import landmarks

    rng = np.random.default_rng(9)
    windows = [rng.normal([60e3, 15e3], [8e3, 4e3], (600, 2)) for _ in range(6)]
    peak = np.array([60e3, 15e3])
    landmarks._MIXTURES.clear()
    alone = [landmarks.mixture_cloud(w, peak)[1] for w in windows]
    landmarks._MIXTURES.clear()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: landmarks.mixture_cloud(windows[i % 6], peak)[1],
                            range(48)))
    for i, cov in enumerate(got):
        np.testing.assert_array_equal(cov, alone[i % 6])
    assert len(landmarks._MIXTURES) <= 4
