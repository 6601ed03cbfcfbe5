"""Gating speed: immunoprofile's engine against FlowKit on the same gates, same file.

A simulated 1M-event Treg tube goes through a Treg-style hierarchy of fixed gates
(compensation from $SPILLOVER, logicle on every fluorescence gate). Both sides start from a
sample already in memory; the median of 5 runs is reported, with peak memory (tracemalloc),
equal counts asserted, and the read time of each side against ``numpy.fromfile`` of the data
segment as the floor.

Run: ``python benchmarks/bench_gating.py [--events 1000000] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import flowkit as fk
import numpy as np

import immunoprofile as ip
from immunoprofile.datasets import simulate_tube
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import Logicle, template_from_dict
from immunoprofile.template.gatingml import gatingml_id, write_gatingml

LOGICLE = {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0}


def _lg(asinh150: float) -> float:
    """A DOMAIN.md cut point on the arcsinh(x/150) scale, as a logicle coordinate."""
    return float(Logicle().apply(np.array([150 * np.sinh(asinh150)]))[0])


def treg_template() -> ip.template.Template:
    """Nine fixed gates plus a boolean: lymphocytes → … → Treg subsets, logicle throughout."""
    spec = {
        "name": "bench_treg", "version": "1", "compensation": "file",
        "transforms": {"default": LOGICLE, "FSC-A": "linear", "FSC-H": "linear",
                       "SSC-A": "linear"},
        "populations": [
            {"name": "Lymphocytes", "gate": {"polygon": {"dims": ["FSC-A", "SSC-A"],
             "vertices": [[35000, 2000], [110000, 2000], [110000, 45000], [60000, 60000],
                          [35000, 40000]]}}},
            {"name": "Singlets", "parent": "Lymphocytes", "gate": {"polygon": {
                "dims": ["FSC-A", "FSC-H"], "vertices": [[20000, 15000], [150000, 112000],
                                                         [150000, 160000], [20000, 24000]]}}},
            {"name": "Live lymphocytes", "parent": "Singlets",
             "gate": {"range": {"viability": [None, _lg(2.0)]}}},
            {"name": "T cells", "parent": "Live lymphocytes",
             "gate": {"range": {"CD3": [_lg(2.5), None]}}},
            {"name": "CD4+ T cells", "parent": "T cells",
             "gate": {"rectangle": {"CD4": [_lg(2.8), None], "CD3": [_lg(2.5), None]}}},
            {"name": "Treg", "parent": "CD4+ T cells", "gate": {"polygon": {
                "dims": ["CD127", "CD25"], "vertices": [
                    [0.0, _lg(3.3)], [_lg(2.2), _lg(3.3)], [_lg(2.8), _lg(5.0)],
                    [_lg(2.8), 1.0], [0.0, 1.0]]}}},
            {"name": "FOXP3+ Treg", "parent": "Treg",
             "gate": {"range": {"FOXP3": [_lg(2.6), None]}}},
            {"name": "Naive Treg", "parent": "Treg",
             "gate": {"range": {"CD45RA": [_lg(2.5), None]}}},
            {"name": "Memory Treg", "parent": "Treg",
             "gate": {"range": {"CD45RA": [None, _lg(2.5)]}}},
            {"name": "Conventional CD4", "parent": "CD4+ T cells", "gate": {"not": ["Treg"]}},
        ],
    }
    return template_from_dict(spec, source="benchmark")


def _mix(name: str, populations: list[dict]) -> ip.template.Template:
    spec = {"name": name, "version": "1", "compensation": "file",
            "transforms": {"default": LOGICLE, "FSC-A": "linear", "FSC-H": "linear",
                           "SSC-A": "linear"},
            "populations": populations}
    return template_from_dict(spec, source="benchmark")


def gate_mixes() -> dict[str, ip.template.Template]:
    """Gate mixes whose speed differs: ranges only, logicle polygons, ellipses, booleans."""
    lg = _lg
    ranges = [{"name": f"{m}+", "gate": {"range": {m: [lg(c), None]}}}
              for m, c in (("CD3", 2.5), ("CD4", 2.8), ("CD25", 3.0), ("CD127", 2.8),
                           ("FOXP3", 2.6), ("CD45RA", 2.5))]
    ranges.append({"name": "Live", "gate": {"range": {"viability": [None, lg(2.0)]}}})
    polygons = [
        {"name": "CD3 CD4 polygon", "gate": {"polygon": {"dims": ["CD4", "CD3"], "vertices": [
            [lg(2.6), lg(2.3)], [lg(5.5), lg(2.3)], [lg(5.5), lg(6.0)], [lg(2.6), lg(6.0)],
            [lg(2.2), lg(4.0)]]}}},
        {"name": "CD127 CD25 polygon", "parent": "CD3 CD4 polygon", "gate": {"polygon": {
            "dims": ["CD127", "CD25"], "vertices": [
                [0.0, lg(3.3)], [lg(2.2), lg(3.3)], [lg(2.8), lg(5.0)], [lg(2.8), 1.0],
                [0.0, 1.0]]}}},
        {"name": "CD45RA FOXP3 polygon", "gate": {"polygon": {
            "dims": ["CD45RA", "FOXP3"], "vertices": [
                [0.0, lg(2.6)], [lg(5.0), lg(2.6)], [lg(5.0), 1.0], [0.0, 1.0]]}}},
    ]
    ellipses = [
        {"name": f"{x} {y} ellipse", "gate": {"ellipse": {
            "dims": [x, y], "center": [cx, cy], "covariance": [[0.004, 0.001], [0.001, 0.004]],
            "distance_square": 4.0}}}
        for x, y, cx, cy in (("CD4", "CD3", 0.72, 0.72), ("CD127", "CD25", 0.55, 0.45),
                             ("CD45RA", "FOXP3", 0.5, 0.5))]
    booleans = [*ranges[:4],
                {"name": "CD3 and CD4", "gate": {"and": ["CD3+", "CD4+"]}},
                {"name": "CD25 or CD127", "gate": {"or": ["CD25+", "CD127+"]}},
                {"name": "not CD3", "gate": {"not": ["CD3+"]}},
                {"name": "CD4 not CD25", "gate": {"and": ["CD4+", "!CD25+"]}}]
    return {"ranges only": _mix("ranges", ranges),
            "logicle polygons": _mix("polygons", polygons),
            "ellipses": _mix("ellipses", ellipses),
            "booleans": _mix("booleans", booleans)}


def _timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median seconds over ``repeats`` runs and peak traced memory (MiB) of one run."""
    times = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return statistics.median(times), peak / 2**20, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        tube = simulate_tube("treg", args.events, seed=7)
        path = write_fcs(Path(tmp) / "bench.fcs", tube.events, tube.pnn, tube.pns,
                         spillover=tube.spillover)
        template = treg_template()

        t_read, _, sample = _timed(lambda: ip.read_fcs(path), args.repeats)
        t_fk_read, _, fk_sample = _timed(lambda: fk.Sample(str(path)), args.repeats)
        begin = int(sample.metadata["begindata"])
        n_values = sample.n_events * len(sample.channel_names)

        def floor() -> np.ndarray:
            with open(path, "rb") as fh:
                fh.seek(begin)
                return np.fromfile(fh, dtype="<f4", count=n_values)

        t_floor, _, _ = _timed(floor, args.repeats)

        xml = write_gatingml(template, Path(tmp) / "bench.xml", sample=sample)
        strategy = fk.parse_gating_xml(str(xml))

        t_ours, mem_ours, ours = _timed(lambda: ip.gate_sample(sample, template),
                                        args.repeats)
        t_fk, mem_fk, theirs = _timed(lambda: strategy.gate_sample(fk_sample), args.repeats)
        mixes = []
        for mix, mixed in gate_mixes().items():
            mxml = write_gatingml(mixed, Path(tmp) / f"{mixed.name}.xml", sample=sample)
            mstrategy = fk.parse_gating_xml(str(mxml))
            m_ours, _, ours_m = _timed(lambda t=mixed: ip.gate_sample(sample, t), args.repeats)
            m_fk, _, fk_m = _timed(lambda s=mstrategy: s.gate_sample(fk_sample), args.repeats)
            _same_counts(mixed, ours_m, fk_m)
            mixes.append((mix, len(mixed), m_ours, m_fk))
        workspace = _flowjo_workspace_mix(args.repeats, args.events, Path(tmp))

    print(f"events: {sample.n_events:,}  channels: {len(sample.channel_names)}  "
          f"gates: {len(template)}  (median of {args.repeats} runs)")
    print(f"{'population':<20}{'immunoprofile':>15}{'FlowKit':>12}")
    for pop in template.populations:
        gate_path = ("root", *map(gatingml_id, reversed(template.ancestors(pop.name))))
        n_fk = int(theirs.get_gate_membership(gatingml_id(pop.name), gate_path=gate_path).sum())
        n_ours = int(ours.membership[pop.name].sum())
        assert n_ours == n_fk, f"{pop.name}: {n_ours} != {n_fk}"
        print(f"{pop.name:<20}{n_ours:>15,}{n_fk:>12,}")
    print("counts: identical")
    print(f"\n{'gate mix':<20}{'gates':>6}{'immunoprofile ms':>18}{'FlowKit ms':>12}"
          f"{'ratio':>8}   (counts identical)")
    for mix, n, a, b in mixes:
        print(f"{mix:<20}{n:>6}{a * 1e3:>18.1f}{b * 1e3:>12.1f}{b / a:>7.1f}x")
    for line in workspace:
        print(line)
    print(f"gating  immunoprofile {t_ours * 1e3:8.1f} ms  peak {mem_ours:7.1f} MiB")
    print(f"gating  FlowKit       {t_fk * 1e3:8.1f} ms  peak {mem_fk:7.1f} MiB")
    print(f"gating speed-up (FlowKit / immunoprofile): {t_fk / t_ours:.1f}x")
    for who, secs in (("immunoprofile", t_read), ("FlowKit", t_fk_read)):
        print(f"read    {who:<13} {secs * 1e3:8.1f} ms  ({secs / t_floor:.2f}x numpy.fromfile)")
    print(f"read    numpy.fromfile {t_floor * 1e3:7.1f} ms  (floor)")


def _flowjo_workspace_mix(repeats: int, events: int, tmp: Path) -> list[str]:
    """A real FlowJo 10 workspace (FlowSOM's LSR file, ../shared): FlowKit's Workspace
    against our gating of the imported template on the file itself, then the workspace's
    gates (FlowKit's gating strategy from it) on ``events`` events drawn from the file's own
    (so every gate meets a million events, as the other mixes do); counts compared; [] when
    the file is absent."""
    from immunoprofile.template import read_flowjo

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "real-data"
    wsp, fcs = shared / "flowsom_68983" / "gating.wsp", shared / "flowsom_68983" / "68983.fcs"
    if not (wsp.is_file() and fcs.is_file()):
        return []
    template = read_flowjo(wsp)
    sample = ip.read_fcs(fcs)
    ours_t, _, ours = _timed(lambda: ip.gate_sample(sample, template), repeats)

    ws = fk.Workspace(str(wsp), fcs_samples=[str(fcs)])
    theirs_t, _, report = _timed(lambda: (ws.analyze_samples(group_name="All Samples",
                                                              use_mp=False),
                                          ws.get_analysis_report())[1], repeats)
    lines = [_workspace_line("FlowJo workspace", template, ours, report, ours_t, theirs_t,
                             f"{sample.n_events:,} events, real LSR file")]

    rows = np.random.default_rng(0).integers(0, sample.n_events, events)
    drawn = sample.events[rows]
    time_col = list(sample.channel_names).index("Time")
    drawn[:, time_col] = np.sort(drawn[:, time_col])
    big = write_fcs(tmp / "68983_drawn.fcs", drawn, list(sample.channels["pnn"]),
                    [p.strip() for p in sample.channels["pns"]], spillover=sample.spillover)
    big_sample, fk_big = ip.read_fcs(big), fk.Sample(str(big))
    strategy = ws.get_gating_strategy(ws.get_sample_ids()[0])
    ours_t, _, ours = _timed(lambda: ip.gate_sample(big_sample, template), repeats)
    theirs_t, _, result = _timed(lambda: strategy.gate_sample(fk_big), repeats)
    lines.append(_workspace_line("  same, drawn", template, ours, result.report, ours_t,
                                 theirs_t, f"{events:,} events drawn from it"))
    return lines


def _workspace_line(label: str, template, ours, report, ours_t: float, theirs_t: float,
                    what: str) -> str:
    counts = dict(zip(report["gate_name"], report["count"]))
    same = sum(int(ours.membership[p.name].sum()) == int(counts.get(p.name.split("/")[-1], -1))
               for p in template.populations)
    return (f"{label:<20}{len(template):>6}{ours_t * 1e3:>18.1f}{theirs_t * 1e3:>12.1f}"
            f"{theirs_t / ours_t:>7.1f}x   ({what}; {same}/{len(template)} counts equal)")


def _same_counts(template: ip.template.Template, ours, theirs) -> None:
    for pop in template.populations:
        gate_path = ("root", *map(gatingml_id, reversed(template.ancestors(pop.name))))
        n_fk = int(theirs.get_gate_membership(gatingml_id(pop.name), gate_path=gate_path).sum())
        n_ours = int(ours.membership[pop.name].sum())
        assert n_ours == n_fk, f"{template.name}/{pop.name}: {n_ours} != {n_fk}"


if __name__ == "__main__":
    main()
