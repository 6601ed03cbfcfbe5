"""Gating plots on simulated tubes gated with the shipped templates (real files, no mocks)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

import immunoprofile as ip
import immunoprofile.pl
from immunoprofile.datasets import simulate_tube
from immunoprofile.errors import ImmunoprofileError
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template.model import BooleanGate

N_EVENTS = 20_000


def _write(tube, path: Path, drop: tuple[str, ...] = ()) -> Path:
    gone = {d.lower() for d in drop}  # the panel spells FOXP3 "FoxP3"
    keep = [i for i, (n, s) in enumerate(zip(tube.pnn, tube.pns))
            if s.lower() not in gone and n.lower() not in gone]
    names = [tube.pnn[i] for i in keep]
    spill = tube.spillover
    spill = spill.loc[[c for c in spill.index if c in names], [c for c in spill.columns
                                                               if c in names]]
    write_fcs(path, tube.events[:, keep], names, [tube.pns[i] for i in keep], spillover=spill)
    return path


@pytest.fixture(scope="session")
def tubes(tmp_path_factory: pytest.TempPathFactory):
    """Simulated Treg and B tubes (20k events) written as FCS, read back and gated."""
    out = tmp_path_factory.mktemp("pl_gating")
    made = {}
    for kind, seed in (("treg", 3), ("bcell", 4)):
        tube = simulate_tube(kind, N_EVENTS, seed=seed)
        sample = ip.read_fcs(_write(tube, out / f"{kind}_s1.fcs"))
        made[kind] = (tube, sample, ip.gate_sample(sample, kind))
    tube, sample, _ = made["bcell"]
    made["quadrant"] = (tube, sample, ip.gate_sample(sample, _quadrant_template(out)))
    return made


def _quadrant_template(out: Path):
    """The shipped B-cell template with IgD x CD27 as one 2-D quadrant gate (as v1 had),
    written to a file so that plots can reread its default positions."""
    import yaml

    from immunoprofile.template import load_template, shipped_templates

    data = yaml.safe_load(shipped_templates()["bcell"].read_text())
    four = ("Naive B", "Double negative B", "Unswitched memory B", "Switched memory B")
    at = next(i for i, p in enumerate(data["populations"]) if p["name"] in four)
    data["populations"] = [p for p in data["populations"] if p["name"] not in four]
    data["populations"].insert(at, {
        "name": "IgD x CD27", "parent": "Mature B cells",
        "gate": {"quadrant": {"dims": ["IgD", "CD27"], "dividers": [3.8, 2.8], "quadrants": {
            "Naive B": ["+", "-"], "Unswitched memory B": ["+", "+"],
            "Switched memory B": ["-", "+"], "Double negative B": ["-", "-"]}}},
        "adaptive": {"method": "tail", "dims": {"IgD": {"window": [2.5, 5.0], "side": "low"},
                                                "CD27": {"window": [1.2, 3.5],
                                                         "side": "high"}}}})
    data["name"] = "bcell_quadrant"
    (out / "bcell_quadrant.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_template(out / "bcell_quadrant.yaml")


def _expected_panels(result: ip.GatingResult) -> list[str]:
    """Non-boolean measured gates in template order, each quadrant group once."""
    names: list[str] = []
    for pop in result.template.populations:
        if isinstance(pop.gate, BooleanGate) or pop.name in result.not_measured:
            continue
        if not all(m in result.channels for d in pop.gate.dims for m in d.markers()):
            continue
        key = pop.group or pop.name
        if key not in names:
            names.append(key)
    return names


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def _panel(fig: Figure, name: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title().split("\n")[0] == name]
    return ax


@pytest.mark.parametrize("kind, group", [("treg", "Treg CD45RA split"),
                                         ("quadrant", "IgD x CD27"), ("bcell", "Naive B")])
def test_one_panel_per_gate_with_counts(tubes, kind, group):
    _, sample, result = tubes[kind]
    fig = ip.pl.gating(result, sample)
    expected = _expected_panels(result)
    titles = _titles(fig)
    assert group in expected and len(fig.axes) == len(expected)
    assert [t.split("\n")[0] for t in titles] == expected  # hierarchy order, groups once
    counts = result.counts.set_index("population")
    for title in titles:
        name = title.split("\n")[0]
        if name in counts.index:
            row = counts.loc[name]
            assert f"{int(row['count']):,}" in title
            assert f"{row['pct_parent']:.1f}%" in title
    assert result.sample_id in fig.get_suptitle()
    assert f"{result.template.name} v{result.template.version}" in fig.get_suptitle()


def test_quadrant_group_is_one_panel_with_each_quadrant_labelled(tubes):
    _, sample, result = tubes["quadrant"]
    fig = ip.pl.gating(result, sample)
    ax = _panel(fig, "IgD x CD27")
    texts = " ".join(t.get_text() for t in ax.texts)
    counts = result.counts.set_index("population")
    for quadrant in ("Naive B", "Unswitched memory B", "Switched memory B", "Double negative B"):
        assert quadrant in texts
        assert f"{counts.loc[quadrant, 'pct_parent']:.1f}%" in texts
    # One vertical (IgD) and one horizontal (CD27) divider as applied, one each as default.
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 2
    placed = result.gate_positions["Naive B"]["placed"]
    assert any(np.allclose(ln.get_xdata(), placed["IgD"]) for ln in solid)
    assert any(np.allclose(ln.get_ydata(), placed["CD27"]) for ln in solid)


def test_axes_in_template_coordinates_with_marker_and_channel(tubes):
    _, sample, result = tubes["treg"]
    fig = ip.pl.gating(result, sample)
    ax = _panel(fig, "Treg")
    assert ax.get_xlabel() == f"CD127 [{result.channels['CD127']}]"
    assert ax.get_ylabel() == f"CD25 [{result.channels['CD25']}]"
    # arcsinh(x/150) coordinates: a few units wide, not the linear 0..262144 scale.
    lo, hi = ax.get_xlim()
    assert -5 < lo < hi < 10
    # The adaptive gate: the default dashed grey, the placed one solid.
    styles = {ln.get_linestyle() for ln in ax.lines}
    assert {"-", "--"} <= styles
    one_d = _panel(fig, "T cells")
    assert one_d.get_xlabel().startswith("CD3 [")
    cut = result.gate_positions["T cells"]["placed"]["CD3"]
    assert any(np.allclose(ln.get_xdata(), cut) and ln.get_linestyle() == "-"
               for ln in one_d.lines)


def test_saved_png_is_valid_and_written_atomically(tubes, tmp_path):
    _, sample, result = tubes["treg"]
    out = tmp_path / "plots" / "treg.png"
    fig = ip.pl.gating(result, sample, save=out, dpi=80)
    assert isinstance(fig, Figure)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(out)
    width, height = fig.get_size_inches() * 80
    assert pixels.shape[:2] == (round(height), round(width))
    assert pixels[..., :3].std() > 0.05
    assert sorted(p.name for p in out.parent.iterdir()) == ["treg.png"]  # no temp file left


def test_forced_fallback_is_drawn_and_explained(tubes):
    tube, sample, _ = tubes["treg"]
    labels = np.asarray(tube.label_strings).astype(str)
    only_t = np.char.startswith(labels, "cd4") | np.char.startswith(labels, "cd8") \
        | np.char.startswith(labels, "treg")
    result = ip.gate_sample(sample, "treg", event_mask=only_t)
    assert result.gate_positions["T cells"]["fallback"]
    fig = ip.pl.gating(result, sample)
    ax = _panel(fig, "T cells")
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("fallback: ") and "CD3" in t for t in texts)
    red = [ln for ln in ax.lines if ln.get_color() == ip.pl._gating.FALLBACK]
    default_cut = ip.template.load_template("treg")["T cells"].gate.mins[0]
    assert red and np.allclose(red[0].get_xdata(), default_cut)  # the default, kept
    placed_fine = _panel(fig, "CD4+ T cells")
    assert not any("fallback" in t.get_text() for t in placed_fine.texts)
    # Root populations cannot show the mask the engine does not keep: the panel says so.
    assert any("event mask" in t.get_text() for t in _panel(fig, "Lymphocytes").texts)


def test_not_measured_and_passed_through_gates_are_skipped(tubes, tmp_path):
    tube, _, _ = tubes["treg"]
    sample = ip.read_fcs(_write(tube, tmp_path / "no_foxp3.fcs", drop=("FOXP3", "FSC-H")))
    result = ip.gate_sample(sample, "treg")
    assert "FOXP3+ Treg" in result.not_measured
    names = [t.split("\n")[0] for t in _titles(ip.pl.gating(result, sample))]
    assert "FOXP3+ Treg" not in names and "Singlets" not in names
    assert names == _expected_panels(result) and "Treg" in names


def test_populations_subset_and_bad_input(tubes):
    _, sample, result = tubes["bcell"]
    fig = ip.pl.gating(result, sample, populations=["B cells", "Naive B"], ncols=1)
    assert [t.split("\n")[0] for t in _titles(fig)] == ["B cells", "Naive B"]
    with pytest.raises(ImmunoprofileError, match="no population"):
        ip.pl.gating(result, sample, populations=["Plasma cells"])
    other = tubes["treg"][1]
    with pytest.raises(ImmunoprofileError, match="pass the sample it came from"):
        ip.pl.gating(result, _truncated(other))


def _truncated(sample: ip.FCSSample) -> ip.FCSSample:
    from dataclasses import replace

    return replace(sample, events=sample.events[:100])


def test_save_gating_pngs_one_file_per_pair(tubes, tmp_path):
    pairs = [(result, sample) for _, sample, result in tubes.values()]
    paths = ip.pl.save_gating_pngs(pairs, tmp_path / "gating", max_events=5_000, dpi=60)
    assert [p.name for p in paths] == ["treg_s1_treg.png", "bcell_s1_bcell.png",
                                       "bcell_s1_bcell_quadrant.png"]
    for path in paths:
        assert mpimg.imread(path).std() > 0
