"""The shipped Treg / B-cell / plasma-cell templates against known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import load_template, shipped_templates

READOUTS = [  # (template, panel, population, reference)
    ("treg", "treg", "Treg", "CD4+ T cells"),
    ("bcell", "bcell", "B cells", "Live lymphocytes"),
    ("plasma", "bcell", "Plasmablasts", "B cells"),
]


def test_shipped_templates_are_valid_and_named() -> None:
    names = shipped_templates()
    assert {"treg", "bcell", "plasma"} <= set(names)
    treg = load_template("treg")
    assert {"Treg", "CD4+ T cells", "FOXP3+ Treg", "Naive Treg", "Memory Treg",
            "Conventional CD4", "Live lymphocytes"} <= set(treg.population_names)
    assert treg["Treg"].pct_of[0] == "CD4+ T cells"
    bcell = load_template("bcell")
    assert {"B cells", "Naive B", "Unswitched memory B", "Switched memory B",
            "Double negative B", "Transitional B"} <= set(bcell.population_names)
    assert bcell["B cells"].pct_of == ("Live lymphocytes",)
    assert load_template("plasma")["Plasmablasts"].pct_of[0] == "B cells"


def _accuracy(cohort, *, adaptive: bool) -> pd.DataFrame:
    out = cohort.out
    truth = cohort.truth.set_index(["sample_id", "population"])["count"]
    rows = []
    for _, r in cohort.samplesheet.iterrows():
        sample = ip.read_fcs(out / r.path)
        labels = pd.read_parquet(out / r.path.replace(".fcs", ".labels.parquet"))
        # The truth table leaves out events of planted time artefacts, as QC would.
        keep = ~labels["artefact"].to_numpy()
        for template, panel, pop, ref in READOUTS:
            if panel != r.panel:
                continue
            res = ip.gate_sample(sample, template, event_mask=keep, adaptive=adaptive)
            counts = res.counts.set_index("population")["count"]
            # frozen absolute scatter windows find no lymphocytes on other instruments' scales
            est = 100 * counts[pop] / counts[ref] if counts[ref] else np.nan
            true = 100 * truth[(r.sample_id, pop)] / truth[(r.sample_id, ref)]
            rows.append({"sample_id": r.sample_id, "instrument": sample.cytometer,
                         "readout": f"{pop} % {ref}", "estimate": est, "truth": true,
                         "rel_error": abs(est - true) / true,
                         "n_true": truth[(r.sample_id, pop)]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def instrument_cohort(tmp_path_factory):
    """The realistic simulator on four instruments' scales (FACSCanto II, LSRFortessa, CytoFLEX
    2^20, Aurora-like 2^22), 100k events per tube so plasmablasts number in the hundreds."""
    from immunoprofile.datasets import simulate_cohort

    return simulate_cohort(tmp_path_factory.mktemp("instruments"), patients_per_arm=2,
                           n_events=100_000, visits=(0, 2, 12), seed=5,
                           instruments=["fortessa", "canto", "cytoflex", "aurora"])


# Issue #12's bounds (median / max relative error) on all three readouts. Plasmablasts meet them
# since the plasma template 2.1.0 gates them from lymphocytes and blasts (they are larger and
# more granular than resting lymphocytes; the lymphocyte ellipse lost ~6% of them).
BOUNDS = {"B cells % Live lymphocytes": (0.03, 0.15), "Treg % CD4+ T cells": (0.03, 0.15),
          "Plasmablasts % B cells": (0.03, 0.15)}


@pytest.mark.slow
def test_templates_recover_truth_on_realistic_instruments(instrument_cohort) -> None:
    sheet = instrument_cohort.samplesheet
    assert len(sheet) >= 40 and sheet["batch"].nunique() >= 4  # per-batch staining shifts
    adaptive = _accuracy(instrument_cohort, adaptive=True)
    frozen = _accuracy(instrument_cohort, adaptive=False)
    # Plasmablast errors only where the truth holds at least the rare-population threshold
    # (DOMAIN: fewer than 50 is flagged rare; one cell in 20 is already 5%).
    counted = adaptive[(adaptive["n_true"] >= 50) | ~adaptive["readout"].str.startswith("Pl")]
    summary = pd.concat({
        "adaptive": counted.groupby("readout")["rel_error"].agg(["median", "max"]),
        "frozen at defaults": frozen.groupby("readout")["rel_error"].agg(["median", "max"]),
    }, axis=1)
    print("\nrelative error against the truth table (realistic simulator, 4 instruments):\n"
          + summary.round(4).to_string())
    print(adaptive.pivot_table(index="readout", columns="instrument", values="rel_error",
                               aggfunc="median").round(4).to_string())
    assert adaptive["instrument"].nunique() >= 3
    for readout, errors in counted.groupby("readout")["rel_error"]:
        median, most = BOUNDS[readout]
        assert errors.median() <= median, (readout, errors.median())
        assert errors.max() <= most, (readout, errors.max())
    # Frozen at their defaults (absolute windows) the same templates fail on other scales.
    lost = frozen[frozen["instrument"].isin(["CytoFLEX LX", "Aurora"])]
    assert lost["estimate"].isna().mean() > 0.5


def _rewrite(src: ip.FCSSample, path: Path, *, drop: tuple[str, ...] = (),
             unlabel: tuple[str, ...] = ()) -> Path:
    """A copy of a sample without some channels, or with some $PnS labels blanked."""
    keep = [i for i, m in enumerate(src.channels["marker"]) if m not in drop]
    pnn = [src.channels["pnn"][i] for i in keep]
    pns = ["" if src.channels["marker"][i] in unlabel else src.channels["pns"][i] for i in keep]
    spill = src.spillover.loc[[c for c in src.spillover.index if c in pnn],
                              [c for c in src.spillover.columns if c in pnn]]
    return write_fcs(path, src.events[:, keep], pnn, pns, spillover=spill)


def test_missing_required_marker_names_template_and_file(sim_cohort, tmp_path: Path) -> None:
    row = sim_cohort.samplesheet.query("panel == 'treg'").iloc[0]
    src = ip.read_fcs(sim_cohort.out / row.path)
    path = _rewrite(src, tmp_path / "no_cd25.fcs", unlabel=("CD25",))
    with pytest.raises(ip.PanelError, match=r"template treg needs CD25; file .*no_cd25.fcs has: "):
        ip.gate_sample(path, "treg")


def test_optional_markers_absent_are_not_measured(sim_cohort, tmp_path: Path) -> None:
    """No CD24 and no FSC-H: transitional B not measured, singlets skipped, the rest gates."""
    row = sim_cohort.samplesheet.query("panel == 'bcell'").iloc[0]
    src = ip.read_fcs(sim_cohort.out / row.path)
    full = ip.gate_sample(src, "bcell").counts.set_index("population")
    path = _rewrite(src, tmp_path / "lean.fcs", drop=("CD24", "FSC-H"))
    lean = ip.gate_sample(path, "bcell").counts.set_index("population")
    assert not lean.loc["Transitional B", "measured"]
    assert "needs CD24" in lean.loc["Transitional B", "note"]
    assert not lean.loc["Singlets", "measured"]
    assert "parent events passed through" in lean.loc["Singlets", "note"]
    assert lean.loc["Naive B", "measured"]
    b_full = full.loc["B cells", "pct_of_live_lymphocytes"]
    b_lean = lean.loc["B cells", "pct_of_live_lymphocytes"]
    assert b_lean == pytest.approx(b_full, rel=0.05)  # doublets removed by lineage gates mostly


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["treg", "bcell", "plasma"])
def test_corpus_files_lack_markers_with_a_clear_error(name: str) -> None:
    from conftest import corpus_path

    path = corpus_path("flowkit", "100715.fcs")
    with pytest.raises(ip.PanelError) as err:
        ip.gate_sample(path, name)
    msg = str(err.value)
    assert msg.startswith(f"template {name} needs ")
    assert "100715.fcs has: " in msg and "V655-A=CD4" in msg


def test_adaptive_positions_are_recorded(sim_cohort) -> None:
    row = sim_cohort.samplesheet.query("panel == 'treg'").iloc[0]
    res = ip.gate_sample(sim_cohort.out / row.path, "treg")
    pos = res.gate_positions
    assert pos["T cells"]["method"] == "valley" and not pos["T cells"]["fallback"]
    assert 1.5 <= pos["T cells"]["placed"]["CD3"] <= 3.8
    assert pos["Lymphocytes"]["method"] == "scatter" and not pos["Lymphocytes"]["fallback"]
    assert {"shift_CD25", "shift_CD127"} <= set(pos["Treg"]["placed"])
    # The applied template holds the placed gates (what plots draw).
    assert res.template["T cells"].gate.mins[0] == pos["T cells"]["placed"]["CD3"]
    assert "adaptive_fallback" in res.counts.columns


def test_fallback_when_data_do_not_support_the_gate(sim_cohort) -> None:
    """Only T cells (no CD3− peak): the CD3 valley falls back to the default and says so."""
    row = sim_cohort.samplesheet.query("panel == 'treg'").iloc[0]
    sample = ip.read_fcs(sim_cohort.out / row.path)
    labels = pd.read_parquet(sim_cohort.out / row.path.replace(".fcs", ".labels.parquet"))
    only_t = labels["label"].astype(str).str.startswith(("cd4", "cd8", "treg")).to_numpy()
    res = ip.gate_sample(sample, "treg", event_mask=only_t)
    rec = res.gate_positions["T cells"]
    assert rec["fallback"] and "peak" in rec["reason"]
    assert res.template["T cells"].gate.mins[0] == 2.5
    table = res.counts.set_index("population")
    assert bool(table.loc["T cells", "adaptive_fallback"])
    assert np.isfinite(table.loc["Treg", "pct_of_cd4pos_t_cells"])


@pytest.fixture(scope="session")
def alt_cohort(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    from alt_cohort import make_alt_cohort

    return make_alt_cohort(tmp_path_factory.mktemp("alt"), n_samples=24, n_events=30_000,
                           seed=0)


@pytest.mark.slow
def test_templates_on_an_independently_generated_cohort(alt_cohort: pd.DataFrame) -> None:
    """Detector-named channels ($PnS only carries markers), another spillover, other shapes,
    scatter scale and staining shifts: the same accuracy bounds."""
    readouts = {"treg": [("treg", "Treg", "CD4+ T cells", "true_treg_pct_of_cd4")],
                "bcell": [("bcell", "B cells", "Live lymphocytes", "true_b_pct_of_live"),
                          ("plasma", "Plasmablasts", "B cells", "true_pb_pct_of_b")]}
    rows = []
    for _, r in alt_cohort.iterrows():
        sample = ip.read_fcs(r.path)
        assert sample.channels["pnn"].str.match(r"^(FSC|SSC|Time|[A-Z]{1,2}\d{3})").all()
        for template, pop, ref, column in readouts[r.panel]:
            counts = ip.gate_sample(sample, template).counts.set_index("population")["count"]
            est = 100 * counts[pop] / counts[ref]
            rows.append({"readout": pop, "rel_error": abs(est - r[column]) / r[column]})
    table = pd.DataFrame(rows).groupby("readout")["rel_error"].agg(["median", "max", "size"])
    print("\nindependent cohort, relative error:\n" + table.round(4).to_string())
    assert (table["size"] == 24).all()
    assert (table["median"] < 0.05).all()
    assert (table["max"] < 0.20).all()


def test_empty_parent_falls_back_instead_of_failing(sim_cohort) -> None:
    row = sim_cohort.samplesheet.query("panel == 'treg'").iloc[0]
    sample = ip.read_fcs(sim_cohort.out / row.path)
    res = ip.gate_sample(sample, "treg", event_mask=np.zeros(sample.n_events, bool))
    assert res.gate_positions["Lymphocytes"]["fallback"]
    assert res.counts["count"].fillna(0).sum() == 0
