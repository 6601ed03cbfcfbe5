"""Polygon and ellipse gates decided on a grid of cells (immunoprofile.gating._grid2d) equal
the exact test event for event, including events planted on cell edges, on the gate's own
edges and vertices, NaN events, self-intersecting polygons and complements."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import immunoprofile as ip
from immunoprofile.gating import _grid2d
from immunoprofile.gating.membership import exact_2d, inside, inside_together
from immunoprofile.gating.prepared import prepare_sample
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import template_from_dict
from immunoprofile.template.model import Dimension, RectangleGate

TRANSFORMS = {
    "logicle": {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
    "arcsinh": {"type": "arcsinh", "cofactor": 150},
    "hyperlog": {"type": "hyperlog", "T": 262144, "W": 0.5, "M": 4.5, "A": 0},
    # evenly spaced cell edges: the cell is found by a division, not the search
    "linear": "linear",
    "flin": {"type": "flin", "T": 262144, "A": 100},
}
PNN = ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "FL3-A"]
MARKERS = ["FSC-A", "SSC-A", "CD3", "CD4", "CD8"]


def _file(tmp_path: Path, spill: bool, planted: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(4)
    n = 60_000  # above membership.GRID_MIN_EVENTS
    fl = np.exp(rng.normal(6, 2, size=(n, 3))) * rng.choice([-0.05, 1.0], size=(n, 3),
                                                            p=[0.3, 0.7])
    events = np.column_stack([rng.normal(6e4, 1e4, n), rng.normal(2e4, 5e3, n), fl])
    if planted is not None:
        events = np.vstack([events, planted])
    events[:25, 2] = np.nan  # events a broken export leaves non-finite
    spillover = None
    if spill:
        s = np.eye(3) + np.array([[0, 0.12, 0.02], [0.05, 0, 0.2], [0.01, 0.08, 0]])
        spillover = pd.DataFrame(s, index=PNN[2:], columns=PNN[2:])
        events[:, 2:] = events[:, 2:] @ s  # raw = compensated · spillover
    return write_fcs(tmp_path / f"grid_{spill}.fcs", events.astype(np.float32), PNN, MARKERS,
                     spillover=spillover)


def _template(xform: str, gates: list[dict]) -> ip.template.Template:
    return template_from_dict({
        "name": "grid", "version": "1", "compensation": "file",
        "markers": {"required": ["CD3", "CD4", "CD8"]},
        "transforms": {"default": TRANSFORMS[xform]},
        "populations": gates})


def _gates(space, dims) -> list[dict]:
    """Gates at quantiles of the data (many events near every edge)."""
    idx = np.arange(space.sample.n_events)
    q = {m: np.nanquantile(space.values(d, idx), [0.1, 0.3, 0.5, 0.7, 0.9])
         for m, d in zip(("CD3", "CD4"), dims)}
    x, y = q["CD3"], q["CD4"]
    return [
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [x[0], y[1]], [x[3], y[0]], [x[4], y[3]], [x[2], y[4]], [x[1], y[2]]]}}},
        {"name": "bowtie", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [x[0], y[0]], [x[4], y[4]], [x[4], y[0]], [x[0], y[4]]]}}},
        {"name": "notpoly", "gate": {"not": ["poly"]}},
        {"name": "ellipse", "gate": {"ellipse": {
            "dims": ["CD3", "CD4"], "center": [x[2], y[2]],
            "covariance": [[(x[3] - x[1]) ** 2, 0.3 * (x[3] - x[1]) * (y[3] - y[1])],
                           [0.3 * (x[3] - x[1]) * (y[3] - y[1]), (y[3] - y[1]) ** 2]],
            "distance_square": 1.5}}},
    ]


@pytest.mark.filterwarnings("ignore:FCS file")
@pytest.mark.parametrize("xform", sorted(TRANSFORMS))
@pytest.mark.parametrize("spill", [False, True])
def test_grid_equals_the_exact_test(tmp_path, xform, spill) -> None:
    probe = prepare_sample(_file(tmp_path, spill), _template(xform, [
        {"name": "all", "gate": {"range": {"CD3": [-1e9, None]}}}]))
    dims = [Dimension(marker="CD3"), Dimension(marker="CD4")]
    template = _template(xform, _gates(probe.space, dims))
    # Events planted on the gates' vertices and on the grid's cell edges (linear values of
    # the cells' boundaries), uncompensated so the planted values are what the gate reads.
    planted = []
    t = probe.space.transform(dims[0])
    for pop in template.populations:
        g = pop.gate
        if hasattr(g, "vertices"):
            v = np.asarray(g.vertices)
            for (a, b) in v:
                planted.append([6e4, 2e4, *t.inverse(np.array([a, b])), 10.0])
            box = list(zip(v.min(axis=0), v.max(axis=0)))
            ga = np.linspace(*box[0], _grid2d.GRID + 1)[::8]
            gb = np.linspace(*box[1], _grid2d.GRID + 1)[::8]
            for a, b in zip(ga, gb):
                planted.append([6e4, 2e4, *t.inverse(np.array([a, b])), 10.0])
    prepared = prepare_sample(_file(tmp_path, spill, np.array(planted)), template)
    space = prepared.space
    idx = np.arange(space.sample.n_events)  # NaN events too (gate_sample leaves them out)
    for pop in template.populations:
        if pop.gate.kind == "boolean":
            continue
        fast = inside_together(space, [pop.gate], idx)[0]
        assert fast is not None, pop.name
        exact = exact_2d(space, pop.gate, idx, np.arange(idx.size))
        assert np.array_equal(fast, exact), (pop.name, int((fast != exact).sum()))
        assert 0 < fast.sum() < idx.size
    # The complement of a polygon through the engine's own dispatch.
    poly = template["poly"].gate
    assert np.array_equal(inside(space, replace(poly, complement=True), idx),
                          ~exact_2d(space, poly, idx, np.arange(idx.size)))


@pytest.mark.filterwarnings("ignore:FCS file")
def test_gates_the_grid_cannot_take_fall_back(tmp_path) -> None:
    """A ratio axis or a gate without a finite box goes the exact way (None here)."""
    prepared = prepare_sample(_file(tmp_path, True), _template("logicle", [
        {"name": "open", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [0.1, 0.1], [0.9, 0.1], [0.5, float("inf")]]}}}]))
    idx = np.arange(prepared.space.sample.n_events)
    assert inside_together(prepared.space, [prepared.template["open"].gate], idx)[0] is None


@pytest.mark.filterwarnings("ignore:FCS file")
@pytest.mark.parametrize("spill", [False, True])
def test_sibling_gates_decided_together_equal_each_alone(tmp_path, spill) -> None:
    """Fixed sibling gates share one pass per kind over their parent's events
    (inside_together): ranges and rectangles, and a polygon with an ellipse. Each membership
    equals its gate decided on its own, including complements, an open side, a transform the
    pass cannot take (log: exact path) and an adaptive sibling (placed per sample, never in
    the shared pass)."""
    sample = ip.read_fcs(_file(tmp_path, spill))
    probe = prepare_sample(sample, _template("logicle", [
        {"name": "all", "gate": {"range": {"CD3": [-1e9, None]}}}]))
    idx = np.arange(sample.n_events)
    q = {m: np.nanquantile(probe.space.values(Dimension(marker=m), idx), [0.2, 0.5, 0.8])
         for m in ("CD3", "CD4", "CD8")}
    spec = _template("logicle", [
        {"name": "CD3+", "gate": {"range": {"CD3": [q["CD3"][1], None]}}},
        {"name": "CD4 mid", "gate": {"range": {"CD4": [q["CD4"][0], q["CD4"][2]]}}},
        {"name": "box", "gate": {"rectangle": {"CD3": [q["CD3"][0], q["CD3"][2]],
                                               "CD8": [None, q["CD8"][1]]}}},
        {"name": "CD8 valley", "gate": {"range": {"CD8": [q["CD8"][1], None]}},
         "adaptive": {"method": "valley", "window": [q["CD8"][0], q["CD8"][2]]}},
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [q["CD3"][0], q["CD4"][0]], [q["CD3"][2], q["CD4"][1]], [q["CD3"][1], q["CD4"][2]]]}}},
        {"name": "ellipse", "gate": {"ellipse": {
            "dims": ["CD4", "CD3"], "center": [q["CD4"][1], q["CD3"][1]],
            "covariance": [[0.01, 0.002], [0.002, 0.02]], "distance_square": 2.0}}},
        {"name": "CD4+", "parent": "CD3+", "gate": {"range": {"CD4": [q["CD4"][1], None]}}},
        {"name": "CD8+ of CD3", "parent": "CD3+",
         "gate": {"range": {"CD8": [q["CD8"][1], None]}}},
    ])
    pops = [replace(p, gate=replace(p.gate, complement=True)) if p.name in ("CD4 mid", "poly")
            else p for p in spec.populations]
    log = {"type": "log", "T": 262144, "M": 4.5}
    template = replace(spec.with_populations(pops), transforms={
        **spec.transforms, "CD8": ip.template.transforms.transform_from_dict(log)})
    result = ip.gate_sample(sample, template)
    space = result.prepared.space
    finite = sample.finite_events()
    root = np.flatnonzero(finite) if finite is not None else idx
    for pop in result.template.populations:
        parent = root if pop.parent is None else np.flatnonzero(result.membership[pop.parent])
        alone = np.zeros(sample.n_events, bool)
        alone[parent[inside(space, pop.gate, parent)]] = True
        assert np.array_equal(result.membership[pop.name], alone), pop.name
        assert 0 < alone.sum() < parent.size, pop.name


def _space(tmp_path: Path, events: np.ndarray, template: ip.template.Template,
           spillover: pd.DataFrame | None = None):
    path = write_fcs(tmp_path / "edge.fcs", events.astype(np.float32), PNN, MARKERS,
                     spillover=spillover)
    return prepare_sample(path, template).space


def _template_with(transform: dict, gates: list[dict]) -> ip.template.Template:
    return template_from_dict({"name": "e", "version": "1", "compensation": "file",
                               "markers": {"required": ["CD3", "CD4", "CD8"]},
                               "transforms": {"default": transform}, "populations": gates})


def _exact(space, gate, idx) -> np.ndarray:
    if not isinstance(gate, RectangleGate):
        return exact_2d(space, gate, idx, np.arange(idx.size))
    v = space.values(gate.dims[0], idx)
    ok = np.ones(idx.size, bool)
    if gate.mins[0] is not None:
        ok &= v >= gate.mins[0]
    if gate.maxs[0] is not None:
        ok &= v < gate.maxs[0]
    return ok


@pytest.mark.filterwarnings("ignore:FCS file")
def test_edge_cases_found_in_review(tmp_path) -> None:
    """Found by a review of the fast paths, each equal to the exact test now: FlowUtils'
    logicle with a wide linear region (not monotone: exact path), a covariance only nearly
    symmetric (the box of the form FlowUtils evaluates), infinite raw values (compensation
    makes them NaN), and the threaded pass (more than 200,000 events)."""
    from immunoprofile.template.transforms import Logicle

    rng = np.random.default_rng(2)
    n = 250_000
    events = np.column_stack([rng.normal(6e4, 1e4, n), rng.normal(2e4, 5e3, n),
                              rng.uniform(-25000, 25000, (n, 3))])
    wide = {"type": "logicle", "T": 262144, "W": 3.5, "M": 7, "A": 0}
    lo, hi = Logicle(W=3.5, M=7).apply(np.array([-25000.0, 25000.0]))
    template = _template_with(wide, [
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [lo, lo], [hi, lo], [hi, hi], [lo, hi]]}}},
        {"name": "range", "gate": {"range": {"CD3": [lo, hi]}}}])
    space = _space(tmp_path, events, template)
    idx = np.arange(n)
    for pop in template.populations:
        assert np.array_equal(inside(space, pop.gate, idx), _exact(space, pop.gate, idx))

    # An ellipse whose covariance is symmetric only to np.allclose, events on its boundary.
    s, rho, d = 1e-4, 0.99999, 5e-9
    cov = np.array([[s, s * rho + d], [s * rho - d, s]])
    mean = np.array([0.6, 0.6])
    form = np.linalg.inv(cov)
    tip = np.linalg.inv((form + form.T) / 2)[:, 0]
    tip = tip / np.sqrt(tip[0])
    t = Logicle()
    planted = [[6e4, 2e4, *t.inverse(mean + sign * f * tip), 10.0]
               for f in np.linspace(0.99999, 1 - 1e-9, 500) for sign in (1, -1)]
    template = _template_with(TRANSFORMS["logicle"], [{"name": "ell", "gate": {"ellipse": {
        "dims": ["CD3", "CD4"], "center": mean.tolist(), "covariance": cov.tolist(),
        "distance_square": 1.0}}}])
    space = _space(tmp_path, np.vstack([events[:40_000], planted]), template)
    idx = np.arange(space.sample.n_events)
    ell = template["ell"].gate
    assert np.array_equal(inside(space, ell, idx), _exact(space, ell, idx))
    assert _exact(space, ell, idx)[-1000:].sum() > 400

    # ±inf raw values with a spillover: compensation gives NaN, so never inside.
    infinite = np.abs(events[:60_000]) + 1
    infinite[:50, 2], infinite[50:100, 3], infinite[100:150, 4] = np.inf, -np.inf, np.inf
    spill = pd.DataFrame(np.eye(3) + np.array([[0, 0.12, 0.02], [0.05, 0, 0.2],
                                               [0.01, 0.08, 0]]),
                         index=PNN[2:], columns=PNN[2:])
    template = _template_with(TRANSFORMS["logicle"], [
        {"name": "range", "gate": {"range": {"CD3": [0.5, None]}}},
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [0.3, 0.3], [0.95, 0.3], [0.95, 0.95], [0.3, 0.95]]}}}])
    space = _space(tmp_path, infinite, template, spill)
    idx = np.arange(space.sample.n_events)
    for pop in template.populations:
        got = inside(space, pop.gate, idx)
        assert np.array_equal(got, _exact(space, pop.gate, idx)), pop.name
        assert not got[:150].any()


def _exact_rect(space, gate, idx) -> np.ndarray:
    ok = np.ones(idx.size, bool)
    for dim, lo, hi in zip(gate.dims, gate.mins, gate.maxs):
        v = space.values(dim, idx)
        if lo is not None:
            ok &= v >= lo
        if hi is not None:
            ok &= v < hi
    return ok


FLOWJO = {
    "biex": {"type": "flowjo_biex", "negative": 0.0, "width": -10.0, "positive": 4.41854,
             "max_value": 262144.000029},
    "log": {"type": "flowjo_log", "offset": 1.0, "decades": 4.5},
}


@pytest.mark.filterwarnings("ignore:FCS file")
@pytest.mark.parametrize("kind", sorted(FLOWJO))
@pytest.mark.parametrize("spill", [False, True])
def test_flowjo_transforms_take_the_fast_paths_exactly(tmp_path, kind, spill) -> None:
    """FlowJo's biex is flat beyond its lookup table and its log under the offset: bounds
    strictly inside the increasing part are decided on linear values (the fast passes), a
    bound at or beyond its ends goes the exact way; events beyond the table, on its knots and
    on the bounds' inverses all get the exact test's answer."""
    from immunoprofile.template.transforms import transform_from_dict

    t = transform_from_dict(FLOWJO[kind])
    top = 4096.0 if kind == "biex" else 1.0
    inner = [0.1 * top, 0.35 * top, 0.6 * top, 0.9 * top]
    rng = np.random.default_rng(5)
    n = 250_000  # the threaded passes
    fl = np.concatenate([rng.uniform(-3e3, 3e5, n // 2), np.exp(rng.uniform(-2, 13, n // 2))])
    extra = [t.inverse(np.array(inner)), [-1e7, -5e5, 0.0, 1.0, 3e5, 1e7]]
    if kind == "biex":
        extra.append(t.table()[0][::8])  # the table's own knots
    extra = np.concatenate(extra)
    fl = np.concatenate([fl, extra, extra])
    m = fl.size
    events = np.column_stack([np.full(m, 6e4), np.full(m, 2e4), fl, rng.permutation(fl),
                              np.full(m, 10.0)])
    spillover = None
    if spill:
        spillover = pd.DataFrame(np.eye(3) + np.array([[0, 0.12, 0.02], [0.05, 0, 0.2],
                                                       [0.01, 0.08, 0]]),
                                 index=PNN[2:], columns=PNN[2:])
    a, b, c, d = inner
    gates = [
        {"name": "inside", "gate": {"range": {"CD3": [a, c]}}},
        {"name": "open", "gate": {"range": {"CD3": [b, None]}}},
        {"name": "rect", "gate": {"rectangle": {"CD3": [a, d], "CD4": [b, c]}}},
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [a, a], [d, b], [c, d], [b, c]]}}},
        # at the increasing part's ends (biex: beyond its table too): the exact way
        {"name": "at end", "gate": {"range": {"CD3": [0.0, c]}}},
        {"name": "beyond", "gate": {"range": {"CD3": [b, 1.5 * top]}}},
        {"name": "poly to end", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [0.0, a], [d, b], [c, top]]}}},
    ]
    template = _template_with(FLOWJO[kind], gates)
    space = _space(tmp_path, events, template, spillover)
    idx = np.arange(space.sample.n_events)
    for pop in template.populations:
        gate = pop.gate
        exact = (_exact_rect if isinstance(gate, RectangleGate) else
                 lambda s, g, i: exact_2d(s, g, i, np.arange(i.size)))(space, gate, idx)
        assert np.array_equal(inside(space, gate, idx), exact), pop.name
        assert 0 < exact.sum() < idx.size, pop.name
        fast = inside_together(space, [gate], idx)[0]
        exact_way = {"at end", "poly to end"} | ({"beyond"} if kind == "biex" else set())
        assert (fast is None) == (pop.name in exact_way), pop.name


SCRIPT_FORK = """
import sys, warnings
warnings.simplefilter("ignore")
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
import numpy as np
import immunoprofile as ip
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template import template_from_dict

def count(path):
    return int(ip.gate_sample(path, T).membership["poly"].sum())

rng = np.random.default_rng(0)
events = np.column_stack([rng.normal(1e3, 5e2, (300_000, 2))]).astype(np.float32)
path = write_fcs(sys.argv[1], events, ["FL1-A", "FL2-A"], ["CD3", "CD4"])
T = template_from_dict({"name": "f", "version": "1", "compensation": "none",
    "transforms": {"default": {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 0}},
    "populations": [{"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"],
        "vertices": [[0.5, 0.5], [0.7, 0.5], [0.6, 0.7]]}}}]})
here = count(path)  # the compiled pass on every core, in this process
with ProcessPoolExecutor(1, mp_context=get_context("fork")) as pool:
    there = pool.submit(count, path).result()
print(here, there)
"""


def test_a_process_forks_safely_after_the_threaded_pass(tmp_path) -> None:
    """The batch forks its workers after the parent has gated: numba's OpenMP loops made
    the forked workers die ('fork() called from a process already using GNU OpenMP'); the
    compiled passes run in plain threads, so the worker gates and counts the same."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SCRIPT_FORK, str(tmp_path / "f.fcs")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    here, there = map(int, done.stdout.split())
    assert here == there and here > 0


def test_members_equals_numpy_compress_and_scatter() -> None:
    from immunoprofile.gating.membership import members

    rng = np.random.default_rng(1)
    idx = np.flatnonzero(rng.random(50_000) < 0.7)
    for hit in (rng.random(idx.size) < 0.4, np.zeros(idx.size, bool), np.ones(idx.size, bool)):
        mask, mine = members(50_000, idx, hit)
        expected = np.zeros(50_000, bool)
        expected[idx[hit]] = True
        assert np.array_equal(mask, expected) and np.array_equal(mine, idx[hit])


@pytest.mark.filterwarnings("ignore:FCS file")
def test_edge_cases_found_in_the_second_review(tmp_path) -> None:
    """A bound whose inverse overflows (arcsinh(x/150) = 800, FlowJo log 100), values near
    float32's maximum (the float32 approximate compensation overflows, the exact solve does
    not), and flin with an offset so large that x + A loses linear precision: each equals the
    exact test."""
    rng = np.random.default_rng(0)
    n = 30_000
    events = np.column_stack([np.full(n, 6e4), np.full(n, 2e4),
                              np.exp(rng.uniform(-5, 12, (n, 3)))])
    spill = pd.DataFrame(np.eye(3) + np.array([[0, 0.12, 0.02], [0.05, 0, 0.2],
                                               [0.01, 0.08, 0]]),
                         index=PNN[2:], columns=PNN[2:])
    for spec, bound in [({"type": "arcsinh", "cofactor": 150}, 800.0),
                        (FLOWJO["log"], 100.0)]:
        template = _template_with(spec, [
            {"name": "open", "gate": {"range": {"CD3": [bound, None]}}},
            {"name": "rect", "gate": {"rectangle": {"CD3": [bound, None], "CD4": [0.1, None]}}}])
        for spillover in (None, spill):
            space = _space(tmp_path, events, template, spillover)
            idx = np.arange(n)
            for pop in template.populations:
                got = inside(space, pop.gate, idx)
                assert np.array_equal(got, _exact_rect(space, pop.gate, idx)), pop.name
                assert not got.any()

    near_max = np.column_stack([np.full(1000, 6e4), np.full(1000, 2e4),
                                rng.uniform(0, 1e38, (1000, 3))])
    near_max[:10, 2:4] = 3e38  # compensated: 2e38 each (float64 solve), inf in float32
    s = np.eye(3)
    s[0, 1] = s[1, 0] = 0.5
    template = _template_with("linear", [{"name": "poly", "gate": {"polygon": {
        "dims": ["CD3", "CD4"], "vertices": [[-1e38, -1e38], [2.5e38, -1e38], [2.5e38, 2.5e38],
                                             [-1e38, 2.5e38]]}}}])
    space = _space(tmp_path, near_max, template,
                   pd.DataFrame(s, index=PNN[2:], columns=PNN[2:]))
    idx = np.arange(1000)
    got = inside(space, template["poly"].gate, idx)
    assert got[:10].all() and np.array_equal(got, _exact(space, template["poly"].gate, idx))

    flin = {"type": "flin", "T": 1e6, "A": 1e12}
    t = ip.template.transforms.transform_from_dict(flin)
    lo, hi = t.apply(np.array([300.0, 3000.0]))
    planted = np.concatenate([np.nextafter(np.float32(v), np.float32(d * np.inf)) * np.ones(3)
                              for v in t.inverse(np.array([lo, hi])) for d in (-1, 0, 1)])
    fl = np.concatenate([rng.uniform(0, 5000, n), planted])
    events = np.column_stack([np.full(fl.size, 6e4), np.full(fl.size, 2e4), fl, fl,
                              np.full(fl.size, 10.0)])
    template = _template_with(flin, [
        {"name": "range", "gate": {"range": {"CD3": [lo, hi]}}},
        {"name": "poly", "gate": {"polygon": {"dims": ["CD3", "CD4"], "vertices": [
            [lo, lo], [hi, lo], [hi, hi], [lo, hi]]}}}])
    space = _space(tmp_path, events, template)
    idx = np.arange(fl.size)
    for pop in template.populations:
        exact = (_exact_rect if isinstance(pop.gate, RectangleGate) else _exact)(
            space, pop.gate, idx)
        assert np.array_equal(inside(space, pop.gate, idx), exact), pop.name
