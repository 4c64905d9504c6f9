"""`costmodel compare ARCH --backends numpy,torch`: the same SG step in the NumPy reference CNN
and in PyTorch, per torch op group, and an explanation built from the two measurements.

The NumPy backend times every op of the contract; PyTorch fuses several of them into one
kernel (docs/torch-mapping.md). ``group_rows`` sums the NumPy ops of each torch group (e.g.
NumPy's pad, phi, conv_matmul and bias of layer m against torch's
``pad+phi+conv_matmul+bias`` of layer m) and keeps torch's ``other`` rows (time that maps to
no op; the NumPy timer's laps tile the step, so NumPy has none). ``explain_backends`` turns
the grouped numbers into sentences: which groups the framework does faster and by how much,
and a verdict on each of the slides' reasons, decided by comparing the numbers against the
named thresholds below. ``group_rows`` and ``explain_backends`` are pure.
"""

from __future__ import annotations

from costmodel.machine.backends import OTHER
from costmodel.machine.backends.torch import torch_groups
from costmodel.model.ops import op_list
from costmodel.present.notation import course_name, op_text
from costmodel.units import fmt_fraction, fmt_seconds


#: a group (or a set of groups) counts as done faster by the framework from this ratio
#: numpy / torch seconds up
FASTER_RATIO = 1.5
#: the index ops (pad + phi forward; phi_grad + pad_grad backward) must be at least this
#: share of NumPy's time of the groups for the fusion to explain the gap
INDEX_SHARE_MIN = 0.25
#: groups named in the "faster" sentence: at most this many, by seconds saved
MAX_NAMED = 4

#: the elementwise ops whose torch kernels run on the intra-op thread pool
ELEMENTWISE_OPS = frozenset({"activation", "activation_grad", "pool", "pool_grad", "bias", "bias_grad", "update"})
_CONV_FWD_INDEX = ("pad", "phi")
_CONV_BWD_INDEX = ("phi_grad", "pad_grad")


# ---------------------------------------------------------------------------------------------
# Grouping

def group_rows(numpy_rows: list[dict], torch_rows: list[dict], arch) -> list[dict]:
    """One row per torch row (its group of ops, or ``other``): the NumPy seconds of the group's
    ops summed, the torch seconds, each backend's fraction of its sum of rows, and the ratio
    numpy / torch. The groups are costmodel.machine.backends.torch's for `arch`; a NumPy op whose
    group torch did not report gets it with torch seconds 0. Rows keep torch's order;
    NumPy-only groups follow."""
    of_op: dict[tuple[int, str, str], tuple[int, str, str]] = {}
    ops_of: dict[tuple[int, str, str], tuple[str, ...]] = {}
    for g in torch_groups(op_list(arch)):
        key = (g.layer, "+".join(g.ops) if g.ops else OTHER, g.phase)
        ops_of[key] = g.ops
        for op in g.ops:
            of_op[(g.layer, op, g.phase)] = key

    def new_row(key, layer_type, numpy_seconds, torch_seconds) -> dict:
        return {"layer": key[0], "layer_type": layer_type, "group": key[1], "phase": key[2],
                "ops": ops_of.get(key, ()), "numpy_seconds": numpy_seconds, "torch_seconds": torch_seconds,
                "numpy_ops": {}}

    rows: dict[tuple[int, str, str], dict] = {}
    for r in torch_rows:
        key = (r["layer"], r["op"], r["phase"])
        rows[key] = new_row(key, r.get("layer_type"), None if r["op"] == OTHER else 0.0, r["seconds"])
    for r in numpy_rows:
        op_key = (r["layer"], r["op"], r["phase"])
        key = of_op.get(op_key, op_key)
        row = rows.setdefault(key, new_row(key, r.get("layer_type"), 0.0, 0.0))
        row["numpy_seconds"] += r["seconds"]
        row["numpy_ops"][r["op"]] = row["numpy_ops"].get(r["op"], 0.0) + r["seconds"]
    n_total = sum(r["numpy_seconds"] or 0.0 for r in rows.values())
    t_total = sum(r["torch_seconds"] for r in rows.values())
    out = []
    for row in rows.values():
        ns, ts = row["numpy_seconds"], row["torch_seconds"]
        row["numpy_fraction"] = None if ns is None else (ns / n_total if n_total else 0.0)
        row["torch_fraction"] = ts / t_total if t_total else 0.0
        row["ratio"] = ns / ts if ns is not None and ts > 0 else None
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Explanation

def _ms(s: float) -> str:
    return fmt_seconds(s)


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.3g}x"


def _as_fast(ratio: float | None) -> str:
    """A speed ratio in words: '1.62x faster', '1.13x slower' (never '0.886x faster')."""
    if ratio is None or ratio <= 0:
        return "of unknown speed"
    return f"{_x(ratio)} faster" if ratio >= 1 else f"{_x(1 / ratio)} slower"


def _faster_sentences(groups: list[dict]) -> list[str]:
    ops = [g for g in groups if g["group"] != OTHER and g["torch_seconds"] > 0]
    faster = sorted((g for g in ops if g["ratio"] is not None and g["ratio"] >= FASTER_RATIO),
                    key=lambda g: g["numpy_seconds"] - g["torch_seconds"], reverse=True)
    slower = sorted((g for g in ops if g["ratio"] is not None and g["ratio"] < 1.0), key=lambda g: g["ratio"])
    out = []
    if faster:
        named = "; ".join(f"{g['group']} of layer {g['layer']} ({g['phase']}): {_ms(g['torch_seconds'])} in PyTorch "
                          f"against {_ms(g['numpy_seconds'])} in NumPy ({_x(g['ratio'])})" for g in faster[:MAX_NAMED])
        saved = sum(g["numpy_seconds"] - g["torch_seconds"] for g in faster)
        out.append(f"PyTorch does {len(faster)} of the {len(ops)} op groups at least {FASTER_RATIO:g}x faster, "
                   f"saving {_ms(saved)} in all; the largest savings: {named}.")
    else:
        out.append(f"PyTorch does none of the {len(ops)} op groups {FASTER_RATIO:g}x faster than NumPy.")
    if slower:
        named = "; ".join(f"{g['group']} of layer {g['layer']} ({g['phase']}): {_ms(g['numpy_seconds'])} in NumPy "
                          f"against {_ms(g['torch_seconds'])} in PyTorch ({_x(1 / g['ratio'] if g['ratio'] else None)} "
                          "faster in NumPy)" for g in slower[:MAX_NAMED])
        out.append(f"NumPy is faster in {len(slower)} of the {len(ops)} group(s); the largest gaps: {named}.")
    other = sum(g["torch_seconds"] for g in groups if g["group"] == OTHER)
    t_total = sum(g["torch_seconds"] for g in groups)
    if other > 0:
        out.append(f"PyTorch spends {_ms(other)} ({fmt_fraction(other / t_total)} of its rows) in time that maps to "
                   "no op (module calls, dispatch, the autograd engine); NumPy's timer counts its glue to the ops.")
    return out


def _verdict(reason: str, supported: bool, evidence: list[str], numbers: dict) -> dict:
    word = "supported" if supported else "not supported by these numbers"
    return {"reason": reason, "supported": supported, "numbers": numbers,
            "sentences": evidence + [f"Verdict on \"{reason}\": {word}."]}


def _conv_verdict(groups: list[dict]) -> dict:
    reason = "fused convolution instead of phi + product"
    conv = [g for g in groups if g["phase"] == "forward" and "phi" in g["ops"]]
    if not conv:
        return _verdict(reason, False, ["The network has no convolutional layer."], {})
    evidence = []
    for g in conv:
        index = sum(g["numpy_ops"].get(op, 0.0) for op in _CONV_FWD_INDEX)
        product = g["numpy_ops"].get("conv_matmul", 0.0)
        cmp = "more than" if index > product else "less than"
        evidence.append(
            f"The fused convolution of layer {g['layer']} ({g['group']}) takes {_ms(g['torch_seconds'])} in PyTorch "
            f"against {_ms(g['numpy_seconds'])} in NumPy ({_x(g['ratio'])}): of the NumPy time, "
            f"{course_name(op_text('conv', 'phi'), g['layer'])} with its padding is {_ms(index)}, {cmp} the matrix product's "
            f"{_ms(product)}.")
    n, t, ratio, share, supported = _index_totals(conv, _CONV_FWD_INDEX)
    evidence.append(f"All convolutions forward: {_ms(t)} in PyTorch against {_ms(n)} in NumPy ({_x(ratio)}, "
                    f"threshold {FASTER_RATIO:g}x); pad and phi are {fmt_fraction(share)} of the NumPy time "
                    f"(threshold {fmt_fraction(INDEX_SHARE_MIN)}), work a direct convolution never does.")
    return _verdict(reason, supported, evidence, {"ratio": ratio, "index_share": share})


def _index_totals(conv: list[dict], index_ops) -> tuple:
    """NumPy and PyTorch seconds of the groups, their ratio, the share of NumPy's time in
    `index_ops`, and whether both pass their thresholds."""
    n = sum(g["numpy_seconds"] for g in conv)
    t = sum(g["torch_seconds"] for g in conv)
    index = sum(g["numpy_ops"].get(op, 0.0) for g in conv for op in index_ops)
    ratio = n / t if t > 0 else None
    share = index / n if n else 0.0
    return n, t, ratio, share, ratio is not None and ratio >= FASTER_RATIO and share >= INDEX_SHARE_MIN


def _backward_verdict(groups: list[dict]) -> dict:
    reason = "fused backward instead of scatter-add"
    conv = [g for g in groups if g["phase"] == "backward" and "phi_grad" in g["ops"]]
    if not conv:
        return _verdict(reason, False, ["No layer computes phi_grad (no convolution after the first layer)."], {})
    evidence = []
    for g in conv:
        scatter = sum(g["numpy_ops"].get(op, 0.0) for op in _CONV_BWD_INDEX)
        cmp = "more than" if scatter > g["torch_seconds"] else "less than"
        evidence.append(
            f"The fused convolution backward of layer {g['layer']} takes {_ms(g['torch_seconds'])} in PyTorch against "
            f"{_ms(g['numpy_seconds'])} in NumPy ({_x(g['ratio'])}): NumPy's scatter-add "
            f"{course_name(op_text('conv', 'phi_grad'), g['layer'])} with pad_grad alone takes {_ms(scatter)}, {cmp} PyTorch's whole "
            "backward of the layer.")
    n, t, ratio, share, supported = _index_totals(conv, _CONV_BWD_INDEX)
    evidence.append(f"All convolution backwards with phi_grad: {_ms(t)} in PyTorch against {_ms(n)} in NumPy "
                    f"({_x(ratio)}, threshold {FASTER_RATIO:g}x); the scatter-add is {fmt_fraction(share)} of the "
                    f"NumPy time (threshold {fmt_fraction(INDEX_SHARE_MIN)}).")
    return _verdict(reason, supported, evidence, {"ratio": ratio, "index_share": share})


def _elementwise_verdict(groups: list[dict], threads: int) -> dict:
    """Threads against kernels, refuted or confirmed by a 1-thread run of PyTorch (the groups'
    `torch_1thread_seconds`): threads explain a gain when PyTorch's elementwise groups get at
    least FASTER_RATIO faster from 1 to `threads` threads; what remains between NumPy and
    PyTorch on one thread is the kernels'."""
    reason = "threads used by elementwise ops"
    ew = [g for g in groups if g["ops"] and set(g["ops"]) <= ELEMENTWISE_OPS]
    n = sum(g["numpy_seconds"] for g in ew)
    t = sum(g["torch_seconds"] for g in ew)
    ratio = n / t if t > 0 else None
    by_op: dict[str, list[float]] = {}
    for g in ew:
        pair = by_op.setdefault(g["group"], [0.0, 0.0])
        pair[0] += g["numpy_seconds"]
        pair[1] += g["torch_seconds"]
    parts = "; ".join(f"{op}: {_ms(tt)} against {_ms(nn)} ({_x(nn / tt if tt > 0 else None)})"
                      for op, (nn, tt) in sorted(by_op.items(), key=lambda kv: -kv[1][0]))
    evidence = [f"The elementwise groups (pooling, activation, bias, update) take {_ms(t)} in PyTorch against "
                f"{_ms(n)} in NumPy ({_x(ratio)}, threshold {FASTER_RATIO:g}x) with {threads} PyTorch thread(s)"
                + (f"; {parts}." if parts else ".")]
    one = [g.get("torch_1thread_seconds") for g in ew]
    numbers = {"ratio": ratio, "threads": threads}
    if threads <= 1:
        evidence.append("With one thread any gain comes from the kernels, not from threads.")
        supported = False
    elif not ew or any(s is None for s in one):
        evidence.append("Without a 1-thread run of PyTorch, threads cannot be told from kernels.")
        supported = False
    else:
        t1 = sum(one)
        from_threads = t1 / t if t > 0 else None
        kernels = n / t1 if t1 > 0 else None
        numbers.update(torch_1thread_seconds=t1, thread_speedup=from_threads, kernel_ratio=kernels)
        evidence.append(f"Measured again with 1 PyTorch thread, they take {_ms(t1)}: {threads} threads make them "
                        f"{_as_fast(from_threads)}, and on one thread PyTorch's kernels are {_as_fast(kernels)} "
                        "than NumPy's.")
        supported = from_threads is not None and from_threads >= FASTER_RATIO
        if not supported:
            evidence.append(f"Threads give less than {FASTER_RATIO:g}x: the kernels, not the threads, make the "
                            "difference.")
    return _verdict(reason, supported, evidence, numbers)


def explain_backends(result: dict) -> dict:
    """Sentences and verdicts from a backends comparison (``compare_backends``'s result or the
    same keys from synthetic numbers): the step, the groups PyTorch does faster, and each of
    the slides' reasons with a verdict that follows from the numbers and the thresholds."""
    groups, numpy, torch = result["ops"], result["numpy"], result["torch"]
    ratio = numpy["step_seconds"] / torch["step_seconds"] if torch["step_seconds"] > 0 else None
    faster = "faster" if ratio is not None and ratio >= 1 else "slower"
    step = [f"The SG step of {result['arch']} (I={result['batch']}, {result['dtype']}) takes "
            f"{_ms(torch['step_seconds'])} in PyTorch ({torch['threads']} thread(s)) against "
            f"{_ms(numpy['step_seconds'])} in NumPy (impl {numpy['impl']}, {numpy['threads']} BLAS thread(s)): "
            f"PyTorch is {_x(ratio if faster == 'faster' else (1 / ratio if ratio else None))} {faster}."]
    verdicts = [_conv_verdict(groups), _backward_verdict(groups), _elementwise_verdict(groups, torch["threads"])]
    return {
        "step_ratio": ratio,
        "sections": [{"title": "The step", "sentences": step + _faster_sentences(groups)}]
        + [{"title": f"The slides' reason: {v['reason']}", "sentences": v["sentences"]} for v in verdicts],
        "verdicts": [{k: v[k] for k in ("reason", "supported", "numbers")} for v in verdicts],
    }


def render_explanation(explanation: dict, width: int = 100) -> str:
    import textwrap

    lines = []
    for section in explanation["sections"]:
        lines += ["", section["title"]]
        for s in section["sentences"]:
            lines += textwrap.wrap(s, width, initial_indent="  - ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Measuring

def compare_backends(arch, *, impl: str = "index", threads=None, steps: int = 10, warmup: int = 2,
                     progress=None) -> dict:
    """Measure the step in NumPy (``impl``) and in PyTorch with the same threads, and PyTorch
    again with one thread (the run that tells threads from kernels), group the NumPy ops into
    torch's groups, and explain the difference."""
    from calib.backends.torch import import_torch, measure_torch
    from calib.measure import measure

    import_torch()
    n = measure(arch, steps=steps, warmup=warmup, threads=threads, impl=impl, progress=progress)
    t = measure_torch(arch, steps=steps, warmup=warmup, threads=threads, progress=progress)
    t1 = measure_torch(arch, steps=steps, warmup=warmup, threads=1, progress=progress) if t["threads"] > 1 else t
    return assemble(arch, n, t, t1)


def assemble(arch, n: dict, t: dict, t1: dict | None = None) -> dict:
    """The comparison's result from the measurements (pure): NumPy `n`, PyTorch `t`, and
    PyTorch on one thread `t1` (each group gets its `torch_1thread_seconds`)."""
    groups = group_rows(n["ops"], t["ops"], arch)
    if t1 is not None:
        one = {(r["layer"], r["op"], r["phase"]): r["seconds"] for r in t1["ops"]}
        for g in groups:
            g["torch_1thread_seconds"] = one.get((g["layer"], g["group"], g["phase"]))
    side = lambda r, impl: {"impl": impl, "threads": r["threads"], "step_seconds": r["step_seconds"],  # noqa: E731
                            "total_seconds": r["total_seconds"], "coverage": r["coverage"]}
    result = {
        "arch": arch.name, "batch": arch.batch, "dtype": arch.dtype,
        "numpy": side(n, n["impl"]),
        "torch": {**side(t, "torch"), "torch_version": t.get("torch_version"),
                  "unprofiled_step_seconds": t.get("unprofiled_step_seconds")},
        "total_ratio": n["total_seconds"] / t["total_seconds"] if t["total_seconds"] > 0 else None,
        "ops": groups,
    }
    explanation = explain_backends(result)
    result["step_ratio"] = explanation["step_ratio"]
    result["explanation"] = explanation["sections"]
    result["verdicts"] = explanation["verdicts"]
    return result
