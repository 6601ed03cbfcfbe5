"""``immunoprofile compare``: every comparison of a run, written as tidy tables and plots.

Reads a gate run (and its ``clusters.parquet`` when ``cluster`` has run) and writes, by default
into ``RUN_DIR/compare``: ``differential_abundance``, ``differential_state`` (Parquet and CSV),
``response.parquet`` (per patient), ``response_summary.parquet`` (per arm) and plots. With a
clinical table and/or a cytokine table: ``clinical`` and ``cytokines`` (the same contrasts,
Parquet and CSV), ``correlations`` (subsets × indexes and cytokines) and ``responders.csv``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from immunoprofile.clinical import attach_arms, responders
from immunoprofile.run import Run
from immunoprofile.tables import Column, register, write_csv, write_parquet
from immunoprofile.tl import (
    ResponderRule,
    clinical_comparison,
    correlations,
    cytokine_comparison,
    differential_abundance,
    differential_state,
    read_cytokines,
    response,
)

_CONTRAST_COLUMNS = (
    Column("template", "string", "Template (or `clusters:<panel>` for FlowSOM clusters)."),
    Column("population", "string", "Population (or cluster)."),
    Column("contrast_type", "string", "arm_vs_control | change_from_baseline | "
           "change_vs_control | change_vs_arm."),
    Column("arm", "string", "The arm tested."),
    Column("reference_arm", "string", "The arm it is compared with ('' for within-arm)."),
    Column("timepoint", "string", "The visit tested."),
    Column("baseline", "string", "Baseline visit for change contrasts ('' otherwise)."),
    Column("estimate", "float64", "Abundance: log odds ratio of count vs parent (or the "
           "reference); for reference 'absolute' the log fold change of cells/µL; state: log "
           "fold change of the median MFI (natural log)."),
    Column("ci_low / ci_high", "float64", "95% confidence interval (t, n_patients − n_arms df)."),
    Column("pvalue", "float64", "Two-sided p-value."),
    Column("fdr", "float64", "Benjamini–Hochberg within each family: one template, one "
           "contrast type (and, for abundance, one reference), across populations, markers, "
           "arms and visits. Null for complement rows (see `complement_of`)."),
    Column("model", "string", "The model that produced the row: `glmm_binomial` (default "
           "for abundance: binomial GLMM, patient and observation-level random intercepts), "
           "`lmm_logit` (empirical logit), `lmm_log_abs` (log cells/µL), `lmm_log_mfi` / "
           "`lmm_asinh_mfi` (state)."),
    Column("n_samples", "int64", "Samples in the cells the contrast uses."),
    Column("n_patients", "int64", "Patients in those cells."),
    Column("warning", "string", "Non-convergence, boundary fits, rare populations; '' if none."),
    Column("reference", "string", "Abundance: what counts are tested against: 'parent', a "
           "population (`Live lymphocytes`: frequency among lymphocytes) or 'absolute' "
           "(cells/µL, where the sheet gives lymphocyte or bead counts)."),
)
register("compare/differential_abundance.parquet (one row per population × contrast)", (
    *_CONTRAST_COLUMNS,
    Column("complement_of", "string", "Abundance: the population whose test this row mirrors "
           "(their counts add up to the parent's in every sample, e.g. conventional CD4 and "
           "Treg): not a separate finding, no FDR; '' otherwise."),
    Column("gate_mode", "string", "'adaptive': the run's gates, placed on each sample; "
           "'baseline_locked': each patient's gates frozen where they were placed on the "
           "baseline sample (the sensitivity readout for gates whose marker a treatment may "
           "move, `gate --baseline-locked`); '' for clusters."),
))
register("compare/differential_state.parquet (one row per population × marker × contrast)",
         (*_CONTRAST_COLUMNS[:2], Column("marker", "string", "The marker whose median MFI is "
                                         "tested."), *_CONTRAST_COLUMNS[2:-1]))
register("compare/response.parquet (one row per patient × population × visit)", (
    Column("template, population, patient_id, arm, timepoint", "string", "Keys."),
    Column("value", "float64", "The measure followed (pct_parent by default)."),
    Column("baseline_value", "float64", "The patient's baseline value."),
    Column("fold_change / log2_fold_change", "float64", "value / baseline_value."),
    Column("responder", "boolean", "The responder rule's verdict for the patient at that visit."),
))
register("compare/response_summary.parquet (one row per arm × population × visit)", (
    Column("template, population, arm, timepoint", "string", "Keys."),
    Column("n_patients", "int64", "Patients with a baseline and this visit."),
    Column("fold_change", "float64", "Geometric mean fold change from baseline."),
    Column("ci_low / ci_high", "float64", "Its 95% CI (t interval on the log scale)."),
    Column("mean_log2_fold_change", "float64", "Mean log2 fold change."),
    Column("n_responders / pct_responders", "int64 / float64", "Responders by the rule."),
))
register("compare/clinical.parquet (one row per clinical index × contrast)", (
    *_CONTRAST_COLUMNS[:1], Column("population", "string", "The clinical index (`sledai`, `c3`, "
                                   "`anti_dsdna`, …); `template` is 'clinical'."),
    *_CONTRAST_COLUMNS[2:7],
    Column("estimate", "float64", "Log fold change for concentrations (model `lmm_log`); a "
           "difference in the index's unit for SLEDAI points, prednisone mg/day, PGA (`lmm`)."),
    *_CONTRAST_COLUMNS[8:-1],
    Column("scale", "string", "'log' or 'identity': the scale of `estimate`."),
))
register("compare/cytokines.parquet (one row per analyte × contrast)", (
    *_CONTRAST_COLUMNS[:1], Column("population", "string", "The analyte; `template` is "
                                   "'cytokines'."),
    *_CONTRAST_COLUMNS[2:7],
    Column("estimate", "float64", "Log fold change of the concentration; for model "
           "`rank_detectable`, the difference in the share of values in range (percentage "
           "points)."),
    *_CONTRAST_COLUMNS[8:11],
    Column("model", "string", "`tobit_re` (censored likelihood at the LoD, the LLOQ where no "
           "LoD is known, and the ULOQ; patient random intercept, small-sample corrected "
           "standard errors), `lmm_log_lloq2` (LLOQ/2 imputed), `lmm_log` (nothing censored) "
           "or `rank_detectable` (more than 80% censored, or contrasts the Tobit cannot "
           "estimate: exact permutation mid-p rank tests with censored values tied at the "
           "bottom, the normal approximation above 200 values; the warning says 'tested on "
           "ranks')."),
    *_CONTRAST_COLUMNS[12:-1],
    Column("n_below_lloq / n_above_uloq", "int64", "Values of the analyte below the LLOQ "
           "(reported down to the LoD) and above the ULOQ (censored)."),
    Column("n_below_lod", "int64", "Values below the LoD: censored at it in the models."),
))
register("compare/correlations.parquet (one row per subset × variable × method [× visit])", (
    Column("subset", "string", "`template/population:measure` (pct_parent or pct_of_<ref>)."),
    Column("template, population, measure", "string", "Its parts."),
    Column("variable", "string", "Clinical index or cytokine analyte."),
    Column("kind", "string", "'clinical' or 'cytokine'."),
    Column("method", "string", "'spearman' (per visit) or 'rmcorr' (repeated-measures "
           "correlation across visits, Bakdash & Marusich 2017)."),
    Column("timepoint", "string", "The visit (Spearman); '' for rmcorr."),
    Column("r / ci_low / ci_high", "float64", "Coefficient and 95% CI (Fisher z; Bonett–Wright "
           "SE for Spearman; df = N − patients − 1 for rmcorr)."),
    Column("pvalue / fdr", "float64", "Two-sided p; Benjamini–Hochberg within method × kind × "
           "visit."),
    Column("n_samples / n_patients", "int64", "Visits paired; patients."),
    Column("transform", "string", "rmcorr: scale of subset / variable ('log' or 'identity')."),
    Column("note", "string", "Cytokine values below the LLOQ entered as LLOQ/2, when any."),
))
register("compare/responders.csv (one row per rule × analysis × arm × visit)", (
    Column("arm, timepoint", "string", "Keys (baseline excluded)."),
    Column("rule", "string", "'SLEDAI-4' (fall ≥ 4 points), 'SRI-4' (when BILAG and PGA are "
           "given), the immune responder rule, and 'SLEDAI-4 & <rule>'."),
    Column("analysis", "string", "'itt': intention to treat, the denominator is every "
           "randomised patient of the arm and one without a verdict at the visit (left the "
           "trial, missed it) is a non-responder; 'completers': patients with a verdict."),
    Column("n_patients", "int64", "The denominator (see `analysis`)."),
    Column("n_responders / pct_responders", "int64 / float64", "Responders."),
    Column("n_without_verdict", "int64", "Randomised patients of the arm without a verdict at "
           "the visit (non-responders under 'itt')."),
))


@dataclass
class Comparison:
    """The tables one ``compare`` produced."""

    abundance: pd.DataFrame
    state: pd.DataFrame
    response: pd.DataFrame
    response_summary: pd.DataFrame
    out: Path
    clinical: pd.DataFrame | None = None
    cytokines: pd.DataFrame | None = None
    correlations: pd.DataFrame | None = None
    responders: pd.DataFrame | None = None


def _clusters(run: Run) -> pd.DataFrame | None:
    table = run.clusters()
    if table is None:
        return None
    table = table.rename(columns={"cluster": "population"})
    table["template"] = "clusters:" + table.get("panel", pd.Series("", index=table.index)
                                                ).astype(str)
    table["population"] = table["population"].astype(str)
    return table


def compare_run(
    run_dir: str | Path,
    *,
    control: str,
    baseline: str,
    out: str | Path | None = None,
    pairs: Iterable[str] = (),
    covariates: Iterable[str] = (),
    responder: str | None = "Treg>=1.5",
    plots: bool = True,
    clinical: str | Path | pd.DataFrame | None = None,
    cytokines: str | Path | pd.DataFrame | None = None,
    model: str = "glmm_binomial",
    n_jobs: int | None = -1,
) -> Comparison:
    """Differential abundance and state, and response tracking, for a run folder.

    With ``clinical`` (a clinical table, :func:`immunoprofile.clinical.read_clinical`) and/or
    ``cytokines`` (``cytokines.parquet`` of a CBA run) the indexes and cytokines are compared
    with the same contrasts (``clinical``/``cytokines`` tables), correlated with every subset
    (``correlations``) and responders counted per arm (``responders.csv``). Patients' arms come
    from the run's sample sheet; visit-level covariates (constant within a visit) too.

    Parameters
    ----------
    run_dir
        A batch run folder; its ``clusters.parquet``, when present, is tested too.
    control, baseline
        The control arm and the baseline timepoint, as named in the sample sheet.
    out
        Output folder; default ``RUN_DIR/compare``.
    pairs
        Extra arm pairs for ``change_vs_arm`` (``"COMBO:IL2"``).
    covariates
        Sample-sheet columns entered in every model (``batch``, ``days_since_last_il2_dose``).
    responder
        Responder rule (see :meth:`~immunoprofile.tl.ResponderRule.parse`); ignored when no
        population of the run matches it, None for none.
    plots
        Also draw trajectory, effects-heatmap and volcano plots (and the clinical and
        cytokine plots) into ``out/plots``.
    clinical
        Clinical table (path or validated DataFrame), or None.
    cytokines
        Cytokines table of a CBA run (path or DataFrame), or None.
    model
        Abundance model: ``"glmm_binomial"`` (default, count-aware) or ``"lmm_logit"`` (see
        :func:`~immunoprofile.tl.differential_abundance`).
    n_jobs
        Processes fitting the abundance and state models (default every core; the tables
        are the same whatever the number).

    Returns
    -------
    Comparison
        The abundance, state and response tables (each also written to ``out``) and, with
        ``clinical``/``cytokines``, the joint tables.
    """
    run = Run.open(run_dir)
    out = Path(out) if out else run.compare_dir
    subsets = run.subsets
    pairs, covariates = list(pairs), list(covariates)
    # frequencies among each template's declared lymphocyte reference, besides the parent,
    # and among what a template quotes a population against outside its ancestry (plasma:
    # plasmablasts, gated from lymphocytes and blasts, as % of B cells)
    templates = list(run.templates().values())
    references = dict.fromkeys(t.reference_population for t in templates
                               if t.reference_population)
    references |= dict.fromkeys(ref for t in templates for pop in t for ref in pop.pct_of
                                if ref not in t.ancestors(pop.name))
    if "abs_per_ul" in subsets.columns and subsets["abs_per_ul"].notna().any():
        references["absolute"] = None  # cells/µL: not compositional
    da = differential_abundance(subsets, control=control, baseline=baseline, pairs=pairs,
                                covariates=covariates, reference=("parent", *references),
                                model=model, n_jobs=n_jobs)
    da["gate_mode"] = "adaptive"
    locked = run.table(run.baseline_locked_path)
    if locked is not None and len(locked):
        da_locked = differential_abundance(locked, control=control, baseline=baseline,
                                           pairs=pairs, covariates=covariates,
                                           reference=("parent", *references), model=model,
                                           n_jobs=n_jobs)
        da = pd.concat([da, da_locked.assign(gate_mode="baseline_locked")],
                       ignore_index=True)
    clusters = _clusters(run)
    if clusters is not None:
        da_clusters = differential_abundance(clusters, control=control, baseline=baseline,
                                             pairs=pairs, covariates=covariates, model=model,
                                             n_jobs=n_jobs)
        da = pd.concat([da, da_clusters.assign(gate_mode="")], ignore_index=True)
    ds = differential_state(subsets, control=control, baseline=baseline, pairs=pairs,
                            covariates=covariates, n_jobs=n_jobs)
    rule = ResponderRule.parse(responder) if responder else None
    if rule is not None and not any(rule.matches(t, p) for t, p in zip(
            subsets["template"].astype(str), subsets["population"].astype(str))):
        rule = None  # e.g. the default Treg rule on a run without a Treg tube
    patients, summary = response(subsets, baseline=baseline, responder=rule)
    _write(da, out, "differential_abundance")
    _write(ds, out, "differential_state")
    _write(patients, out, "response", csv=False)
    _write(summary, out, "response_summary")
    result = Comparison(da, ds, patients, summary, out)
    if clinical is not None or cytokines is not None:
        _joint(result, subsets, clinical=clinical, cytokines=cytokines, control=control,
               baseline=baseline, pairs=pairs, covariates=covariates,
               rule=responder if rule is not None else None, plots=plots)
    if plots:
        _plots(result, subsets, Run.plots_under(out))
    return result


def _write(table: pd.DataFrame, out: Path, name: str, *, parquet: bool = True,
           csv: bool = True) -> None:
    """A comparison table as Parquet and/or CSV, checked against its documented schema."""
    schema = f"compare/{name}.{'parquet' if parquet else 'csv'}"
    if parquet:
        write_parquet(table, out / f"{name}.parquet", schema=schema)
    if csv:
        write_csv(table, out / f"{name}.csv", schema=schema)


def _visit_columns(subsets: pd.DataFrame, table: pd.DataFrame,
                   covariates: list[str]) -> pd.DataFrame:
    """Add covariates that are constant within each visit of the run to ``table``."""
    keys = ["patient_id", "timepoint"]
    for cov in covariates:
        if cov in table.columns or cov not in subsets.columns:
            continue
        table = table.copy()
        per_visit = subsets[[*keys, cov]].astype({k: str for k in keys}).drop_duplicates()
        if per_visit.duplicated(keys).any():
            continue  # varies within a visit (e.g. tubes run in different batches)
        lookup = per_visit.set_index(keys)[cov]
        table[cov] = lookup.reindex(pd.MultiIndex.from_arrays(
            [table[k].astype(str) for k in keys])).to_numpy()
    return table


def _joint(result: Comparison, subsets: pd.DataFrame, *, clinical, cytokines, control: str,
           baseline: str, pairs: list[str], covariates: list[str], rule: str | None,
           plots: bool) -> None:
    """Clinical and cytokine comparisons, correlations with subsets and responder counts."""
    out = result.out
    arms = (subsets[["patient_id", "arm"]].astype(str).drop_duplicates("patient_id")
            .set_index("patient_id")["arm"])
    clin = cyto = None
    if clinical is not None:
        clin = _visit_columns(subsets, attach_arms(clinical, arms), covariates)
        result.clinical = clinical_comparison(clin, control=control, baseline=baseline,
                                              pairs=pairs, covariates=covariates)
        _write(result.clinical, out, "clinical")
    if cytokines is not None:
        cyto = _visit_columns(subsets, read_cytokines(cytokines), covariates)
        result.cytokines = cytokine_comparison(cyto, control=control, baseline=baseline,
                                               pairs=pairs, covariates=covariates)
        _write(result.cytokines, out, "cytokines")
    result.correlations = correlations(subsets, clinical=clin, cytokines=cyto)
    _write(result.correlations, out, "correlations")
    result.responders = responders(clin, result.response if rule else None, baseline=baseline,
                                   rule=rule or "immune", arms=arms)
    _write(result.responders, out, "responders", parquet=False)
    if plots:
        _joint_plots(result, clin, cyto, Run.plots_under(out))


def _joint_plots(result: Comparison, clinical: pd.DataFrame | None,
                 cytokines: pd.DataFrame | None, folder: Path) -> None:
    try:
        from immunoprofile import pl  # loaded only when plots are drawn (matplotlib)
    except ImportError:  # pragma: no cover - plots are optional for pipelines
        return
    if not hasattr(pl, "clinical_trajectories"):
        return
    if clinical is not None:
        for var in ("sledai", "anti_dsdna", "c3", "c4", "igm"):
            if var in clinical.columns and clinical[var].notna().any():
                pl.clinical_trajectories(clinical, var, save=folder / f"clinical_{var}.png")
    if cytokines is not None:
        for analyte in sorted(cytokines["analyte"].astype(str).unique()):
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in analyte)
            pl.clinical_trajectories(cytokines, analyte, save=folder / f"cytokine_{name}.png")
    corr = result.correlations
    if corr is not None and (corr["method"] == "rmcorr").any():
        pl.correlation_heatmap(corr, save=folder / "correlations_rmcorr.png")


def _plots(result: Comparison, subsets: pd.DataFrame, folder: Path) -> None:
    try:
        from immunoprofile import pl  # loaded only when plots are drawn (matplotlib)
    except ImportError:  # pragma: no cover - plots are optional for pipelines
        return
    if not hasattr(pl, "trajectories"):
        return
    for template, population in (("treg", "Treg"), ("bcell", "B cells"),
                                 ("plasma", "Plasmablasts")):
        if ((result.response["template"] == template)
                & (result.response["population"] == population)).any():
            pl.trajectories(result.response, population=population, template=template,
                            save=folder / f"trajectory_{template}_{population}.png")
    abundance = result.abundance
    if "gate_mode" in abundance.columns:  # the locked sensitivity rows stay in the tables
        abundance = abundance[abundance["gate_mode"] != "baseline_locked"]
    if (abundance["contrast_type"] == "change_vs_control").any():
        pl.effects_heatmap(abundance, save=folder / "effects_heatmap.png")
        for kind in ("change_vs_control", "arm_vs_control"):
            if (abundance["contrast_type"] == kind).any():
                pl.volcano(abundance, contrast_type=kind,
                           save=folder / f"volcano_{kind}.png")
