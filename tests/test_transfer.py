"""The transfer rule (costmodel.machine.transfer) on synthetic probes: each term rescaled by the
ratio of the matching kernel, the byte terms through the levels' effective costs, errors for
what the probes cannot give."""

import copy
import math

import pytest

from costmodel.machine.profile import Probe, Profile, load_profile, save_profile
from costmodel.machine.transfer import RULE, TransferError, probe_needs, transfer

from costmodel.machine.backends.numpy import WINDOW_FEATURES

from tests.test_profile import CEILINGS, FINGERPRINT

FEATURES = ["calls", "flops", "bytes", "bytes_beyond_L2", "bytes_beyond_L3"]
COEF = [10e-6, 1 / 50e9, 1 / 20e9, 1 / 40e9, 1 / 40e9]  # effective 20, 13.3, 10 GB/s
SHAPES = {"square": (640, 640, 640), "conv": (64, 576, 8192), "small": (64, 64, 64)}


def model(features=FEATURES, coef=COEF, ceiling=None):
    return {"model": "bounded-linear", "features": list(features), "coef": list(coef), "cv_error": 0.1,
            "interval": [0.9, 1.1], "n_samples": 10, "ceiling": ceiling}


def make_probe(products: dict, levels: dict, calls: dict) -> dict:
    """products: (backend, dtype, threads, shape) -> FLOP/s; levels: level -> B/s; calls: backend -> s."""
    return {"products": [{"backend": b, "dtype": d, "threads": n, "shape": s, "m": SHAPES[s][0], "k": SHAPES[s][1],
                          "n": SHAPES[s][2], "flops_per_second": v} for (b, d, n, s), v in products.items()],
            "bandwidth": [{"level": lv, "working_set_bytes": ws, "bytes_per_second": v}
                          for (lv, v), ws in zip(levels.items(), (16 << 10, 256 << 10, 2 << 20, 64 << 20))],
            "call_seconds": calls, "seconds": 2.0}


MADE_RATES = {"square": 100e9, "conv": 80e9, "small": 10e9}
MADE_LEVELS = {"L1": 80e9, "L2": 60e9, "L3": 40e9, "memory": 20e9}
#: this machine: conv products 2x slower, square 1.5x, small 3x; L1 2x, L2 1.25x, L3 1x, memory 4x
#: slower; calls 2x (numpy) and 1.5x (torch) slower
HERE_RATES = {"square": 100e9 / 1.5, "conv": 40e9, "small": 10e9 / 3}
HERE_LEVELS = {"L1": 40e9, "L2": 48e9, "L3": 40e9, "memory": 5e9}


def probes(backends=("numpy", "torch"), threads=(1, 2), here_backends=None, made_rates=MADE_RATES,
           here_rates=HERE_RATES, made_levels=MADE_LEVELS, here_levels=HERE_LEVELS):
    def products(rates, bs):
        return {(b, d, n, s): v * (2 if b == "torch" else 1) for b in bs for d in ("float32", "float64")
                for n in threads for s, v in rates.items()}

    here_backends = backends if here_backends is None else here_backends
    made = make_probe(products(made_rates, backends), made_levels, {"numpy": 1e-6, "torch": 4e-6})
    here = make_probe(products(here_rates, here_backends), here_levels,
                      {"numpy": 2e-6, "torch": 6e-6} if "torch" in here_backends else {"numpy": 2e-6})
    return made, Probe.model_validate(here)


def synthetic_profile(probe=None) -> Profile:
    ops = {"conv_matmul": model(ceiling={"threads": 2, "flops_per_second": 100e9,
                                         "bytes_per_second": {"L2": 120e9, "L3": 80e9, "memory": 40e9}}),
           "full_matmul": model(), "bias": model(), "phi": model(), "outer_product": model()}
    strided = {"conv_matmul:serial": model(), "conv_matmul:threaded": model(), "bias": model(),
               "pool_grad:overlap+threaded": model(WINDOW_FEATURES, [10e-6, 1 / 20e9, 1 / 40e9, 1 / 40e9, 8e-9, 1e-10])}
    torch_ops = {"phi+conv_matmul+bias": model(FEATURES + ["bytes_fresh", "flops_lane_waste"],
                                               COEF + [1 / 10e9, 1 / 50e9]),
                 "phi+conv_matmul+bias:depthwise": model(FEATURES + ["bytes_fresh", "flops_lane_waste", "gemm_calls"],
                                                         COEF + [1 / 10e9, 1 / 50e9, 5e-7]),
                 "other:forward": model(), "activation": model()}
    data = {"schema_version": 1, "created": "2025-01-02T03:04:05Z", "fingerprint": copy.deepcopy(FINGERPRINT),
            "ceilings": {**copy.deepcopy(CEILINGS),
                         "peaks": [{"backend": "numpy", "dtype": "float32", "threads": 2, "flops_per_second": 2e11}]},
            "entries": [{"dtype": "float32", "impl": "index", "threads": 2, "ops": ops},
                        {"dtype": "float32", "impl": "strided", "threads": 2, "ops": strided},
                        {"dtype": "float32", "impl": "torch", "threads": 2, "backend": "torch", "ops": torch_ops}],
            "probe": probe}
    return Profile.model_validate(data)


HERE = {**FINGERPRINT, "cpu_model": "Other CPU", "caches": {**FINGERPRINT["caches"], "L2": 512 << 10}}


def coef(profile: Profile, impl: str, key: str) -> dict:
    entry = next(e for e in profile.entries if e.impl == impl)
    return dict(zip(entry.ops[key].features, entry.ops[key].coef))


@pytest.fixture
def moved():
    made, here = probes()
    return transfer(synthetic_profile(made), here, HERE)


def test_products_are_rescaled_by_the_product_rate_of_their_shape(moved):
    c = coef(moved, "index", "conv_matmul")
    assert c["flops"] == pytest.approx(COEF[1] * 2)  # conv shape: 2x slower
    assert c["calls"] == pytest.approx(COEF[0] * 3)  # a product's call: the small product
    assert coef(moved, "index", "full_matmul")["flops"] == pytest.approx(COEF[1] * 1.5)  # square


def test_other_ops_by_call_time_and_l1_throughput(moved):
    c = coef(moved, "index", "bias")
    assert c["calls"] == pytest.approx(COEF[0] * 2)  # np.add of one element: 2x
    assert c["flops"] == pytest.approx(COEF[1] * 2)  # bandwidth in L1: 2x


def test_an_outer_product_is_rescaled_as_numpys_own_loop_not_as_blas(moved):
    """np.matmul runs a product of inner dimension 1 in its own loop: its FLOPs take the L1
    throughput's ratio and its calls a NumPy call's, as any other op's, not the products'."""
    c = coef(moved, "index", "outer_product")  # not the square products' 1.5x, the conv ones' 2x, small 3x
    assert c["flops"] == pytest.approx(COEF[1] * 2) and c["calls"] == pytest.approx(COEF[0] * 2)
    assert coef(moved, "index", "conv_matmul")["calls"] == pytest.approx(COEF[0] * 3)  # a BLAS product's: small


def test_window_kernels_inner_loops_by_call_time_and_elements_by_l1_throughput(moved):
    c = coef(moved, "strided", "pool_grad:overlap+threaded")
    assert c["inner_loops"] == pytest.approx(8e-9 * 2)  # a ufunc's start of an inner loop: as a call, 2x
    assert c["elements"] == pytest.approx(1e-10 * 2)  # elementwise throughput: L1, 2x
    assert c["calls"] == pytest.approx(10e-6 * 2)


def test_byte_terms_through_the_effective_cost_of_each_level(moved):
    c = coef(moved, "index", "phi")
    e_l2, e_l3, e_mem = COEF[2], COEF[2] + COEF[3], sum(COEF[2:5])
    assert c["bytes"] == pytest.approx(e_l2 * 1.25)
    assert c["bytes"] + c["bytes_beyond_L2"] == pytest.approx(e_l3 * 1.0)
    assert c["bytes"] + c["bytes_beyond_L2"] + c["bytes_beyond_L3"] == pytest.approx(e_mem * 4)


def test_a_level_that_got_relatively_faster_leaves_no_negative_term():
    # here L2 is 3x slower, L3 as fast as there: e_L3 would fall below e_L2
    made, here = probes(here_levels={**HERE_LEVELS, "L2": 20e9})
    c = coef(transfer(synthetic_profile(made), here, HERE), "index", "phi")
    assert c["bytes"] == pytest.approx(COEF[2] * 3)
    assert c["bytes_beyond_L2"] == 0.0 and min(c.values()) >= 0


def test_serial_products_use_one_thread_and_threaded_ones_the_entry_threads():
    made, here = probes()
    here_data = here.model_dump()
    for p in here_data["products"]:  # one thread is 4x slower here, two threads as above
        if p["threads"] == 1:
            p["flops_per_second"] = MADE_RATES[p["shape"]] / 4 * (2 if p["backend"] == "torch" else 1)
    moved = transfer(synthetic_profile(made), Probe.model_validate(here_data), HERE)
    assert coef(moved, "strided", "conv_matmul:serial")["flops"] == pytest.approx(COEF[1] * 4)
    assert coef(moved, "strided", "conv_matmul:threaded")["flops"] == pytest.approx(COEF[1] * 2)


def test_torch_models_use_torchs_ratios_and_other_its_call_time(moved):
    c = coef(moved, "torch", "phi+conv_matmul+bias")
    assert c["flops"] == pytest.approx(COEF[1] * 2) and c["flops_lane_waste"] == pytest.approx(1 / 50e9 * 2)
    assert c["bytes_fresh"] == pytest.approx(1 / 10e9 * 4)  # memory
    other = coef(moved, "torch", "other:forward")
    assert all(other[f] == pytest.approx(v * 1.5) for f, v in zip(FEATURES, COEF))  # torch.add's call: 1.5x
    assert coef(moved, "torch", "activation")["calls"] == pytest.approx(COEF[0] * 1.5)
    entry = next(e for e in moved.entries if e.backend == "torch")
    assert entry.transfer_factors["product:conv:torch:float32:2"] == pytest.approx(2)
    dw = coef(moved, "torch", "phi+conv_matmul+bias:depthwise")
    assert dw["gemm_calls"] == pytest.approx(5e-7 * 3)  # one small product per image and group: 3x
    assert dw["flops"] == pytest.approx(COEF[1] * 2)


def test_torch_models_fall_back_to_numpys_ratios_without_torch_here():
    made, here = probes(here_backends=("numpy",))
    moved = transfer(synthetic_profile(made), here, HERE)
    entry = next(e for e in moved.entries if e.backend == "torch")
    assert "product:conv:numpy:float32:2" in entry.transfer_factors and "calls:numpy" in entry.transfer_factors


def test_the_same_probe_changes_no_coefficient():
    made, _ = probes()
    profile = synthetic_profile(made)
    moved = transfer(profile, Probe.model_validate(made), FINGERPRINT)
    for before, after in zip(profile.entries, moved.entries):
        for key, m in before.ops.items():
            assert after.ops[key].coef == pytest.approx(m.coef, rel=1e-12)
        assert list(after.transfer_factors.values()) == pytest.approx([1.0] * len(after.transfer_factors))


def test_a_uniform_slowdown_scales_every_coefficient():
    k = 1.7
    made, _ = probes()
    here = probes(here_rates={s: v / k for s, v in MADE_RATES.items()},
                  here_levels={lv: v / k for lv, v in MADE_LEVELS.items()})[1].model_dump()
    here["call_seconds"] = {b: s * k for b, s in made["call_seconds"].items()}
    for p in here["products"]:
        p["flops_per_second"] = next(q["flops_per_second"] for q in made["products"]
                                     if (q["backend"], q["dtype"], q["threads"], q["shape"])
                                     == (p["backend"], p["dtype"], p["threads"], p["shape"])) / k
    profile = synthetic_profile(made)
    moved = transfer(profile, Probe.model_validate(here), HERE)
    for before, after in zip(profile.entries, moved.entries):
        for key, m in before.ops.items():
            assert after.ops[key].coef == pytest.approx([c * k for c in m.coef], rel=1e-9)


def test_the_transferred_profile_says_so_and_round_trips(moved, tmp_path):
    assert moved.transfer.rule == RULE and moved.transfer.source_fingerprint.cpu_model == "Test CPU 9000"
    assert moved.fingerprint.cpu_model == "Other CPU" and moved.fingerprint.caches["L2"] == 512 << 10
    assert moved.probe.call_seconds["numpy"] == 2e-6
    assert all(e.transfer_factors for e in moved.entries)
    # ceilings: the peak follows the square product, the bandwidth is this machine's probe
    assert moved.ceilings.matmul_flops_per_second["float32"] == pytest.approx(2e11 / 1.5)
    assert moved.ceilings.peaks[0].flops_per_second == pytest.approx(2e11 / 1.5)
    assert [p.bytes_per_second for p in moved.ceilings.bandwidth] == list(HERE_LEVELS.values())
    ceiling = next(e for e in moved.entries if e.impl == "index").ops["conv_matmul"].ceiling
    assert ceiling.flops_per_second == pytest.approx(50e9)
    assert ceiling.bytes_per_second["memory"] == pytest.approx(10e9)
    path = tmp_path / "moved.json"
    save_profile(moved, path)
    assert load_profile(path) == moved
    with pytest.raises(TransferError, match="itself a transfer"):
        transfer(moved, moved.probe, HERE)


def test_what_cannot_be_transferred_is_an_error():
    _, here = probes()
    with pytest.raises(TransferError, match="no probe of the machine it was made on"):
        transfer(synthetic_profile(None), here, HERE)
    made, _ = probes()
    _, one_thread = probes(threads=(1,))
    with pytest.raises(TransferError, match=r"no probe of numpy small products in float32 with 2 thread\(s\) on both machines"):
        transfer(synthetic_profile(made), one_thread, HERE)
    other = make_probe({}, MADE_LEVELS, {"numpy": 1e-6})
    other["products"] = [{**p, "m": 32} for p in made["products"]]
    with pytest.raises(TransferError, match="different"):
        transfer(synthetic_profile(made), Probe.model_validate(other), HERE)


def test_probe_needs():
    made, _ = probes()
    assert probe_needs(synthetic_profile(made)) == {"threads": [1, 2], "dtypes": ["float32"], "torch": True}


def test_a_transferred_prediction_scales_with_the_ratios():
    """Predict one network with the profile and its transfer to a machine uniformly 2x slower
    (same caches): every op's time doubles."""
    from costmodel.machine.predict import predict
    from costmodel.model.arch import load_arch
    from tests.conftest import ROOT

    k = 2.0
    made, _ = probes()
    here = copy.deepcopy(made)
    for p in here["products"]:
        p["flops_per_second"] /= k
    for p in here["bandwidth"]:
        p["bytes_per_second"] /= k
    here["call_seconds"] = {b: s * k for b, s in here["call_seconds"].items()}
    data = synthetic_profile(made).model_dump(mode="json")
    keys = {"activation", "activation_grad", "bias", "bias_grad", "conv_grad_W", "conv_grad_input", "conv_matmul",
            "flatten", "flatten_grad", "full_grad_W", "full_grad_input", "full_matmul", "loss:mse", "loss_grad:mse",
            "pad", "pad_grad", "phi", "phi_grad", "pool", "pool_grad", "update"}
    data["entries"] = [{"dtype": "float32", "impl": "index", "threads": 2, "ops": {k_: model() for k_ in keys}}]
    profile = Profile.model_validate(data)
    arch = load_arch(ROOT / "examples" / "mnist-demo-layer4.yaml")
    before = predict(arch, profile, impl="index", threads=2)
    after = predict(arch, transfer(profile, Probe.model_validate(here), FINGERPRINT), impl="index", threads=2)
    assert after.total_seconds == pytest.approx(k * before.total_seconds, rel=1e-9)
    assert all(math.isclose(a.seconds, k * b.seconds, rel_tol=1e-9) for a, b in zip(after.rows, before.rows))


def test_fewer_threads_rescales_only_the_products_by_the_profiles_own_probe():
    """A 2-thread entry used on one core: its BLAS products run at the made machine's 1-thread
    rate (here half of the 2-thread one for square and conv, a third for small), everything
    else (NumPy's single-threaded kernels) as calibrated; the ceilings follow the square class."""
    from costmodel.machine.transfer import THREADS_RULE, fewer_threads

    rates = {1: {"square": 50e9, "conv": 40e9, "small": 10e9 / 3}, 2: MADE_RATES}
    made = make_probe({("numpy", "float32", n, s): v for n, r in rates.items() for s, v in r.items()},
                      MADE_LEVELS, {"numpy": 1e-6})
    profile = synthetic_profile(made)
    one = fewer_threads(profile, 1)
    assert THREADS_RULE == "blas-threads-1"
    new = {e.impl: e for e in one.entries if e.threads == 1}
    assert set(new) == {"index", "strided"}  # NumPy's entries; torch threads everything: not rescaled
    before = next(e for e in profile.entries if e.impl == "index")
    after = new["index"]
    for key in ("conv_matmul", "full_matmul"):
        b, a = dict(zip(before.ops[key].features, before.ops[key].coef)), dict(zip(after.ops[key].features,
                                                                               after.ops[key].coef))
        assert a["flops"] == pytest.approx(2 * b["flops"]) and a["calls"] == pytest.approx(3 * b["calls"])
        assert {f: a[f] for f in a if f not in ("flops", "calls")} == {f: b[f] for f in b if f not in ("flops", "calls")}
    for key in ("bias", "phi", "outer_product"):  # NumPy's own loops: one thread
        assert after.ops[key].coef == before.ops[key].coef
    assert after.ops["conv_matmul"].ceiling.flops_per_second == pytest.approx(50e9)
    assert after.ops["conv_matmul"].ceiling.threads == 1
    strided = new["strided"]
    old_strided = next(e for e in profile.entries if e.impl == "strided")
    assert strided.ops["conv_matmul:serial"].coef == old_strided.ops["conv_matmul:serial"].coef  # already 1 thread
    assert strided.ops["conv_matmul:threaded"].coef != old_strided.ops["conv_matmul:threaded"].coef
    assert any(k.startswith("threads:2->1:") for k in after.transfer_factors)
    assert one.ceilings.threads == 1
    # then transferred to another machine at 1 thread, as `predict` does on a 1-core machine
    _, here = probes()
    moved = transfer(one.model_copy(update={"entries": [e for e in one.entries if e.threads == 1]}), here, HERE)
    assert {e.threads for e in moved.entries} == {1}


def test_fewer_threads_needs_the_probe_at_both_thread_counts():
    from costmodel.machine.transfer import fewer_threads

    only_two = make_probe({("numpy", "float32", 2, s): v for s, v in MADE_RATES.items()}, MADE_LEVELS, {"numpy": 1e-6})
    with pytest.raises(TransferError, match="at 2 and 1 thread"):
        fewer_threads(synthetic_profile(only_two), 1)
    with pytest.raises(TransferError, match="no probe"):
        fewer_threads(synthetic_profile(None), 1)


def test_a_disturbed_probe_is_an_error_not_a_profile_out_of_bounds():
    """Under load a 64^3 torch.mm measured 3,000-10,000x slower than quiet: its factor took a
    per-call coefficient past the profile's bounds (a traceback). A factor beyond MAX_FACTOR
    names the kernel instead."""
    from costmodel.machine.transfer import MAX_FACTOR

    made, here = probes()
    data = here.model_dump()
    for p in data["products"]:
        if p["shape"] == "small":
            p["flops_per_second"] /= 5000
    with pytest.raises(TransferError, match=r"probe of product:small.*disturbed"):
        transfer(synthetic_profile(made), Probe.model_validate(data), HERE)
    assert 3.5 * 10 < MAX_FACTOR  # the real CPUs seen differ by at most 3.5x per kernel: far inside


def test_the_intervals_by_size_do_not_travel():
    """Their split is a step time of the profile's machine: a transferred entry keeps its one
    step interval of all networks."""
    made, here = probes()
    profile = synthetic_profile(made)
    classes = [{"below_seconds": 4e-3, "interval": [0.6, 1.3], "networks": 48},
               {"below_seconds": None, "interval": [0.9, 1.1], "networks": 48}]
    entries = [e.model_copy(update={"step_interval": (0.7, 1.2), "step_networks": 96,
                                    "step_intervals_by_size": classes}) for e in profile.entries]
    moved = transfer(profile.model_copy(update={"entries": entries}), here, HERE)
    assert all(e.step_intervals_by_size == [] and e.step_interval == (0.7, 1.2) for e in moved.entries)
