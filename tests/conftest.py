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


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example_path(request) -> Path:
    return request.param


def predicted(arch, profile, by: str = "op", **options) -> dict:
    """The prediction as its JSON object (costmodel.present.data.prediction_report): rows under
    "ops", or with `by` the groups under "groups"."""
    from costmodel.machine.predict import predict
    from costmodel.present.data import prediction_report

    return prediction_report(predict(arch, profile, **options), by)


def all_model_keys() -> list[tuple[str, str]]:
    """Every NumPy model key a profile can need, with its op kind: each op of the records, for
    the loss ops each loss, each kernel variant (average pooling, tanh, grouped products, ...)
    and each regime of the strided implementation."""
    import itertools

    from costmodel.machine.backends.numpy import kernel_variant, model_key
    from costmodel.model.costs import OpSpec
    from costmodel.model.ops import records

    specs = [OpSpec("conv", activation=act, grouped=grouped, pool_type=pool, pool_overlap=overlap)
             for act, grouped, pool, overlap in itertools.product(("relu", "tanh", "sigmoid"), (False, True),
                                                                  ("max", "avg"), (False, True))]
    return sorted({(str(model_key(rec.name, loss, regime, kernel_variant(rec.name, spec))), rec.kind)
                   for rec in records().values() for loss in ("mse", "softmax_ce")
                   for regime in ("", "threaded", "serial") for spec in specs})
