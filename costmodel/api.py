"""The Python API: predictions, costs and sweeps as pandas DataFrames, explanations as dicts.

    import costmodel
    frame = costmodel.predict_frame("examples/mnist-demo-layer4.yaml", "profile.json", batch=64)

Every function takes the architecture as an `Architecture`, a path to its YAML file, or the
file's content as a dict; and the profile as a `Profile`, a path, or None: $COSTMODEL_PROFILE,
else yours, else the reference profile shipped with costmodel, transferred to this machine by
a short probe when this machine differs from its machine (costmodel.machine.resolve). Like the
command line, the API is an entry point: that probe runs on the machine side (calib.probe),
the one place costmodel reaches into calib. Step-level numbers are in ``frame.attrs``, the
profile's provenance in ``frame.attrs["profile"]``; a profile of another machine is also a
Python warning (CostModelWarning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from costmodel.machine.predict import predict
from costmodel.machine.profile import Profile
from costmodel.model.arch import Architecture, load_arch, parse_arch

#: the columns of predict_frame(by="op"), in order
PREDICT_COLUMNS = ["layer", "layer_type", "op", "phase", "kind", "flops", "bytes", "intensity", "seconds",
                   "seconds_low", "seconds_high", "fraction"]
#: the columns of predict_frame(by=...) for by in layer, phase, kind: `by`, then these
GROUP_COLUMNS = ["ops", "flops", "bytes", "seconds", "seconds_low", "seconds_high", "fraction"]
#: the step-level numbers every prediction's frame carries in .attrs
STEP_ATTRS = ("arch", "batch", "dtype", "threads", "impl", "total_seconds", "total_seconds_low",
              "total_seconds_high")
#: the columns of costs_frame, after the variant columns
COSTS_COLUMNS = ["layer", "layer_type", "op", "phase", "flops", "bytes_read", "bytes_written", "bytes", "intensity",
                 "memory_kept_bytes"]


def _arch(arch: Architecture | str | Path | Mapping) -> Architecture:
    if isinstance(arch, Architecture):
        return arch
    if isinstance(arch, Mapping):
        return parse_arch(dict(arch))
    return load_arch(arch)


class CostModelWarning(UserWarning):
    """The profile a prediction used was made on another machine (or transferred)."""


def _prober(**needs):
    from calib.probe import cached_probe  # the API is an entry point, as cli.py (module docstring)

    return cached_probe(**needs)[0]


def _resolved(profile, arch: Architecture, impl: str = "index", backend: str = "numpy", threads=None):
    """The profile to predict with, its provenance and threads (costmodel.machine.resolve)."""
    import warnings

    from costmodel.machine.resolve import resolve

    return resolve(profile, dtype=arch.dtype, impl=impl, backend=backend, threads=threads, prober=_prober,
                   warn=lambda line: warnings.warn(line, CostModelWarning, stacklevel=4))


def _given(workers: int | None, link, overlap: bool, sweep_workers: bool = False):
    """The data-parallel arguments, checked before anything is predicted: P >= 1, and `link`
    (a name of costmodel.machine.parallel.LINKS such as "10GbE", a Link, or None) and `overlap`
    only with `workers` (or a sweep of workers). Returns the given Link or None."""
    from costmodel.errors import UsageError
    from costmodel.machine.backends.parallel import check_workers
    from costmodel.machine.links import Link, given_link

    if workers is not None:
        check_workers(workers)
    elif not sweep_workers and (link is not None or overlap):
        raise UsageError("link and overlap go with workers=P (data-parallel SG)")
    return link if link is None or isinstance(link, Link) else given_link(link=link)


def _setting(profile: Profile, workers: int, given, overlap: bool):
    from costmodel.machine.backends.parallel import setting_for

    return setting_for(profile, workers, given, overlap)


def predict_frame(arch, profile=None, *, impl: str = "index", threads: int | None = None,
                  batch: int | None = None, by: str = "op", backend: str = "numpy", workers: int | None = None,
                  link=None, overlap: bool = False) -> pd.DataFrame:
    """The predicted SG step, one row per op (PREDICT_COLUMNS) or per layer, phase or kind
    (`by`, then GROUP_COLUMNS); ``.attrs`` holds STEP_ATTRS.

    With `workers` P: one worker's step of data-parallel SG (costmodel.machine.backends.parallel):
    its compute rows at I/P, then the allreduce rows (phase and kind "communication"); `link` a
    name ("10GbE", as --link) or a costmodel.machine.parallel.Link, else the profile's network
    section; `overlap` the composition overlap (default sum). ``.attrs`` then also holds the
    step's data-parallel numbers (costmodel.present.data.DATA_PARALLEL_FIELDS)."""
    from costmodel.machine.backends.parallel import predict_data_parallel, worker_batch
    from costmodel.present.data import DATA_PARALLEL_FIELDS, prediction_report, prediction_rows

    a = _arch(arch).with_batch(batch)
    given = _given(workers, link, overlap)
    if workers is not None:
        worker_batch(a.batch, workers)
    res = _resolved(profile, a, impl, backend, threads)
    if workers is None:
        pred = predict(a, res.profile, impl=impl, threads=res.threads, backend=backend, provenance=res.provenance)
    else:
        pred = predict_data_parallel(a, res.profile, _setting(res.profile, workers, given, overlap), impl=impl,
                                     threads=res.threads, backend=backend, provenance=res.provenance)
    rows = prediction_rows(pred, by)
    if by == "op":
        frame = pd.DataFrame(rows, columns=PREDICT_COLUMNS)
    else:
        frame = pd.DataFrame(rows, columns=[by, *GROUP_COLUMNS])
    report = prediction_report(pred, by)
    frame.attrs.update({k: report[k] for k in STEP_ATTRS}, profile=report["profile"])
    if workers is not None:
        frame.attrs.update({k: report[k] for k in DATA_PARALLEL_FIELDS})
    return frame


def _table(columns: dict) -> pd.DataFrame:
    from costmodel.model.step import conventions

    total = columns["bytes_read"] + columns["bytes_written"]
    frame = pd.DataFrame({**{k: v for k, v in columns.items() if k != "memory_kept"}, "bytes": total,
                          "intensity": columns["flops"] / total, "memory_kept_bytes": columns["memory_kept"]})
    frame.attrs.update(conventions())
    return frame


def costs_frame(arch, *, impl: str = "index", batch: int | None = None,
                vary: Mapping[str, Sequence] | None = None) -> pd.DataFrame:
    """FLOPs, bytes, intensity and memory kept of every op (COSTS_COLUMNS); with `vary`
    ({"batch": [...], "layers[0].filters": [...]}), of every combination, in one long frame that
    starts with a `variant` column and one column per varied name."""
    import numpy as np

    from costmodel.model.step import QUANTITIES, step_costs
    from costmodel.model.variants import costs_many

    arch = _arch(arch).with_batch(batch)
    if vary is not None:
        return _table(costs_many(arch, impl, **vary))
    costs = step_costs(arch, impl)
    columns = {"layer": np.array([r.layer for r in costs.ops], dtype=np.int64),
               **{k: np.array([getattr(r, k) for r in costs.ops], dtype=object) for k in ("layer_type", "op", "phase")},
               **{q: getattr(costs, q) for q in QUANTITIES}}
    return _table(columns)


def sweep_frame(arch, profile=None, *, vary: str | Mapping[str, Sequence], impl: str = "index",
                threads: int | None = None, batch: int | None = None, by: str = "kind", workers: int | None = None,
                link=None, overlap: bool = False) -> pd.DataFrame:
    """The step predicted at each value of one size, one row per (value, group): the varied
    name, the group's columns (`by`; for "op": layer, layer_type, op, phase, kind), seconds,
    seconds_low, seconds_high, fraction, flops, bytes and the step's step_seconds.

    `vary` is "batch=1,8,64,512" as on the command line, or {"layers[1].filters": [16, 32]};
    {"workers": [1, 2, 4, 8]} sweeps the data-parallel workers P. With a workers sweep, or with
    `workers`, every step is one worker's of data-parallel SG (`link`, `overlap` as in
    predict_frame) and the rows also carry the step's workers, compute_seconds,
    communication_seconds, exposed_communication_seconds, speedup and efficiency.
    """
    from costmodel.errors import UsageError
    from costmodel.machine.sweep import WORKERS, check_workers_values, parse_vary, sweep
    from costmodel.present.data import long_columns, long_rows, sweep_report

    if isinstance(vary, str):
        name, values = parse_vary(vary)
    elif len(vary) == 1:
        [(name, values)] = vary.items()
    else:
        raise UsageError(f"vary: give one name and its values, not {len(vary)}")
    a = _arch(arch).with_batch(batch)
    values = list(values)
    if name == WORKERS and workers is not None:
        raise UsageError("workers with vary workers: the sweep gives P; leave out workers")
    given = _given(workers, link, overlap, sweep_workers=name == WORKERS)
    if name == WORKERS:
        check_workers_values(a.batch, values)
    res = _resolved(profile, a, impl, "numpy", threads)
    setting = (_setting(res.profile, workers or 1, given, overlap) if name == WORKERS or workers is not None
               else None)
    points = sweep(a, res.profile, name, values, impl=impl, threads=res.threads, data_parallel=setting)
    result = sweep_report(a, name, points, by, impl)
    frame = pd.DataFrame(long_rows(result), columns=long_columns(result))
    frame.attrs.update({k: result[k] for k in ("arch", "dtype", "impl", "threads", "vary", "symbol", "by")},
                       profile=points[0][1].profile_info)
    if "data_parallel" in result:
        frame.attrs["data_parallel"] = result["data_parallel"]
    return frame


def explain_report(arch, profile=None, *, impl: str = "index", threads: int | None = None,
                   batch: int | None = None, text: bool = False, workers: int | None = None, link=None,
                   overlap: bool = False) -> dict | str:
    """The explanation of `costmodel explain`: a dict of facts with ``sections`` of sentences,
    or with text=True the report as the command prints it; with `workers` (and `link`, `overlap`
    as in predict_frame) also the data-parallel step (facts["data_parallel"]) and its section."""
    from costmodel.machine.backends.parallel import worker_batch
    from costmodel.present.explain import explain, render_text

    a = _arch(arch).with_batch(batch)
    given = _given(workers, link, overlap)
    if workers is not None:
        worker_batch(a.batch, workers)
    res = _resolved(profile, a, impl, "numpy", threads)
    setting = _setting(res.profile, workers, given, overlap) if workers is not None else None
    facts = explain(a, res.profile, impl=impl, threads=res.threads, provenance=res.provenance,
                    data_parallel=setting)
    return render_text(facts) if text else facts
