"""costmodel.machine.parallel: the ring allreduce, DDP's buckets and the two compositions of a
data-parallel step, on synthetic numbers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from costmodel.machine.parallel import (DDP_BUCKET_CAP_BYTES, Collective, GradTensor, Row, bucket_collectives,
                                        communication_bound_batch, compose, ddp_buckets, efficiency,
                                        gradient_tensors, grads_ready, layer_collectives, ring_allreduce_seconds,
                                        rows_from, speedup)
from costmodel.model.arch import load_arch
from tests.conftest import ROOT

MiB = 1024 * 1024


def test_ring_allreduce_is_the_alpha_beta_formula():
    alpha, beta = 50e-6, 1e-9
    assert ring_allreduce_seconds(1000, 1, alpha, beta) == 0.0
    assert ring_allreduce_seconds(1000, 2, alpha, beta) == pytest.approx(2 * alpha + 1000 * beta)
    # 2 (P-1) alpha + 2 (P-1)/P n beta
    assert ring_allreduce_seconds(4096, 8, alpha, beta) == pytest.approx(14 * alpha + 2 * 7 / 8 * 4096 * beta)
    # the bandwidth term tends to 2 n beta as P grows
    assert ring_allreduce_seconds(1e9, 10_000, 0.0, 1e-9) == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError):
        ring_allreduce_seconds(10, 0, alpha, beta)
    with pytest.raises(ValueError):
        ring_allreduce_seconds(-1, 2, alpha, beta)


def test_gradient_tensors_of_an_example():
    arch = load_arch(ROOT / "examples" / "digits-small.yaml")  # float32
    tensors = gradient_tensors(arch)
    assert [(t.layer, t.name) for t in tensors] == [(1, "W"), (1, "b"), (2, "W"), (2, "b"), (3, "W"), (3, "b"),
                                                    (4, "W"), (4, "b")]
    # conv1: 16 filters of 3x3x1; conv2: 32 of 3x3x16; full 64 x (32*2*2); full 10 x 64
    assert [t.numel for t in tensors] == [144, 16, 4608, 32, 64 * 128, 64, 640, 10]
    assert all(t.nbytes == 4 * t.numel for t in tensors)


def _tensors(sizes_bytes: list[int]) -> list[GradTensor]:
    """One W per layer, in forward order, of the given bytes (no biases)."""
    return [GradTensor(m, "full", "W", n // 4, n) for m, n in enumerate(sizes_bytes, start=1)]


def test_ddp_buckets_fill_in_reverse_order_with_a_small_first_bucket():
    # layers 1..6 of 10 MiB each, then a 0.5 MiB output layer
    tensors = _tensors([10 * MiB] * 6 + [MiB // 2])
    buckets = ddp_buckets(tensors)
    layers = [[t.layer for t in b] for b in buckets]
    # first bucket (limit 1 MiB): layer 7 (0.5 MiB), then layer 6 takes it past the limit
    assert layers[0] == [7, 6]
    # then 25 MiB buckets: 10 + 10 < 25, the third tensor takes a bucket past 25 MiB
    assert layers[1:] == [[5, 4, 3], [2, 1]]
    assert [t.layer for b in buckets for t in b] == list(range(7, 0, -1))
    rows = bucket_collectives(tensors, 2, 1e-5, 1e-9)
    assert [r.bucket for r in rows] == [0, 1, 2]
    assert rows[1].layers == (5, 4, 3) and rows[1].nbytes == 30 * MiB
    assert rows[1].seconds == pytest.approx(ring_allreduce_seconds(30 * MiB, 2, 1e-5, 1e-9))


def test_ddp_buckets_match_torch():
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    sizes = [3 * MiB, 7 * MiB, 20 * MiB, 2 * MiB, 300_000, 40_000]
    tensors = _tensors(sizes)
    params = [torch.empty(n // 4) for n in sizes]
    # DDP's rebuilt buckets: gradients in ready order (reversed), limits [first bucket, cap]
    order = list(reversed(params))
    got, _ = dist._compute_bucket_assignment_by_size(order, [dist._DEFAULT_FIRST_BUCKET_BYTES, DDP_BUCKET_CAP_BYTES])
    expected = [[len(params) - order_index for order_index in bucket] for bucket in got]
    assert [[t.layer for t in b] for b in ddp_buckets(tensors)] == expected


def test_layer_collectives_two_messages_per_layer_in_backward_order():
    arch = load_arch(ROOT / "examples" / "digits-small.yaml")
    rows = layer_collectives(gradient_tensors(arch), 4, 1e-5, 2e-9)
    assert [r.layer for r in rows] == [4, 3, 2, 1]
    assert rows[0].messages == (640 * 4, 10 * 4)
    expected = ring_allreduce_seconds(2560, 4, 1e-5, 2e-9) + ring_allreduce_seconds(40, 4, 1e-5, 2e-9)
    assert rows[0].seconds == pytest.approx(expected)


def _step() -> list[Row]:
    """Forward 3 s; backward of layer 2 (dW ready at 5 s), then layer 1 (ready at 8 s); update 1 s."""
    return [
        Row(1, "conv_matmul", "forward", 2.0), Row(2, "full_matmul", "forward", 1.0),
        Row(2, "full_grad_W", "backward", 1.0), Row(2, "bias_grad", "backward", 1.0),
        Row(2, "full_grad_input", "backward", 2.0),
        Row(1, "conv_grad_W+bias_grad", "backward", 1.0),
        Row(1, "update", "update", 0.5), Row(2, "update", "update", 0.5),
    ]


def _collective(layer: int, seconds: float) -> Collective:
    return Collective(layer, "full", (layer,), (100,), seconds)


def test_grads_ready_at_the_end_of_the_last_gradient_op():
    assert grads_ready(_step()) == {2: 5.0, 1: 8.0}


def test_sum_composition_adds_communication():
    step = compose(_step(), [_collective(2, 1.5), _collective(1, 0.5)], "sum", workers=2)
    assert step.compute_seconds == 9.0
    assert step.communication_seconds == 2.0
    assert step.step_seconds == 11.0
    assert step.exposed_communication_seconds == 2.0
    assert step.hidden_communication_seconds == 0.0


def test_overlap_hides_what_the_backward_covers():
    # layer 2's allreduce: ready at 5, runs 5..6.5, hidden behind the backward (ends at 8);
    # layer 1's: ready at 8, runs 8..8.5; update 8.5..9.5
    step = compose(_step(), [_collective(2, 1.5), _collective(1, 0.5)], "overlap", workers=2)
    assert [(s.start, s.end) for s in step.schedule] == [(5.0, 6.5), (8.0, 8.5)]
    assert step.step_seconds == pytest.approx(9.5)
    assert step.exposed_communication_seconds == pytest.approx(0.5)
    assert step.hidden_communication_seconds == pytest.approx(1.5)


def test_overlap_waits_for_the_ring():
    # layer 2's allreduce runs 5..9: layer 1's (ready at 8) waits for the ring until 9, ends 10
    step = compose(_step(), [_collective(2, 4.0), _collective(1, 1.0)], "overlap", workers=2)
    assert [(s.ready, s.start, s.end) for s in step.schedule] == [(5.0, 5.0, 9.0), (8.0, 9.0, 10.0)]
    assert step.step_seconds == pytest.approx(11.0)  # + the update
    assert not step.communication_bound
    # a bucket of both layers is ready when the later one is
    bucket = Collective(0, "bucket", (2, 1), (200,), 1.0, bucket=0)
    assert compose(_step(), [bucket], "overlap", 2).schedule[0].start == 8.0


def test_overlap_is_never_slower_than_sum_nor_faster_than_compute():
    collectives = [_collective(2, 0.7), _collective(1, 0.2)]
    s = compose(_step(), collectives, "sum", 2).step_seconds
    o = compose(_step(), collectives, "overlap", 2).step_seconds
    assert 9.0 <= o <= s


def test_compose_refuses_bad_input():
    with pytest.raises(ValueError, match="composition"):
        compose(_step(), [], "max", 2)
    with pytest.raises(ValueError, match="phase"):
        compose([Row(1, "allreduce", "communication", 1.0)], [], "sum", 2)
    with pytest.raises(ValueError, match="after a later phase"):
        compose(list(reversed(_step())), [], "sum", 2)
    with pytest.raises(ValueError, match="layer 3"):
        compose(_step(), [_collective(3, 1.0)], "overlap", 2)


def test_speedup_and_efficiency():
    assert speedup(10.0, 4.0) == 2.5
    assert efficiency(10.0, 4.0, 4) == pytest.approx(0.625)
    with pytest.raises(ValueError):
        speedup(0.0, 1.0)


def test_communication_bound_batch_is_the_crossover():
    # compute on n instances per worker: 1 ms + 0.1 ms per instance; allreduces 5 ms
    compute = lambda n: 1e-3 + 1e-4 * n  # noqa: E731
    # compute(n) >= 5 ms from n = 40 on: I = 40 P
    assert communication_bound_batch(compute, 5e-3, P=4) == 160
    assert communication_bound_batch(compute, 5e-3, P=1) == 40
    assert communication_bound_batch(compute, 5e-4, P=8) == 8  # compute-bound already at one instance
    assert communication_bound_batch(compute, 10.0, P=2, max_batch=1000) is None


def test_rows_from_measure_records_leaves_communication_out():
    records = [{"layer": 1, "op": "conv_matmul", "phase": "forward", "seconds": 1.0},
               {"layer": 1, "op": "allreduce", "phase": "communication", "seconds": 2.0, "wait_seconds": 0.1},
               {"layer": 1, "op": "update", "phase": "update", "seconds": 0.5}]
    assert rows_from(records) == [Row(1, "conv_matmul", "forward", 1.0), Row(1, "update", "update", 0.5)]


def test_the_pure_model_imports_no_torch():
    code = ("import sys, costmodel.machine.parallel; "
            "print(any(m in sys.modules for m in ('torch', 'calib', 'scipy', 'pandas', 'sympy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_profiles_without_a_network_section_still_load_and_one_with_it_round_trips(tmp_path):
    from datetime import datetime, timezone

    from costmodel.machine.profile import (Network, NetworkPoint, embedded_profile_path, load_profile,
                                           save_profile)

    reference = load_profile(embedded_profile_path())
    assert reference.network is None
    network = Network(alpha_seconds=4.5e-5, beta_seconds_per_byte=9e-10, workers=2, link="loopback",
                      points=[NetworkPoint(message_bytes=16, seconds=1e-4, predicted_seconds=9e-5, error=-0.1)],
                      fit_error=0.1, max_error=0.1, repeats=7, created=datetime.now(timezone.utc))
    path = tmp_path / "profile.json"
    save_profile(reference.model_copy(update={"network": network}), path)
    assert load_profile(path).network == network
    # a bad section is refused like any other part of the profile
    text = path.read_text().replace('"link": "loopback"', '"link": "carrier pigeon"')
    path.write_text(text)
    from costmodel.errors import UsageError

    with pytest.raises(UsageError, match="link"):
        load_profile(path)


def test_gradient_tensors_with_batch_norm_and_layers_without_weights():
    from costmodel.model.arch import parse_arch

    arch = parse_arch({"name": "bn", "input": {"height": 8, "width": 8, "channels": 3}, "batch": 4,
                       "dtype": "float64", "layers": [
                           {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "batch_norm": True},
                           {"type": "conv", "filters": 8, "kernel": 3, "padding": 1, "groups": 2},
                           {"type": "global_avg_pool"},
                           {"type": "full", "units": 10}]})
    tensors = gradient_tensors(arch)
    assert [(t.layer, t.name, t.numel) for t in tensors] == [
        (1, "W", 8 * 27), (1, "b", 8), (1, "gamma", 8), (1, "beta", 8),
        (2, "W", 8 * 9 * 4), (2, "b", 8),  # groups 2: each filter sees 4 of the 8 channels
        (4, "W", 80), (4, "b", 10)]
    assert all(t.nbytes == 8 * t.numel for t in tensors)
    rows = layer_collectives(tensors, 2, 1e-5, 1e-9)
    assert [(r.layer, len(r.messages)) for r in rows] == [(4, 2), (2, 2), (1, 4)]
