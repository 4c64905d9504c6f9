"""The probe for transfers: what it measures, its working sets per level, and its cache."""

import json

import pytest

from calib.probe import LEVELS, SHAPES, cached_probe, covers, probe, probe_key, working_sets
from costmodel.machine.fingerprint import take_fingerprint
from costmodel.machine.profile import Probe
from costmodel.machine.transfer import transfer

from tests.test_profile import FINGERPRINT


def _monitor(other_ticks_per_probe: int):
    """A load monitor factory whose CPU counters show `other_ticks_per_probe` ticks of other
    processes over each monitored block (0: a quiet machine), whatever the real machine does."""
    from calib.noise import CpuTicks, LoadMonitor

    def factory():
        ticks = iter([CpuTicks(busy=0, steal=0, own=0), CpuTicks(busy=other_ticks_per_probe, steal=0, own=0)])
        return LoadMonitor(cpus=[0, 1], read=lambda: next(ticks))
    return factory


QUIET = _monitor(0)


def test_each_working_set_lies_inside_its_level():
    caches = {"L1d": 32 << 10, "L2": 512 << 10, "L3": 32 << 20}
    sets = working_sets(caches)
    assert sets["L1"] <= caches["L1d"] < sets["L2"] <= caches["L2"] < sets["L3"] <= caches["L3"] < sets["memory"]
    assert working_sets({}) == working_sets({"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20})


def test_the_probe_measures_every_class_level_and_call():
    result = probe([1], ["float32"], budget_seconds=0.3)
    assert {(p.backend, p.dtype, p.threads, p.shape) for p in result.products} == \
        {("numpy", "float32", 1, s) for s in SHAPES}
    assert all(p.flops_per_second > 0 for p in result.products)
    assert [lv.level for lv in result.bandwidth] == list(LEVELS)
    assert set(result.call_seconds) == {"numpy"} and result.call_seconds["numpy"] > 0
    assert covers(result, [1], ["float32"], torch=False)
    assert not covers(result, [1, 2], ["float32"], torch=False) and not covers(result, [1], ["float32"], torch=True)


def test_a_profile_transfers_to_this_machine_by_its_own_probe():
    """Transferring a profile by the probe of the machine it was made on changes nothing."""
    from tests.test_transfer import synthetic_profile

    here = probe([1, 2], ["float32"], budget_seconds=0.3)
    profile = synthetic_profile(here.model_dump())
    moved = transfer(profile, here, take_fingerprint())
    for before, after in zip(profile.entries, moved.entries):
        for key, model in before.ops.items():
            assert after.ops[key].coef == pytest.approx(model.coef, rel=1e-12)


def test_the_cache_is_reused_until_more_is_asked_or_the_file_is_damaged(tmp_path):
    path = tmp_path / "probe.json"
    first, fresh = cached_probe([1], ["float32"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.2, monitor=QUIET)
    assert fresh and Probe.model_validate_json(path.read_text()) == first
    again, fresh = cached_probe([1], ["float32"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.2, monitor=QUIET)
    assert not fresh and again == first
    more, fresh = cached_probe([1], ["float32", "float64"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.2, monitor=QUIET)
    assert fresh and covers(more, [1], ["float32", "float64"], torch=False)
    path.write_text("{not json")
    _, fresh = cached_probe([1], ["float32"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.2, monitor=QUIET)
    assert fresh and json.loads(path.read_text())["products"]
    assert [p.name for p in tmp_path.iterdir()] == ["probe.json"]


def test_a_probe_on_a_busy_machine_is_taken_again_then_used_uncached_and_warned_about(tmp_path, capsys):
    path = tmp_path / "probe.json"
    made = []

    def busy():  # other processes on both cores for the whole probe
        made.append(1)
        return _monitor(10_000)()

    result, fresh = cached_probe([1], ["float32"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.1, monitor=busy)
    lines = capsys.readouterr().err.splitlines()
    assert len(made) == 2  # taken once more before giving up
    assert fresh and covers(result, [1], ["float32"], torch=False)
    assert not path.exists()  # a disturbed probe must not poison later transfers
    assert len(lines) == 1 and "ran while other processes used" in lines[0] and "not cached" in lines[0]
    # quiet again: probed anew and cached
    _, fresh = cached_probe([1], ["float32"], fingerprint=FINGERPRINT, path=path, budget_seconds=0.1, monitor=QUIET)
    assert fresh and path.exists()


def test_the_default_cache_file_sits_next_to_profile_json(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached_probe([1], ["float32"], fingerprint=FINGERPRINT, budget_seconds=0.2, monitor=QUIET)
    assert [p.name for p in (tmp_path / "costmodel").iterdir()] == [f"probe-{probe_key(FINGERPRINT)}.json"]


def test_the_key_follows_the_machine_not_the_run():
    key = probe_key(FINGERPRINT)
    assert probe_key({**FINGERPRINT, "threads": 1, "platform": "other",
                      "blas": [{**FINGERPRINT["blas"][0], "num_threads": 1, "filepath": "x.so"}]}) == key
    assert probe_key({**FINGERPRINT, "blas": [{**FINGERPRINT["blas"][0], "architecture": "SkylakeX"}]}) != key
    assert probe_key({**FINGERPRINT, "caches": {**FINGERPRINT["caches"], "L2": 1 << 19}}) != key
    assert len(key) == 16


def test_the_torch_probe_measures_torchs_own_kernels():
    pytest.importorskip("torch")
    result = probe([1], ["float32"], torch=True, budget_seconds=0.3)
    torch_products = {p.shape for p in result.products if p.backend == "torch"}
    assert torch_products == set(SHAPES) and result.call_seconds["torch"] > 0
    assert covers(result, [1], ["float32"], torch=True)
