"""Event-level simulation of one tube (Treg or B-cell panel) of a BD-style cytometer.

Every number here comes from DOMAIN.md §5 unless marked "(assumed)". The simulation works in
compensated linear space ("true fluorescence"), adds detector (photon-counting) noise in raw
space, and mixes dyes with a spillover matrix: ``raw = true @ spillover``. Everything is
vectorised over events; the only Python loops run over cell types and markers.

``TubeParams(realistic=True)`` swaps in the overlapping shapes of real files (``_realistic``),
``instrument`` rescales and renames the acquisition for another cytometer (``_instruments``)
and ``export="lymphocytes"`` keeps only a lymphocyte scatter gate, as FlowJo exports do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from immunoprofile.datasets import _acquisition as acq
from immunoprofile.datasets import _realistic as real
from immunoprofile.datasets._instruments import SPILLOVER, Instrument, get_instrument
from immunoprofile.datasets._trial import (
    B_LEAVES,
    NONLYMPH_LABELS,
    T_LEAVES,
    median_blood_leaves,
)

__all__ = ["SimulatedTube", "TubeParams", "leaf_labels", "simulate_tube", "spillover_matrix",
           "tube_labels"]

# The top of the reference (18-bit) scale: events above it are clipped (margin events). Other
# instruments have their own (``Instrument.max_channel``).
MAX_CHANNEL = 262143.0

# --- Panels: BD LSRFortessa-style detectors in instrument order, with the marker they carry.
PANELS: dict[str, dict[str, list]] = {
    "treg": {
        "fluorescence": [("FITC-A", "CD45RA"), ("PerCP-Cy5.5-A", "CD4"), ("PE-A", "CD25"),
                         ("PE-Cy7-A", "CD127"), ("APC-A", "FOXP3"), ("APC-H7-A", "CD3"),
                         ("BV510-A", "Viability")],
        # $PnS as a lab would type them (capitalisation varies between labs and panels).
        "pns": ["CD45RA", "CD4", "CD25", "CD127", "FoxP3", "CD3", "Viability"],
    },
    "bcell": {
        "fluorescence": [("FITC-A", "IgD"), ("PerCP-Cy5.5-A", "CD38"), ("PE-A", "CD27"),
                         ("PE-Cy7-A", "CD19"), ("APC-A", "CD138"), ("APC-H7-A", "CD3"),
                         ("BV421-A", "CD20"), ("BV510-A", "Viability"), ("BV605-A", "CD24")],
        "pns": ["IgD", "CD38", "CD27", "CD19", "CD138", "CD3", "CD20", "viability", "CD24"],
    },
}

# Unstained cells after compensation: Gaussian (mean, SD) per marker, 0-100 and 60-150.
NEGATIVE: dict[str, dict[str, tuple[float, float]]] = {
    "treg": {"CD45RA": (80, 90), "CD4": (60, 110), "CD25": (30, 70), "CD127": (60, 80),
             "FOXP3": (50, 100), "CD3": (50, 80), "Viability": (80, 60)},
    "bcell": {"IgD": (80, 90), "CD38": (60, 110), "CD27": (30, 70), "CD19": (60, 110),
              "CD138": (50, 100), "CD3": (50, 80), "CD20": (40, 90), "Viability": (80, 60),
              "CD24": (60, 100)},
}

# Leaf cell types of the blood model (shared by both tubes; each tube lumps what it cannot see).
def leaf_labels(kind: str) -> list[str]:
    """Leaf labels of live singlet lymphocytes in one tube, in hierarchy order.

    Parameters
    ----------
    kind
        ``"treg"`` or ``"bcell"``.

    Returns
    -------
    list of str
        The leaves (T-cell subsets or B-cell subsets in detail, the other lineages lumped).

    Raises
    ------
    ValueError
        ``kind`` names no tube (a typo must not give the B tube's labels).
    """
    if kind not in PANELS:
        raise ValueError(f"kind must be one of {sorted(PANELS)}, not {kind!r}")
    return [*T_LEAVES, "b_cell", "nk_other"] if kind == "treg" else ["t_cell", *B_LEAVES,
                                                                      "nk_other"]


def tube_labels(kind: str) -> list[str]:
    """The full per-event label vocabulary of a tube (lymphocyte leaves, then the rest).

    Parameters
    ----------
    kind
        ``"treg"``; any other value gives the B-cell tube's labels.

    Returns
    -------
    list of str
        :func:`leaf_labels` then dead cells, doublets, myeloid cells and debris; a
        :class:`SimulatedTube`'s ``labels`` index this list.
    """
    return [*leaf_labels(kind), *NONLYMPH_LABELS]


TUBE_TO_BLOOD = {"b_cell": B_LEAVES, "t_cell": T_LEAVES, "nk_other": ["nk", "other_lymphocyte"]}


def tube_leaf_fractions(kind: str, blood: dict[str, float]) -> dict[str, float]:
    """Lump blood-model leaf abundances into the leaves a tube can see."""
    out = {leaf: blood.get(leaf, 0.0) for leaf in leaf_labels(kind)}
    out["nk_other"] = blood.get("nk", 0.0) + blood.get("other_lymphocyte", 0.0)
    if kind == "treg":
        out["b_cell"] = sum(blood.get(leaf, 0.0) for leaf in B_LEAVES)
    else:
        out["t_cell"] = sum(blood.get(leaf, 0.0) for leaf in T_LEAVES)
    return out


# Phenotypes on the compensated linear scale (DOMAIN §5): ("ln", median, sigma) log-normal
# positives, ("n", mean, sd) Gaussian continua, ("mix", p_pos, pos, neg); absent = negative.
# Optional "shared": ((markers...), sigma), a log-normal factor those markers share per cell.
_T = {"CD3": ("ln", 8000, 0.3)}
_CD4 = {**_T, "CD4": ("ln", 8000, 0.3)}
_TREG = {**_CD4, "CD25": ("ln", 4000, 0.3), "CD127": ("ln", 250, 0.3)}
_RA = ("ln", 10_000, 0.35)
_B = {"CD19": ("ln", 6000, 0.35), "CD20": ("ln", 25_000, 0.35)}
_MEM = {**_B, "CD27": ("ln", 3500, 0.4), "CD38": ("ln", 300, 0.5), "CD24": ("ln", 8000, 0.4)}
# Plasmablasts: CD19 dim, CD20-, CD27hi CD38hi. Their CD19 median sits at 2.6k (0.43x mature B),
# above DOMAIN's approximate "2k": at 2k with sigma 0.3 about 6% of them would fall under the
# canonical CD19 cut (arcsinh 2.8 = 1.23k) by construction, and plasmablasts % of B could not
# be recovered within 5% by the default gates (assumed).
_PB = {"CD19": ("ln", 2600, 0.3), "CD20": ("ln", 300, 0.4), "CD27": ("ln", 15_000, 0.4),
       "CD38": ("ln", 60_000, 0.35)}
PHENOTYPES: dict[str, dict[str, dict]] = {
    "treg": {
        "treg_naive_foxp3pos": {**_TREG, "FOXP3": ("ln", 2500, 0.35), "CD45RA": _RA},
        "treg_naive_foxp3neg": {**_TREG, "FOXP3": ("ln", 300, 0.5), "CD45RA": _RA},
        "treg_memory_foxp3pos": {**_TREG, "FOXP3": ("ln", 4000, 0.35)},
        "treg_memory_foxp3neg": {**_TREG, "FOXP3": ("ln", 300, 0.5)},
        "cd4_naive": {**_CD4, "CD25": ("n", 150, 150), "CD127": ("ln", 3000, 0.35),
                      "CD45RA": _RA},
        "cd4_memory": {**_CD4, "CD25": ("n", 200, 170), "CD127": ("ln", 3000, 0.35)},
        "cd4_activated": {**_CD4, "CD25": ("ln", 1200, 0.55), "CD127": ("ln", 2000, 0.4)},
        "cd4_cd25neg_foxp3pos": {**_CD4, "CD25": ("n", 150, 150), "CD127": ("ln", 1200, 0.4),
                                 "FOXP3": ("ln", 1800, 0.35)},
        "cd8_other_t": {**_T, "CD25": ("n", 100, 120),
                        "CD127": ("mix", 0.7, ("ln", 2500, 0.4), ("neg",)),
                        "CD45RA": ("mix", 0.6, _RA, ("neg",))},
        "b_cell": {"CD25": ("n", 200, 150), "CD45RA": ("ln", 8000, 0.35)},
        "nk_other": {"CD25": ("n", 250, 170), "CD45RA": ("ln", 5000, 0.4)},
        "monocyte": {"CD4": ("ln", 1000, 0.4), "CD25": ("n", 200, 150),
                     "CD45RA": ("mix", 0.3, ("ln", 1500, 0.5), ("neg",)),
                     "autofluorescence": 250.0},
        "granulocyte": {"autofluorescence": 500.0},
    },
    "bcell": {
        "t_cell": {**_T, "CD27": ("mix", 0.75, ("ln", 2000, 0.4), ("neg",)),
                   "CD38": ("ln", 800, 0.5)},
        "b_naive": {**_B, "IgD": ("ln", 12_000, 0.4), "CD38": ("ln", 1500, 0.4),
                    "CD24": ("ln", 2500, 0.4)},
        "b_transitional": {**_B, "IgD": ("ln", 12_000, 0.4), "CD38": ("ln", 12_000, 0.35),
                           "CD24": ("ln", 10_000, 0.35)},
        "b_unswitched": {**_MEM, "IgD": ("ln", 8000, 0.4)},
        "b_switched": _MEM,
        "b_double_negative": {**_B, "CD38": ("ln", 400, 0.5), "CD24": ("ln", 1500, 0.5)},
        "plasmablast": _PB,
        "plasma_cell": {**_PB, "CD138": ("ln", 4000, 0.4)},
        "nk_other": {"CD38": ("ln", 2000, 0.5),
                     "CD27": ("mix", 0.3, ("ln", 1500, 0.4), ("neg",))},
        "monocyte": {"CD38": ("ln", 3000, 0.4), "autofluorescence": 250.0},
        "granulocyte": {"CD24": ("ln", 10_000, 0.4), "CD38": ("ln", 500, 0.5),
                        "autofluorescence": 500.0},
    },
}

# Realistic mode: the same table with the overlapping shapes of real files laid over it.
REALISTIC_PHENOTYPES = real.realistic_phenotypes(PHENOTYPES)

# Scatter (FSC-A mean, SD, SSC-A mean, SD) of single live cells.
SCATTER: dict[str, tuple[float, float, float, float]] = {
    "lymphocyte": (65_000, 8000, 15_000, 4000),
    "nk_other": (66_000, 8000, 19_000, 5000),
    "plasmablast": (72_000, 8500, 19_000, 5000),
    "plasma_cell": (72_000, 8500, 19_000, 5000),
    "monocyte": (100_000, 10_000, 50_000, 8000),
    "granulocyte": (115_000, 12_000, 130_000, 25_000),
}


@dataclass
class TubeParams:
    """Everything that differs between samples of one tube.

    Attributes
    ----------
    leaf_fractions
        Fraction of live singlet lymphocytes per leaf label of the tube (normalised here);
        ``None`` uses the SLE median composition.
    event_fractions
        Fractions of all events that are ``debris``, ``doublet``, ``dead``, ``monocyte``,
        ``granulocyte`` (the rest are live singlet lymphocytes); ``None`` draws typical values.
    marker_scale
        Multiplicative staining shift per marker (batch effects); applies to positive
        (log-normal) components only, since unstained cells do not change with staining.
    leaf_marker_scale
        Extra shift per ``(leaf, marker)``, e.g. brighter CD25 on Treg under IL-2.
    artefact
        ``None``, ``"clog"`` (a window where the flow rate drops and signal dims) or ``"drift"``
        (signal falls over the end of the run). Events in the window are flagged ``artefact``.
    scatter_scale
        Multiplicative FSC/SSC voltage difference of this acquisition.
    photon_noise
        Variance of raw detector noise per unit raw signal (assumed); its spread after
        compensation is what makes bright dyes smear into neighbouring channels.
    event_rate
        Events per second (Time is written in units of $TIMESTEP = 0.01 s).
    realistic
        Overlapping populations as in real files (IgD− memory a shoulder of the naive peak,
        CD25/CD127 continua, CD20-intermediate plasmablasts, log-normal scatter, Time in 1 ms
        steps); see :mod:`immunoprofile.datasets._realistic`. Defaults to ``REALISTIC_DEFAULT``.
    instrument
        Cytometer whose scales, top of scale ($PnR) and detector names the file takes:
        ``"fortessa"`` (the reference), ``"canto"``, ``"cytoflex"`` or ``"aurora"``.
    export
        ``None`` keeps every event; ``"lymphocytes"`` only those inside a lymphocyte
        FSC-A × SSC-A gate (a FlowJo-style exported subset, Time left with holes).
    pauses
        Acquisition pauses: Time jumps 3-20 s at each (assumed), nothing else changes.
    """

    leaf_fractions: dict[str, float] | None = None
    event_fractions: dict[str, float] | None = None
    marker_scale: dict[str, float] = field(default_factory=dict)
    leaf_marker_scale: dict[tuple[str, str], float] = field(default_factory=dict)
    artefact: str | None = None
    scatter_scale: float = 1.0
    photon_noise: float = 1.5
    event_rate: float = 3000.0
    realistic: bool = real.REALISTIC_DEFAULT
    instrument: str = "fortessa"
    export: str | None = None
    pauses: int = 0


@dataclass
class SimulatedTube:
    """One simulated acquisition.

    Attributes
    ----------
    events
        ``(n, n_channels)`` float32 raw, uncompensated values in file order.
    pnn, pns
        Detector names ($PnN) and markers ($PnS, "" for scatter and Time).
    labels
        int16 code per event into :attr:`label_names`.
    label_names
        The tube's label vocabulary (:func:`tube_labels`).
    artefact
        True for events acquired during a flow/signal artefact.
    spillover
        The spillover matrix (rows spill into columns), as stored in $SPILLOVER.
    compensated
        float64 ``raw @ inverse(spillover)`` of the fluorescence channels (on the instrument's
        scale) before float32 rounding and clipping: the simulated true fluorescence (with its
        noise).
    clipped
        True for events where any raw channel hit the top of the scale.
    """

    events: np.ndarray
    pnn: list[str]
    pns: list[str]
    labels: np.ndarray
    label_names: list[str]
    artefact: np.ndarray
    spillover: pd.DataFrame
    compensated: np.ndarray
    clipped: np.ndarray

    def __iter__(self):
        # Lets callers unpack ``events, pnn, pns, labels, spillover = simulate_tube(...)``.
        return iter((self.events, self.pnn, self.pns, self.labels, self.spillover))

    @property
    def label_strings(self) -> pd.Categorical:
        """Per-event labels as a categorical with the tube's full vocabulary."""
        return pd.Categorical.from_codes(self.labels, categories=self.label_names)

    @property
    def fluorescence_channels(self) -> list[str]:
        """$PnN of the fluorescence channels (the spillover matrix order)."""
        return list(self.spillover.columns)

    def subset(self, keep: np.ndarray) -> SimulatedTube:
        """The events where ``keep`` is True, with their labels, flags and true values.

        Parameters
        ----------
        keep
            Boolean mask over events (or indices), applied to every per-event array.

        Returns
        -------
        SimulatedTube
            A new tube; channels, spillover and other fields are shared with this one.
        """
        return replace(self, events=self.events[keep], labels=self.labels[keep],
                       artefact=self.artefact[keep], compensated=self.compensated[keep],
                       clipped=self.clipped[keep])


def spillover_matrix(kind: str, instrument: str | Instrument = "fortessa") -> pd.DataFrame:
    """The tube's spillover matrix (ones on the diagonal, rows spill into columns).

    Labelled by the $PnN of ``instrument``; the values are the reference instrument's (the
    dyes spill the same way, whatever the detectors are called: assumed).

    Parameters
    ----------
    kind
        The tube, ``"treg"`` or ``"bcell"``.
    instrument
        An instrument name of :data:`INSTRUMENTS` or an :class:`Instrument` (default the
        reference, ``"fortessa"``).

    Returns
    -------
    pandas.DataFrame
        Square matrix over the tube's fluorescence detectors, in panel order.
    """
    detectors = [det for det, _ in PANELS[kind]["fluorescence"]]
    mat = np.eye(len(detectors))
    for i, src in enumerate(detectors):
        for j, dst in enumerate(detectors):
            if i != j:
                mat[i, j] = SPILLOVER.get((src, dst), 0.0)
    names = [get_instrument(instrument).detector(det) for det in detectors]
    return pd.DataFrame(mat, index=names, columns=names)


def _draw(spec: tuple, n: int, rng: np.random.Generator, neg: tuple[float, float],
          scale: float) -> np.ndarray:
    """Intensities for ``n`` cells of one leaf on one marker (compensated linear scale)."""
    kind = spec[0]
    if kind == "neg":
        return rng.normal(neg[0], neg[1], n)
    if kind == "n":  # a Gaussian continuum around a low mean (e.g. CD25 on Tconv)
        return rng.normal(spec[1] * scale, spec[2], n)
    if kind == "ln":  # positives: log-normal signal on top of the negative's electronic noise
        return rng.lognormal(np.log(spec[1] * scale), spec[2], n) + rng.normal(0.0, neg[1], n)
    if kind == "mix":
        pos = rng.random(n) < spec[1]
        out = _draw(spec[3], n, rng, neg, scale)
        out[pos] = _draw(spec[2], int(pos.sum()), rng, neg, scale)
        return out
    raise ValueError(f"unknown intensity spec {spec!r}")


def _normal_scatter(leaf: str, k: int, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    f_mean, f_sd, s_mean, s_sd = SCATTER.get(leaf, SCATTER["lymphocyte"])
    return rng.normal(f_mean, f_sd, k), rng.normal(s_mean, s_sd, k)


def _phenotype(kind: str, codes: np.ndarray, names: list[str], params: TubeParams,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fluorescence (n, n_fl), FSC-A and SSC-A of single cells with the given leaf codes."""
    table = REALISTIC_PHENOTYPES if params.realistic else PHENOTYPES
    scatter = real.realistic_scatter if params.realistic else _normal_scatter
    markers = [m for _, m in PANELS[kind]["fluorescence"]]
    n = codes.size
    fl = np.empty((n, len(markers)))
    fsc = np.empty(n)
    ssc = np.empty(n)
    for code in np.unique(codes):
        leaf = names[code]
        idx = np.flatnonzero(codes == code)
        k = idx.size
        spec = table[kind].get(leaf, {})
        for j, marker in enumerate(markers):
            scale = params.marker_scale.get(marker, 1.0) * params.leaf_marker_scale.get(
                (leaf, marker), 1.0)
            fl[idx, j] = _draw(spec.get(marker, ("neg",)), k, rng, NEGATIVE[kind][marker], scale)
        shared = spec.get("shared")
        if shared:  # markers that vary together along one axis (e.g. B-cell maturation)
            cols = [markers.index(m) for m in shared[0]]
            fl[np.ix_(idx, cols)] *= rng.lognormal(0.0, shared[1], (k, 1))
        autofluor = spec.get("autofluorescence", 0.0)
        if autofluor:  # myeloid cells glow a little in every channel
            fl[idx] += autofluor * rng.lognormal(0.0, 0.3, (k, 1))
        fsc[idx], ssc[idx] = scatter(leaf, k, rng)
    return fl, np.maximum(fsc, 2000.0), np.maximum(ssc, 500.0)


def _event_counts(n_events: int, params: TubeParams, rng: np.random.Generator) -> dict[str, int]:
    fr = params.event_fractions
    if fr is None:  # typical thawed-PBMC composition (assumed)
        fr = {"debris": rng.uniform(0.03, 0.10), "doublet": rng.uniform(0.03, 0.10),
              "dead": rng.uniform(0.03, 0.12), "monocyte": rng.uniform(0.10, 0.20),
              "granulocyte": rng.uniform(0.01, 0.05)}
    keys = ["debris", "doublet", "dead", "monocyte", "granulocyte"]
    p = np.array([fr.get(k, 0.0) for k in keys])
    if p.sum() >= 1.0:
        raise ValueError(f"event_fractions sum to {p.sum():.2f}; lymphocytes need the rest")
    counts = rng.multinomial(n_events, [*p, 1.0 - p.sum()])
    return dict(zip([*keys, "lymphocyte"], (int(c) for c in counts), strict=True))


def simulate_tube(
    kind: str,
    n_events: int,
    *,
    seed: int | np.random.SeedSequence | None = None,
    rng: np.random.Generator | None = None,
    params: TubeParams | None = None,
) -> SimulatedTube:
    """Simulate one FCS acquisition of the Treg or B-cell tube.

    Parameters
    ----------
    kind
        ``"treg"`` or ``"bcell"``.
    n_events
        Events in the file (all of them: debris, doublets, dead and non-lymphoid cells too).
    seed, rng
        Randomness: a Generator, or a seed for a new one (``rng`` wins when both are given).
    params
        Sample-specific composition and technical effects; defaults give an SLE median sample.

    Returns
    -------
    SimulatedTube
        Raw events, channel names, per-event labels and artefact flags, the spillover matrix
        and the exact compensated fluorescence. Unpacks as
        ``events, pnn, pns, labels, spillover``.

    Examples
    --------
    >>> tube = simulate_tube("treg", 10_000, seed=1)
    >>> tube.events.shape
    (10000, 11)
    """
    if kind not in PANELS:
        raise ValueError(f"kind must be one of {sorted(PANELS)}, not {kind!r}")
    if rng is None:
        rng = np.random.default_rng(seed)
    params = params or TubeParams()
    inst = get_instrument(params.instrument)
    if params.export not in acq.EXPORTS:
        raise ValueError(f"export must be one of {acq.EXPORTS}, not {params.export!r}")
    names = tube_labels(kind)
    code = {name: i for i, name in enumerate(names)}
    leaves = leaf_labels(kind)
    if params.leaf_fractions is None:
        fr = tube_leaf_fractions(kind, median_blood_leaves())
    else:
        fr = params.leaf_fractions
    p_leaf = np.array([max(fr.get(leaf, 0.0), 0.0) for leaf in leaves])
    p_leaf = p_leaf / p_leaf.sum()
    leaf_codes = np.array([code[leaf] for leaf in leaves])

    counts = _event_counts(n_events, params, rng)
    n_lym, n_dead, n_dbl = counts["lymphocyte"], counts["dead"], counts["doublet"]
    live = np.repeat(leaf_codes, rng.multinomial(n_lym, p_leaf))
    myeloid = np.repeat([code["monocyte"], code["granulocyte"]],
                        [counts["monocyte"], counts["granulocyte"]])
    # Dead cells and doublet partners come from the same cell mixture as the live singlets
    # (dead cells mostly lymphocytes in thawed PBMC: assumed 80%).
    dead_is_lym = rng.random(n_dead) < 0.8
    dead_src = np.where(dead_is_lym, rng.choice(leaf_codes, n_dead, p=p_leaf), code["monocyte"])
    total_cells = n_lym + myeloid.size
    mix_codes = np.concatenate([leaf_codes, [code["monocyte"], code["granulocyte"]]])
    mix_p = np.concatenate([p_leaf * n_lym, [counts["monocyte"], counts["granulocyte"]]])
    mix_p = mix_p / mix_p.sum() if total_cells else np.full(mix_codes.size, 1 / mix_codes.size)
    partners = rng.choice(mix_codes, 2 * n_dbl, p=mix_p)

    pool = np.concatenate([live, myeloid, dead_src, partners])
    fl, fsc, ssc = _phenotype(kind, pool, names, params, rng)
    n_single = live.size + myeloid.size
    viab_j = [m for _, m in PANELS[kind]["fluorescence"]].index("Viability")

    # Dead cells: shrunken (lower FSC), granular (higher SSC), dimmer antigens, dye-bright.
    d = slice(n_single, n_single + n_dead)
    fl[d] *= 0.6
    fl[d, viab_j] = rng.lognormal(np.log(15_000), 0.4, n_dead)
    fsc[d] *= 0.62
    ssc[d] *= 1.6
    # Doublets: two cells in one pulse; areas add, the pulse is wider so FSC-H/FSC-A ~ 0.6.
    a = slice(n_single + n_dead, n_single + n_dead + n_dbl)
    b = slice(n_single + n_dead + n_dbl, pool.size)
    dbl_fl = fl[a] + fl[b]
    dbl_fsc = (fsc[a] + fsc[b]) * rng.uniform(0.85, 1.0, n_dbl)
    dbl_ssc = ssc[a] + ssc[b]
    lym_set = np.isin(partners, leaf_codes)
    dbl_label = np.where(lym_set[:n_dbl] & lym_set[n_dbl:], code["lymphocyte_doublet"],
                         code["other_doublet"])
    dead_label = np.where(dead_is_lym, code["dead_lymphocyte"], code["dead_other"])
    # Debris: small, dim, takes up some viability dye.
    n_deb = counts["debris"]
    deb_fl = np.column_stack([rng.normal(*NEGATIVE[kind][m], n_deb)
                              for _, m in PANELS[kind]["fluorescence"]])
    deb_fl[:, viab_j] += rng.lognormal(np.log(600), 1.0, n_deb)
    deb_fsc = np.minimum(rng.lognormal(np.log(12_000), 0.5, n_deb), 30_000)
    deb_ssc = rng.lognormal(np.log(6_000), 0.8, n_deb)

    labels = np.concatenate([pool[:n_single], dead_label, dbl_label,
                             np.full(n_deb, code["debris"])]).astype(np.int16)
    fl = np.concatenate([fl[:n_single + n_dead], dbl_fl, deb_fl])
    fsc = np.concatenate([fsc[:n_single + n_dead], dbl_fsc, deb_fsc]) * params.scatter_scale
    ssc = np.concatenate([ssc[:n_single + n_dead], dbl_ssc, deb_ssc]) * params.scatter_scale
    single_r, dbl_r = ((real.SINGLET_RATIO, real.DOUBLET_RATIO) if params.realistic
                       else ((0.90, 0.03), (0.60, 0.08)))
    ratio = np.concatenate([rng.normal(*single_r, n_single + n_dead),
                            rng.normal(*dbl_r, n_dbl), rng.normal(0.85, 0.08, n_deb)])

    # Acquisition order is random with respect to cell type.
    perm = rng.permutation(labels.size)
    labels, fl, fsc, ssc, ratio = labels[perm], fl[perm], fsc[perm], ssc[perm], ratio[perm]
    times, artefact, factor = acq.acquisition_time(labels.size, params, rng)
    fl *= factor[:, None]
    fsc *= factor
    ssc *= factor
    fsc_h = fsc * np.clip(ratio, 0.3, 1.0)

    spill = spillover_matrix(kind, inst)
    s = spill.to_numpy()
    raw_fl = fl @ s
    raw_fl += rng.standard_normal(raw_fl.shape) * np.sqrt(params.photon_noise
                                                          * np.maximum(raw_fl, 0.0))
    compensated = raw_fl @ np.linalg.inv(s)
    # Drawn last, so a pause changes Time and nothing else of the acquisition.
    times = acq.add_pauses(times, params.pauses, rng) if params.pauses else times
    if params.realistic:  # BD clocks count 1 ms (0.1 tick; real LSR files): neighbours tie
        times = np.floor(times * 10.0) / 10.0
    events = np.column_stack([fsc, fsc_h, ssc, raw_fl, times])
    if not inst.is_reference:  # another cytometer: a change of gain, signal and noise alike
        events[:, :-1] *= inst.gains(raw_fl.shape[1])
        compensated = compensated * inst.fl_gain
    clipped = (events[:, :-1] > inst.max_channel).any(axis=1)
    np.minimum(events, inst.max_channel, out=events)
    events[:, :3] = np.maximum(events[:, :3], 1.0)
    pnn = ["FSC-A", "FSC-H", "SSC-A", *spill.columns, "Time"]
    pns = ["", "", "", *PANELS[kind]["pns"], ""]
    tube = SimulatedTube(events=events.astype(np.float32), pnn=pnn, pns=pns, labels=labels,
                         label_names=names, artefact=artefact, spillover=spill,
                         compensated=compensated, clipped=clipped)
    if params.export == "lymphocytes":  # the operator's gate sits on this sample's cloud
        lym = SCATTER["lymphocyte"]
        tube = tube.subset(acq.in_lymphocyte_gate(
            events[:, 0], events[:, 2], lym[0] * inst.fsc_gain * params.scatter_scale,
            lym[2] * inst.ssc_gain * params.scatter_scale))
    return tube

