"""Golden outputs: the JSON of costs, predict (every --by), explain and the LaTeX of every
example, from a fixed profile (tests/golden/profile.json, a copy of the reference profile of
2026-11-24). A redesign must not change them; a deliberate change of the model regenerates
them with ``COSTMODEL_REGEN_GOLDEN=1 pytest tests/test_golden.py`` and says why in its commit.

Numbers compare to 1e-9 relative; a key the golden file does not have is allowed (outputs may
grow), a key it has must be there with the same value.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from typer.testing import CliRunner

from cli import app

from tests.conftest import COURSE_EXAMPLES, ROOT, VOCAB_EXAMPLES

GOLDEN = ROOT / "tests" / "golden"
PROFILE = str(GOLDEN / "profile.json")
REGEN = os.environ.get("COSTMODEL_REGEN_GOLDEN") == "1"

#: (file stem, command line after the architecture path)
COMMANDS = [
    ("costs-index", ["costs", "--format", "json"]),
    ("costs-strided", ["costs", "--format", "json", "--impl", "strided"]),
    ("costs-symbolic", ["costs", "--format", "json", "--symbolic"]),
    *[(f"predict-{impl}-{by}", ["predict", "--format", "json", "--profile", PROFILE, "--threads", "2",
                                "--impl", impl, "--by", by])
      for impl in ("index", "strided") for by in ("op", "layer", "phase", "kind")],
    *[(f"predict-torch-{by}", ["predict", "--format", "json", "--profile", PROFILE, "--threads", "2",
                               "--backend", "torch", "--by", by]) for by in ("op", "kind")],
    ("explain-index", ["explain", "--format", "json", "--profile", PROFILE, "--threads", "2"]),
    ("latex-index", ["latex", "--profile", PROFILE, "--threads", "2"]),
]


def _run(arch, args) -> str:
    result = CliRunner().invoke(app, [args[0], str(arch), *args[1:]])
    assert result.exit_code == 0, result.output
    return result.stdout


def _same(golden, new, where="") -> None:
    if isinstance(golden, dict):
        assert isinstance(new, dict), where
        for key, value in golden.items():
            assert key in new, f"{where}.{key} is missing"
            _same(value, new[key], f"{where}.{key}")
    elif isinstance(golden, list):
        assert isinstance(new, list) and len(new) == len(golden), f"{where}: length"
        for i, (g, n) in enumerate(zip(golden, new)):
            _same(g, n, f"{where}[{i}]")
    elif isinstance(golden, float) and not isinstance(new, bool) and isinstance(new, (int, float)):
        assert math.isclose(golden, new, rel_tol=1e-9, abs_tol=1e-15), f"{where}: {golden} != {new}"
    else:
        assert golden == new, f"{where}: {golden!r} != {new!r}"


@pytest.mark.parametrize("stem,args", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("arch", COURSE_EXAMPLES, ids=[p.stem for p in COURSE_EXAMPLES])
def test_golden(arch, stem, args):
    check(arch, stem, args)


#: the examples of the extended vocabulary: their costs (the shipped profile predates their ops)
COSTS = [c for c in COMMANDS if c[0].startswith("costs")]


@pytest.mark.parametrize("stem,args", COSTS, ids=[c[0] for c in COSTS])
@pytest.mark.parametrize("arch", VOCAB_EXAMPLES, ids=[p.stem for p in VOCAB_EXAMPLES])
def test_golden_costs_of_the_extended_vocabulary(arch, stem, args):
    check(arch, stem, args)


#: provenance that depends on the machine running the test (where the clone is, what it differs
#: in from the profile's machine): not part of a golden output
MACHINE_DEPENDENT = ("path", "machine_match", "differences")


def _portable(data: dict) -> dict:
    if isinstance(data.get("profile"), dict):
        data["profile"] = {k: v for k, v in data["profile"].items() if k not in MACHINE_DEPENDENT}
    return data


def check(arch, stem, args) -> None:
    path = GOLDEN / f"{arch.stem}.{stem}.{'tex' if stem.startswith('latex') else 'json'}"
    out = _run(arch, args)
    if REGEN:
        path.write_text(out if path.suffix == ".tex" else json.dumps(_portable(json.loads(out)), indent=2) + "\n")
        pytest.skip("regenerated")
    if path.suffix == ".tex":
        assert out == path.read_text()
    else:
        _same(json.loads(path.read_text()), json.loads(out))
