from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALL_EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
#: every shipped example: the tests parametrised over examples (costs, predict, the op
#: contract, the torch rows) run on all of them, at small batches
EXAMPLES = ALL_EXAMPLES
#: the examples added with the extended vocabulary (ARCH_FORMAT.md, issue 14; vgg11-cifar10
#: uses only the course's layers but came with them)
VOCAB_STEMS = {"cifar10-quick", "digits-resnet", "lenet5", "mobilenet-cifar10", "resnet20-cifar10",
               "simplenn-mnist-python", "vgg11-bn-cifar10", "vgg11-cifar10"}
VOCAB_EXAMPLES = [p for p in ALL_EXAMPLES if p.stem in VOCAB_STEMS]
#: the examples that came before it: the golden outputs (tests/test_golden.py) are theirs, and
#: the reference profile shipped before the extended vocabulary's ops were calibrated covers them
COURSE_EXAMPLES = [p for p in ALL_EXAMPLES if p.stem not in VOCAB_STEMS]
#: the examples whose SG steps the tests run (real kernels, at small batches): all but the two
#: VGG11s, whose 2.3 GFLOP per step at a mini-batch of 2 would take minutes of the suite; their
#: ops are the others' (the costs, op lists and rows of every example are tested)
STEP_EXAMPLES = [p for p in ALL_EXAMPLES if not p.stem.startswith("vgg11")]


@pytest.fixture(autouse=True)
def quiet_probe_monitor(monkeypatch):
    """The probe that transfers the reference profile (calib.probe) sees a quiet machine: the
    commands' stderr is checked line by line, and whatever else runs on the test machine must
    not add the disturbed-probe line. tests/test_probe.py passes its monitors explicitly."""
    import calib.probe
    from calib.noise import CpuTicks, LoadMonitor

    def quiet():
        return LoadMonitor(read=lambda: CpuTicks(busy=0, steal=0, own=0))

    monkeypatch.setattr(calib.probe, "default_monitor", lambda: quiet)


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example_path(request) -> Path:
    return request.param


def tiny_limits():
    """The sweep limits of the tests' calibrations: networks of a few hundred thousand elements."""
    from calib.design import SweepLimits

    return SweepLimits(max_elements=2e5, max_flops=2e7, max_weights=2e5)


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """(path, plan) of a calibration of 20 tiny networks by `calibrate` (a third of them of the
    extended vocabulary): float32, index and strided, one thread. Its models are fitted on a few
    samples: for the commands' behaviour, not for accuracy."""
    from calib.calibrate import Plan, calibrate, to_profile
    from costmodel.machine.profile import save_profile

    plan = Plan(dtypes=("float32",), impls=("index", "strided"), points=20, rounds=2, chunk=5,
                limits=tiny_limits(), ceilings_seconds=0.5, probe_seconds=0.5)
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    save_profile(to_profile(calibrate(plan, threads=1)), path)
    return path, plan


@pytest.fixture(scope="session")
def torch_profile(tiny_profile, tmp_path_factory):
    """A tiny torch calibration (20 networks, float32, one thread) merged into tiny_profile's
    entries: one file for both backends."""
    pytest.importorskip("torch")
    from calib.calibrate import Plan, calibrate, to_profile
    from costmodel.machine.profile import load_profile, save_profile

    plan = Plan(dtypes=("float32",), impls=("torch",), points=20, rounds=1, chunk=5, limits=tiny_limits(),
                ceilings_seconds=0.5, backend="torch", probe_seconds=0.5)
    result = calibrate(plan, threads=1)
    numpy_profile = load_profile(tiny_profile[0])
    result["fingerprint"] = numpy_profile.fingerprint.model_dump()  # the same machine, probed twice
    path = tmp_path_factory.mktemp("profile") / "profile.json"
    save_profile(to_profile(result, merge_into=numpy_profile), path)
    return path


def predicted(arch, profile, by: str = "op", **options) -> dict:
    """The prediction as its JSON object (costmodel.present.data.prediction_report): rows under
    "ops", or with `by` the groups under "groups"."""
    from costmodel.machine.predict import predict
    from costmodel.present.data import prediction_report

    return prediction_report(predict(arch, profile, **options), by)


def all_model_keys() -> list[tuple[str, str]]:
    """Every NumPy model key a profile can need, with its op kind: each op of the records, for
    the loss ops each loss, each kernel variant (average pooling, tanh, grouped products, ...)
    and each regime of the strided implementation; and the outer products' one model per regime."""
    import itertools

    from costmodel.machine.backends.numpy import OUTER_PRODUCT, kernel_variant, model_key
    from costmodel.model.costs import OpSpec
    from costmodel.model.ops import records

    specs = [OpSpec("conv", activation=act, grouped=grouped, pool_type=pool, pool_overlap=overlap)
             for act, grouped, pool, overlap in itertools.product(("relu", "tanh", "sigmoid"), (False, True),
                                                                  ("max", "avg"), (False, True))]
    keys = {(str(model_key(rec.name, loss, regime, kernel_variant(rec.name, spec))), rec.kind)
            for rec in records().values() for loss in ("mse", "softmax_ce")
            for regime in ("", "threaded", "serial") for spec in specs}
    outer = {(OUTER_PRODUCT + (f":{regime}" if regime else ""), "matrix product") for regime in ("", "threaded", "serial")}
    return sorted(keys | outer)
