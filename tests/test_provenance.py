"""The fingerprint tells machines apart; compare_machines names only what changes speed; the
provenance of a profile; old profiles still load."""

import copy
import importlib.metadata
import os
import subprocess
import sys

import pytest

from costmodel.machine import fingerprint as fpmod
from costmodel.machine.profile import Fingerprint, Profile, load_profile, embedded_profile_path
from costmodel.machine.provenance import (Difference, compare_machines, describe_differences, isa_level,
                                          provenance, warning_line)

from tests.conftest import ROOT
from tests.test_profile import FINGERPRINT, profile_data

ZEN4 = {**FINGERPRINT, "cpu_model": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": "25",
        "cpu_model_id": "17", "cpu_stepping": "1", "cores_available": 2, "torch_version": "2.13.0+cpu",
        "cpu_flags": ["avx", "avx2", "avx512f", "fma", "sse4_2"],
        "blas": [{**FINGERPRINT["blas"][0], "architecture": "SkylakeX"}]}
ZEN3 = {**ZEN4, "cpu_model_id": "1", "cpu_flags": ["avx", "avx2", "fma", "sse4_2"],
        "caches": {**FINGERPRINT["caches"], "L2": 512 << 10},
        "blas": [{**FINGERPRINT["blas"][0], "architecture": "Haswell"}]}


def test_two_machines_with_one_model_name_differ_in_what_changes_speed():
    diffs = compare_machines(ZEN4, ZEN3, threads=2)
    assert [d.name for d in diffs] == ["cpu", "isa", "blas_kernels", "L2"]
    assert describe_differences(diffs) == (
        "profile made with AMD family 25 model 17, AVX-512, SkylakeX kernels, L2 1 MiB; "
        "this machine: AMD family 25 model 1, AVX2, Haswell kernels, L2 512 KiB")


def test_the_same_machine_has_no_difference_whatever_is_irrelevant_to_speed():
    here = {**ZEN4, "platform": "Linux-other-kernel", "python": "3.12.1", "cpu_stepping": "2", "threads": 1,
            "cpu_flags": ZEN4["cpu_flags"] + ["ibrs", "hypervisor"],
            "caches": {**ZEN4["caches"], "L1i": 64 << 10},
            "blas": [{**ZEN4["blas"][0], "num_threads": 1, "filepath": "elsewhere.so"}]}
    assert compare_machines(ZEN4, here, threads=2) == []
    assert describe_differences([]) == ""


@pytest.mark.parametrize("change, name, made, here", [
    ({"cpu_model": "Intel Xeon"}, "cpu", "AMD EPYC", "Intel Xeon"),
    ({"cpu_flags": ["avx", "avx2", "avx512f", "sse4_2"]}, "fma", "FMA", "no FMA"),
    ({"caches": {**ZEN4["caches"], "L3": 16 << 20}}, "L3", "L3 32 MiB", "L3 16 MiB"),
    ({"blas": [{**ZEN4["blas"][0], "internal_api": "mkl", "version": "2024.1"}]}, "blas", "openblas 0.3.27",
     "mkl 2024.1"),
    ({"blas": [{**ZEN4["blas"][0], "threading_layer": "openmp"}]}, "blas", "BLAS threading pthreads",
     "BLAS threading openmp"),
    ({"numpy_version": "2.1.0"}, "numpy", "NumPy 2.0.0", "NumPy 2.1.0"),
    ({"torch_version": "2.5.0"}, "torch", "torch 2.13.0+cpu", "torch 2.5.0"),
    ({"cores_available": 1}, "cores", "2 cores", "1 core"),
])
def test_each_difference_that_changes_speed_is_named(change, name, made, here):
    assert compare_machines(ZEN4, {**ZEN4, **change}, threads=2) == [Difference(name, made, here)]


def test_cores_differ_only_where_the_run_needs_them():
    many = {**ZEN4, "cores_available": 16, "cores": 16}
    assert compare_machines(many, ZEN4, threads=2) == []
    assert compare_machines(many, ZEN4, threads=4) == [Difference("cores", "16 cores", "2 cores")]
    assert compare_machines(many, ZEN4) == [Difference("cores", "16 cores", "2 cores")]


def test_what_one_side_does_not_record_is_not_compared():
    old = {k: v for k, v in FINGERPRINT.items()}  # a profile from before issue 11: no identity, no torch
    assert compare_machines(old, {**FINGERPRINT, "cpu_vendor": "GenuineIntel", "cpu_family": "6",
                                  "cpu_model_id": "85", "torch_version": "2.13.0"}, threads=2) == []
    assert compare_machines({**FINGERPRINT, "caches": {}}, {**FINGERPRINT, "caches": {"L2": 1}}) == []


def test_isa_level_x86_and_arm():
    assert isa_level(["sse4_2", "avx", "avx2", "avx512f"]) == "AVX-512"
    assert isa_level(["avx", "sse4_2"]) == "AVX"
    assert isa_level(["fp", "asimd", "sve"]) == "SVE"
    assert isa_level(["fpu"]) is None


def test_provenance_and_its_warning_line():
    profile = Profile.model_validate(profile_data(fingerprint=copy.deepcopy(ZEN4)))
    same = provenance(profile, ZEN4, path="/p.json", threads=2)
    assert same == {"path": "/p.json", "reference": False, "machine_match": True, "differences": [],
                    "transferred": False}
    assert warning_line(same) is None
    other = provenance(profile, ZEN3, reference=True, threads=2)
    assert other["machine_match"] is False and other["reference"] is True and other["path"] is None
    assert other["differences"][1] == {"name": "isa", "made": "AVX-512", "here": "AVX2"}
    line = warning_line(other)
    assert "\n" not in line and line.startswith("profile made with AMD family 25 model 17, AVX-512")
    assert line.endswith("run `costmodel calibrate`")


def test_a_profile_made_before_issue_11_still_loads():
    """tests/golden/profile.json is the reference profile shipped before issue 11 (no probe, no
    CPU identity); the shipped one now has both."""
    old = load_profile(ROOT / "tests" / "golden" / "profile.json")
    fp = old.fingerprint
    assert fp.cpu_vendor is None and fp.cores_available is None and fp.torch_version is None
    assert fp.blas[0].architecture == "SkylakeX" and old.probe is None
    shipped = load_profile(embedded_profile_path())
    assert shipped.probe is not None and shipped.fingerprint.cpu_vendor is not None


# -- reading this machine ------------------------------------------------------------------------

def test_cpu_identity_x86_and_arm():
    x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n" \
          "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2 fma\n"
    assert fpmod.cpu_identity(x86) == {"cpu_vendor": "AuthenticAMD", "cpu_family": "25", "cpu_model_id": "1",
                                       "cpu_stepping": "1"}
    assert fpmod.cpu_info(x86) == ("AMD EPYC", ["avx2", "fma", "fpu"])
    arm = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU architecture: 8\n" \
          "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n"
    assert fpmod.cpu_identity(arm) == {"cpu_vendor": "0x41", "cpu_family": "8", "cpu_model_id": "0xd0c",
                                       "cpu_stepping": "1"}
    assert fpmod.cpu_identity("") == dict.fromkeys(fpmod.IDENTITY_FIELDS)


def test_fingerprint_of_this_machine():
    fp = Fingerprint.model_validate(fpmod.take_fingerprint(threads=1))
    assert fp.threads == 1
    assert fp.cores_available == len(os.sched_getaffinity(0))
    try:
        expected = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        expected = None
    assert fp.torch_version == expected
    assert fp.blas and fp.blas[0].internal_api
    assert compare_machines(fp, fpmod.take_fingerprint(threads=1), threads=1) == []


def test_taking_the_fingerprint_imports_neither_torch_nor_calib():
    code = ("import sys; from costmodel.machine.fingerprint import take_fingerprint; take_fingerprint(); "
            "print([m for m in ('torch', 'calib', 'scipy', 'sklearn') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_cores_available_follow_the_affinity_mask():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this OS")
    cpu = min(os.sched_getaffinity(0))
    code = (f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
            "from costmodel.machine.fingerprint import available_cores; print(available_cores())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "1"


def test_the_fingerprints_blas_is_numpys_even_when_scipy_loaded_its_own(monkeypatch):
    """SciPy's OpenBLAS (loaded with scikit-learn) is not NumPy's: a fingerprint taken after
    a fit must name the same BLAS as one taken before it."""
    import numpy
    import threadpoolctl

    from costmodel.machine import fingerprint

    numpy_dir = os.path.dirname(numpy.__file__)
    own = {"user_api": "blas", "internal_api": "openblas", "version": "0.3.31", "num_threads": 2,
           "filepath": numpy_dir + ".libs/libscipy_openblas64_.so", "architecture": "Haswell"}
    scipys = dict(own, version="0.3.30", filepath=os.path.join(os.path.dirname(numpy_dir), "scipy.libs", "x.so"))
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [scipys, own])
    assert [lib["version"] for lib in fingerprint.blas_info()] == ["0.3.31"]
    system = dict(own, filepath="/usr/lib/x86_64-linux-gnu/libopenblas.so.0")  # a NumPy linked to the system's
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: [system])
    assert [lib["filepath"] for lib in fingerprint.blas_info()] == ["libopenblas.so.0"]
