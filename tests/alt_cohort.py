"""A second, independently written cohort generator for testing the shipped gating templates.

The project's own simulator (``immunoprofile.datasets``) is deliberately *not* used or read
here: templates that only ever meet files from the simulator they were tuned on prove little.
This module writes files the way another lab's cytometer would, from the immunology facts in
``../shared/DOMAIN.md`` alone:

- **Naming** as on a BD FACSymphony / Cytek: $PnN are detectors (``UV395-A``, ``B530-A``,
  ``Y586-A``, ``R780-A``...), the marker lives only in $PnS, spelled with fluorochromes and
  aliases (``CD4 BUV395``, ``FoxP3-PE``, ``IL-7Ra``, ``Zombie NIR``, ``Live/Dead Aqua``);
  scatter ``FSC-A``, ``FSC-H``, ``SSC-A``, a blue-laser ``SSC-B-A``, and ``Time`` in ticks
  with ``$TIMESTEP``.
- **Spillover** per tube from a table of dye → detector coefficients (0.011–0.34), re-measured
  per batch (±5%); the instrument's *actual* spillover differs from the stored one by a
  further ±6% (residual compensation error); detector shot noise adds spreading error.
- **Intensities and shapes**: lymphocytes at FSC-A ≈ 90k, SSC-A ≈ 25k; positives log-normal or
  gamma (left-skewed on a log axis); negatives Gaussian with SD 85–200 per detector plus a
  cell-type autofluorescence; a CD25 continuum on conventional CD4 cells with an activated
  tail, CD127-intermediate memory cells, FOXP3-low Tregs, CD25−FOXP3+ cells, CD19-dim CD20−
  plasmablasts, CD24hi CD38hi transitional B, IgD/CD27 memory subsets; debris, doublets,
  dead cells, monocytes, low-density granulocytes, NK and CD8 T cells.
- **Technical variation**: batches of 4–6 samples; per batch a multiplicative staining shift
  per marker (log-normal σ 0.10 bright, 0.25 for CD25/CD127/FOXP3, 0.15 CD138/viability) plus
  σ 0.04 per sample, and scatter shifts of up to ±10% (FSC and SSC independently).

Truth (DOMAIN.md §2 semantics) is counted from per-event labels among live singlet
lymphocytes. :func:`make_alt_cohort` writes the files; :func:`simulate_tube` keeps one tube in
memory (true fluorescence, labels, shifts) for the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from immunoprofile.io.fcs_write import write_fcs

__all__ = ["LEAVES", "PANELS", "AltTube", "SampleDesign", "design_cohort", "iter_alt_tubes",
           "make_alt_cohort", "simulate_tube"]

COFACTOR = 150.0
SATURATION = 262143.0
TIMESTEP = 0.01
#: Lymphocyte scatter centre before batch shifts (FSC-A, SSC-A).
LYMPH_FSC, LYMPH_SSC = 90_000.0, 25_000.0

# Cell types ("leaves"). The first 18 are lymphocytes.
LEAVES = (
    "Tconv naive", "Tconv memory", "Tconv activated", "CD4 CD25-FOXP3+",
    "Treg Fr I", "Treg Fr II", "Treg Fr III", "Treg FOXP3-",
    "CD8 T", "DN T", "NK",
    "B naive", "B unswitched", "B switched", "B DN", "B transitional",
    "Plasmablast", "Plasma cell",
    "Monocyte", "Granulocyte",
)
_IDX = {name: i for i, name in enumerate(LEAVES)}
N_LYMPH = 18
T_SET = frozenset(range(0, 10))
CD4_SET = frozenset(range(0, 8))
TREG_SET = frozenset(range(4, 8))
FOXP3_TREG_SET = frozenset(range(4, 7))
B_SET = frozenset(range(11, 18))
PB_SET = frozenset({16, 17})
PC_SET = frozenset({17})
MATURE_B = ("B naive", "B unswitched", "B switched", "B DN", "B transitional")

# Event states.
LIVE, DEAD, DOUBLET, DEBRIS = 0, 1, 2, 3


@dataclass(frozen=True)
class Channel:
    """One fluorescence detector of a tube: names, the marker, negative background."""

    pnn: str
    pns: str
    marker: str
    bg_mean: float
    bg_sd: float
    af_weight: float  # share of the cell's autofluorescence seen here (violet/UV see most)


PANELS: dict[str, tuple[Channel, ...]] = {
    "treg": (
        Channel("UV395-A", "CD4 BUV395", "CD4", 60, 170, 0.6),
        Channel("B530-A", "CD3 BB515", "CD3", 70, 110, 0.5),
        Channel("B710-A", "CD8 PerCP-Cy5.5", "CD8", 40, 140, 0.2),
        Channel("Y586-A", "FoxP3-PE", "FOXP3", 20, 90, 0.25),
        Channel("Y780-A", "CD25 PE-Cy7", "CD25", 25, 100, 0.1),
        Channel("R670-A", "IL-7Ra", "CD127", 15, 85, 0.05),
        Channel("R780-A", "Zombie NIR", "viability", 35, 130, 0.05),
        Channel("V450-A", "CD45RA", "CD45RA", 80, 180, 0.7),
    ),
    "bcell": (
        Channel("UV395-A", "CD19 BUV395", "CD19", 60, 170, 0.6),
        Channel("UV737-A", "CD20-BUV737", "CD20", 30, 120, 0.1),
        Channel("B530-A", "IgD FITC", "IgD", 70, 110, 0.5),
        Channel("Y586-A", "CD24 PE", "CD24", 20, 90, 0.25),
        Channel("Y610-A", "CD138 PE-Dazzle594", "CD138", 30, 110, 0.2),
        Channel("Y780-A", "CD38 PE-Cy7", "CD38", 25, 100, 0.1),
        Channel("R670-A", "CD3 APC", "CD3", 15, 85, 0.05),
        Channel("V450-A", "CD27 BV421", "CD27", 80, 180, 0.7),
        Channel("V510-A", "Live/Dead Aqua", "viability", 90, 160, 1.0),
    ),
}
TUBE_NAMES = {"treg": "Treg tube", "bcell": "B-cell tube"}

# Dye (named by its detector) → receiving detector. Row-vector convention: raw = true @ S.
_SPILL: dict[str, dict[tuple[str, str], float]] = {
    "treg": {
        ("UV395-A", "V450-A"): 0.045, ("UV395-A", "B530-A"): 0.012,
        ("B530-A", "Y586-A"): 0.21, ("B530-A", "B710-A"): 0.035,
        ("B710-A", "R670-A"): 0.085, ("B710-A", "Y780-A"): 0.06, ("B710-A", "R780-A"): 0.025,
        ("Y586-A", "B710-A"): 0.17, ("Y586-A", "Y780-A"): 0.025, ("Y586-A", "B530-A"): 0.011,
        ("Y780-A", "R780-A"): 0.11, ("Y780-A", "Y586-A"): 0.03, ("Y780-A", "B710-A"): 0.04,
        ("R670-A", "R780-A"): 0.13, ("R670-A", "B710-A"): 0.02, ("R670-A", "Y780-A"): 0.012,
        ("R780-A", "Y780-A"): 0.09, ("R780-A", "R670-A"): 0.05,
        ("V450-A", "B530-A"): 0.018, ("V450-A", "UV395-A"): 0.015,
    },
    "bcell": {
        ("UV395-A", "V450-A"): 0.045, ("UV395-A", "V510-A"): 0.02,
        ("UV737-A", "Y780-A"): 0.05, ("UV737-A", "R670-A"): 0.03,
        ("B530-A", "Y586-A"): 0.26, ("B530-A", "Y610-A"): 0.07, ("B530-A", "V510-A"): 0.015,
        ("Y586-A", "Y610-A"): 0.34, ("Y586-A", "Y780-A"): 0.028, ("Y586-A", "B530-A"): 0.012,
        ("Y610-A", "Y586-A"): 0.07, ("Y610-A", "Y780-A"): 0.075, ("Y610-A", "R670-A"): 0.045,
        ("Y780-A", "Y610-A"): 0.025, ("Y780-A", "UV737-A"): 0.055,
        ("R670-A", "UV737-A"): 0.035, ("R670-A", "Y780-A"): 0.015,
        ("V450-A", "V510-A"): 0.19, ("V450-A", "B530-A"): 0.02,
        ("V510-A", "B530-A"): 0.16, ("V510-A", "V450-A"): 0.025, ("V510-A", "Y586-A"): 0.03,
    },
}

# Expression specs (specific signal, linear, before shifts): ("ln", median, sigma) log-normal;
# ("gm", median, shape) gamma; ("nm", mean, sd) normal (a continuum that reaches zero);
# ("mx", p, spec_a, spec_b) a mixture, p of the cells from spec_a; None = negative.
_B_ALL = ("B naive", "B unswitched", "B switched", "B DN", "B transitional",
          "Plasmablast", "Plasma cell")
_T_ALL = LEAVES[:10]
_CD4_ALL = LEAVES[:8]


EXPRESSION: dict[str, dict[str, tuple]] = {
    "CD3": {leaf: ("gm", 10_000, 9) for leaf in _T_ALL},
    "CD4": {**{leaf: ("ln", 9_000, 0.28) for leaf in _CD4_ALL}, "Monocyte": ("ln", 1_300, 0.4)},
    "CD8": {"CD8 T": ("gm", 16_000, 6), "NK": ("mx", 0.35, ("ln", 1_200, 0.5), None)},
    "CD25": {
        "Tconv naive": ("nm", 150, 150), "Tconv memory": ("ln", 380, 0.6),
        "Tconv activated": ("ln", 1_100, 0.5), "CD4 CD25-FOXP3+": ("nm", 100, 120),
        "Treg Fr I": ("ln", 3_400, 0.3), "Treg Fr II": ("ln", 5_200, 0.33),
        "Treg Fr III": ("ln", 3_700, 0.33), "Treg FOXP3-": ("ln", 3_500, 0.35),
        "CD8 T": ("nm", 60, 80), "NK": ("ln", 250, 0.6), "Monocyte": ("ln", 300, 0.5),
        **{leaf: ("ln", 200, 0.6) for leaf in _B_ALL},
    },
    "CD127": {
        "Tconv naive": ("gm", 4_200, 12), "Tconv memory": ("ln", 2_800, 0.4),
        "Tconv activated": ("ln", 2_400, 0.35), "CD4 CD25-FOXP3+": ("ln", 650, 0.5),
        **{leaf: ("ln", 200, 0.55) for leaf in LEAVES[4:8]},
        "CD8 T": ("mx", 0.75, ("ln", 2_600, 0.5), ("ln", 400, 0.6)),
        "DN T": ("ln", 1_500, 0.6), "NK": ("ln", 150, 0.6),
    },
    "FOXP3": {
        "Treg Fr I": ("ln", 1_800, 0.35), "Treg Fr II": ("ln", 5_500, 0.3),
        "Treg Fr III": ("ln", 1_900, 0.35), "Treg FOXP3-": ("nm", 120, 120),
        "CD4 CD25-FOXP3+": ("ln", 1_700, 0.45),
        "Tconv activated": ("mx", 0.15, ("ln", 700, 0.5), None),
    },
    "CD45RA": {
        "Tconv naive": ("gm", 11_000, 8), "Tconv memory": ("mx", 0.1, ("ln", 2_000, 0.6), None),
        "CD4 CD25-FOXP3+": ("mx", 0.3, ("ln", 5_000, 0.5), None), "Treg Fr I": ("ln", 6_500, 0.4),
        "CD8 T": ("mx", 0.55, ("ln", 12_000, 0.4), ("ln", 500, 0.8)),
        "DN T": ("ln", 6_000, 0.6), "NK": ("ln", 9_000, 0.4), "Monocyte": ("ln", 1_500, 0.5),
        **{leaf: ("ln", 14_000, 0.35) for leaf in ("B naive", "B unswitched", "B transitional")},
        "B switched": ("ln", 5_000, 0.6), "B DN": ("ln", 5_000, 0.6),
        "Plasmablast": ("ln", 800, 0.6), "Plasma cell": ("ln", 800, 0.6),
    },
    "CD19": {
        "B naive": ("gm", 5_200, 14), "B unswitched": ("ln", 6_200, 0.28),
        "B switched": ("ln", 6_000, 0.3), "B DN": ("ln", 3_800, 0.4),
        "B transitional": ("ln", 5_600, 0.3), "Plasmablast": ("ln", 2_600, 0.35),
        "Plasma cell": ("ln", 2_000, 0.4),
    },
    "CD20": {
        **{leaf: ("gm", 26_000, 10) for leaf in ("B naive", "B unswitched", "B switched")},
        "B DN": ("ln", 16_000, 0.45), "B transitional": ("ln", 30_000, 0.3),
        "Plasmablast": ("ln", 250, 0.5), "Plasma cell": ("ln", 200, 0.5),
        **{leaf: ("mx", 0.03, ("ln", 2_500, 0.5), None) for leaf in _T_ALL},
    },
    "CD27": {
        "B unswitched": ("ln", 3_800, 0.45), "B switched": ("gm", 3_500, 5),
        "Plasmablast": ("ln", 16_000, 0.4), "Plasma cell": ("ln", 12_000, 0.45),
        **{leaf: ("mx", 0.8, ("ln", 3_000, 0.5), None) for leaf in _T_ALL},
        "NK": ("mx", 0.3, ("ln", 900, 0.6), None),
    },
    "CD38": {
        "B naive": ("ln", 1_500, 0.45), "B unswitched": ("ln", 450, 0.6),
        "B switched": ("ln", 350, 0.7), "B DN": ("ln", 250, 0.7),
        "B transitional": ("ln", 14_000, 0.3), "Plasmablast": ("ln", 60_000, 0.35),
        "Plasma cell": ("ln", 65_000, 0.35), "NK": ("ln", 6_500, 0.45),
        "Monocyte": ("ln", 3_500, 0.5), "Granulocyte": ("ln", 800, 0.5),
        **{leaf: ("ln", 500, 0.8) for leaf in _T_ALL},
    },
    "IgD": {
        "B naive": ("ln", 12_000, 0.4), "B unswitched": ("ln", 8_000, 0.45),
        "B transitional": ("ln", 14_000, 0.35),
        "Plasmablast": ("mx", 0.1, ("ln", 1_500, 0.6), None),
    },
    "CD24": {
        "B naive": ("ln", 2_300, 0.4), "B unswitched": ("ln", 7_000, 0.35),
        "B switched": ("ln", 6_500, 0.4), "B DN": ("ln", 1_500, 0.6),
        "B transitional": ("ln", 14_000, 0.3), "Granulocyte": ("ln", 20_000, 0.4),
    },
    "CD138": {"Plasma cell": ("ln", 4_500, 0.45)},
}
#: Viability dye by event state (live cells carry only background).
VIABILITY = {
    DEAD: ("mx", 0.88, ("ln", 15_000, 0.5), ("ln", 2_500, 0.45)),  # 12% "dying", dye-dim
    DEBRIS: ("mx", 0.4, ("ln", 4_000, 1.0), None),
}
#: Batch staining-shift σ (log scale); markers not listed use 0.10.
SHIFT_SD = {"CD25": 0.25, "CD127": 0.25, "FOXP3": 0.25, "CD138": 0.15, "viability": 0.15}
SAMPLE_SHIFT_SD = 0.04
# Scatter relative to lymphocytes (FSC, SSC, FSC log-sd, SSC log-sd) and autofluorescence.
_SCATTER = {"Tconv activated": (1.10, 1.10), "NK": (1.04, 1.30), "Plasmablast": (1.08, 1.15),
            "Plasma cell": (1.10, 1.20), "Monocyte": (1.61, 3.2), "Granulocyte": (1.45, 6.0),
            **{leaf: (0.97, 0.92) for leaf in MATURE_B}}
_AUTOFLUOR = {"NK": 60.0, "Plasmablast": 90.0, "Plasma cell": 90.0, "Monocyte": 400.0,
              "Granulocyte": 600.0}


@dataclass
class SampleDesign:
    """Everything drawn per sample before events: composition, batch, shifts, spillover."""

    sample_id: str
    batch: str
    cell_probs: np.ndarray  # over LEAVES, for singlet cells (lymphocytes + myeloid)
    debris: float
    doublets: float
    dead: float
    fsc_shift: float
    ssc_shift: float
    singlet_ratio: float
    marker_shift: dict[str, dict[str, float]]  # panel -> marker -> factor
    spill_stored: dict[str, pd.DataFrame]  # panel -> matrix written to $SPILLOVER
    spill_actual: dict[str, np.ndarray]  # panel -> what the instrument really did
    date: str = "01-JAN-2024"


@dataclass
class AltTube:
    """One simulated tube kept in memory.

    Attributes
    ----------
    events
        ``(n, p)`` float32 raw events exactly as written (scatter, fluorescence, Time).
    signal
        ``(n, k)`` true fluorescence of the ``k`` fluorescence channels (compensated space,
        before detector noise and spillover).
    labels
        Per event: ``leaf`` (index into :data:`LEAVES`, -1 for debris), ``leaf_b`` (second
        cell of a doublet, else -1) and ``state`` (LIVE, DEAD, DOUBLET, DEBRIS).
    """

    design: SampleDesign
    panel: str
    pnn: list[str]
    pns: list[str]
    fluor: list[str]  # $PnN of the fluorescence channels, in spillover order
    events: np.ndarray
    signal: np.ndarray
    labels: pd.DataFrame
    truth: dict[str, float] = field(default_factory=dict)

    @property
    def shifts(self) -> dict[str, float]:
        """Multiplicative staining shift per marker for this tube."""
        return self.design.marker_shift[self.panel]

    @property
    def spillover(self) -> pd.DataFrame:
        """The matrix stored in $SPILLOVER."""
        return self.design.spill_stored[self.panel]

    def compensated(self) -> np.ndarray:
        """Fluorescence channels compensated with the stored matrix (``raw · inv(S)``)."""
        cols = [self.pnn.index(c) for c in self.fluor]
        return self.events[:, cols].astype(float) @ np.linalg.inv(self.spillover.to_numpy())


def _logit_draw(rng: np.random.Generator, median: float, sd: float,
                lo: float, hi: float) -> float:
    z = np.log(median / (1 - median)) + sd * rng.standard_normal()
    return float(np.clip(1 / (1 + np.exp(-z)), lo, hi))


def _composition(rng: np.random.Generator) -> np.ndarray:
    """Leaf probabilities among singlet cells; ranges from DOMAIN.md §3 (SLE column)."""
    t = _logit_draw(rng, 0.70, 0.35, 0.50, 0.85)
    b = _logit_draw(rng, 0.09, 0.6, 0.03, 0.20)
    nk = 1.0 - t - b
    if nk < 0.04:
        t -= 0.04 - nk
        nk = 0.04
    cd4 = t * _logit_draw(rng, 0.50, 0.35, 0.30, 0.70)
    treg = _logit_draw(rng, 0.045, 0.4, 0.02, 0.10)
    foxp3_pos = _logit_draw(rng, 0.85, 0.5, 0.70, 0.95)
    naive_treg = min(_logit_draw(rng, 0.25, 0.5, 0.08, 0.50), foxp3_pos - 0.2)
    fr2 = rng.uniform(0.45, 0.70)
    cd25neg_foxp3 = _logit_draw(rng, 0.04, 0.6, 0.01, 0.10)
    act = _logit_draw(rng, 0.05, 0.4, 0.02, 0.10)
    rest = 1.0 - treg - cd25neg_foxp3 - act
    naive_tconv = _logit_draw(rng, 0.40, 0.5, 0.15, 0.70)
    dn_t = _logit_draw(rng, 0.08, 0.4, 0.03, 0.15)
    pb = _logit_draw(rng, 0.04, 0.9, 0.005, 0.15)
    others = np.array([_logit_draw(rng, 0.05, 0.5, 0.01, 0.15),    # unswitched
                       _logit_draw(rng, 0.18, 0.5, 0.06, 0.35),    # switched
                       _logit_draw(rng, 0.08, 0.6, 0.02, 0.20),    # double negative
                       _logit_draw(rng, 0.05, 0.7, 0.01, 0.15)])   # transitional
    others *= min(1.0, (0.75 - pb) / others.sum())  # keep naive B >= 25%
    naive_b = 1.0 - pb - others.sum()
    pc_share = rng.uniform(0.35, 0.55)
    lymph = {
        "Tconv naive": cd4 * rest * naive_tconv, "Tconv memory": cd4 * rest * (1 - naive_tconv),
        "Tconv activated": cd4 * act, "CD4 CD25-FOXP3+": cd4 * cd25neg_foxp3,
        "Treg Fr I": cd4 * treg * naive_treg,
        "Treg Fr II": cd4 * treg * (foxp3_pos - naive_treg) * fr2,
        "Treg Fr III": cd4 * treg * (foxp3_pos - naive_treg) * (1 - fr2),
        "Treg FOXP3-": cd4 * treg * (1 - foxp3_pos),
        "CD8 T": (t - cd4) * (1 - dn_t), "DN T": (t - cd4) * dn_t, "NK": nk,
        "B naive": b * naive_b, "B unswitched": b * others[0], "B switched": b * others[1],
        "B DN": b * others[2], "B transitional": b * others[3],
        "Plasmablast": b * pb * (1 - pc_share), "Plasma cell": b * pb * pc_share,
    }
    mono, gran = rng.uniform(0.08, 0.22), rng.uniform(0.005, 0.03)
    probs = np.array([lymph[leaf] * (1 - mono - gran) for leaf in LEAVES[:N_LYMPH]]
                     + [mono, gran])
    return probs / probs.sum()


def _spill_matrix(panel: str, rng: np.random.Generator, sd: float,
                  base: np.ndarray | None = None) -> np.ndarray:
    names = [c.pnn for c in PANELS[panel]]
    if base is None:
        base = np.eye(len(names))
        for (src, dst), value in _SPILL[panel].items():
            base[names.index(src), names.index(dst)] = value
    off = ~np.eye(len(names), dtype=bool) & (base != 0)
    out = base.copy()
    out[off] *= np.exp(sd * rng.standard_normal(off.sum()))
    return np.round(out, 6)


def _batch_sizes(n: int, rng: np.random.Generator) -> list[int]:
    """Batch sizes of 4–6 summing to ``n`` (one batch of 7 when nothing else fits)."""
    sizes = []
    while n > 0:
        options = [s for s in (4, 5, 6) if s == n or (n - s >= 4 and n - s != 7)]
        sizes.append(int(rng.choice(options)) if options else n)
        n -= sizes[-1]
    return sizes


def design_cohort(n_samples: int, seed: int) -> list[SampleDesign]:
    """Draw sample compositions, batches (4–6 samples each), shifts and spillover matrices."""
    rng = np.random.default_rng([seed, 1])
    designs: list[SampleDesign] = []
    for b, size in enumerate(_batch_sizes(n_samples, rng), start=1):
        fsc, ssc = rng.uniform(0.9, 1.1, size=2)
        ratio = 0.88 + rng.uniform(-0.02, 0.02)
        batch_shift = {p: {c.marker: float(np.exp(SHIFT_SD.get(c.marker, 0.10)
                                                  * rng.standard_normal()))
                           for c in chans} for p, chans in PANELS.items()}
        stored = {p: _spill_matrix(p, rng, 0.05) for p in PANELS}
        date = f"{1 + (7 * b) % 28:02d}-{('MAR', 'APR', 'MAY', 'JUN')[b % 4]}-2024"
        for _ in range(size):
            shifts = {p: {m: f * float(np.exp(SAMPLE_SHIFT_SD * rng.standard_normal()))
                          for m, f in d.items()} for p, d in batch_shift.items()}
            designs.append(SampleDesign(
                sample_id=f"ALT{len(designs) + 1:03d}", batch=f"RUN{b:02d}",
                cell_probs=_composition(rng), debris=rng.uniform(0.03, 0.10),
                doublets=rng.uniform(0.03, 0.08), dead=rng.uniform(0.03, 0.12),
                fsc_shift=float(fsc), ssc_shift=float(ssc), singlet_ratio=float(ratio),
                marker_shift=shifts,
                spill_stored={p: pd.DataFrame(m, index=[c.pnn for c in PANELS[p]],
                                              columns=[c.pnn for c in PANELS[p]])
                              for p, m in stored.items()},
                spill_actual={p: _spill_matrix(p, rng, 0.05, base=m) for p, m in stored.items()},
                date=date,
            ))
    return designs


def _draw(spec: tuple | None, n: int, rng: np.random.Generator) -> np.ndarray:
    if spec is None or n == 0:
        return np.zeros(n)
    kind = spec[0]
    if kind == "ln":
        return spec[1] * np.exp(spec[2] * rng.standard_normal(n))
    if kind == "gm":  # median of Gamma(k, θ) ≈ θ (k − 1/3)
        return rng.gamma(spec[2], spec[1] / (spec[2] - 1 / 3), n)
    if kind == "nm":
        return spec[1] + spec[2] * rng.standard_normal(n)
    if kind == "mx":
        pick = rng.random(n) < spec[1]
        out = _draw(spec[3], n, rng)
        out[pick] = _draw(spec[2], int(pick.sum()), rng)
        return out
    raise ValueError(f"unknown expression spec {spec!r}")


def _specific(leaf: np.ndarray, panel: str, shifts: dict[str, float],
              rng: np.random.Generator) -> np.ndarray:
    """Specific (antibody) signal per event and fluorescence channel, shifts applied."""
    out = np.zeros((leaf.size, len(PANELS[panel])))
    for j, ch in enumerate(PANELS[panel]):
        for name, spec in EXPRESSION.get(ch.marker, {}).items():
            hit = np.flatnonzero(leaf == _IDX[name])
            out[hit, j] = _draw(spec, hit.size, rng)
        out[:, j] *= shifts[ch.marker]
    return out


def _scatter(leaf: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rel = np.array([_SCATTER.get(name, (1.0, 1.0)) for name in LEAVES])[leaf]
    myeloid = leaf >= N_LYMPH
    fsc = LYMPH_FSC * rel[:, 0] * rng.gamma(80, 1 / 80, leaf.size)  # CV 11%, right-skewed
    fsc[myeloid] *= np.exp(0.07 * rng.standard_normal(myeloid.sum()))
    ssc = LYMPH_SSC * rel[:, 1] * np.exp(np.where(myeloid, 0.25, 0.22)
                                         * rng.standard_normal(leaf.size))
    return fsc, ssc


def simulate_tube(design: SampleDesign, panel: str, n_events: int,
                  rng: np.random.Generator) -> AltTube:
    """Simulate one tube of one sample in memory.

    Parameters
    ----------
    design
        The sample (from :func:`design_cohort`).
    panel
        ``"treg"`` or ``"bcell"``.
    n_events
        Events in the file, all kinds included.
    rng
        Random generator (the cohort derives it from the seed, sample and tube).

    Returns
    -------
    AltTube
        Raw events, true fluorescence, per-event labels and truth counts.
    """
    chans = PANELS[panel]
    k = len(chans)
    shifts = design.marker_shift[panel]
    n_debris, n_doublet, n_dead, n_live = rng.multinomial(
        n_events, [design.debris, design.doublets, design.dead,
                   1 - design.debris - design.doublets - design.dead])
    ncell = len(LEAVES)
    live_leaf = rng.choice(ncell, n_live, p=design.cell_probs)
    dead_leaf = rng.choice(ncell, n_dead, p=design.cell_probs)
    pair = rng.choice(ncell, (2, n_doublet), p=design.cell_probs)

    leaf = np.concatenate([live_leaf, dead_leaf, pair[0], np.full(n_debris, -1)])
    leaf_b = np.concatenate([np.full(n_live + n_dead, -1), pair[1], np.full(n_debris, -1)])
    state = np.repeat([LIVE, DEAD, DOUBLET, DEBRIS], [n_live, n_dead, n_doublet, n_debris])
    cells = leaf >= 0

    # Fluorescence: specific signal + autofluorescence + detector-specific background.
    spec = np.zeros((n_events, k))
    spec[cells] = _specific(leaf[cells], panel, shifts, rng)
    dbl = state == DOUBLET
    spec[dbl] += _specific(leaf_b[dbl], panel, shifts, rng)
    af_med = np.array([_AUTOFLUOR.get(name, 40.0) for name in LEAVES])
    af = np.where(cells, af_med[leaf], 150.0) * np.exp(0.35 * rng.standard_normal(n_events))
    af[dbl] += af_med[leaf_b[dbl]]
    dead = state == DEAD
    # Dying cells lose antigen but bind antibody nonspecifically (why viability is gated).
    spec[dead] *= 0.6
    spec[dead] += 350 * np.exp(0.8 * rng.standard_normal((dead.sum(), 1)))
    via = [c.marker for c in chans].index("viability")
    for st, vspec in VIABILITY.items():
        hit = state == st
        spec[hit, via] += _draw(vspec, int(hit.sum()), rng) * shifts["viability"]
    bg_mean = np.array([c.bg_mean for c in chans])
    bg_sd = np.array([c.bg_sd for c in chans])
    weight = np.array([c.af_weight for c in chans])
    signal = spec + af[:, None] * weight + bg_mean + bg_sd * rng.standard_normal((n_events, k))

    # Detectors: spillover as the instrument really does it, then shot + electronic noise.
    clean = signal @ design.spill_actual[panel]
    raw = clean + np.sqrt(1.5 * np.clip(clean, 0, None) + 12.0**2) * rng.standard_normal(
        clean.shape)

    # Scatter.
    fsc = np.empty(n_events)
    ssc = np.empty(n_events)
    fsc[cells], ssc[cells] = _scatter(leaf[cells], rng)
    f2, s2 = _scatter(leaf_b[dbl], rng)
    fsc[dbl] += f2
    ssc[dbl] += s2
    fsc[dead] *= 0.72 * np.exp(0.12 * rng.standard_normal(dead.sum()))
    ssc[dead] *= 1.35
    deb = state == DEBRIS
    fsc[deb] = rng.gamma(2.0, 7_500, deb.sum())
    ssc[deb] = 7_000 * np.exp(0.7 * rng.standard_normal(deb.sum()))
    ratio = design.singlet_ratio + 0.025 * rng.standard_normal(n_events)
    ratio[dbl] = 0.52 + 0.2 * rng.beta(2, 3, dbl.sum())
    ratio[deb] = 0.9 + 0.06 * rng.standard_normal(deb.sum())
    fsc_a = fsc * design.fsc_shift
    fsc_h = fsc_a * ratio
    ssc_a = ssc * design.ssc_shift
    ssc_b = ssc_a * 1.35 * np.exp(0.08 * rng.standard_normal(n_events))

    order = rng.permutation(n_events)
    rate = rng.uniform(2_000, 4_000)  # events per second
    ticks = np.sort(rng.uniform(0, n_events / rate, n_events)) / TIMESTEP
    events = np.column_stack([fsc_a, fsc_h, ssc_a, ssc_b, raw])[order]
    events = np.clip(events, None, SATURATION)
    events = np.column_stack([events, ticks]).astype(np.float32)
    labels = pd.DataFrame({"leaf": leaf[order], "leaf_b": leaf_b[order], "state": state[order]})
    fluor = [c.pnn for c in chans]
    tube = AltTube(design=design, panel=panel,
                   pnn=["FSC-A", "FSC-H", "SSC-A", "SSC-B-A", *fluor, "Time"],
                   pns=["", "", "", "", *(c.pns for c in chans), ""],
                   fluor=fluor, events=events, signal=signal[order], labels=labels)
    tube.truth = truth_counts(labels, panel)
    return tube


def truth_counts(labels: pd.DataFrame, panel: str) -> dict[str, float]:
    """True counts and percentages from per-event labels (DOMAIN.md §2 semantics).

    "Lymphocytes" counts events of lymphoid origin (live or dead singlets and
    lymphocyte–lymphocyte doublets), "Singlets" the lymphoid singlets, "Live lymphocytes" the
    live lymphoid singlets; every subset is counted among live singlet lymphocytes. Values
    a tube cannot measure (B cells in the Treg tube, CD4 in the B tube) are NaN.
    """
    leaf = labels["leaf"].to_numpy()
    leaf_b = labels["leaf_b"].to_numpy()
    state = labels["state"].to_numpy()
    lymphoid = (leaf >= 0) & (leaf < N_LYMPH)
    singlet = lymphoid & ((state == LIVE) | (state == DEAD))
    live = lymphoid & (state == LIVE)

    def n_in(group: frozenset) -> int:
        return int(np.isin(leaf[live], list(group)).sum())

    nan = float("nan")
    n_live = int(live.sum())
    t, cd4, treg = n_in(T_SET), n_in(CD4_SET), n_in(TREG_SET)
    b, pb, pc = n_in(B_SET), n_in(PB_SET), n_in(PC_SET)
    treg_tube = panel == "treg"
    return {
        "true_treg_pct_of_cd4": 100 * treg / cd4 if treg_tube and cd4 else nan,
        "true_b_pct_of_live": 100 * b / n_live if not treg_tube and n_live else nan,
        "true_pb_pct_of_b": 100 * pb / b if not treg_tube and b else nan,
        "true_lymphocytes": float(singlet.sum() + ((state == DOUBLET) & lymphoid
                                                   & (leaf_b < N_LYMPH)).sum()),
        "true_singlets": float(singlet.sum()),
        "true_live_lymphocytes": float(n_live),
        "true_t_cells": float(t),
        "true_cd4_t_cells": float(cd4) if treg_tube else nan,
        "true_treg": float(treg) if treg_tube else nan,
        "true_foxp3_treg": float(n_in(FOXP3_TREG_SET)) if treg_tube else nan,
        "true_b_cells": nan if treg_tube else float(b),
        "true_plasmablasts": nan if treg_tube else float(pb),
        "true_plasma_cells": nan if treg_tube else float(pc),
    }


def iter_alt_tubes(n_samples: int = 24, n_events: int = 30_000,
                   seed: int = 0) -> Iterator[AltTube]:
    """Yield every tube of the cohort in memory (Treg then B tube per sample)."""
    for i, design in enumerate(design_cohort(n_samples, seed)):
        for j, panel in enumerate(PANELS):
            yield simulate_tube(design, panel, n_events, np.random.default_rng([seed, 2, i, j]))


def make_alt_cohort(out: Path, *, n_samples: int = 24, n_events: int = 30_000,
                    seed: int = 0) -> pd.DataFrame:
    """Write a Treg tube and a B-cell tube FCS 3.1 file per sample, and return the truth.

    Parameters
    ----------
    out
        Folder for the files (created if missing).
    n_samples
        Samples; files are ``2 * n_samples``.
    n_events
        Events per file (debris, doublets, dead cells and myeloid cells included).
    seed
        Everything is deterministic for a seed (files are byte-identical).

    Returns
    -------
    pandas.DataFrame
        One row per file: ``sample_id, path, panel ("treg" | "bcell"), batch``, the true
        percentages ``true_treg_pct_of_cd4``, ``true_b_pct_of_live``, ``true_pb_pct_of_b``
        (NaN where the tube cannot measure them) and true counts (see :func:`truth_counts`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for tube in iter_alt_tubes(n_samples, n_events, seed):
        d = tube.design
        name = f"{d.batch}_{d.sample_id}_{'Treg' if tube.panel == 'treg' else 'Bcell'}.fcs"
        meta = {"$CYT": "BD FACSymphony A5 (simulated)", "$DATE": d.date, "$BTIM": "10:15:00",
                "$FIL": name, "$SRC": d.sample_id, "$TIMESTEP": str(TIMESTEP),
                "TUBE NAME": TUBE_NAMES[tube.panel], "EXPERIMENT NAME": d.batch,
                "CREATOR": "immunoprofile tests/alt_cohort.py"}
        path = write_fcs(out / name, tube.events, tube.pnn, tube.pns,
                         spillover=tube.spillover, metadata=meta)
        rows.append({"sample_id": d.sample_id, "path": path, "panel": tube.panel,
                     "batch": d.batch, **tube.truth})
    return pd.DataFrame(rows)
