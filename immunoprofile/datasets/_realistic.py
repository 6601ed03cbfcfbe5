"""Realistic mode of the event simulator: overlapping populations and FlowJo-style exports.

The default phenotypes (``_events.PHENOTYPES``) separate every population cleanly, so gates
that pass on them prove little about real files. DOMAIN §2 ("Real data differ from these tidy
numbers") lists what real PBMC files look like instead, and this module encodes it:

- IgD− memory B cells (switched and double negative) are IgD dim-to-low: a *shoulder* on the
  lower flank of the IgD+ naive peak, not a second peak;
- CD25 is a continuum on CD4 T cells (naive < memory < activated < Treg, no valley) and Treg
  CD127 overlaps the lower tail of Tconv CD127;
- plasmablasts are CD20 intermediate (median 1/20 of mature B, above the CD20− events), CD19
  dim, CD27hi CD38hi with spread reaching into memory B's upper tail;
- dim markers have wider spreads (log-SD 0.45-0.6) and naive and transitional B cells form a
  continuum on CD24 × CD38;
- scatter is log-normal with correlated FSC and SSC, singlets' FSC-H/FSC-A ratio is broader;
- Time counts milliseconds (0.1 $TIMESTEP tick, as in the real LSR files), so neighbouring
  events share a value. (Gated exports and pauses, in either mode, live in ``_acquisition``.)

Shapes were checked against two real files (``../shared/real-data``): Bcells1.fcs (LSRII,
whole sample) and 68983.fcs (LSR, lymphocyte-gated FlowJo export); see the comments below.
The truth is unchanged: every event keeps its label.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PHENOTYPE_OVERRIDES", "REALISTIC_DEFAULT", "realistic_phenotypes",
           "realistic_scatter"]

#: Whether ``TubeParams`` and ``simulate_cohort`` simulate realistic shapes unless told
#: otherwise. Flip to True once the gating templates are tuned on realistic data.
REALISTIC_DEFAULT = True

# --- Phenotypes (compensated linear scale of the reference instrument; specs as in _events).
# Markers not named here keep the default phenotype; every value is assumed unless it cites
# DOMAIN §5. Log-SDs of dim markers 0.45-0.6 (DOMAIN §2: cross-site variation is largest there;
# positives' log-SD 0.3-0.5 per DOMAIN §5, so CD25 and CD127 take its upper end, 0.5-0.55).
# Treg CD127 is DOMAIN's 250 (log-SD 0.5): an earlier 400 / 0.55 (assumed, to force overlap)
# put ~10% of Treg under any HIPC gate's lower edge, against DOMAIN's own medians. The
# overlap that makes the gate diagonal comes from CD25: a continuum up to activated Tconv,
# whose CD127 (1.5k, assumed) is lower than resting Tconv's.
_TREG = {"CD25": ("ln", 3500, 0.5), "CD127": ("ln", 250, 0.5)}
_MEMORY_B = {"CD27": ("ln", 3500, 0.5), "CD38": ("ln", 350, 0.6), "CD24": ("ln", 7000, 0.5)}
_PB = {"CD19": ("ln", 2000, 0.45),  # CD19 dim (DOMAIN §5: 2k)
       # CD20 intermediate: 25k / 20 (DOMAIN §2: 10-30x dimmer than mature B)
       "CD20": ("ln", 1250, 0.55),
       "CD27": ("ln", 15_000, 0.6),  # overlaps memory B's upper tail (3.5k · e^(2·0.5) = 9.5k)
       "CD38": ("ln", 50_000, 0.55)}
PHENOTYPE_OVERRIDES: dict[str, dict[str, dict]] = {
    "treg": {
        "treg_naive_foxp3pos": {**_TREG, "FOXP3": ("ln", 2500, 0.45)},
        "treg_naive_foxp3neg": {**_TREG, "FOXP3": ("ln", 300, 0.6)},
        "treg_memory_foxp3pos": {**_TREG, "FOXP3": ("ln", 4000, 0.45)},
        "treg_memory_foxp3neg": {**_TREG, "FOXP3": ("ln", 300, 0.6)},
        # CD25 continuum: naive 150 < memory 400 < activated 1.2k < Treg 3.5k, each wide enough
        # to reach the next, so the CD4 histogram falls off without a valley (DOMAIN §2).
        "cd4_naive": {"CD25": ("ln", 150, 0.5), "CD127": ("ln", 3000, 0.45)},
        "cd4_memory": {"CD25": ("ln", 400, 0.5), "CD127": ("ln", 2800, 0.45)},
        "cd4_activated": {"CD25": ("ln", 1200, 0.55), "CD127": ("ln", 1500, 0.5)},
        "cd4_cd25neg_foxp3pos": {"CD25": ("ln", 200, 0.7), "CD127": ("ln", 1200, 0.5),
                                 "FOXP3": ("ln", 1800, 0.45)},
    },
    "bcell": {
        # IgD: naive 10k with a broad spread (IgD-hi and IgD-lo naive cells); memory IgD
        # dim-to-low (switched 1.8k, double negative 1.2k, log-SD 0.8) so, at the SLE median
        # composition, they make a shoulder at arcsinh 2-4 under the naive peak at ~4.9 (the
        # density still rises all the way to the peak). The best single IgD cut (~3.8) then
        # puts ~82% of IgD− and ~95% of IgD+ cells on their side: the overlap is the point.
        # Naive and transitional B cells form one maturation continuum on CD24 × CD38: a
        # shared factor (log-SD 0.4 / 0.35) moves both markers of a cell together, so naive
        # cells trail diagonally into the transitional cloud with no valley between them.
        # Transitional medians are DOMAIN §5's; naive CD38 2k and CD24 3k sit a little above
        # its 1.5k / 2.5k (assumed); total log-SDs 0.46-0.57.
        "b_naive": {"CD19": ("ln", 6000, 0.4), "CD20": ("ln", 25_000, 0.4),
                    "IgD": ("ln", 10_000, 0.65), "CD38": ("ln", 2000, 0.4),
                    "CD24": ("ln", 3000, 0.35), "shared": (("CD24", "CD38"), 0.4)},
        "b_transitional": {"CD19": ("ln", 6000, 0.4), "CD20": ("ln", 25_000, 0.4),
                           "IgD": ("ln", 12_000, 0.55), "CD38": ("ln", 12_000, 0.35),
                           "CD24": ("ln", 10_000, 0.3), "shared": (("CD24", "CD38"), 0.35)},
        "b_unswitched": {**_MEMORY_B, "IgD": ("ln", 7000, 0.65)},
        "b_switched": {**_MEMORY_B, "IgD": ("ln", 1800, 0.8)},
        "b_double_negative": {"IgD": ("ln", 1200, 0.8), "CD38": ("ln", 450, 0.6),
                              "CD24": ("ln", 1500, 0.6)},
        "plasmablast": _PB,
        "plasma_cell": {**_PB, "CD138": ("ln", 4000, 0.5)},
    },
}


def realistic_phenotypes(base: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """``base`` (the default phenotype table) with :data:`PHENOTYPE_OVERRIDES` laid over it."""
    out = {}
    for kind, leaves in base.items():
        over = PHENOTYPE_OVERRIDES.get(kind, {})
        out[kind] = {leaf: {**leaves.get(leaf, {}), **over.get(leaf, {})}
                     for leaf in dict.fromkeys([*leaves, *over])}
    return out


# --- Scatter: log-normal (FSC-A median, log-SD, SSC-A median, log-SD) on the reference scale.
# Medians are DOMAIN §5's. Shapes from real lymphocytes: SSC-A log-SD 0.36 (68983.fcs export)
# and 0.43 (B cells of Bcells1.fcs); FSC-A CV 0.17 and 0.26; log FSC-SSC correlation 0.51 and
# 0.11. The simulator takes FSC log-SD 0.15 (a tighter, PBMC-like cloud, assumed), SSC 0.38
# and correlation 0.4.
SCATTER_LOGNORMAL: dict[str, tuple[float, float, float, float]] = {
    "lymphocyte": (65_000, 0.15, 15_000, 0.38),
    "nk_other": (66_000, 0.15, 19_000, 0.38),
    "plasmablast": (72_000, 0.15, 19_000, 0.38),
    "plasma_cell": (72_000, 0.15, 19_000, 0.38),
    "monocyte": (100_000, 0.12, 50_000, 0.30),
    "granulocyte": (115_000, 0.12, 130_000, 0.25),
}
SCATTER_RHO = 0.4
# FSC-H / FSC-A: singlets 0.86 ± 0.045 (B cells of Bcells1.fcs: median 0.85, SD of the central
# 90% 0.046), doublets 0.62 ± 0.08 (DOMAIN §5: 0.60 ± 0.08).
SINGLET_RATIO = (0.86, 0.045)
DOUBLET_RATIO = (0.62, 0.08)


def realistic_scatter(leaf: str, k: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """FSC-A and SSC-A of ``k`` single cells of one leaf: correlated log-normals."""
    f_med, f_sd, s_med, s_sd = SCATTER_LOGNORMAL.get(leaf, SCATTER_LOGNORMAL["lymphocyte"])
    z = rng.standard_normal((2, k))
    z[1] = SCATTER_RHO * z[0] + np.sqrt(1.0 - SCATTER_RHO**2) * z[1]
    return f_med * np.exp(f_sd * z[0]), s_med * np.exp(s_sd * z[1])
