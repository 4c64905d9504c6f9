from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


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
