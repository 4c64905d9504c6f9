from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALL_EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
#: examples that use the extended vocabulary (ARCH_FORMAT.md): their op records, costs and
#: torch mapping are phase 2 of issue 14; until then the tests parametrised over EXAMPLES
#: (costs, predict, the op contract, golden outputs) run on the others, and
#: tests/test_arch_vocab.py and tests/test_cnn_vocab.py cover these
NEW_VOCABULARY = {"cifar10-quick", "digits-resnet", "lenet5", "mobilenet-cifar10", "resnet20-cifar10",
                  "simplenn-mnist-python", "vgg11-bn-cifar10", "vgg11-cifar10"}
EXAMPLES = [p for p in ALL_EXAMPLES if p.stem not in NEW_VOCABULARY]
VOCAB_EXAMPLES = [p for p in ALL_EXAMPLES if p.stem in NEW_VOCABULARY]


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
    the loss ops each loss, and each regime of the strided implementation."""
    from costmodel.machine.backends.numpy import model_key
    from costmodel.model.ops import records

    return sorted({(str(model_key(rec.name, loss, regime)), rec.kind) for rec in records().values()
                   for loss in ("mse", "softmax_ce") for regime in ("", "threaded", "serial")})
