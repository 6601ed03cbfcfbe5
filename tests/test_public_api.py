"""The public face: every name the READMEs show imports from where they show it, and every
verb is reachable from ``import immunoprofile as ip`` in a fresh interpreter (no name works
only after another module happened to be imported)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import immunoprofile as ip

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "gating_templates" / "README.md"]


def _python_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def _readme_names() -> tuple[set[str], set[tuple[str, str]]]:
    """(``ip.`` attribute chains, (module, name) pairs of ``from … import …``) in the docs."""
    chains: set[str] = set()
    imports: set[tuple[str, str]] = set()
    for doc in DOCS:
        text = doc.read_text()
        code = _python_blocks(text)
        for module, names in re.findall(r"^from (immunoprofile[\w.]*) import ([\w, ]+)", code,
                                        flags=re.M):
            imports |= {(module, n.strip()) for n in names.split(",") if n.strip()}
        prose = re.sub(r"```.*?```", "", text, flags=re.S)  # fences would pair backticks wrongly
        for where in (code, " ".join(re.findall(r"`([^`]+)`", prose))):
            chains |= set(re.findall(r"\bip\.([A-Za-z_][\w.]*[A-Za-z_0-9])", where))
            chains |= {f"__module__:{m}" for m in
                       re.findall(r"\b(immunoprofile(?:\.[a-z_]+)+)\b", where)}
    return chains, imports


CHAINS, IMPORTS = _readme_names()


def test_the_readmes_name_things() -> None:
    assert {"read_fcs", "gate_sample", "pl.gating", "tl.flowsom"} <= CHAINS
    assert ("immunoprofile.batch", "gate_samples") in IMPORTS


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_every_readme_name_resolves(chain: str) -> None:
    if chain.startswith("__module__:"):
        importlib.import_module(chain.split(":", 1)[1])
        return
    obj = ip
    for part in chain.split("."):
        obj = getattr(obj, part)


@pytest.mark.parametrize(("module", "name"), sorted(IMPORTS))
def test_every_readme_import_works(module: str, name: str) -> None:
    assert hasattr(importlib.import_module(module), name)


# Issue #17's public face and the names #13 found missing from `immunoprofile.template`.
FRESH = ["read_samplesheet", "gate_samples", "pp.qc", "cba", "clinical", "tl.flowsom",
         "template.read_gatingml", "template.write_gatingml", "template.read_flowjo"]


def test_verbs_reachable_first_thing_in_a_fresh_interpreter() -> None:
    # One interpreter per name: each is the first thing asked of the package.
    for chain in FRESH:
        code = f"import immunoprofile as ip; print(type(ip.{chain}).__name__)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, f"ip.{chain}: {done.stderr.strip().splitlines()[-1:]}"
    # FlowKit still loads only when interop is used.
    code = "import sys, immunoprofile.template; print('flowkit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_dir_lists_the_lazy_names() -> None:
    assert {"pp", "cba", "clinical", "read_samplesheet", "gate_samples"} <= set(dir(ip))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = ip.nonsense
