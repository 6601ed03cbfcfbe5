"""Cytometric bead arrays: kit, bead gating, standard curves, censoring, failures, CLI, plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from immunoprofile.cba import (
    BeadError,
    KitError,
    load_kit,
    measure_beads,
    quantify,
    read_cba_sheet,
    resolve_channel,
)
from immunoprofile.cba_fit import CurveError, fit_curve, logistic, quant_range
from immunoprofile.cli import main
from immunoprofile.datasets._cba import (
    CYTOKINE_TRUTH,
    _true_concentrations,
    simulate_cba_plate,
)
from immunoprofile.errors import PanelError, SampleSheetError
from immunoprofile.io.fcs import read_fcs
from immunoprofile.io.fcs_write import write_fcs

KIT = "bd_cba_th1_th2_th17"
ANALYTES = ("IL-17A", "IFN-γ", "TNF", "IL-10", "IL-6", "IL-4", "IL-2")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from immunoprofile.datasets import simulate_cohort

    out = tmp_path_factory.mktemp("cba_cohort")
    return simulate_cohort(out, patients_per_arm=2, n_events=5000, visits=(0, 12), seed=21)


def _spiked_truth(n: int, seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    return {f"S{i:02d}": {a: float(math.exp(rng.uniform(math.log(4), math.log(9000))))
                          for a in ANALYTES} for i in range(n)}


@pytest.fixture(scope="module")
def spiked(tmp_path_factory):
    """One plate of 30 samples spanning 4-9,000 pg/mL, a third of them diluted 1:2."""
    out = tmp_path_factory.mktemp("cba_spiked")
    truth = _spiked_truth(30, seed=3)
    dilution = {sid: 2.0 for sid in list(truth)[::3]}
    sheet = simulate_cba_plate(out, truth, plate="S1", plate_index=7, seed=4, dilution=dilution)
    samples = sheet["role"] == "sample"
    sheet.loc[samples, "patient_id"] = sheet.loc[samples, "sample_id"]
    sheet.loc[samples, "arm"] = "SOC"
    sheet.loc[samples, "timepoint"] = "W0"
    sheet.to_csv(out / "sheet.csv", index=False)
    long = pd.DataFrame([(s, a, c) for s, d in truth.items() for a, c in d.items()],
                        columns=["sample_id", "analyte", "true_pg_ml"])
    return out, quantify(out / "sheet.csv", KIT, out / "run"), long


# ------------------------------------------------------------------------------------ kit

def test_shipped_kit_lists_analytes_dimmest_first(cohort):
    kit = load_kit(KIT)
    assert kit.analytes == ANALYTES
    assert kit.classification == ("APC",) and kit.reporter == "PE"
    assert kit.standards_pg_ml == (0, 20, 40, 80, 156, 312.5, 625, 1250, 2500, 5000)
    # The bead order is the order of the cluster centres along APC in a real file.
    sheet = cohort.cba_sheet
    path = cohort.out / "cba" / sheet.loc[sheet["role"] == "sample", "path"].iloc[0]
    centres = measure_beads(read_fcs(path), kit)["centres"]
    assert list(centres) == list(ANALYTES)
    assert np.all(np.diff(list(centres.values())) > 0)


def test_kit_errors_name_the_problem(tmp_path):
    with pytest.raises(KitError, match=r"neither a file nor a shipped kit.*bd_cba_th1_th2_th17"):
        load_kit("no_such_kit")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nchannels: {classification: [APC, APC-Cy7, PE]}\n"
                   "analytes: [IL-6, {name: IL-8}]\nfit: {models: [6PL]}\n")
    with pytest.raises(KitError) as err:
        load_kit(bad)
    for part in ("classification", "fit.models", "analytes[1]"):
        assert part in str(err.value)


def test_channels_resolve_by_fluorochrome_against_pnn_and_pns(tmp_path):
    ev = np.ones((20, 5), np.float32)
    write_fcs(tmp_path / "calibur.fcs", ev, ["FSC-H", "SSC-H", "FL2-H", "FL3-H", "FL4-H"],
              [""] * 5)
    s = read_fcs(tmp_path / "calibur.fcs")
    assert [resolve_channel(s, n) for n in ("FSC-A", "SSC-A", "PE", "APC", "APC-Cy7")] == \
        [0, 1, 2, 4, 3]
    write_fcs(tmp_path / "pns.fcs", ev, ["FSC-A", "SSC-A", "R1-A", "Y1-A", "x"],
              ["", "", "apc", "Pe", ""])
    s = read_fcs(tmp_path / "pns.fcs")
    assert resolve_channel(s, "APC") == 2 and resolve_channel(s, "PE") == 3
    assert resolve_channel(s, "APC", {"APC": ["x"]}) == 4  # a kit alias comes first
    with pytest.raises(PanelError, match="no APC-Cy7 channel"):
        resolve_channel(s, "APC-Cy7")
    write_fcs(tmp_path / "two.fcs", ev, ["FSC-A", "SSC-A", "PE-A", "PE A", "APC-A"], [""] * 5)
    with pytest.raises(PanelError, match="ambiguous"):
        resolve_channel(read_fcs(tmp_path / "two.fcs"), "PE")


# ------------------------------------------------------------------------------ curves

def test_fit_recovers_a_5pl_and_the_range_rule():
    x = np.array([0, 20, 40, 80, 156, 312.5, 625, 1250, 2500, 5000.0])
    y = logistic(x, 50, 40_000, 800, 1.2, 0.85)
    curve = fit_curve(x, y)
    assert curve.model == "5PL" and curve.aicc["5PL"] < curve.aicc["4PL"]
    assert curve.params["ec50"] == pytest.approx(800, rel=0.02)
    assert curve.concentration(curve.response(np.array([33.0, 2000.0]))) == \
        pytest.approx([33.0, 2000.0], rel=1e-4)
    assert curve.concentration([10.0, 1e6])[0] == 0 and np.isinf(curve.concentration([1e6])[0])
    rec = np.array([np.nan, 75, 110, 100, 100, 100, 100, 100, 100, 130])
    assert quant_range(x, rec) == (20, 2500)  # 75% is fine at the LLOQ, 130% is not a ULOQ
    rec[1:4] = [60, 60, 125]
    assert quant_range(x, rec) == (80, 2500)
    with pytest.raises(CurveError, match="consecutive standards"):
        quant_range(x, np.array([np.nan, 100, 50, 100, 50, 100, 50, 100, 50, 100]))
    with pytest.raises(CurveError, match="does not rise"):
        fit_curve(x, y[::-1])


# ------------------------------------------------------------------- accuracy and censoring

def test_spiked_plate_recovers_in_range_concentrations(spiked):
    _, result, truth = spiked
    assert result.exit_code == 0 and result.errors.empty
    m = result.cytokines.merge(truth, on=["sample_id", "analyte"])
    assert len(m) == 30 * 7
    measured = m[m["conc_pg_ml"].notna()]
    assert len(measured) > 100
    rel = (measured["conc_pg_ml"] / measured["true_pg_ml"] - 1).abs()
    assert rel.median() < 0.15
    assert rel.median() < 0.05  # what the simulated plate actually allows
    # Dilution: the reported value and the limits are × dilution.
    diluted = m[m["dilution"] == 2]
    neat = m[m["dilution"] == 1].groupby("analyte")["lloq"].first()
    assert (diluted["lloq"] == 2 * diluted["analyte"].map(neat)).all()
    assert not diluted.empty and diluted["conc_pg_ml"].notna().any()


def test_censored_values_are_flagged_never_reported(spiked):
    _, result, truth = spiked
    m = result.cytokines.merge(truth, on=["sample_id", "analyte"])
    well = m["true_pg_ml"] / m["dilution"]
    lloq, uloq = m["lloq"] / m["dilution"], m["uloq"] / m["dilution"]
    assert m.loc[well < 0.8 * lloq, "below_lloq"].all()
    assert m.loc[well > 1.25 * uloq, "above_uloq"].all()
    assert (well[m["below_lloq"]] < 1.25 * lloq[m["below_lloq"]]).all()
    censored = m["below_lod"] | m["above_uloq"]
    assert m["below_lloq"].sum() > 20 and m["above_uloq"].any()
    assert m.loc[censored, "conc_pg_ml"].isna().all()
    assert m.loc[~censored, "conc_pg_ml"].notna().all()
    assert (m.loc[censored, ["lloq", "uloq", "lod"]].notna()).all().all()
    # LoD from the plate's blank wells, below the LLOQ; a value under it is censored
    assert (m["lod"] < m["lloq"]).all() and (m.loc[m["below_lod"], "below_lloq"]).all()
    assert (well[m["below_lod"]] < 2.0 * (m["lod"] / m["dilution"])[m["below_lod"]]).all()
    # Between LoD and LLOQ the value is reported (extrapolated), flagged, and near the truth.
    between = m[m["below_lloq"] & ~m["below_lod"]]
    assert len(between) > 10
    ratio = between["conc_pg_ml"] / between["true_pg_ml"]
    assert ratio.between(0.5, 2.0).mean() > 0.9
    assert set(between["note"]) == {"< LLOQ: extrapolated below the lowest standard"}
    # The convenience column is marked imputed wherever it is not a measurement.
    below = m[m["below_lod"]]
    assert below["imputed"].all() and (below["conc_imputed"] == below["lod"] / 2).all()
    assert not m.loc[~m["below_lod"], "imputed"].any()
    assert set(below["note"]) <= {"< LOD"}


def test_standards_recover_within_acceptance(spiked):
    _, result, _ = spiked
    st = result.standards
    std = st[st["role"] == "standard"]
    assert len(std) == 10 * 7 and (result.curves["status"] == "ok").all()
    in_range = std[std["in_range"]]
    assert len(in_range) >= 0.85 * len(std[std["expected_pg_ml"] > 0])
    at_lloq = in_range["expected_pg_ml"] == in_range.groupby("analyte")["expected_pg_ml"] \
        .transform("min")
    assert in_range.loc[~at_lloq, "recovery_pct"].between(80, 120).all()
    assert in_range.loc[at_lloq, "recovery_pct"].between(70, 130).all()
    assert in_range["accepted"].all()
    blank = st[st["role"] == "blank"]
    assert len(blank) == 2 * 7 and blank["accepted"].all()  # two blanks, read below the LLOQ
    assert set(result.curves["fit_model"]) <= {"4PL", "5PL"}


def test_cohort_plate_against_truth(cohort):
    sheet = cohort.cba_sheet
    assert set(sheet["role"]) == {"standard", "blank", "sample"}
    assert (sheet["role"] == "sample").sum() == 16 and sheet["plate"].nunique() == 1
    result = quantify(cohort.out / "cba" / "cba_sheet.csv", KIT)
    assert result.exit_code == 0
    m = result.cytokines.merge(cohort.cytokine_truth, on=["sample_id", "analyte"])
    assert len(m) == 16 * 7 and m["patient_id_x"].equals(m["patient_id_y"])
    assert m.loc[m["true_pg_ml"] < 0.8 * m["lloq"], "below_lloq"].all()
    assert m.loc[m["below_lod"], "conc_pg_ml"].isna().all()
    # serum levels sit mostly under the kit's 20 pg/mL LLOQ: the LoD from the plate's blank
    # wells lets values between the two be reported (flagged), not censored
    assert (m["lod"] < m["lloq"]).all()
    # the LoD: the blanks' mean + 3 SD through the curve, never below the kit's stated LoD
    assert result.curves["lod_source"].isin(["blanks", "kit"]).all()
    stated = load_kit(KIT).lod_pg_ml
    assert (result.curves["lod_pg_ml"] >= result.curves["analyte"].map(stated) - 1e-9).all()
    between = m[m["below_lloq"] & ~m["below_lod"]]
    assert len(between) > 0.2 * len(m) and between["conc_pg_ml"].notna().all()
    ratio = between["conc_pg_ml"] / between["true_pg_ml"]
    assert ratio.between(0.5, 2.0).mean() > 0.8, ratio.describe()
    got = m[~m["below_lloq"] & m["conc_pg_ml"].notna()]
    if len(got):
        assert ((got["conc_pg_ml"] / got["true_pg_ml"] - 1).abs().median()) < 0.15
    files = result.files
    assert (files["status"] == "ok").all() and files["n_events"].between(2200, 4200).all()


def test_simulated_truth_follows_domain(tmp_path):
    from immunoprofile.datasets._cohort import SimulatedCohort

    n = 400
    rng = np.random.default_rng(0)
    design = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(n)], "arm": "SOC",
                           "patient_index": range(1, n + 1), "enrolment_day": 0,
                           "tel_response": np.nan, "il2_response": np.nan,
                           "baseline_pb_of_b": 1 / (1 + np.exp(-(np.log(0.04 / 0.96)
                                                                 + rng.normal(0, 0.9, n))))})
    design.loc[:49, "arm"] = "IL2"
    design.loc[:49, "il2_response"] = 1.0
    ss = pd.DataFrame({"patient_id": design["patient_id"], "timepoint": "W0", "week": 0,
                       "days_since_last_il2_dose": np.where(np.arange(n) < 50, 1.0, np.nan)})
    cohort = SimulatedCohort(out=tmp_path, samplesheet=ss, truth=pd.DataFrame(),
                             design=design, effects=pd.DataFrame())
    t = _true_concentrations(cohort, seed=1)
    soc = t[t["arm"] == "SOC"]
    for analyte, (_, median, sd) in CYTOKINE_TRUTH.items():
        c = np.log(soc.loc[soc["analyte"] == analyte, "true_pg_ml"])
        assert math.exp(c.median()) == pytest.approx(median, rel=0.2)
        assert c.std() == pytest.approx(math.hypot(sd, 0.3), rel=0.2)
    il2 = t[t["analyte"] == "IL-2"].groupby("arm")["true_pg_ml"].median()
    assert il2["IL2"] > 5 * il2["SOC"]  # within 24 h of an IL-2 dose
    # IL-6 and IL-10 rise with disease activity (here: the plasmablast stand-in).
    wide = t.pivot(index="patient_id", columns="analyte", values="true_pg_ml")
    pb = design.set_index("patient_id")["baseline_pb_of_b"]
    assert np.corrcoef(np.log(pb), np.log(wide.loc[pb.index, "IL-10"]))[0, 1] > 0.2


# --------------------------------------------------------------------------------- failures

@pytest.fixture(scope="module")
def troubled(tmp_path_factory):
    """Plate T1: a corrupt file, a file without its IL-6 beads, a file with too few beads;
    plate T2: standards entered in the wrong order, so no curve is accepted."""
    out = tmp_path_factory.mktemp("cba_troubled")
    truth = _spiked_truth(8, seed=9)
    t1 = simulate_cba_plate(out, truth, plate="T1", plate_index=1, seed=5,
                            missing_beads={"S01": ["IL-6"]})
    raw = (out / "S02.fcs").read_bytes()
    (out / "S02.fcs").write_bytes(raw[: len(raw) // 3])
    s = read_fcs(out / "S03.fcs")
    write_fcs(out / "S03.fcs", s.events[:250], list(s.channels["pnn"]), [""] * 7)
    t2 = simulate_cba_plate(out, {f"U{i}": c for i, c in enumerate(truth.values())},
                            plate="T2", plate_index=2, seed=5)
    std = t2["role"] == "standard"
    t2.loc[std, "standard_pg_ml"] = t2.loc[std, "standard_pg_ml"].to_numpy()[::-1]
    sheet = pd.concat([t1, t2], ignore_index=True)
    smp = sheet["role"] == "sample"
    sheet.loc[smp, ["patient_id", "arm", "timepoint"]] = ["P", "SOC", "W0"]
    sheet.to_csv(out / "sheet.csv", index=False)
    return out


def test_failures_are_reported_and_the_rest_goes_on(troubled):
    result = quantify(troubled / "sheet.csv", KIT, troubled / "run")
    assert result.exit_code == 3
    err = result.errors
    by_sample = err.set_index("sample_id")
    assert by_sample.loc["S02", "stage"] == "read"
    assert "missing" in by_sample.loc["S01", "error"] and "IL-6" in by_sample.loc["S01", "error"]
    assert by_sample.loc["S01", "stage"] == "beads"
    assert "too few beads" in by_sample.loc["S03", "error"]
    plate2 = err[(err["stage"] == "curve") & (err["sample_id"] == "")]
    assert len(plate2) == 7 and plate2["error"].str.startswith("plate T2").all()
    assert err.loc[err["sample_id"].str.startswith("U"), "stage"].eq("curve").all()
    assert (err["hint"] != "").all() and list(err.columns) == [
        "sample_id", "path", "template", "stage", "error", "hint"]
    cy = result.cytokines
    good = cy[cy["plate"] == "T1"]
    assert set(good["sample_id"]) == {f"S{i:02d}" for i in (0, 4, 5, 6, 7)}
    assert good["fit_model"].ne("").all() and good["conc_pg_ml"].notna().any()
    bad = cy[cy["plate"] == "T2"]
    assert len(bad) == 8 * 7 and bad["conc_pg_ml"].isna().all()
    assert bad["fit_model"].eq("").all() and not bad["below_lloq"].any()
    assert (result.curves.loc[result.curves["plate"] == "T2", "status"] == "failed").all()
    written = pd.read_csv(troubled / "run" / "errors.csv", keep_default_na=False)
    assert len(written) == len(err)
    assert (troubled / "run" / "plots" / "standard_curves_T2.png").stat().st_size > 10_000


def test_bead_file_without_beads_raises(tmp_path):
    ev = np.abs(np.random.default_rng(0).normal(1000, 300, (4000, 7))).astype(np.float32)
    write_fcs(tmp_path / "noise.fcs", ev, ["FSC-A", "FSC-H", "SSC-A", "PE-A", "APC-A",
                                           "APC-Cy7-A", "Time"], [""] * 7)
    with pytest.raises(BeadError):
        measure_beads(read_fcs(tmp_path / "noise.fcs"), load_kit(KIT))


def test_sheet_problems_are_listed(tmp_path):
    (tmp_path / "s.csv").write_text(
        "sample_id,path,plate,role,standard_pg_ml,dilution\n"
        "a,a.fcs,P1,standard,x,1\n"
        "a,b.fcs,P1,control,,0\n"
        "c,c.fcs,P1,sample,,1\n")
    with pytest.raises(SampleSheetError) as err:
        read_cba_sheet(tmp_path / "s.csv")
    text = str(err.value)
    for part in ("'x' is not a concentration", "'control'", "repeated", "dilution",
                 "patient_id: column missing"):
        assert part in text


def test_flex_set_2d_layout(tmp_path):
    """Four beads on a 2 × 2 APC × APC-Cy7 grid, told apart in two dimensions."""
    kit_file = tmp_path / "flex.yaml"
    kit_file.write_text(
        "name: flex4\nchannels: {classification: [APC, APC-Cy7], reporter: PE}\n"
        "analytes:\n  - {name: A, position: [1, 1]}\n  - {name: B, position: [2, 1]}\n"
        "  - {name: C, position: [1, 2]}\n  - {name: D, position: [2, 2]}\n"
        "standards_pg_ml: [0, 10, 100]\n")
    kit = load_kit(kit_file)
    assert kit.analytes == ("A", "C", "B", "D")
    rng = np.random.default_rng(2)
    rows, pe = [], {"A": 100, "B": 1000, "C": 5000, "D": 20000}
    for name, (i, j) in kit.positions.items():
        n = 400
        apc = [1000, 8000][i - 1] * np.exp(rng.normal(0, 0.1, n))
        cy7 = [500, 6000][j - 1] * np.exp(rng.normal(0, 0.1, n))
        fsc = 60000 * np.exp(rng.normal(0, 0.04, n))
        rows.append(np.column_stack([fsc, 22000 * np.exp(rng.normal(0, 0.05, n)),
                                     pe[name] * np.exp(rng.normal(0, 0.15, n)), apc, cy7]))
    write_fcs(tmp_path / "flex.fcs", np.vstack(rows), ["FSC-A", "SSC-A", "PE-A", "APC-A",
                                                       "APC-Cy7-A"], [""] * 5)
    m = measure_beads(read_fcs(tmp_path / "flex.fcs"), kit)
    for name, value in pe.items():
        assert m["counts"][name] > 380
        assert m["reporter"][name] == pytest.approx(value, rel=0.05)


# ------------------------------------------------------------------------------ CLI, plots

def test_cli_cytokines_writes_outputs(cohort, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["cytokines", str(cohort.out / "cba" / "cba_sheet.csv"),
                                    "--kit", KIT, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "16 samples × 7 analytes" in res.output
    for name in ("cytokines.parquet", "cytokines.csv", "cba_standards.csv", "cba_curves.csv",
                 "errors.csv", "plots/standard_curves_P01.png"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "cytokines.parquet")
    for col in ("sample_id", "patient_id", "arm", "timepoint", "analyte", "n_beads",
                "reporter_median", "conc_pg_ml", "below_lloq", "above_uloq", "lloq", "uloq",
                "fit_model", "plate"):
        assert col in table.columns
    assert table["below_lloq"].dtype == bool and len(table) == 16 * 7
    std = pd.read_csv(out / "cba_standards.csv")
    assert {"expected_pg_ml", "back_calc_pg_ml", "recovery_pct"} <= set(std.columns)


def test_cli_exit_codes(troubled, tmp_path):
    res = CliRunner().invoke(main, ["cytokines", str(troubled / "sheet.csv"), "--kit", KIT,
                                    "--out", str(tmp_path / "a"), "--no-plots"])
    assert res.exit_code == 3, res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,path\nx,x.fcs\n")
    res = CliRunner().invoke(main, ["cytokines", str(bad), "--kit", KIT, "--out",
                                    str(tmp_path / "b")])
    assert res.exit_code == 1 and "missing column" in res.output
    res = CliRunner().invoke(main, ["cytokines", str(troubled / "sheet.csv"), "--kit", "nope",
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "shipped kit" in res.output


def test_standard_curve_plot_and_schema(spiked):
    import immunoprofile as ip
    from immunoprofile.tables import schema_markdown

    out, result, _ = spiked
    fig = ip.pl.standard_curves(result, plate="S1", save=out / "sc.png")
    assert len(fig.axes) == 7 and (out / "sc.png").stat().st_size > 20_000
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == list(ANALYTES)
    fig = ip.pl.standard_curves(out / "run", analytes=["IL-6"])
    assert len(fig.axes) == 1
    two = {"curves": pd.concat([result.curves, result.curves.assign(plate="S2")]),
           "standards": result.standards}
    with pytest.raises(ip.ImmunoprofileError, match="several plates"):
        ip.pl.standard_curves(two)
    assert "cytokines.parquet / cytokines.csv" in schema_markdown()


def test_extended_standards_bring_the_lloq_to_serum_levels(tmp_path):
    """DOMAIN §8: with the kit's standards the LLOQ is 20 pg/mL, above most serum values;
    the shipped extended kit (three more 1:2 dilutions, down to 2.5 pg/mL) brings it to a few
    pg/mL, so serum values are quantified rather than only detected."""
    rng = np.random.default_rng(9)
    truth = {f"S{i:02d}": {a: float(np.exp(rng.normal(np.log(6.0), 0.8))) for a in ANALYTES}
             for i in range(24)}
    results = {}
    for kit in (KIT, f"{KIT}_extended"):
        out = tmp_path / kit
        sheet = simulate_cba_plate(out, truth, plate="E1", plate_index=3, seed=2, kit=kit)
        samples = sheet["role"] == "sample"
        sheet.loc[samples, ["patient_id", "arm", "timepoint"]] = ["P", "SOC", "W0"]
        sheet.to_csv(out / "sheet.csv", index=False)
        results[kit] = quantify(out / "sheet.csv", kit)
    standard, extended = results[KIT], results[f"{KIT}_extended"]
    assert load_kit(f"{KIT}_extended").standards_pg_ml[:4] == (0, 2.5, 5, 10)
    assert (standard.curves["lloq_pg_ml"] >= 20).all()
    assert (extended.curves["lloq_pg_ml"] <= 10).all()
    assert extended.cytokines["below_lloq"].mean() < 0.5 * standard.cytokines["below_lloq"].mean()
