"""The machine profile: format, atomic save, one-line load errors, lookup,
rendering; and the machine side's fingerprint and ceilings (never asserting speeds)."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import costmodel
import costmodel.machine.profile as prof
from calib import machine
from costmodel.errors import CostModelError, UsageError
from costmodel.machine.profile import (SCHEMA_VERSION, Ceilings, Fingerprint, Profile, default_profile_path,
                                       embedded_profile_path, load_profile, save_profile)
from costmodel.present.profile_text import render_profile

from tests.conftest import ROOT

FINGERPRINT = {
    "cpu_model": "Test CPU 9000", "cpu_flags": ["avx2", "fma", "sse4_2"],
    "caches": {"L1d": 32768, "L1i": 32768, "L2": 1 << 20, "L3": 32 << 20},
    "cores": 2, "physical_cores": 2, "numpy_version": "2.0.0",
    "blas": [{"internal_api": "openblas", "version": "0.3.27", "threading_layer": "pthreads",
              "architecture": "Haswell", "num_threads": 2, "filepath": "libopenblas.so"}],
    "threads": 2, "python": "3.11.9", "platform": "Linux-x86_64", "machine": "x86_64",
}
CEILINGS = {
    "threads": 2,
    "matmul_flops_per_second": {"float32": 2.0e11, "float64": 1.0e11},
    "bandwidth": [{"working_set_bytes": 8192, "bytes_per_second": 2.4e10},
                  {"working_set_bytes": 256 << 20, "bytes_per_second": 3.5e10}],
    "machine_balance": {"float32": 2.0e11 / 3.5e10, "float64": 1.0e11 / 3.5e10},
}
OPS = {
    "conv_matmul": {"model": "linear", "features": ["flops", "calls"], "coef": [1 / 74e9, 12e-6],
                    "cv_error": 0.08, "interval": [0.9, 1.15], "n_samples": 40},
    "phi": {"model": "linear", "features": ["bytes", "calls"], "coef": [1 / 9e9, 3e-6],
            "cv_error": None, "interval": [0.8, 1.3], "n_samples": 30},
}


def profile_data(**changes) -> dict:
    data = {"schema_version": SCHEMA_VERSION, "tool_version": costmodel.__version__,
            "created": "2025-01-02T03:04:05Z", "fingerprint": copy.deepcopy(FINGERPRINT),
            "ceilings": copy.deepcopy(CEILINGS),
            "entries": [{"dtype": "float32", "impl": "index", "threads": 2, "backend": "numpy",
                         "ops": copy.deepcopy(OPS)},
                        {"dtype": "float32", "impl": "index", "threads": 1, "backend": "numpy",
                         "ops": copy.deepcopy(OPS)}]}
    data.update(changes)
    return data


@pytest.fixture
def profile() -> Profile:
    return Profile.model_validate(profile_data())


# -- format and files ------------------------------------------------------------------------

def test_round_trip(tmp_path, profile):
    path = tmp_path / "sub" / "profile.json"
    save_profile(profile, path)
    assert load_profile(path) == profile
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["created"] == "2025-01-02T03:04:05Z"
    assert data["entries"][0]["ops"]["conv_matmul"]["features"] == ["flops", "calls"]
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temporary file left


def test_the_fits_shape_validates():
    """What calib's fit writes: op variants (loss:mse), cache-level features, sweep metadata."""
    fit = {"model": "nnls-linear", "features": ["calls", "flops", "bytes", "bytes_beyond_L2", "bytes_beyond_L3"],
           "coef": [3e-6, 1e-11, 2e-11, 0.0, 3e-11], "cv_error": 0.1, "interval": [0.9, 1.1], "n_samples": 44}
    data = profile_data(calibration_seconds=123.4)
    data["entries"][0].update(ops={"loss:mse": fit, "conv_matmul": fit},
                              sweep={"points": 44, "rounds": 3, "seconds": 61.5})
    profile = Profile.model_validate(data)
    assert profile.entries[0].sweep["points"] == 44
    assert "20 GB/s beyond L3" in render_profile(profile)  # effective: 1/(c_byte + c_L2 + c_L3)


def test_created_is_utc_and_must_carry_a_time_zone():
    with pytest.raises(ValueError):
        Profile.model_validate(profile_data(created="2025-01-02T03:04:05"))
    profile = Profile.model_validate(profile_data(created="2025-01-02T05:04:05+02:00"))
    assert json.loads(profile.model_dump_json())["created"] == "2025-01-02T03:04:05Z"


def _drop(*keys):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def _set(value, *keys):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


BAD_CONTENT = [
    (_set(3, "schema_version"),
     "schema version 3, this costmodel reads version 1: run `costmodel calibrate` again"),
    (_set("1", "schema_version"), "schema version '1', this costmodel reads version 1"),
    (_drop("schema_version"), "not a costmodel profile (no schema_version)"),
    (_drop("ceilings"), "missing required key 'ceilings'"),
    (_drop("fingerprint", "caches"), "fingerprint: missing required key 'caches'"),
    (_drop("entries", 0, "ops", "phi", "coef"), "entries[0]: ops: phi: missing required key 'coef'"),
    (_set("two", "fingerprint", "cores"), "fingerprint: cores: 'two' has the wrong type"),
    (_set(0, "entries", 0, "threads"), "entries[0]: threads: 0 is not a positive integer"),
    (_set({"flops": 0}, "entries", 0, "transfer_factors"),  # a dict's float value, given as an int
     "entries[0]: transfer_factors: flops: 0 is not a positive number"),
    (_set({"points": {"a": 1}}, "entries", 0, "sweep"),  # int | float: a number, not "an integer or a number"
     "entries[0]: sweep: points: {'a': 1} is not allowed (expected a number)"),
    (_set("float16", "entries", 0, "dtype"), "entries[0]: dtype: 'float16' is not allowed"),
    (_set(1, "entries", 0, "ops", "phi", "extra"), "entries[0]: ops: phi: unknown key 'extra'"),
    (_set([1e-9], "entries", 0, "ops", "phi", "coef"), "2 features but 1 coefficients"),
    (_set([1.2, 0.8], "entries", 0, "ops", "phi", "interval"), "interval [1.2, 0.8] is not increasing"),
    (_set(float("nan"), "entries", 0, "ops", "phi", "cv_error"), "entries[0]: ops: phi: cv_error"),
    (_set({"convmatmul": OPS["phi"]}, "entries", 0, "ops"), "unknown op 'convmatmul' (not in the op contract)"),
    (_set(1, "entries", 0, "threads"), "two entries for float32, impl index, 1 thread"),
    (_set([], "ceilings", "bandwidth"), "ceilings: bandwidth: must not be empty"),
]


@pytest.mark.parametrize("change, expected", BAD_CONTENT, ids=[e[:40] for _, e in BAD_CONTENT])
def test_bad_content_is_one_line_naming_the_file(tmp_path, change, expected):
    data = profile_data()
    change(data)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not valid JSON (line 1, column 2"),
    ("", "not valid JSON (line 1, column 1"),
    (json.dumps(profile_data(), indent=2)[:700], "not valid JSON"),  # truncated
    ("[1, 2]", "not a costmodel profile (a JSON list, not an object)"),
    (b"\xff\xfe\x00garbage", "cannot read the profile: UnicodeDecodeError"),
])
def test_unreadable_files(tmp_path, text, expected):
    path = tmp_path / "profile.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UsageError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: {expected}") and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="nope.json: no such profile: run `costmodel calibrate`"):
        load_profile(tmp_path / "nope.json")


def test_unwritable_place_is_one_line(tmp_path, profile):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot write the profile"):
        save_profile(profile, tmp_path / "file" / "profile.json")


def _only(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_interrupted_save_keeps_the_old_file(tmp_path, profile, monkeypatch, exc):
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    before = path.read_bytes()

    def fail(*args):
        raise exc(28, "No space left on device") if exc is OSError else exc()

    monkeypatch.setattr(os, "replace", fail)
    newer = profile.model_copy(update={"tool_version": "9.9.9"})
    with pytest.raises((KeyboardInterrupt, UsageError)):
        save_profile(newer, path)
    assert path.read_bytes() == before and _only(path) == ["profile.json"]


def test_interrupted_first_save_leaves_no_file(tmp_path, profile, monkeypatch):
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    path = tmp_path / "profile.json"
    with pytest.raises(KeyboardInterrupt):
        save_profile(profile, path)
    assert not path.exists() and _only(path) == []


def test_sigkill_mid_write_leaves_the_old_complete_file(tmp_path, profile):
    """A real process killed between writing the temporary file and renaming it."""
    path = tmp_path / "profile.json"
    save_profile(profile, path)
    before = path.read_bytes()
    child = textwrap.dedent(f"""
        import os, sys, time
        from costmodel.machine.profile import Profile, load_profile, save_profile
        def stall(fd):
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = stall
        p = load_profile({str(path)!r})
        save_profile(p.model_copy(update={{"tool_version": "9.9.9"}}), {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert load_profile(path) == profile  # only a stale hidden temporary file may remain beside it
    assert [n for n in _only(path) if not n.startswith(".profile.json.")] == ["profile.json"]


# -- where profiles live ---------------------------------------------------------------------

def test_default_path_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_profile_path() == tmp_path / "costmodel" / "profile.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # XDG: relative paths are ignored
    assert default_profile_path() == Path.home() / ".cache" / "costmodel" / "profile.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_profile_path() == Path.home() / ".cache" / "costmodel" / "profile.json"


def test_embedded_profile_is_package_data():
    path = embedded_profile_path()
    assert path.name == "reference_profile.json"
    assert path.parent == Path(costmodel.__file__).parent / "data" and path.parent.is_dir()


# -- lookup and checks -----------------------------------------------------------------------

def test_entry_lookup(profile):
    entry = profile.entry("float32", "index", 2)
    assert entry.ops["conv_matmul"].features == ["flops", "calls"]
    with pytest.raises(CostModelError) as info:
        profile.entry("float64", "strided", 2)
    assert str(info.value) == (
        "the profile has no entry for float64, impl strided, 2 threads: run "
        "`costmodel calibrate --dtype float64 --impl strided --threads 2` "
        "(it has: float32, impl index, 2 threads; float32, impl index, 1 thread)")
    with pytest.raises(CostModelError, match="--threads 2 --backend torch`"):
        profile.entry("float32", "index", 2, backend="torch")


# -- rendering -------------------------------------------------------------------------------

def test_render_table_reads_parameters_as_machine_facts(profile):
    text = render_profile(profile, "table")
    assert "Test CPU 9000" in text and "L2 1 MiB" in text and "openblas 0.3.27" in text
    assert "200 GFLOP/s" in text and "100 GFLOP/s" in text and "35 GB/s" in text and "256 MiB" in text
    assert "74 GFLOP/s, 12.0 us per call" in text and "9 GB/s, 3.0 us per call" in text
    assert "8.0 %" in text and "Op models: float32, impl index, 1 thread" in text


def test_render_json_is_the_profile(profile):
    assert Profile.model_validate(json.loads(render_profile(profile, "json"))) == profile


def test_render_csv_one_row_per_op_and_feature(profile):
    lines = render_profile(profile, "csv").splitlines()
    assert lines[0] == ("dtype,impl,threads,backend,op,model,feature,coef_seconds_per_unit,cv_error,"
                        "interval_lo,interval_hi,n_samples")
    assert len(lines) == 1 + 2 * 4
    assert lines[1].startswith("float32,index,2,numpy,conv_matmul,linear,flops,1.35")


def test_render_rejects_an_unknown_format(profile):
    with pytest.raises(UsageError, match="format 'yaml' is not one of table, json, csv"):
        render_profile(profile, "yaml")


def test_fact():
    assert prof.fact("flops", 1 / 74e9) == "74 GFLOP/s"
    assert prof.fact("bytes", 0.0) == "no cost per byte"
    assert prof.fact("bytes_beyond_L3", 1 / 20e9) == "20 GB/s beyond L3"
    assert prof.fact("bytes_beyond_L2", 0.0) == "no cost per byte beyond L2"
    assert prof.fact("calls", 2e-3) == "2.000 ms per call"
    assert prof.fact("gemm_calls", 5e-7) == "0.5 us per image and group"
    assert prof.fact("elements", 2e-10) == "5 G elements/s"
    assert prof.fact("elements", 1.57e-23) == "no cost per element"  # not 6.4e+10 T elements/s
    assert prof.fact("inner_loops", 8e-9) == "8 ns per inner loop"
    assert prof.fact("messages", 1e-9) == "messages: 1e-09 s each"


def test_profile_module_is_pure():
    code = "import sys, costmodel.machine.profile; print([m for m in ('calib', 'threadpoolctl') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the machine side ------------------------------------------------------------------------

def _sysfs_caches() -> dict[str, int]:
    """Independent reading of cpu0's caches from sysfs."""
    out = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
        assert size.endswith("K"), size
        out["L" + level + {"Data": "d", "Instruction": "i", "Unified": ""}[kind]] = int(size[:-1]) * 1024
    return out


@pytest.mark.skipif(not Path("/sys/devices/system/cpu/cpu0/cache/index0").exists(), reason="no sysfs caches")
def test_fingerprint_reads_the_caches_from_sysfs():
    fp = machine.fingerprint(threads=1)
    assert fp["caches"] == _sysfs_caches() and fp["caches"]
    assert fp["threads"] == 1 and all(b["num_threads"] == 1 for b in fp["blas"])
    assert fp["cores"] == os.cpu_count()
    Fingerprint.model_validate(fp)


def test_fingerprint_validates_and_names_the_blas():
    fp = Fingerprint.model_validate(machine.fingerprint())
    assert fp.cpu_model and fp.numpy_version == __import__("numpy").__version__
    assert fp.blas and all("/" not in b.filepath for b in fp.blas)


def test_cache_sizes_from_a_fake_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                             ("2", "Unified", "2048K"), ("3", "Unified", "36M")]):
        index = tmp_path / "cache" / f"index{i}"
        index.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(value + "\n")
    assert machine.cache_sizes(tmp_path) == {"L1d": 48 << 10, "L1i": 32 << 10, "L2": 2 << 20, "L3": 36 << 20}
    assert machine.cache_sizes(tmp_path / "absent") == {}


def test_cpu_info_reads_arm_spelling():
    text = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU part\t: 0xd0c\n\n" \
           "processor\t: 1\nFeatures\t: fp asimd sve\n\nHardware\t: Neoverse Board\n"
    assert machine.cpu_info(text) == ("Neoverse Board", ["asimd", "fp", "sve"])


def test_ceilings_are_positive_and_cover_every_working_set():
    sets = (8 << 10, 1 << 20, 64 << 20)
    result = machine.ceilings(threads=1, budget_seconds=0.5, working_sets=sets)
    ceilings = Ceilings.model_validate(result)
    assert ceilings.threads == 1
    assert [p.working_set_bytes for p in ceilings.bandwidth] == list(sets)
    values = [*result["matmul_flops_per_second"].values(), *result["machine_balance"].values(),
              *(p["bytes_per_second"] for p in result["bandwidth"])]
    assert len(values) == 2 + 2 + 3 and all(v > 0 and math.isfinite(v) for v in values)
    assert machine.WORKING_SETS[0] == 8 << 10 and machine.WORKING_SETS[-1] == 256 << 20
    assert len(machine.WORKING_SETS) == 10


def test_a_step_is_given_the_interval_of_its_size_class():
    from costmodel.machine.profile import Entry

    model = {"model": "nnls-linear", "features": ["calls"], "coef": [1e-6], "interval": [0.9, 1.1], "n_samples": 3}
    classes = [{"below_seconds": 4e-3, "interval": [0.6, 1.3], "networks": 48},
               {"below_seconds": None, "interval": [0.9, 1.1], "networks": 48}]
    entry = Entry(dtype="float32", impl="index", threads=2, ops={"bias": model}, step_interval=(0.7, 1.2),
                  step_networks=96, step_intervals_by_size=classes)
    assert entry.step_interval_for(1e-3) == ((0.6, 1.3), 48, "predicted below 4.000 ms")
    assert entry.step_interval_for(4e-3) == ((0.9, 1.1), 48, "predicted from 4.000 ms")
    plain = entry.model_copy(update={"step_intervals_by_size": []})
    assert plain.step_interval_for(1e-3) == ((0.7, 1.2), 96, "")
    assert plain.model_copy(update={"step_interval": None}).step_interval_for(1e-3) is None
    for bad in (classes[::-1], classes + classes, classes[:1], [classes[0], classes[0]]):
        with pytest.raises(ValueError, match="none, or two classes|at most 2"):
            Entry(dtype="float32", impl="index", threads=2, ops={"bias": model}, step_intervals_by_size=bad)
    for interval in ([1.3, 0.6], [1e-300, 1e300], [0, 1]):
        with pytest.raises(ValueError):
            Entry(dtype="float32", impl="index", threads=2, ops={"bias": model},
                  step_intervals_by_size=[{**classes[0], "interval": interval}, classes[1]])
        with pytest.raises(ValueError):
            Entry(dtype="float32", impl="index", threads=2, ops={"bias": model}, step_interval=interval)


def test_a_load_record_is_what_calib_noise_writes():
    """Shares of the cores' time within 0..1, a verdict with its reasons, one bounded line each."""
    from costmodel.machine.profile import LoadRecord

    quiet = {"wall_seconds": 1.0, "cores_available": 2, "other_cpu": 0.0, "steal": 0.0, "disturbed": False}
    LoadRecord(**quiet)
    LoadRecord(**{**quiet, "disturbed": True, "reasons": ["other processes used 40 % of the 2 available cores' time"]})
    for bad in ({"other_cpu": 1e300}, {"steal": 2.0}, {"disturbed": True}, {"reasons": ["x"]},
                {"disturbed": True, "reasons": ["two\nlines"]}, {"disturbed": True, "reasons": ["x" * 501]},
                {"disturbed": True, "reasons": ["x"] * 33}, {"handoff_seconds": [1e-5] * 1025}):
        with pytest.raises(ValueError):
            LoadRecord(**{**quiet, **bad})
