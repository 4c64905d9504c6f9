"""Every command that predicts works with every entry of the shipped reference profile, on every
example of the course's layers (in the entry's dtype): a model key that a command rebuilt
wrongly, or an op the shipped calibration lacks, fails here (the synthetic profiles of the
other tests hold every key and would hide it). The reference profile shipped today was
calibrated before the extended vocabulary's ops: tests/test_vocab_commands.py runs every
command on the new examples with a profile made by `calibrate`."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from costmodel.machine.profile import embedded_profile_path, load_profile

from tests.conftest import COURSE_EXAMPLES as EXAMPLES  # the shipped profile predates the new ops

PROFILE = embedded_profile_path()
ENTRIES = [(e.dtype, e.impl, e.threads, e.backend) for e in load_profile(PROFILE).entries]
runner = CliRunner()


def _arch(tmp_path, path, dtype):
    data = yaml.safe_load(path.read_text())
    out = tmp_path / f"{path.stem}-{dtype}.yaml"
    out.write_text(yaml.safe_dump(data | {"dtype": dtype, "batch": 16}))
    return str(out)


def _run(*args) -> str:
    result = runner.invoke(app, [*args, "--profile", str(PROFILE)])
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


@pytest.mark.parametrize("entry", ENTRIES, ids=["-".join(map(str, e)) for e in ENTRIES])
def test_every_command_with_every_entry(tmp_path, entry):
    dtype, impl, threads, backend = entry
    setting = ["--threads", str(threads)] + (["--backend", "torch"] if backend == "torch" else ["--impl", impl])
    for path in EXAMPLES:
        arch = _arch(tmp_path, path, dtype)
        for by in ("op", "layer", "phase", "kind"):
            data = json.loads(_run("predict", arch, *setting, "--by", by, "--format", "json"))
            assert (data["impl"], data["threads"], data["backend"]) == (impl, threads, backend)
        if backend == "numpy":
            facts = json.loads(_run("explain", arch, *setting, "--format", "json"))
            assert facts["impl"] == impl and facts["sections"]
            assert "Sweep of batch" in _run("sweep", arch, *setting, "--vary", "batch=1,64")
            assert "\\begin{longtable}" in _run("latex", arch, "--impl", impl, "--threads", str(threads))
    shown = runner.invoke(app, ["profile", "show", str(PROFILE)])
    assert shown.exit_code == 0 and f"{dtype}, impl {impl}, {threads} threads" in shown.stdout


def _splice_module():
    import importlib.util

    from tests.conftest import ROOT

    spec = importlib.util.spec_from_file_location("splice", ROOT / "benchmarks" / "profiles" / "splice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splice_takes_one_backend_and_keeps_the_other():
    """benchmarks/profiles/splice.py, which made the shipped profile's torch part: the torch
    entries, peaks and probe products from the new profile; the rest from the base."""
    from costmodel.errors import UsageError

    splice = _splice_module().splice
    base = load_profile(embedded_profile_path())
    torch_entries = [e for e in base.entries if e.backend == "torch"]
    assert torch_entries, "the shipped profile has PyTorch entries"
    slower = {k: m.model_copy(update={"coef": [2 * c for c in m.coef]}) for k, m in torch_entries[0].ops.items()}
    new_entry = torch_entries[0].model_copy(update={"ops": slower})
    new_probe = base.probe.model_copy(update={
        "products": [p.model_copy(update={"flops_per_second": p.flops_per_second / 2}) for p in base.probe.products],
        "call_seconds": {k: 2 * v for k, v in base.probe.call_seconds.items()}})
    new = base.model_copy(update={"entries": [new_entry], "probe": new_probe})
    out = splice(base, new, "torch")
    assert [e for e in out.entries if e.backend == "numpy"] == [e for e in base.entries if e.backend == "numpy"]
    assert [e for e in out.entries if e.backend == "torch"] == [new_entry]
    for p in out.probe.products:
        same = next(q for q in base.probe.products if (q.backend, q.dtype, q.threads, q.shape) ==
                    (p.backend, p.dtype, p.threads, p.shape))
        assert p.flops_per_second == pytest.approx(same.flops_per_second / (2 if p.backend == "torch" else 1))
    assert out.probe.call_seconds["torch"] == 2 * base.probe.call_seconds["torch"]
    assert out.probe.call_seconds["numpy"] == base.probe.call_seconds["numpy"]
    assert out.probe.bandwidth == base.probe.bandwidth
    other = base.model_copy(update={"fingerprint": base.fingerprint.model_copy(update={"cpu_model": "Other"})})
    with pytest.raises(UsageError, match="different machines"):
        splice(base, other, "torch")


def test_splice_refuses_an_output_it_must_not_write(tmp_path, monkeypatch, capsys):
    """splice.py's -o: a missing folder or a directory is one line, exit 2, nothing written."""
    main = _splice_module().main
    ref = str(embedded_profile_path())
    for out in (tmp_path / "missing" / "p.json", tmp_path):
        monkeypatch.setattr("sys.argv", ["splice.py", ref, ref, "--backend", "torch", "-o", str(out)])
        assert main() == 2
        err = capsys.readouterr().err
        assert err.startswith("splice: -o ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("sys.argv", ["splice.py", ref, ref, "--backend", "torch", "-o", str(tmp_path / "p.json")])
    assert main() == 0 and load_profile(tmp_path / "p.json").entries == load_profile(ref).entries
