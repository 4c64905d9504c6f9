r"""LaTeX tables of an SG step in the course's notation (`costmodel latex`).

Three tables, each a booktabs ``longtable`` followed by its notes:

1. the complexity of every op of the step, one row per op formula, grouped by phase and layer
   kind as in the slides' analysis: exact FLOPs and bytes and their leading orders, all
   printed from the SymPy expressions of the cost registry (costmodel.model.evaluate.symbolic_report);
   only the first column, the op in the slides' notation, is typed here, per op name;
2. the architecture's ops, layer by layer: FLOPs and bytes, with a profile the predicted
   seconds and fraction, with measured fractions the measured fraction, and totals by phase;
3. the profile's fitted parameters, read as machine facts (GFLOP/s, GB/s, time per call).

Without ``standalone`` the output is a fragment to ``\input`` (its first lines name the
packages it needs); with it a complete article. Every generated string that goes into text
mode passes through `latex_escape`. Pure: no clock, no kernel; SymPy is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from costmodel.present.latex_format import (breakable, describe, fmt_count, fmt_fraction, fmt_seconds,
                                            latex_escape, layer_ranges, percents)

if TYPE_CHECKING:
    from costmodel.model.arch import Architecture
    from costmodel.machine.profile import Entry, Profile

PACKAGES = ("amsmath", "amssymb", "array", "booktabs", "longtable")
PHASE_TITLES = {"forward": "Forward", "backward": "Backward", "update": "Update"}
KIND_TITLES = {"conv": "convolutional layers", "full": "fully-connected layers",
               "global_avg_pool": "global average pooling", "residual_add": "residual additions", "loss": "loss"}


# -- numbers for reading ---------------------------------------------------------------------


# -- the ops in the slides' notation ---------------------------------------------------------


# -- table 1: complexity of the ops ----------------------------------------------------------

def _legend(kinds: set[str], itemsize: int, arch: "Architecture | None" = None) -> str:
    """The meaning of the symbols that the tables of these layer kinds (and the extended
    vocabulary of `arch`: groups, pooling with a stride, average pooling) use."""
    from costmodel.model import symbols as s
    from costmodel.model.step import INDEX_BYTES

    sizes = arch.sizes() if arch is not None else []
    grouped = any(sz.g > 1 for sz in sizes)
    strided_pool = any(sz.pooled and (sz.pool_type != "max" or sz.pool_stride != sz.pool or sz.pool_ceil)
                       for sz in sizes)
    rows = [((s.I,), "instances in the mini-batch")]
    if kinds & {"conv", "global_avg_pool", "residual_add"}:
        rows.append(((s.a, s.b, s.d), r"height, width and channels of the input of layer \(m\)"))
    if "conv" in kinds:
        pool = rf"\({s.to_latex(s.h_pool)} \times {s.to_latex(s.h_pool)}\)"
        rows += [((s.h,), "filter width"), ((s.d_next,), "filters (channels of the output)")]
        if grouped:
            rows.append(((s.d_g,), rf"channels each filter sees, with \({s.to_latex(s.g)}\) groups"))
        rows += [((s.a_pad, s.b_pad), "the padded input"),
                 ((s.a_conv, s.b_conv), "the output of the convolution")]
        if strided_pool:
            rows.append(((s.a_next, s.b_next), f"the output of the pooling over {pool} windows with stride "
                                               rf"\({s.to_latex(s.s_pool)}\)"))
        else:
            rows.append(((s.a_next, s.b_next), f"the output of the max pooling over {pool}"))
    if "full" in kinds:
        rows += [((s.n, s.n_next), r"inputs and outputs of fully-connected layer \(m\)")]
    rows += [((s.n_loss,), "outputs of the network"),
             ((s.w,), f"bytes per element of the network ({itemsize} here)"),
             ((s.w_idx,), f"bytes per element of an index array ({INDEX_BYTES} here)")]
    return "; ".join(rf"\({', '.join(s.to_latex(x) for x in syms)}\): {meaning}" for syms, meaning in rows)


def complexity_rows(symbolic: dict, loss: str) -> list[dict]:
    """One row per op formula of a `symbolic_report`: its phase, layer kind, layers, notation and
    the LaTeX of its exact FLOPs and bytes and of their leading orders; grouped by (phase, layer
    kind) in step order, and in each group in the contract's op order."""
    rows: dict[tuple, dict] = {}
    for op in symbolic["ops"]:
        notation = op.get("notation_latex") or describe(op["layer_type"], op["op"], loss)
        key = (op["phase"], op["layer_type"], op["op"], op["flops"]["latex"], op["bytes"]["latex"], notation)
        if key in rows:
            rows[key]["layers"].append(op["layer"])
            continue
        rows[key] = {"phase": op["phase"], "layer_type": op["layer_type"], "op": op["op"],
                     "layers": [op["layer"]], "notation": notation,
                     **{f"{q}{part}": op[q][field] for q in ("flops", "bytes")
                        for part, field in (("", "latex"), ("_order", "order_latex"))}}
    from costmodel.model.ops import contract

    groups = list(dict.fromkeys((row["phase"], row["layer_type"]) for row in rows.values()))
    order_of = contract()

    def order(row: dict) -> tuple[int, int]:
        group = (row["phase"], row["layer_type"])
        return groups.index(group), order_of[group].index(row["op"])

    return sorted(rows.values(), key=order)


def _group_heading(text: str, ncols: int) -> str:
    return rf"\multicolumn{{{ncols}}}{{@{{}}l}}{{\textit{{{text}}}}} \\[1pt]"


def _unbroken_numbers(text: str) -> str:
    """`text` free to break between words, never between a number and its unit ("9.44~GFLOP/s"):
    a fact in one unbreakable box ran past its column, 537 overfull lines in a standalone
    document of cifar10-layer7 (2026-12-01)."""
    import re

    return re.sub(r"(\d) ", r"\1~", text)


def _longtable(spec: str, caption: str, head: str, ncols: int, body: list[str], notes: list[str]) -> str:
    """A booktabs longtable that repeats its `head` (rows of LaTeX) on every page, then its notes."""
    lines = [
        r"{\small\setlength{\lineskiplimit}{1pt}\setlength{\lineskip}{2pt}",
        rf"\begin{{longtable}}{{@{{}}{spec}@{{}}}}",
        rf"\caption{{{caption}}} \\",
        r"\toprule", head, r"\midrule", r"\endfirsthead",
        rf"\multicolumn{{{ncols}}}{{@{{}}l}}{{\textit{{(continued)}}}} \\",
        r"\toprule", head, r"\midrule", r"\endhead",
        r"\bottomrule", r"\endlastfoot",
        *body,
        r"\end{longtable}}",
    ]
    if notes:
        lines += [r"{\footnotesize\noindent " + (r" \par\noindent ".join(notes)) + r"\par}", r"\medskip"]
    return "\n".join(lines) + "\n"


def _math(latex: str) -> str:
    return rf"\({breakable(latex)}\)"


def _with_order(row: dict, q: str) -> str:
    """The exact expression of quantity `q` and, below it, its leading order (none for 0)."""
    if row[q] == "0":
        return _math("0")
    return rf"{_math(row[q])}\par\vspace{{2pt}}{_math(row[q + '_order'])}"


def complexity_table(symbolic: dict, arch: "Architecture") -> str:
    """Table 1: the complexity of every op formula of the step in the course's notation."""
    column = r">{\raggedright\arraybackslash}p{%s\linewidth}"
    spec = " ".join(column % width for width in ("0.25", "0.055", "0.275", "0.34"))
    head = r"operation & \(m\) & FLOPs, \(\mathcal{O}\) & bytes, \(\mathcal{O}\) \\"
    body, group = [], None
    for row in complexity_rows(symbolic, arch.loss):
        if (row["phase"], row["layer_type"]) != group:
            if group is not None:
                body.append(r"\midrule")
            group = (row["phase"], row["layer_type"])
            body.append(_group_heading(f"{PHASE_TITLES[row['phase']]}, {KIND_TITLES[row['layer_type']]}", 4))
        else:
            body.append(r"\addlinespace[5pt]")
        body.append(" & ".join([
            rf"{_math(row['notation'])}\newline {{\scriptsize\texttt{{{latex_escape(row['op'])}}}}}",
            latex_escape(layer_ranges(row["layers"])) if row["layer_type"] != "loss" else r"\(L{+}1\)",
            _with_order(row, "flops"), _with_order(row, "bytes"),
        ]) + r" \\")
    kinds = {row["layer_type"] for row in symbolic["ops"]}
    notes = [
        r"\(m\): the layers whose op has this formula. Forward ops are written for one instance \(i\); "
        r"every count is of the whole mini-batch of \(I\) instances. Below each expression its leading "
        r"order: the highest-degree terms, each derived size counting as one symbol, without constants "
        r"or bytes per element. Update (simpleNN's SG with momentum \(\alpha\) and learning rate \(\eta\)): "
        r"\(g^{m} = \tfrac{1}{I}\tfrac{\partial f}{\partial W^{m}} + \tfrac{1}{C} W^{m}\), and the same for "
        rf"\(\boldsymbol{{b}}^m\). Implementation \texttt{{{latex_escape(symbolic['impl'])}}}, "
        rf"{latex_escape(symbolic['dtype'])}.",
        "Symbols: " + _legend(kinds, arch.itemsize, arch) + ".",
        latex_escape(symbolic["flop_convention"]),
        latex_escape(symbolic["byte_convention"]),
    ]
    caption = (rf"Complexity of the operations of one SG step of \texttt{{{latex_escape(arch.name)}}}, "
               r"in the course's notation")
    return _longtable(spec, caption, head, 4, body, notes)


# -- table 2: the architecture's ops ---------------------------------------------------------

def _key(op: dict) -> tuple[int, str, str]:
    return (op["layer"], op["op"], op["phase"])


def step_table(report: dict, prediction: dict | None = None,
               measured: Mapping[tuple[int, str, str], float] | None = None) -> str:
    """Table 2: FLOPs and bytes of every op of the step (a `costs_report`), with the predicted
    seconds and fraction of a `predict` result and the measured fractions, keyed by
    (layer, op, phase), when given; then totals by phase and of the step."""
    predicted = {_key(o): o for o in prediction["ops"]} if prediction else {}
    ncols = 4 + 2 * bool(prediction) + (measured is not None)
    top = ["", "", "", ""]
    rules = []
    if prediction:
        top.append(r"\multicolumn{2}{c}{predicted}")
        rules.append(r"\cmidrule(lr){5-6}")
    if measured is not None:
        top.append("measured")
        rules.append(rf"\cmidrule(l){{{ncols}-{ncols}}}")
    names = [r"\(m\)", "op", "FLOPs", "bytes"] + ["time", "fraction"] * bool(prediction) \
        + ["fraction"] * (measured is not None)
    head = " & ".join(names) + r" \\"
    if rules:
        head = " & ".join(top) + r" \\ " + " ".join(rules) + "\n" + head

    def cells(label: list[str], flops: int, nbytes: int, seconds, fraction, share) -> str:
        row = [*label, fmt_count(flops), fmt_count(nbytes, "B")]
        if prediction:
            row += [fmt_seconds(seconds), fmt_fraction(fraction)]
        if measured is not None:
            row.append(fmt_fraction(share))
        return " & ".join(row) + r" \\"

    body, phase, layer = [], None, None
    sums: dict[str, dict[str, float]] = {}
    for op in report["ops"]:
        if op["phase"] != phase:
            if phase is not None:
                body.append(r"\midrule")
            phase, layer = op["phase"], op["layer"]
            body.append(_group_heading(PHASE_TITLES[phase], ncols))
        elif op["layer"] != layer:
            layer = op["layer"]
            body.append(r"\addlinespace[3pt]")
        p = predicted.get(_key(op), {})
        share = None if measured is None else measured.get(_key(op))
        body.append(cells([str(op["layer"]), rf"\texttt{{{latex_escape(op['op'])}}}"], op["flops"], op["bytes"],
                          p.get("seconds"), p.get("fraction"), share))
        total = sums.setdefault(phase, {"seconds": 0.0, "fraction": 0.0, "share": 0.0})
        total["seconds"] += p.get("seconds", 0.0)
        total["fraction"] += p.get("fraction", 0.0)
        total["share"] += share or 0.0
    body.append(r"\midrule")
    for name, total in sums.items():
        t = report["totals"]["by_phase"][name]
        body.append(cells([rf"\multicolumn{{2}}{{@{{}}l}}{{{latex_escape(name)}}}"], t["flops"], t["bytes"],
                          total["seconds"], total["fraction"], total["share"]))
    t = report["totals"]["total"]
    body += [r"\midrule", cells([r"\multicolumn{2}{@{}l}{\textbf{step}}"], t["flops"], t["bytes"],
                                sum(x["seconds"] for x in sums.values()),
                                sum(x["fraction"] for x in sums.values()),
                                sum(x["share"] for x in sums.values()))]

    name = latex_escape(report["arch"])
    notes = [rf"One SG step of \texttt{{{name}}}: batch \(I = {report['batch']}\), "
             rf"{latex_escape(report['dtype'])}, implementation \texttt{{{latex_escape(report['impl'])}}}; "
             r"layer \(L{+}1\) is the loss. FLOPs and bytes by the conventions stated under the "
             r"complexity table."]
    if prediction:
        threads = prediction["threads"]
        notes.append(
            rf"Predicted: each op's time by the profile's fitted model for {threads} "
            rf"thread{'s' if threads != 1 else ''}; fraction: of the predicted step, "
            rf"{fmt_seconds(prediction['total_seconds'])} (interval "
            rf"{fmt_seconds(prediction['total_seconds_low'])}--{fmt_seconds(prediction['total_seconds_high'])}: "
            rf"{percents(prediction['interval'])}). Profile made on "
            rf"{latex_escape(prediction['profile']['cpu_model'])}.")
    else:
        notes.append(r"No machine profile was found, so the table has no time columns: run "
                     r"\texttt{costmodel calibrate}, or pass \texttt{-{}-profile FILE}.")
    if measured is not None:
        notes.append(r"Measured: the op's share of the summed median op times of real SG steps of "
                     r"the reference NumPy CNN on this machine (\texttt{costmodel measure}).")
    spec = "r l " + "r " * (ncols - 2)
    caption = rf"The operations of one SG step of \texttt{{{name}}}, layer by layer"
    return _longtable(spec.strip(), caption, head, ncols, body, notes)


# -- table 3: the machine profile ------------------------------------------------------------

#: the kernel variants of the model keys (costmodel.machine.backends: kernel_variant, torch_variant)
KERNEL_VARIANTS = frozenset({"avg", "overlap", "tanh", "sigmoid", "grouped", "stride"})

def profile_table(profile: "Profile", used: "Entry | None" = None) -> str:
    """Table 3: every entry's fitted op models, their parameters read as machine facts."""
    from costmodel.machine.timemodel import model_facts

    head = r"op & fitted parameters & CV error & meas./pred. & samples \\"
    body = []
    # a profile calibrated with the kernel variants of the extended vocabulary has keys such as
    # conv_grad_input:grouped+threaded that do not fit a column that never breaks: its keys go
    # in a narrower column that breaks after ':' and '+' (a profile without them keeps the
    # layout it always had)
    long_keys = any(set(op.partition(":")[2].split("+")) & KERNEL_VARIANTS
                    for entry in profile.entries for op in entry.ops)

    def key(op: str) -> str:
        text = latex_escape(op)
        return text.replace(":", r":\allowbreak{}").replace("+", r"+\allowbreak{}") if long_keys else text

    for i, entry in enumerate(profile.entries):
        if i:
            body.append(r"\midrule")
        label = latex_escape(entry.describe()) + (" (used for the predictions)" if entry is used else "")
        body.append(_group_heading(label, 5))
        for op, model in sorted(entry.ops.items()):
            facts = ", ".join(_unbroken_numbers(latex_escape(fact)) for fact in model_facts(model))
            body.append(" & ".join([
                rf"\texttt{{{key(op)}}}", facts, fmt_fraction(model.cv_error),
                rf"{model.interval[0]:.2f}--{model.interval[1]:.2f}", str(model.n_samples),
            ]) + r" \\")
    fp, ceilings = profile.fingerprint, profile.ceilings
    peaks = ", ".join(rf"{latex_escape(dtype)} {fmt_count(v, 'FLOP/s')}"
                      for dtype, v in ceilings.matmul_flops_per_second.items())
    notes = [
        rf"Machine: {latex_escape(fp.cpu_model)}, {fp.cores} logical cores, NumPy "
        rf"{latex_escape(fp.numpy_version)}; peak matrix product ({ceilings.threads} threads): {peaks}. "
        rf"Profile made with costmodel {latex_escape(profile.tool_version)} on "
        rf"{latex_escape(profile.created.date().isoformat())}.",
        r"Each op's time is modelled as a non-negative sum over its features (a cost per call, per "
        r"FLOP, per byte and per byte beyond a cache level); each coefficient is read as the rate it "
        r"implies. CV error: median relative error of grouped cross-validation; meas./pred.: the "
        r"5--95\,\% range of measured over predicted time.",
    ]
    spec = r"l >{\raggedright\arraybackslash}p{0.42\linewidth} r r r"
    if long_keys:
        spec = r">{\raggedright\arraybackslash}p{0.23\linewidth} >{\raggedright\arraybackslash}p{0.35\linewidth} r r r"
    return _longtable(spec, "The machine profile's fitted parameters", head, 5, body, notes)


# -- the document ----------------------------------------------------------------------------

def latex_document(arch: "Architecture", *, impl: str = "index", profile: "Profile | None" = None,
                   threads: int | None = None,
                   measured: Mapping[tuple[int, str, str], float] | None = None,
                   standalone: bool = False) -> str:
    """The three tables of `arch`'s SG step (without a profile: no time columns and no
    Table 3), as a fragment to ``\\input`` or, with `standalone`, a complete article."""
    from costmodel.model.step import step_costs
    from costmodel.model.symbolic import symbolic_report
    from costmodel.present.data import costs_report, prediction_report

    prediction = entry = None
    if profile is not None:
        from costmodel.machine.predict import predict

        pred = predict(arch, profile, impl=impl, threads=threads)
        prediction = prediction_report(pred)
        entry = profile.entry(arch.dtype, impl, pred.threads, pred.backend)
    tables = [complexity_table(symbolic_report(arch, impl), arch),
              step_table(costs_report(step_costs(arch, impl)), prediction, measured)]
    if profile is not None:
        tables.append(profile_table(profile, entry))
    name = latex_escape(arch.name)
    if not standalone:
        return "\n".join([
            f"% costmodel latex: the SG step of {name} (batch {arch.batch}, {latex_escape(arch.dtype)}, "
            f"impl {latex_escape(impl)})",
            f"% needs: \\usepackage{{{','.join(PACKAGES)}}}",
            "", *tables])
    titles = ["Complexity of the operations", "The step of this architecture", "The machine"]
    body = [f"\\section{{{title}}}\n{table}" for title, table in zip(titles, tables)]
    return "\n".join([
        r"\documentclass[a4paper,11pt]{article}",
        r"\usepackage[margin=2cm]{geometry}",
        f"\\usepackage{{{','.join(PACKAGES)}}}",
        r"\setlength{\LTcapwidth}{\textwidth}",
        rf"\title{{Running time of one SG step: \texttt{{{name}}}}}",
        r"\author{costmodel}",
        rf"\date{{batch \(I = {arch.batch}\), {latex_escape(arch.dtype)}, implementation "
        rf"\texttt{{{latex_escape(impl)}}}}}",
        r"\begin{document}",
        r"\maketitle",
        *body,
        r"\end{document}",
        "",
    ])
