"""`profile show` reads each fitted rate beside the ceiling it was fitted under, and the byte terms
as the effective rate of each level."""

from costmodel.machine.profile import OpModel, Profile, model_facts
from costmodel.present.profile_text import render_profile

from tests.test_profile import profile_data

FEATURES = ["calls", "flops", "bytes", "bytes_beyond_L2", "bytes_beyond_L3"]


def op_model(ceiling=None, coef=(12e-6, 1 / 74e9, 1 / 20e9, 1 / 20e9, 0.0)):
    return {"model": "bounded-linear", "features": FEATURES, "coef": list(coef), "cv_error": 0.1,
            "interval": [0.9, 1.1], "n_samples": 10, "ceiling": ceiling}


CEILING = {"threads": 2, "flops_per_second": 210e9, "bytes_per_second": {"L2": 80e9, "L3": 40e9, "memory": 20e9}}


def test_each_fact_beside_its_ceiling():
    facts = model_facts(OpModel.model_validate(op_model(CEILING)))
    assert facts == ["12.0 us per call", "74 GFLOP/s (35 % of the 210 GFLOP/s peak)",
                     "20 GB/s (25 % of the 80 GB/s of 2 threads)",
                     "10 GB/s beyond L2 (25 % of the 40 GB/s of 2 threads)",
                     "10 GB/s beyond L3 (50 % of the 20 GB/s of 2 threads)"]


def test_without_a_ceiling_the_effective_rates_alone():
    facts = model_facts(OpModel.model_validate(op_model()))
    assert facts == ["12.0 us per call", "74 GFLOP/s", "20 GB/s", "10 GB/s beyond L2", "10 GB/s beyond L3"]
    free = model_facts(OpModel.model_validate(op_model(coef=(0.0, 0.0, 0.0, 0.0, 0.0))))
    assert free[2:] == ["no cost per byte", "no cost per byte beyond L2", "no cost per byte beyond L3"]


def test_profile_show_prints_the_peaks_the_bounds_and_the_load():
    data = profile_data()
    data["ceilings"]["peaks"] = [{"dtype": "float32", "threads": 2, "flops_per_second": 210e9},
                                 {"dtype": "float32", "threads": 1, "flops_per_second": 110e9}]
    data["entries"][0]["ops"] = {"conv_matmul": op_model(CEILING)}
    data["entries"][0]["load"] = {"wall_seconds": 9.0, "cores_available": 2, "other_cpu": 0.02, "steal": 0.0,
                                  "spread": 0.04, "disturbed": False, "reasons": []}
    text = render_profile(Profile.model_validate(data))
    assert "Peak matrix product (the fit's FLOP ceilings)" in text and "110 GFLOP/s" in text
    assert "74 GFLOP/s (35 % of the 210 GFLOP/s peak)" in text
    assert "load while calibrating: other processes 2 % of 2 cores, steal 0 %, spread of repeated samples 4 %: quiet" \
        in text


def test_a_rate_at_its_ceiling_says_it_is_the_fits_bound():
    model = op_model(CEILING, coef=(12e-6, 1 / 210e9, 1 / 80e9, 0.0, 0.0))
    facts = model_facts(OpModel.model_validate(model))
    assert facts[1] == "210 GFLOP/s (at the 210 GFLOP/s peak: the fit's bound)"
    assert facts[2] == "80 GB/s (at the 80 GB/s of 2 threads: the fit's bound)"


def test_profile_show_prints_every_fit_ceiling_a_rate_quotes(tiny_profile):
    """The op models quote "% of the X peak" and "of the Y of 1 thread": each X and Y is on a
    'fit ceilings' line of the same entry (a new user found them in no table)."""
    import re

    from costmodel.machine.profile import load_profile

    text = render_profile(load_profile(tiny_profile[0]))
    lines = [line for line in text.splitlines() if line.startswith("fit ceilings, 1 thread")]
    assert lines, text[-2000:]
    quoted = set(re.findall(r"of the ([0-9.]+ [GMT]?(?:FLOP|B)/s)", text))
    assert quoted and all(any(q in line for line in lines) for q in quoted), (quoted, lines)


def test_a_roofline_models_flop_term_reads_as_the_peak():
    data = op_model(CEILING, coef=(12e-6, 1 / 210e9, 1 / 20e9, 1 / 20e9, 0.0)) | {"model": "roofline-linear"}
    facts = model_facts(OpModel.model_validate(data))
    assert facts[1] == "210 GFLOP/s (the peak: a product's FLOPs are priced at it)"
    bounded = model_facts(OpModel.model_validate(data | {"model": "bounded-linear"}))
    assert bounded[1] == "210 GFLOP/s (at the 210 GFLOP/s peak: the fit's bound)"


def test_profile_show_prints_the_step_interval_predict_quotes():
    """Each entry's 90 % step interval: per size class when the profile has them, else one."""
    data = profile_data()
    data["entries"][0].update(step_interval=[0.7, 1.2], step_networks=96)
    plain = render_profile(Profile.model_validate(data))
    assert "step interval (90 %, measured/predicted): x0.7 to x1.2 (96 calibration networks)" in plain
    data["entries"][0]["step_intervals_by_size"] = [
        {"below_seconds": 4e-3, "interval": [0.6, 1.3], "networks": 48},
        {"below_seconds": None, "interval": [0.9, 1.1], "networks": 48}]
    by_size = render_profile(Profile.model_validate(data))
    assert ("step interval (90 %, measured/predicted): x0.6 to x1.3 for steps predicted below 4.000 ms "
            "(48 calibration networks), x0.9 to x1.1 from it (48)") in by_size
    data["entries"][0].update(step_interval=None, step_networks=None, step_intervals_by_size=[])
    assert "step interval" not in render_profile(Profile.model_validate(data))


def test_the_window_kernels_terms_read_as_facts():
    from costmodel.machine.backends.numpy import WINDOW_FEATURES

    facts = model_facts(OpModel.model_validate({**op_model(), "features": list(WINDOW_FEATURES),
                                                "coef": [12e-6, 1 / 20e9, 0.0, 0.0, 8e-9, 2e-10]}))
    assert facts[-2:] == ["8 ns per inner loop", "5 G elements/s"]
