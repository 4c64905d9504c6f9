"""`costmodel latex`: escaping, number formats, the notation of every op, fragment and standalone
documents that pdflatex compiles, the O() column derived from the SymPy expressions, the CLI."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

import dataclasses

import costmodel.machine.profile as prof
import costmodel.model.symbolic as symbolic
from cli import app
from costmodel.errors import CostModelError
from costmodel.machine.profile import Profile, save_profile
from costmodel.model.arch import load_arch, parse_arch
from costmodel.model.costs import Array, OpCost
from costmodel.model.ops import RECORDS, op_keys
from costmodel.present.latex import PACKAGES, complexity_table, latex_document
from costmodel.present.latex_format import describe, fmt_count, fmt_fraction, fmt_seconds, latex_escape, layer_ranges

from tests.conftest import EXAMPLES, ROOT, all_model_keys
from tests.test_profile import CEILINGS, FINGERPRINT

DIGITS = ROOT / "examples" / "digits-small.yaml"
CIFAR = ROOT / "examples" / "cifar10-layer7.yaml"
CPU = "Test CPU #1 & 50% _fast_ {x}"  # every generated string is escaped, this one too


def synthetic_profile() -> Profile:
    """A profile with a model for every op kind (float32, index, 2 threads) on a CPU whose name
    needs escaping."""
    model = {"model": "nnls-linear", "features": ["calls", "flops", "bytes", "bytes_beyond_L2"],
             "coef": [3e-6, 1 / 50e9, 1 / 10e9, 1 / 30e9], "cv_error": 0.12, "interval": [0.8, 1.3],
             "n_samples": 40}
    keys = sorted(key for key, _ in all_model_keys() if not key.endswith(("threaded", "serial")))
    return Profile.model_validate({
        "created": "2025-01-02T03:04:05Z", "fingerprint": {**FINGERPRINT, "cpu_model": CPU},
        "ceilings": CEILINGS,
        "entries": [{"dtype": "float32", "impl": "index", "threads": 2, "ops": {k: model for k in keys}}]})


def even_fractions(arch) -> dict:
    keys = op_keys(arch)
    return {(k.layer, k.op, k.phase): 1 / len(keys) for k in keys}


# -- strings and numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("char, expected", [
    ("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
    ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\textasciicircum{}"),
    ("<", r"\textless{}"), (">", r"\textgreater{}"), ("|", r"\textbar{}"), ("\n", " "),
])
def test_latex_escape_each_special_character(char, expected):
    assert latex_escape(f"a{char}b") == f"a{expected}b"


def test_latex_escape_does_not_escape_its_own_output():
    assert latex_escape("C:\\{x}_1") == r"C:\textbackslash{}\{x\}\_1"
    assert latex_escape("conv_grad_W 50%") == r"conv\_grad\_W 50\%"
    assert latex_escape("plain text, 1.5") == "plain text, 1.5"


@pytest.mark.parametrize("value, expected", [
    (fmt_count(1_234_567_890), r"1.23\,G"), (fmt_count(45.4e6, "B"), r"45.4\,MB"),
    (fmt_count(768), "768"), (fmt_count(0), "0"), (fmt_count(40, "B"), r"40\,B"),
    (fmt_count(999.7), r"1\,k"), (fmt_count(None), "--"),
    (fmt_seconds(0.01234), r"12.3\,ms"), (fmt_seconds(2.5), r"2.5\,s"),
    (fmt_seconds(4.1e-6), r"4.1\,\(\mu\)s"), (fmt_seconds(3e-8), r"30\,ns"), (fmt_seconds(None), "--"),
    (fmt_fraction(0.345), r"34.5\,\%"), (fmt_fraction(None), "--"),
    (layer_ranges([3, 1, 2, 5, 7, 6]), "1--3, 5--7"), (layer_ranges([2, 4, 6]), "2, 4, 6"),
])
def test_numbers_are_formatted_for_reading(value, expected):
    assert value == expected


def test_every_op_of_the_contract_has_the_slides_notation():
    for kind, op in RECORDS:
        for loss in ("mse", "softmax_ce"):
            assert describe(kind, op, loss)
    assert describe("conv", "phi") == r"\phi(\mathsf{pad}(Z^{m,i}))"
    assert describe("conv", "conv_matmul") == r"W^{m} \phi(\mathsf{pad}(Z^{m,i}))"
    assert describe("loss", "loss", "mse") != describe("loss", "loss", "softmax_ce")
    with pytest.raises(CostModelError, match="no op 'phi' for full layers"):
        describe("full", "phi")


# -- the document ----------------------------------------------------------------------------

def test_fragment_and_standalone():
    data = yaml.safe_load(DIGITS.read_text())
    arch = parse_arch({**data, "name": "net_1 & 50%"}, "test")
    fragment = latex_document(arch)
    standalone = latex_document(arch, standalone=True)

    comments = [line for line in fragment.splitlines() if line.startswith("%")]
    assert fragment.startswith("% costmodel latex: the SG step of net\\_1 \\& 50\\%")
    assert comments[1] == f"% needs: \\usepackage{{{','.join(PACKAGES)}}}"
    assert "\\documentclass" not in fragment and "\\begin{document}" not in fragment
    assert fragment.count("\\begin{longtable}") == 2  # no profile: no Table 3
    assert "No machine profile was found" in fragment and "predicted" not in fragment

    assert standalone.startswith("\\documentclass")
    assert f"\\usepackage{{{','.join(PACKAGES)}}}" in standalone
    assert "\\title{Running time of one SG step: \\texttt{net\\_1 \\& 50\\%}}" in standalone
    assert standalone.rstrip().endswith("\\end{document}")
    tables = re.findall(r"\\begin\{longtable\}.*?\\end\{longtable\}", fragment, re.S)
    assert len(tables) == 2 and all(table in standalone for table in tables)


def test_time_columns_and_totals_by_phase():
    arch = load_arch(DIGITS)
    text = latex_document(arch, profile=synthetic_profile(), threads=2, measured=even_fractions(arch))
    assert text.count("\\begin{longtable}") == 3
    assert "\\multicolumn{2}{c}{predicted}" in text and "& measured \\\\" in text
    for phase in ("forward", "backward", "update"):
        assert f"\\multicolumn{{2}}{{@{{}}l}}{{{phase}}} &" in text
    step = next(line for line in text.splitlines() if "\\textbf{step}" in line)
    assert step.count("100.0\\,\\%") == 2  # predicted and measured fractions sum to the step
    assert latex_escape(CPU) in text and CPU not in text
    assert "50\\,GFLOP/s" not in text and "50~GFLOP/s" in text  # the profile's facts: escaped text, number and unit unbroken
    assert "(used for the predictions)" in text


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended)")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_standalone_document_of_every_example_compiles(tmp_path, path):
    arch = load_arch(path)
    tex = tmp_path / "doc.tex"
    tex.write_text(latex_document(arch, profile=synthetic_profile(), threads=2,
                                  measured=even_fractions(arch), standalone=True))
    proc = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", tex.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
    assert re.findall(r"Overfull \\hbox \((.*?)pt too wide\)", log) == []  # every table fits the page
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "doc.pdf", "-"], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout
        assert "#1 & 50%" in text and "{x}" in text  # printed literally


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended)")
def test_the_shipped_profiles_facts_fit_their_column(tmp_path):
    """The reference profile's facts are long ('46.8 GB/s beyond L2 (39 % of the 119 GB/s of 1
    thread)'): each in one unbreakable box, they ran past the column (537 overfull lines)."""
    from costmodel.machine.profile import embedded_profile_path, load_profile

    arch = load_arch(EXAMPLES[0])
    tex = tmp_path / "doc.tex"
    tex.write_text(latex_document(arch, profile=load_profile(embedded_profile_path()), threads=2, standalone=True))
    proc = subprocess.run(["pdflatex", "-halt-on-error", "-interaction=nonstopmode", tex.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert re.findall(r"Overfull \\hbox \((.*?)pt too wide\)", log) == []


# -- the O() column comes from the SymPy expressions ------------------------------------------

CACHES = (symbolic.symbolic_cost, symbolic._printed)


@pytest.fixture
def fresh_costs():
    """The symbolic costs' caches emptied after the test, so that later tests see the records."""
    yield
    for cache in CACHES:
        cache.cache_clear()


def _complexity(arch) -> str:
    """Table 1 computed afresh from the records (no cached expression)."""
    for cache in CACHES:
        cache.cache_clear()
    return complexity_table(symbolic.symbolic_report(arch), arch)


def _row(table: str, op: str) -> str:
    return next(line for line in table.splitlines() if f"\\texttt{{{latex_escape(op)}}}}}" in line)


def test_the_order_column_follows_the_cost_expressions(fresh_costs):
    arch = load_arch(DIGITS)
    before = _complexity(arch)
    old = r"\mathcal{O}(I h^{m} h^{m} d^{m} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}})"
    new = r"\mathcal{O}(I h^{m} h^{m} d^{m} d^{m+1} a^{m}_{\mathrm{conv}} b^{m}_{\mathrm{conv}})"
    assert old in _row(before, "phi") and new not in _row(before, "phi")

    original = RECORDS[("conv", "phi")]

    def wider_phi(x, spec):
        """phi with d^{m+1} times more rows in the array it writes; nothing else changes."""
        cost = original.cost(x, spec)
        writes = tuple(Array(a.name, (a.shape[0] * x.d_next, *a.shape[1:]), a.kind, a.kept) for a in cost.writes)
        return OpCost(cost.flops, cost.reads, writes, cost.width)

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(RECORDS, ("conv", "phi"), dataclasses.replace(original, cost=wider_phi))
        after = _complexity(arch)
    assert new in _row(after, "phi") and old not in _row(after, "phi")
    assert _row(after, "conv_matmul") == _row(before, "conv_matmul")
    assert [line for line in after.splitlines() if "texttt{phi}" not in line] == \
        [line for line in before.splitlines() if "texttt{phi}" not in line]


# -- the command line ------------------------------------------------------------------------

@pytest.fixture
def no_profile(tmp_path, monkeypatch):
    """No user profile and no shipped reference profile."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(prof, "embedded_profile_path", lambda: tmp_path / "missing.json")


def test_cli_writes_the_file_atomically(tmp_path, no_profile, monkeypatch):
    profile = tmp_path / "profile.json"
    save_profile(synthetic_profile(), profile)
    out = tmp_path / "out" / "tables.tex"
    out.parent.mkdir()
    args = ["latex", str(DIGITS), "-o", str(out), "--standalone", "--profile", str(profile), "--threads", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    text = out.read_text()
    assert text.startswith("\\documentclass") and "{predicted}" in text and latex_escape(CPU) in text
    assert os.listdir(out.parent) == ["tables.tex"]

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    result = CliRunner().invoke(app, ["latex", str(CIFAR), "-o", str(out)])
    assert result.exit_code == 130
    assert out.read_text() == text and os.listdir(out.parent) == ["tables.tex"]


def test_cli_without_a_profile_prints_a_fragment_without_times(no_profile):
    result = CliRunner().invoke(app, ["latex", str(DIGITS)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("% costmodel latex") and "No machine profile was found" in result.stdout


def test_cli_bad_arch_is_one_line_exit_2(tmp_path):
    path = tmp_path / "arch.yaml"
    data = yaml.safe_load(DIGITS.read_text())
    data["layers"][0]["kernal"] = 3
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "tables.tex"
    result = CliRunner().invoke(app, ["latex", str(path), "-o", str(out)])
    assert result.exit_code == 2
    assert result.stderr == f"costmodel: error: {path}: layers[0] (conv): unknown key 'kernal' (did you mean 'kernel'?)\n"
    assert result.stdout == "" and not out.exists()


def test_cli_measured_adds_the_measured_fractions(no_profile):
    result = CliRunner().invoke(app, ["latex", str(DIGITS), "--measured", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    step = next(line for line in result.stdout.splitlines() if "\\textbf{step}" in line)
    assert step.endswith("& 100.0\\,\\% \\\\")
    assert "Measured: the op's share" in result.stdout


def test_latex_module_is_pure_and_lazy():
    code = ("import sys, costmodel.present.latex; "
            "print([m for m in ('calib', 'sympy', 'threadpoolctl', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
