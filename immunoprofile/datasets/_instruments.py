"""Cytometers the simulator imitates: top of scale, scatter and fluorescence gains, names.

The simulator draws every acquisition on one reference scale, a BD LSRFortessa (18-bit,
DOMAIN §5: lymphocytes at FSC-A ≈ 65k). Another cytometer is that same acquisition seen through
different electronics: a gain on the scatter channels and on the fluorescence channels (noise
included, as a change of amplifier gain scales signal and noise alike), its own top of scale
($PnR, where events pile up as margin events) and its own detector names ($PnN). The markers
stay in $PnS, so templates written in marker names resolve on every instrument.

DOMAIN §2 says why this matters: lymphocyte FSC-A sits anywhere from ~40k to ~120k on 18-bit
instruments and ~1M on some newer ones, so absolute scatter windows fail on other cytometers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = ["INSTRUMENTS", "SPILLOVER", "Instrument", "get_instrument"]

# Spillover (source dye -> detector), 0-0.3 between spectrally adjacent dyes (assumed, typical
# of a 4-laser instrument). Values are rounded so $SPILLOVER text reproduces them exactly.
SPILLOVER: dict[tuple[str, str], float] = {
    ("FITC-A", "PE-A"): 0.18, ("FITC-A", "PerCP-Cy5.5-A"): 0.03,
    ("PE-A", "FITC-A"): 0.01, ("PE-A", "PerCP-Cy5.5-A"): 0.15, ("PE-A", "PE-Cy7-A"): 0.03,
    ("PE-A", "BV605-A"): 0.02,
    ("PerCP-Cy5.5-A", "PE-A"): 0.02, ("PerCP-Cy5.5-A", "PE-Cy7-A"): 0.10,
    ("PerCP-Cy5.5-A", "APC-A"): 0.05, ("PerCP-Cy5.5-A", "APC-H7-A"): 0.03,
    ("PE-Cy7-A", "PerCP-Cy5.5-A"): 0.02, ("PE-Cy7-A", "APC-H7-A"): 0.04,
    ("APC-A", "PerCP-Cy5.5-A"): 0.01, ("APC-A", "APC-H7-A"): 0.08,
    ("APC-H7-A", "PE-Cy7-A"): 0.03, ("APC-H7-A", "APC-A"): 0.02,
    ("BV421-A", "BV510-A"): 0.20, ("BV421-A", "FITC-A"): 0.01,
    ("BV510-A", "BV605-A"): 0.08, ("BV510-A", "FITC-A"): 0.06, ("BV510-A", "BV421-A"): 0.01,
    ("BV605-A", "PE-A"): 0.06, ("BV605-A", "PerCP-Cy5.5-A"): 0.02, ("BV605-A", "BV510-A"): 0.01,
}


@dataclass(frozen=True)
class Instrument:
    """One cytometer's scales and names.

    Attributes
    ----------
    name
        Key in :data:`INSTRUMENTS` (``TubeParams.instrument``).
    cyt, cytsn
        ``$CYT`` and ``$CYTSN`` written into the FCS files.
    pnr
        ``$PnR`` of every channel; the largest value an event can take is ``pnr - 1``.
    fsc_gain, ssc_gain, fl_gain
        Multipliers from the reference (Fortessa) scale to this instrument's scale, for
        FSC-A/FSC-H, SSC-A and the fluorescence channels.
    detectors
        Reference $PnN (``"FITC-A"``...) → this instrument's $PnN; missing ones keep the
        reference name.
    lymphocyte_fsc
        The documented range of the lymphocyte FSC-A median on this instrument (what the
        gains aim at; tests hold the simulator to it).
    """

    name: str
    cyt: str
    cytsn: str
    pnr: float
    fsc_gain: float = 1.0
    ssc_gain: float = 1.0
    fl_gain: float = 1.0
    detectors: Mapping[str, str] = field(default_factory=dict)
    lymphocyte_fsc: tuple[float, float] = (55_000.0, 75_000.0)

    @property
    def max_channel(self) -> float:
        """The top of the scale: larger values are clipped to it (margin events)."""
        return self.pnr - 1.0

    @property
    def is_reference(self) -> bool:
        """True when files come out exactly as on the reference scale (no rescaling needed)."""
        return (self.fsc_gain, self.ssc_gain, self.fl_gain) == (1.0, 1.0, 1.0) and all(
            k == v for k, v in self.detectors.items())

    def gains(self, n_fluorescence: int) -> np.ndarray:
        """Multipliers of the FSC-A, FSC-H, SSC-A and fluorescence columns, in file order.

        Parameters
        ----------
        n_fluorescence
            Number of fluorescence channels (all get ``fl_gain``).

        Returns
        -------
        numpy.ndarray
            ``3 + n_fluorescence`` gains.
        """
        return np.array([self.fsc_gain, self.fsc_gain, self.ssc_gain,
                         *[self.fl_gain] * n_fluorescence])

    def detector(self, reference_pnn: str) -> str:
        """This instrument's $PnN for a reference detector name.

        Parameters
        ----------
        reference_pnn
            The detector's $PnN on the reference instrument (the Fortessa).

        Returns
        -------
        str
            This instrument's name for it, or ``reference_pnn`` when it is not renamed.
        """
        return self.detectors.get(reference_pnn, reference_pnn)


INSTRUMENTS: dict[str, Instrument] = {
    # The reference: today's simulator values (DOMAIN §5), lymphocyte FSC-A ≈ 65k, SSC-A ≈ 15k.
    "fortessa": Instrument("fortessa", "LSRFortessa", "H0001234", 262144.0,
                           lymphocyte_fsc=(55_000.0, 75_000.0)),
    # BD FACSCanto II: 18-bit like the Fortessa, but lower scatter and fluorescence at typical
    # CS&T voltages (assumed: lymphocyte FSC-A ≈ 45k, SSC-A ≈ 9k, fluorescence ×0.7). DIVA turns
    # "PerCP-Cy5.5" into "PerCP-Cy5-5" and names violet detectors by their filter. The 4-2-2
    # Canto II has two violet detectors; the 9-colour B panel assumes the 4-3-3 "10-colour"
    # configuration, whose third violet detector takes BV605 (assumed).
    "canto": Instrument(
        "canto", "FACSCanto II", "V0005678", 262144.0, fsc_gain=0.70, ssc_gain=0.60,
        fl_gain=0.70,
        detectors={"PerCP-Cy5.5-A": "PerCP-Cy5-5-A", "APC-H7-A": "APC-Cy7-A",
                   "BV421-A": "V450-A", "BV510-A": "V500-A"},
        lymphocyte_fsc=(40_000.0, 50_000.0)),
    # Beckman Coulter CytoFLEX LX (blue-red-violet): CytExpert writes area values on a
    # 0-1,048,576 scale ($PnR 2^20, assumed: the exported range; its ~7 decades of dynamic range
    # leave few events above it); lymphocyte FSC-A ≈ 390k (documented range 300-500k), SSC-A
    # ≈ 75k (assumed), fluorescence ×5 (assumed, within 4-6). Detectors keep their FLn names
    # when the user does not rename them (FL1 FITC, FL2 PE, FL4 PC5.5, FL5 PC7, FL6 APC,
    # FL8 APC-A750, FL9 PB450, FL10 KO525, FL11 violet 610: numbering assumed).
    "cytoflex": Instrument(
        "cytoflex", "CytoFLEX LX", "AY00001", 1048576.0, fsc_gain=6.0, ssc_gain=5.0,
        fl_gain=5.0,
        detectors={"FITC-A": "FL1-A", "PE-A": "FL2-A", "PerCP-Cy5.5-A": "FL4-A",
                   "PE-Cy7-A": "FL5-A", "APC-A": "FL6-A", "APC-H7-A": "FL8-A",
                   "BV421-A": "FL9-A", "BV510-A": "FL10-A", "BV605-A": "FL11-A"},
        lymphocyte_fsc=(300_000.0, 500_000.0)),
    # Cytek Aurora (full spectrum): 22-bit scale ($PnR 4194304), lymphocyte FSC-A ≈ 1M,
    # SSC-A ≈ 180k (assumed), fluorescence ×15 (assumed, within 10-20). Channels named by each
    # dye's peak detector (B2 = FITC, YG1 = PE, R1 = APC, V1 = BV421...), the markers in $PnS.
    "aurora": Instrument(
        "aurora", "Aurora", "R0001", 4194304.0, fsc_gain=15.4, ssc_gain=12.0, fl_gain=15.0,
        detectors={"FITC-A": "B2-A", "PerCP-Cy5.5-A": "B8-A", "PE-A": "YG1-A",
                   "PE-Cy7-A": "YG9-A", "APC-A": "R1-A", "APC-H7-A": "R7-A",
                   "BV421-A": "V1-A", "BV510-A": "V7-A", "BV605-A": "V10-A"},
        lymphocyte_fsc=(800_000.0, 1_200_000.0)),
}


def get_instrument(name: str | Instrument) -> Instrument:
    """The :class:`Instrument` called ``name`` (an Instrument passes through unchanged)."""
    if isinstance(name, Instrument):
        return name
    try:
        return INSTRUMENTS[name]
    except KeyError:
        raise ValueError(f"instrument must be one of {sorted(INSTRUMENTS)}, not {name!r}") from None
