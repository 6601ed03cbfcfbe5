"""Response tracking: each patient's change from baseline, summarised per arm.

Per patient, population and visit: the readout (a percentage by default), its baseline value
and the fold change. Per arm and visit: the geometric mean fold change with its 95% CI (a t
interval on the log scale) and, with a responder rule such as "Treg % of CD4+ T cells ≥ 1.5×
baseline", how many patients respond.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from immunoprofile.errors import ImmunoprofileError
from immunoprofile.tl._models import subset_table


@dataclass(frozen=True)
class ResponderRule:
    """``population`` (``template/population`` or a bare name) responds when its ``measure``
    is at least ``fold`` × baseline (``fold`` < 1: at most)."""

    population: str
    fold: float
    measure: str = "pct_parent"

    @classmethod
    def parse(cls, text: str) -> ResponderRule:
        """Parse ``"treg/Treg>=1.5"``, ``"B cells<=0.5"`` or, with a measure,
        ``"Treg:pct_of_live_lymphocytes>=1.5"``.

        Parameters
        ----------
        text
            ``POPULATION[:MEASURE]>=FOLD`` (FOLD ≥ 1) or ``POPULATION[:MEASURE]<=FOLD``
            (FOLD < 1); the measure defaults to ``pct_parent``.

        Returns
        -------
        ResponderRule
            The rule.

        Raises
        ------
        ImmunoprofileError
            No ``>=``/``<=``, a fold that is not a number, or an operator that does not fit
            the fold.
        """
        for op in (">=", "<="):
            if op in text:
                left, right = text.split(op, 1)
                try:
                    fold = float(right)
                except ValueError as exc:
                    raise ImmunoprofileError(f"responder rule {text!r}: {right!r} is not a "
                                             "number") from exc
                if (op == ">=") != (fold >= 1):
                    raise ImmunoprofileError(f"responder rule {text!r}: use >= with a fold "
                                             "above 1 and <= with one below 1")
                pop, _, measure = left.strip().partition(":")
                return cls(pop.strip(), fold, measure.strip() or "pct_parent")
        raise ImmunoprofileError(f"responder rule {text!r} must read POPULATION>=FOLD or "
                                 "POPULATION<=FOLD")

    def matches(self, template: str, population: str) -> bool:
        """Whether the rule names this population.

        Parameters
        ----------
        template, population
            A row's template and population names; the rule matches the bare population
            name or ``template/population``.

        Returns
        -------
        bool
            True when the rule applies to the population.
        """
        return self.population in (population, f"{template}/{population}")


def response(
    data: pd.DataFrame | str | Path,
    *,
    baseline: str,
    measure: str = "pct_parent",
    populations: Iterable[str] | None = None,
    responder: ResponderRule | str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fold change from baseline per patient, and its summary per arm and visit.

    Parameters
    ----------
    data
        The long subset table or a run folder.
    baseline
        Baseline timepoint.
    measure
        Column followed over time (``pct_parent``, a ``pct_of_<ref>`` or ``abs_per_ul``); a
        population's own named reference is used when it has one and ``measure`` is
        ``"reference"``.
    populations
        Restrict to these (bare names or ``template/population``).
    responder
        A :class:`ResponderRule` or its text form.

    Returns
    -------
    (patients, summary)
        ``patients``: one row per patient × population × visit with ``value``, ``baseline_value``,
        ``fold_change``, ``log2_fold_change`` and ``responder`` (when a rule applies).
        ``summary``: per arm × population × visit, ``n_patients``, ``mean_log2_fold_change``,
        ``fold_change`` (geometric mean), ``ci_low``/``ci_high`` (95%, as fold changes), and
        ``n_responders``/``pct_responders`` for the rule's population.
    """
    table = subset_table(data)
    if isinstance(responder, str):
        responder = ResponderRule.parse(responder)
    if measure not in table.columns:
        raise ImmunoprofileError(f"measure {measure!r} is not a column of the subset table")
    if baseline not in set(table["timepoint"].astype(str)):
        raise ImmunoprofileError(f"baseline {baseline!r} is not a timepoint")
    keep = table if populations is None else table[
        table["population"].isin(populations)
        | (table["template"].astype(str) + "/" + table["population"].astype(str)).isin(
            populations)]
    cols = ["template", "population", "patient_id", "arm", "timepoint"]
    frame = keep[[*cols, measure]].rename(columns={measure: "value"}).copy()
    frame["value"] = frame["value"].astype(float)
    base = frame[frame["timepoint"].astype(str) == baseline].set_index(
        ["template", "population", "patient_id"])["value"]
    frame["baseline_value"] = frame.set_index(
        ["template", "population", "patient_id"]).index.map(base).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["fold_change"] = frame["value"] / frame["baseline_value"]
    # A zero count makes the fold change 0 (or undefined): no log fold change for it.
    frame.loc[~(np.isfinite(frame["fold_change"]) & (frame["fold_change"] > 0)),
              "fold_change"] = np.nan
    frame["log2_fold_change"] = np.log2(frame["fold_change"])
    frame["responder"] = pd.array([pd.NA] * len(frame), dtype="boolean")
    if responder is not None:
        if responder.measure != measure:
            rule_table, _ = response(table, baseline=baseline, measure=responder.measure)
        else:
            rule_table = frame
        hit = [responder.matches(t, p) for t, p in zip(rule_table["template"],
                                                       rule_table["population"])]
        ruled = rule_table[np.asarray(hit, bool)]
        if ruled.empty:
            raise ImmunoprofileError(f"responder rule names {responder.population!r}, which "
                                     "is not a population of the table")
        fc = ruled["fold_change"]
        resp = (fc >= responder.fold) if responder.fold >= 1 else (fc <= responder.fold)
        flag = resp.where(fc.notna(), other=pd.NA)
        key = ruled.set_index(["patient_id", "timepoint"]).index
        lookup = pd.Series(flag.to_numpy(), index=key)
        lookup = lookup[~lookup.index.duplicated()]
        frame["responder"] = pd.array(frame.set_index(["patient_id", "timepoint"]).index.map(
            lookup), dtype="boolean")
    if "responder" not in frame.columns:  # one schema with or without a rule
        frame["responder"] = pd.array([pd.NA] * len(frame), dtype="boolean")
    summary = _summarise(frame, responder)
    return frame.reset_index(drop=True), summary


def _summarise(frame: pd.DataFrame, responder: ResponderRule | None) -> pd.DataFrame:
    rows = []
    groups = frame.groupby(["template", "population", "arm", "timepoint"], sort=False,
                           observed=True)
    for (template, population, arm, tp), g in groups:
        lfc = g["log2_fold_change"].replace([np.inf, -np.inf], np.nan).dropna()
        n = len(lfc)
        mean = float(lfc.mean()) if n else np.nan
        if n > 1:
            half = float(stats.t.ppf(0.975, n - 1) * lfc.std(ddof=1) / np.sqrt(n))
        else:
            half = np.nan
        row = {"template": template, "population": population, "arm": arm, "timepoint": tp,
               "n_patients": n, "mean_log2_fold_change": mean, "fold_change": 2 ** mean,
               "ci_low": 2 ** (mean - half), "ci_high": 2 ** (mean + half)}
        row["n_responders"] = row["pct_responders"] = np.nan  # no rule: none counted
        if responder is not None:
            flags = g.drop_duplicates("patient_id")["responder"].dropna()
            row["n_responders"] = int(flags.sum())
            row["pct_responders"] = 100 * float(flags.mean()) if len(flags) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
