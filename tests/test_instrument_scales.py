"""One template on every instrument's scale: the arcsinh cofactor follows each file's $PnR
(`reference_range`), and the adaptive options the shipped templates use (`align` on a median,
`within`, `relative` bounds) do what the template says."""

from __future__ import annotations

import numpy as np
import pytest

import immunoprofile as ip
from immunoprofile.datasets import INSTRUMENTS, TubeParams, simulate_tube
from immunoprofile.errors import TemplateError
from immunoprofile.gating.landmarks import NoLandmark, locate
from immunoprofile.io.fcs_write import write_fcs
from immunoprofile.template.transforms import Arcsinh, transform_from_dict


def test_cofactor_follows_the_range() -> None:
    t = transform_from_dict({"type": "arcsinh", "cofactor": 150, "reference_range": 262144})
    assert t.for_channel(262144.0) is t  # the same object: same cache keys, same GatingML
    assert t.for_channel(1048576.0) == Arcsinh(cofactor=600.0)
    assert t.for_channel(4194304.0) == Arcsinh(cofactor=2400.0)
    assert t.for_channel(None) is t and t.for_channel(float("nan")) is t
    assert Arcsinh(cofactor=150).for_channel(4194304.0) == Arcsinh(cofactor=150)
    # The range as decoded, not $PnR: a log-amplified 10-bit channel ($PnE 4,0: top ~9910)
    # gets a small cofactor; ranges that are no power of two scale in proportion.
    assert t.for_channel(9910.0).cofactor == pytest.approx(150 * 9911 / 262144)
    assert t.for_channel(99_999.0).cofactor == pytest.approx(150 * 100_000 / 262144)
    assert t.to_dict() == {"type": "arcsinh", "cofactor": 150.0, "reference_range": 262144.0}
    assert Arcsinh().to_dict() == {"type": "arcsinh", "cofactor": 150.0}
    with pytest.raises(TemplateError, match="reference_range"):
        transform_from_dict({"type": "arcsinh", "cofactor": 150, "reference_range": 0})


@pytest.fixture(scope="module")
def tubes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scales")
    made = {}
    for name in ("fortessa", "cytoflex", "aurora"):
        tube = simulate_tube("treg", 20_000, seed=1, params=TubeParams(instrument=name))
        inst = INSTRUMENTS[name]
        write_fcs(out / f"{name}.fcs", tube.events, tube.pnn, tube.pns,
                  spillover=tube.spillover, pnr=[inst.pnr] * len(tube.pnn),
                  metadata={"$TIMESTEP": "0.01", "$CYT": inst.cyt})
        made[name] = ip.read_fcs(out / f"{name}.fcs")
    return made


def test_shipped_treg_template_gates_every_scale(tubes) -> None:
    cd3 = {}
    for name, sample in tubes.items():
        res = ip.gate_sample(sample, "treg")
        assert not res.gate_positions["Lymphocytes"]["fallback"], name
        counts = res.counts.set_index("population")["count"]
        assert 0.5 < counts["T cells"] / counts["Live lymphocytes"] < 0.9, name
        placed = res.gate_positions["T cells"]["placed"]["CD3"]
        cd3[name] = placed
    # The CD3 valley sits at the same transformed position on every instrument (within the
    # gain differences the simulator gives them: 4-5x over 4x range, 15x over 16x).
    assert max(cd3.values()) - min(cd3.values()) < 0.5, cd3


def test_locate_peak_and_median() -> None:
    rng = np.random.default_rng(0)
    broad = rng.normal(1.4, 0.9, 5000)  # a continuum with no clear peak
    assert locate(broad, (-1.0, 3.5), stat="median") == pytest.approx(
        np.median(broad[(broad >= -1) & (broad <= 3.5)]))
    assert abs(locate(broad, (-1.0, 3.5)) - 1.4) < 0.5
    with pytest.raises(NoLandmark):
        locate(broad[:10], (-1.0, 3.5), stat="median")
    with pytest.raises(ValueError, match="peak or median"):
        locate(broad, (0, 1), stat="mode")


def test_within_restricts_the_events_a_cut_is_found_on(tmp_path) -> None:
    tube = simulate_tube("bcell", 60_000, seed=2)
    write_fcs(tmp_path / "b.fcs", tube.events, tube.pnn, tube.pns, spillover=tube.spillover)
    sample = ip.read_fcs(tmp_path / "b.fcs")
    res = ip.gate_sample(sample, "bcell")
    naive = res.gate_positions["Naive B"]["placed"]
    unswitched = res.gate_positions["Unswitched memory B"]["placed"]
    # Same CD27 cut for all four rectangles (they tile the mature B cells) ...
    assert naive["CD27"] == unswitched["CD27"]
    # ... but IgD found separately on each side of CD27 (or left at its default 3.8, with the
    # reason, where the CD27+ side holds too few events).
    assert naive["IgD"] != unswitched.get("IgD", 3.8)
    assert "IgD" in unswitched or "IgD" in unswitched["partial_fallback"]
    counts = res.counts.set_index("population")["count"]
    four = ["Naive B", "Double negative B", "Unswitched memory B", "Switched memory B"]
    assert counts[four].sum() == counts["Mature B cells"]
