"""Which profile a prediction uses (costmodel.machine.resolve) and its provenance: the given
one, $COSTMODEL_PROFILE, the user's, or the reference one, transferred to this machine by a
probe when this machine differs from its machine; one line says so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import costmodel.machine.profile as prof
from cli import app
from costmodel.errors import UsageError
from costmodel.machine.fingerprint import take_fingerprint
from costmodel.machine.profile import Fingerprint, Probe, Profile, default_profile_path, save_profile
from costmodel.machine.resolve import ENV, locate, resolve

from tests.conftest import EXAMPLES
from tests.test_transfer import HERE, probes, synthetic_profile


def _profile(fingerprint: dict, probe=None) -> Profile:
    made, _ = probes()
    data = synthetic_profile(made if probe is None else probe).model_dump()
    data["fingerprint"] = fingerprint
    return Profile.model_validate(data)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty user cache, no $COSTMODEL_PROFILE, this machine's fingerprint fixed to HERE (the
    differences named must not depend on the machine the tests run on), and a reference profile
    made on another machine (HERE's caches differ), with a probe of that machine."""
    import costmodel.machine.fingerprint as fpmod

    monkeypatch.setattr(fpmod, "take_fingerprint", lambda threads=None, blas=None: {**HERE, "threads": threads or 1})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV, raising=False)
    reference = tmp_path / "pkg" / "reference_profile.json"
    save_profile(_profile({**HERE, "cpu_model": "Reference CPU", "caches": {"L2": 1 << 20}}), reference)
    monkeypatch.setattr(prof, "embedded_profile_path", lambda: reference)
    return tmp_path


def test_the_order_is_given_then_env_then_yours_then_the_reference(places, monkeypatch):
    assert locate()[2] is True
    save_profile(_profile({**HERE, "cpu_model": "Mine"}), default_profile_path())
    assert locate()[0].fingerprint.cpu_model == "Mine"
    env = places / "env.json"
    save_profile(_profile({**HERE, "cpu_model": "From env"}), env)
    monkeypatch.setenv(ENV, str(env))
    assert locate()[0].fingerprint.cpu_model == "From env" and locate()[1] == env
    given = places / "given.json"
    save_profile(_profile({**HERE, "cpu_model": "Given"}), given)
    assert locate(given)[0].fingerprint.cpu_model == "Given"


def test_a_bad_env_or_user_profile_is_one_error_naming_it(places, monkeypatch):
    monkeypatch.setenv(ENV, str(places / "nope.json"))
    with pytest.raises(UsageError, match=r"\$COSTMODEL_PROFILE=.*nope.json: no such profile file"):
        locate()
    monkeypatch.delenv(ENV)
    default_profile_path().parent.mkdir(parents=True)
    default_profile_path().write_text("{")
    with pytest.raises(UsageError, match="profile.json: not valid JSON"):
        locate()


def test_no_profile_at_all(places, monkeypatch):
    monkeypatch.setattr(prof, "embedded_profile_path", lambda: places / "missing.json")
    with pytest.raises(UsageError, match="no profile: .* run `costmodel calibrate`"):
        locate()


def test_the_reference_profile_of_another_machine_is_transferred_by_a_probe(places):
    _, here_probe = probes()
    asked, lines = [], []

    def prober(**needs):
        asked.append(needs)
        return here_probe

    res = resolve(None, dtype="float32", impl="index", threads=2, prober=prober, warn=lines.append)
    # only what this prediction needs: its dtype and threads (and 1 thread for the strided serial products),
    # with this machine's fingerprint, taken once
    assert [{k: v for k, v in n.items() if k != "fingerprint"} for n in asked] == [
        {"threads": [1, 2], "dtypes": ["float32"], "torch": False}]
    assert asked[0]["fingerprint"]["cpu_model"] == res.profile.fingerprint.cpu_model
    assert res.profile.transfer is not None and res.provenance["transferred"] and res.provenance["reference"]
    assert not res.provenance["machine_match"] and res.provenance["differences"]
    assert len(lines) == 1 and "transferred to this machine by a probe" in lines[0] and "L2 1 MiB" in lines[0]


def test_a_prediction_of_one_implementation_transfers_only_its_entries(places):
    _, here_probe = probes()
    asked = []

    def prober(**needs):
        asked.append(needs)
        return here_probe

    res = resolve(None, dtype="float32", impl="index", threads=2, prober=prober, warn=None, only_impl=True)
    assert {e.impl for e in res.profile.entries} == {"index"}
    # no strided entry, so no 1-thread product of its serial regime to probe
    assert asked[0]["threads"] == [2] and asked[0]["fingerprint"]["cpu_model"]
    both = resolve(None, dtype="float32", impl="index", threads=2, prober=prober, warn=None)
    assert {e.impl for e in both.profile.entries} == {"index", "strided"}


def test_a_given_profile_of_another_machine_is_not_transferred_but_warned_about(places):
    other = places / "other.json"
    save_profile(_profile({**HERE, "cpu_flags": ["avx512f", "avx2", "fma"]}), other)
    lines = []
    res = resolve(other, dtype="float32", threads=2, prober=lambda **n: pytest.fail("probed"), warn=lines.append)
    assert res.profile.transfer is None and not res.provenance["reference"] and res.provenance["path"] == str(other)
    assert lines == [res.note] and "predictions may not hold here" in lines[0] and "AVX-512" in lines[0]


def test_a_profile_of_this_machine_says_nothing(places):
    import costmodel.machine.fingerprint as fpmod

    here = fpmod.take_fingerprint(2)  # the fixed fingerprint of `places`
    mine = places / "mine.json"
    save_profile(_profile(here), mine)
    lines = []
    res = resolve(mine, dtype="float32", threads=2, warn=lines.append)
    assert res.provenance["machine_match"] and res.provenance["differences"] == [] and lines == []


def test_predict_json_and_the_api_carry_the_provenance(places, tmp_path):
    from costmodel.machine.profile import load_profile

    from tests.test_golden import PROFILE

    other = tmp_path / "other.json"
    golden = load_profile(PROFILE)
    save_profile(golden.model_copy(update={"fingerprint": Fingerprint.model_validate({**HERE, "cpu_model": "Elsewhere"})}),
                 other)
    out = CliRunner().invoke(app, ["predict", str(EXAMPLES[0]), "--profile", str(other), "--threads", "2",
                                   "--format", "json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.stdout)["profile"]
    assert {k: info[k] for k in ("path", "reference", "transferred")} == {"path": str(other), "reference": False,
                                                                          "transferred": False}
    assert info["machine_match"] is False and info["cpu_model"] == "Elsewhere"
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("costmodel: warning: profile made with")
    import costmodel.api

    with pytest.warns(costmodel.api.CostModelWarning, match="profile made with"):
        frame = costmodel.predict_frame(EXAMPLES[0], str(other), threads=2)
    assert frame.attrs["profile"]["path"] == str(other)


def test_the_default_threads_are_the_cores_this_process_may_use(places, monkeypatch):
    import costmodel.machine.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "available_cores", lambda: 1)
    res = resolve(None, dtype="float32", impl="index", prober=None, warn=None)
    assert res.threads == 2  # the profile has no 1-thread entry: its largest
    assert Fingerprint.model_validate(take_fingerprint(1)).threads == 1
    assert Probe  # the probe's schema is the profile's (costmodel.machine.profile.Probe)


def test_default_threads_stay_within_the_cores_or_say_so(monkeypatch):
    """One core and a profile of 1 and 2 threads: 1; a profile of 2 only: 2, and the note says
    the prediction is for more threads than cores."""
    from costmodel.machine import fingerprint, resolve as resolve_mod

    monkeypatch.setattr(fingerprint, "available_cores", lambda: 1)
    from costmodel.machine.profile import embedded_profile_path, load_profile

    two = load_profile(embedded_profile_path())
    assert {e.threads for e in two.entries} == {2}
    assert resolve_mod.default_threads(two, "float32", "index") == 2
    res = resolve_mod.resolve(two, dtype="float32", impl="index", warn=None)
    assert res.threads == 2 and "predicted for 2 threads, the profile's fewest; this process may use 1 core" in res.note
    one = two.model_copy(update={"entries": [*two.entries, two.entries[0].model_copy(update={"threads": 1})]})
    assert resolve_mod.default_threads(one, "float32", "index") == 1


def test_a_reference_without_entries_at_these_cores_is_rescaled_to_them(places, monkeypatch):
    """One core, a reference calibrated at 2 threads: its NumPy entries are rescaled to 1 thread
    by its own probe (rule blas-threads-1), then transferred; the line says both."""
    import costmodel.machine.fingerprint as fpmod

    _, here_probe = probes()
    asked, lines = [], []
    monkeypatch.setattr(fpmod, "available_cores", lambda: 1)

    def prober(**needs):
        asked.append(needs)
        return here_probe

    res = resolve(None, dtype="float32", impl="index", prober=prober, warn=lines.append, only_impl=True)
    assert res.threads == 1 and {e.threads for e in res.profile.entries} == {1}
    assert res.profile.transfer is not None and asked[0]["threads"] == [1]
    assert any(k.startswith("threads:2->1:") for e in res.profile.entries for k in e.transfer_factors)
    assert len(lines) == 1 and "rescaled to 1 thread" in lines[0] and "transferred to this machine" in lines[0]
    # without a prober (the API's silent path) nothing is rescaled: the 2-thread entries, said so
    plain = resolve(None, dtype="float32", impl="index", warn=None)
    assert plain.threads == 2


def test_a_disturbed_probe_leaves_the_reference_untransferred_in_one_line(places):
    _, here_probe = probes()
    data = here_probe.model_dump()
    for p in data["products"]:
        p["flops_per_second"] /= 5000  # a probe beside heavy load
    lines = []
    res = resolve(None, dtype="float32", impl="index", threads=2, prober=lambda **n: Probe.model_validate(data),
                  warn=lines.append)
    assert res.profile.transfer is None and not res.provenance["transferred"]
    assert len(lines) == 1 and "could not be transferred" in lines[0] and "disturbed" in lines[0]


def test_a_missing_entry_is_refused_before_any_probe(places):
    with pytest.raises(UsageError, match="no entry for float64"):
        resolve(None, dtype="float64", impl="index", threads=2, prober=lambda **n: pytest.fail("probed"), warn=None)
