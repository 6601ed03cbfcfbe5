"""Draw the pictures of gating_templates/README.md (run from the repository root).

``python gating_templates/docs/make_figures.py`` writes ``tail.png``, ``relative.png`` and
``scatter.png`` beside this script from the realistic simulator and, where ../shared is
present, a real LSRII file. Every gate drawn is the one the engine placed (``gate_positions``).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import immunoprofile as ip
from immunoprofile.datasets import INSTRUMENTS, TubeParams, simulate_tube
from immunoprofile.gating.adaptive import Placer
from immunoprofile.gating.events import EventSpace
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.panel import resolve_markers
from immunoprofile.template import load_template
from immunoprofile.template.model import Dimension

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("IMMUNOPROFILE_SHARED", HERE.parents[2] / "shared"))


def _tube(kind: str, instrument: str, tmp: Path, seed: int = 4) -> ip.FCSSample:
    tube = simulate_tube(kind, 200_000, seed=seed,
                         params=TubeParams(realistic=True, instrument=instrument))
    path = tmp / f"{kind}_{instrument}.fcs"
    inst = INSTRUMENTS[instrument]
    write_fcs(path, tube.events, tube.pnn, tube.pns, spillover=tube.spillover,
              metadata={"$TIMESTEP": "0.01", "$CYT": inst.cyt}, pnr=[inst.pnr] * len(tube.pnn))
    return ip.read_fcs(path)


def _values(res, sample, pop: str, marker: str) -> np.ndarray:
    space = EventSpace(sample, res.template, res.channels)
    return space.values(Dimension(marker=marker), np.flatnonzero(res.membership[pop]))


def tail(tmp: Path) -> None:
    sample = _tube("bcell", "fortessa", tmp)
    res = ip.gate_sample(sample, "bcell")
    igd = _values(res, sample, "Mature B cells", "IgD")
    placed = res.gate_positions["Naive B"]["placed"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(igd, bins=120, color="#9ecae1")
    ax.axvline(placed["IgD"], color="k", lw=2, label=f"tail cut {placed['IgD']:.2f} "
               f"({placed['rule_IgD']})")
    ax.axvline(3.8, color="grey", ls="--", label="template default 3.8")
    ax.set(xlabel="IgD (arcsinh) on mature B cells", ylabel="events",
           title="tail: where the IgD+ naive peak ends (IgD- memory is a shoulder)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "tail.png", dpi=80)


def relative(tmp: Path) -> None:
    sample = _tube("bcell", "fortessa", tmp, seed=6)
    res = ip.gate_sample(sample, "plasma")
    b = "B lineage"  # the plasmablasts' parent: B cells and blasts
    x, y = _values(res, sample, b, "CD20"), _values(res, sample, b, "CD38")
    p = res.gate_positions["Plasmablasts"]["placed"]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.hexbin(x, y, gridsize=70, bins="log", mincnt=1, cmap="viridis")
    ax.axvline(p["max_CD20"], color="k", lw=2)
    ax.axhline(p["min_CD38"], color="k", lw=2)
    ax.axvline(p["ref_CD20"], color="w", ls=":", lw=1)
    ax.set(xlabel="CD20", ylabel="CD38", title="relative: plasmablasts vs the B cells' own "
           "CD20 peak\nand CD38 bulk (robust SDs)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(HERE / "relative.png", dpi=80)


def scatter(tmp: Path) -> None:
    cases = [(name, _tube("treg", name, tmp)) for name in ("canto", "fortessa", "cytoflex",
                                                          "aurora")]
    real = SHARED / "real-data" / "flowai_bcells" / "Bcells1.fcs"
    if real.is_file():
        cases.append(("real LSRII (flowAI Bcells1)", ip.read_fcs(real)))
    fig, axes = plt.subplots(1, len(cases), figsize=(3.2 * len(cases), 3.2))
    template = load_template("treg")
    for ax, (name, sample) in zip(axes, cases):
        channels = resolve_markers(sample, ["FSC-A", "SSC-A"])
        space = EventSpace(sample, template, channels)
        idx = np.arange(sample.n_events)
        gate, rec = Placer(space, {}).place(template["Lymphocytes"], idx)
        fsc = space.linear_at(gate.dims[0], idx)
        ssc = space.linear_at(gate.dims[1], idx)
        ax.hexbin(fsc, ssc, gridsize=60, bins="log", mincnt=1, cmap="viridis",
                  extent=(0, np.quantile(fsc, 0.995), 0, np.quantile(ssc, 0.99)))
        if not rec["fallback"]:
            t = np.linspace(0, 2 * np.pi, 200)
            vals, vecs = np.linalg.eigh(np.asarray(gate.covariance))
            circle = np.column_stack([np.cos(t), np.sin(t)]) * np.sqrt(vals * gate.distance_square)
            ell = circle @ vecs.T + np.asarray(gate.mean)
            ax.plot(ell[:, 0], ell[:, 1], "w", lw=2)
        ax.set_title(f"{name}\n$PnR {space.pnr(gate.dims[0]):,.0f}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("scatter: one template, lymphocytes found on every instrument's scale",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "scatter.png", dpi=80)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tail(Path(folder))
        relative(Path(folder))
        scatter(Path(folder))
