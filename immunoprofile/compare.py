"""``immunoprofile compare``: every comparison of a run, written as tidy tables and plots.

Reads a gate run (and its ``clusters.parquet`` when ``cluster`` has run) and writes, by default
into ``RUN_DIR/compare``: ``differential_abundance``, ``differential_state`` (Parquet and CSV),
``response.parquet`` (per patient), ``response_summary.parquet`` (per arm) and plots.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from immunoprofile.tables import Column, register, write_csv, write_parquet
from immunoprofile.tl._differential import differential_abundance, differential_state
from immunoprofile.tl._response import ResponderRule, response

_CONTRAST_COLUMNS = (
    Column("template", "string", "Template (or `clusters:<panel>` for FlowSOM clusters)."),
    Column("population", "string", "Population (or cluster)."),
    Column("contrast_type", "string", "arm_vs_control | change_from_baseline | "
           "change_vs_control | change_vs_arm."),
    Column("arm", "string", "The arm tested."),
    Column("reference_arm", "string", "The arm it is compared with ('' for within-arm)."),
    Column("timepoint", "string", "The visit tested."),
    Column("baseline", "string", "Baseline visit for change contrasts ('' otherwise)."),
    Column("estimate", "float64", "Abundance: log odds ratio of count vs parent; state: log "
           "fold change of the median MFI (natural log)."),
    Column("ci_low / ci_high", "float64", "95% confidence interval (t, n_patients − n_arms df)."),
    Column("pvalue", "float64", "Two-sided p-value."),
    Column("fdr", "float64", "Benjamini–Hochberg within each contrast (across populations "
           "and markers)."),
    Column("model", "string", "The model that produced the row."),
    Column("n_samples", "int64", "Samples in the cells the contrast uses."),
    Column("n_patients", "int64", "Patients in those cells."),
    Column("warning", "string", "Non-convergence, boundary fits, rare populations; '' if none."),
    Column("reference", "string", "Abundance: what counts are tested against: 'parent' or a "
           "population (`Live lymphocytes`: frequency among lymphocytes)."),
)
register("compare/differential_abundance.parquet (one row per population × contrast)",
         _CONTRAST_COLUMNS)
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
    Column("n_patients", "int64", "Patients with a baseline and this visit."),
    Column("fold_change", "float64", "Geometric mean fold change from baseline."),
    Column("ci_low / ci_high", "float64", "Its 95% CI (t interval on the log scale)."),
    Column("mean_log2_fold_change", "float64", "Mean log2 fold change."),
    Column("n_responders / pct_responders", "int64 / float64", "Responders by the rule."),
))


LYMPHOCYTES = "Live lymphocytes"


@dataclass
class Comparison:
    """The tables one ``compare`` produced."""

    abundance: pd.DataFrame
    state: pd.DataFrame
    response: pd.DataFrame
    response_summary: pd.DataFrame
    out: Path


def _clusters(run: Path) -> pd.DataFrame | None:
    path = run / "clusters.parquet"
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
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
) -> Comparison:
    """Differential abundance and state, and response tracking, for a run folder."""
    from immunoprofile.assemble import RunFolder

    run = RunFolder(run_dir)
    out = Path(out) if out else run.path / "compare"
    subsets = run.subsets
    pairs, covariates = list(pairs), list(covariates)
    da = differential_abundance(subsets, control=control, baseline=baseline, pairs=pairs,
                                covariates=covariates, reference=("parent", LYMPHOCYTES))
    clusters = _clusters(run.path)
    if clusters is not None:
        da_clusters = differential_abundance(clusters, control=control, baseline=baseline,
                                             pairs=pairs, covariates=covariates)
        da = pd.concat([da, da_clusters], ignore_index=True)
    ds = differential_state(subsets, control=control, baseline=baseline, pairs=pairs,
                            covariates=covariates)
    rule = ResponderRule.parse(responder) if responder else None
    if rule is not None and not any(rule.matches(t, p) for t, p in zip(
            subsets["template"].astype(str), subsets["population"].astype(str))):
        rule = None  # e.g. the default Treg rule on a run without a Treg tube
    patients, summary = response(subsets, baseline=baseline, responder=rule)
    for name, table in (("differential_abundance", da), ("differential_state", ds)):
        write_parquet(table, out / f"{name}.parquet")
        write_csv(table, out / f"{name}.csv")
    write_parquet(patients, out / "response.parquet")
    write_parquet(summary, out / "response_summary.parquet")
    write_csv(summary, out / "response_summary.csv")
    result = Comparison(da, ds, patients, summary, out)
    if plots:
        _plots(result, subsets, out / "plots")
    return result


def _plots(result: Comparison, subsets: pd.DataFrame, folder: Path) -> None:
    try:
        from immunoprofile import pl
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
    if (result.abundance["contrast_type"] == "change_vs_control").any():
        pl.effects_heatmap(result.abundance, save=folder / "effects_heatmap.png")
        for kind in ("change_vs_control", "arm_vs_control"):
            if (result.abundance["contrast_type"] == kind).any():
                pl.volcano(result.abundance, contrast_type=kind,
                           save=folder / f"volcano_{kind}.png")
