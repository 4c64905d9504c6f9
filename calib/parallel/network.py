"""The network between data-parallel workers: a gloo allreduce microbenchmark and the fit of the
ring model t(n) = 2 (P-1) alpha + 2 (P-1)/P n beta (costmodel.machine.parallel), or the alpha and
beta of a link the user does not have.

Benchmark: message sizes 4 B to 64 MiB (powers of 4), float32 SUM allreduces of one
preallocated buffer; per size two untimed calls, then `repeats` rounds, each after a barrier, of
k back-to-back calls (k = 64 for the smallest messages, fewer as they grow, 1 from 1 MiB up) timed
together, divided by k. A round's time is the slowest worker's (the collective ends when the last
worker has its result), and a size's time is the median over the rounds.

Fit: scipy.optimize.least_squares of the log-ratios log(predicted / measured), with a robust
(soft-L1) loss, alpha and beta > 0 (fitted as logarithms). Reported per size: measured,
predicted, predicted/measured - 1. The log-ratio is symmetric: the least squares of the relative
error it replaced penalise an underprediction at most 1 and an overprediction without bound, so
on loopback, where the small messages scatter between 0.8 and 1.7 ms (2026-12-01, 2-core VM),
that fit bought them with the large ones: 16 MiB and 64 MiB predicted 85 % too fast, and
data-parallel steps of an MLP with a 12.6 MB gradient 30-37 % too fast. The soft-L1 loss keeps
one odd size (1 MiB measured faster than 256 KiB there) from moving the fit.

gloo's ring (gloo/allreduce.cc) splits the buffer into at least 2P segments and sends them in
turn, 2P - 2 per phase for a small message (the textbook ring's P - 1 sends of n/P bytes, split
in two for pipelining); a message of fewer than 2P elements leaves segments empty and takes fewer
sends. Such sizes (4 B for P = 2) are measured and shown but left out of the fit: a step's
messages are larger (every gradient has at least one value per output), and alpha is then the
latency per step of the ring model as gloo runs it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from time import perf_counter_ns

import numpy as np

from costmodel.errors import UsageError
# the links and their parsing are pure (costmodel.machine.parallel), shared with `predict --link`
from costmodel.machine.parallel import ring_allreduce_seconds, ring_features
from costmodel.machine.links import (LINKS, TCP_EFFICIENCY, given_link, link_alpha_beta,  # noqa: F401
                                     parse_bandwidth, parse_latency)

SIZES = tuple(4 ** k for k in range(1, 14))  # 4 B .. 64 MiB
REPEATS = 7
QUICK_REPEATS = 3


def given_network(*, link: str | None, latency: str | None, bandwidth: str | None, workers: int | None):
    """A costmodel.machine.profile.Network for a link the user gives: --link NAME, or --latency
    and --bandwidth together (costmodel.machine.parallel.given_link)."""
    from costmodel.machine.profile import Network

    given = given_link(link=link, latency=latency, bandwidth=bandwidth)
    if given is None:
        raise UsageError("give --link, or --latency and --bandwidth")
    return Network(alpha_seconds=given.alpha_seconds, beta_seconds_per_byte=given.beta_seconds_per_byte,
                   workers=workers, link="given", name=given.name, created=datetime.now(timezone.utc))


def inner_calls(nbytes: int) -> int:
    """Back-to-back calls timed together for one round: 64 for the smallest messages, 1 from
    1 MiB up."""
    return max(1, min(64, (1 << 20) // max(nbytes, 1)))


def allreduce_benchmark(ctx, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS) -> dict[int, list[float]]:
    """Task of a worker (calib.parallel.launch.run): per message size (bytes, a multiple of 4), this
    worker's seconds of one allreduce in each round (module docstring)."""
    import torch
    import torch.distributed as dist

    buffer = torch.zeros(max(sizes) // 4, dtype=torch.float32)
    out: dict[int, list[float]] = {}
    for n in sizes:
        t = buffer[: n // 4]
        k = inner_calls(n)
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = perf_counter_ns()
            for _ in range(k):
                dist.all_reduce(t)
            times.append((perf_counter_ns() - t0) * 1e-9 / k)
        out[n] = times
    return out


def combine(per_worker: list[dict[int, list[float]]]) -> dict[int, float]:
    """Per size, the median over the rounds of the slowest worker's time."""
    return {n: float(np.median(np.max([w[n] for w in per_worker], axis=0))) for n in per_worker[0]}


def fitted(nbytes: int, P: int, element_bytes: int = 4) -> bool:
    """Whether a message size enters the fit: at least 2P elements (module docstring)."""
    return nbytes >= 2 * P * element_bytes


#: the soft-L1 loss's scale, in log-ratio: residuals beyond ~35 % weigh linearly, not squared
LOG_RATIO_SCALE = 0.3


def fit_ring(seconds: dict[int, float], P: int) -> tuple[float, float]:
    """(alpha, beta) > 0, in seconds and seconds per byte, minimising the robust (soft-L1) sum of
    squared log-ratios of the ring model's time to the measured one over the points {message
    bytes: seconds} (module docstring). Errors: ValueError for P < 2, fewer than two points or
    a time that is not positive."""
    from scipy.optimize import least_squares

    if P < 2:
        raise ValueError("the ring model of one worker has nothing to fit (P >= 2)")
    if len(seconds) < 2:
        raise ValueError("at least two message sizes are needed")
    sizes = sorted(seconds)
    t = np.array([seconds[n] for n in sizes], dtype=float)
    if not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError("every measured time must be positive and finite")
    F = np.array([ring_features(n, P) for n in sizes], dtype=float)
    log_t = np.log(t)
    # start: all latency for the smallest message, all bandwidth for the largest
    start = np.log([t[0] / F[0, 0], max(t[-1] - t[0], t[-1] / 2) / F[-1, 1]])

    def residuals(log_x):
        return np.log(F @ np.exp(log_x)) - log_t

    fit = least_squares(residuals, start, loss="soft_l1", f_scale=LOG_RATIO_SCALE, x_scale=1.0, method="trf")
    alpha, beta = np.exp(fit.x)
    return float(alpha), float(beta)


def measured_network(seconds: dict[int, float], P: int, link: str, repeats: int):
    """The fit as a costmodel.machine.profile.Network with its points and errors."""
    from costmodel.machine.profile import Network, NetworkPoint

    alpha, beta = fit_ring({n: t for n, t in seconds.items() if fitted(n, P)}, P)
    points = []
    for n in sorted(seconds):
        predicted = ring_allreduce_seconds(n, P, alpha, beta)
        points.append(NetworkPoint(message_bytes=n, seconds=seconds[n], predicted_seconds=predicted,
                                   error=predicted / seconds[n] - 1, fitted=fitted(n, P)))
    errors = [abs(p.error) for p in points if p.fitted]
    return Network(alpha_seconds=alpha, beta_seconds_per_byte=beta, workers=P, link=link, points=points,
                   fit_error=float(np.median(errors)), max_error=float(max(errors)), repeats=repeats,
                   created=datetime.now(timezone.utc))


def facts(network) -> str:
    """alpha and beta read as machine facts: 'latency 45.0 us, 1.1 GB/s'."""
    from costmodel.present.report import fmt_seconds, human

    bandwidth = "no cost per byte" if network.beta_seconds_per_byte == 0 else human(1 / network.beta_seconds_per_byte, "B/s")
    return f"latency {fmt_seconds(network.alpha_seconds)}, {bandwidth}"
