"""Hostile inputs (issue 12): hundreds of generated bad inputs through the real command line.

Architecture files, profiles, .npz data, command-line options, output paths and signals, each run
as its own `costmodel` process (costs, predict, measure, and train / calibrate -o where they
apply) in a fresh directory, with a timeout and an address-space limit (RLIMIT_AS, set in the
child before it starts). A refusal is clean when the exit status is 2 (130 or 143 for SIGINT and
SIGTERM), stderr is one line starting `costmodel: error:` that names the place (the file, the
option), nothing says "Traceback", and the directory is as it was (nothing half-written). An
input that must be accepted (a name full of markup or mathtext) must exit 0 and print the name
literally; a name with a control or format character is refused.

    python benchmarks/hostile.py              # every input (about 10 minutes on 2 cores)
    python benchmarks/hostile.py --quick      # a few dozen, one of each kind
    python benchmarks/hostile.py --only 4 8   # the inputs of these kinds (issue 12's numbering)

Prints: tried, refused cleanly, accepted as expected, tracebacks, silently accepted, other
failures (each named), the slowest refusal, the largest RSS, the longest message. Targets: 0
tracebacks, 0 silent acceptances, every refusal within 2 s and 200 MB, its message under 300
characters. Timings depend on the machine's load: say so when quoting them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "costmodel" / "data" / "reference_profile.json"
_SCRIPT = Path(sys.executable).parent / "costmodel"
CLI = ([str(_SCRIPT)] if _SCRIPT.exists()
       else [sys.executable, "-c", "import sys; sys.argv[0] = 'costmodel'; from cli import main; main()"])

#: the targets of issue 12
MAX_SECONDS, MAX_RSS_MB, MAX_MESSAGE = 2.0, 200, 300
#: a run's address space (torch alone maps ~640 MB); its wall-clock time
RLIMIT_AS = 3 << 30
TIMEOUT = 60.0

BASE = {
    "name": "hostile-base",
    "input": {"height": 8, "width": 8, "channels": 1},
    "batch": 16,
    "dtype": "float32",
    "loss": "mse",
    "optimizer": {"lr": 0.01, "momentum": 0.9, "C": 600.0},
    "layers": [{"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "stride": 1, "pool": 2,
                "activation": "relu"},
               {"type": "full", "units": 10}],
}


@dataclass
class Case:
    """One hostile input and the commands it goes through."""

    kind: str  # issue 12's kind (1..12) or "cli", "signal", "output"
    name: str
    commands: list[list[str]]  # argv after `costmodel`, with {input} for the input's path
    expect: str = "refuse"  # "refuse" | "accept"
    names: str | tuple | None = ("{input}", "hostile-base at batch")  # what the refusal must name, one of
    # these ({input}: the input's path; a memory refusal names the network and its batch)
    literal: str | None = None  # accepted: a string stdout must contain
    files: dict = field(default_factory=dict)  # file name -> bytes | callable(path)
    input: str = "arch.yaml"
    signal: tuple[int, float] | None = None  # (signal, seconds after start)
    rlimit_as: int = RLIMIT_AS


@dataclass
class Run:
    case: Case
    argv: list[str]
    status: int
    seconds: float
    rss_mb: float
    cpu: float  # user + system seconds of the process (less sensitive to other load than `seconds`)
    stdout: str
    stderr: str
    left: list[str]
    verdict: str = ""


# -- inputs ----------------------------------------------------------------------------------

def dump(data) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


def arch_with(change) -> bytes:
    data = copy.deepcopy(BASE)
    change(data)
    return dump(data)


def setting(*keys, value):
    def change(data):
        target = data
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return change


ARCH_COMMANDS = [["costs", "{input}"], ["predict", "{input}", "--profile", "{profile}"],
                 ["measure", "{input}", "--steps", "1", "--warmup", "0"]]
ACCEPT_COMMANDS = [["costs", "{input}"], ["predict", "{input}", "--profile", "{profile}"]]


def arch_case(kind, name, content, **kw) -> Case:
    return Case(kind, name, kw.pop("commands", ARCH_COMMANDS), files={"arch.yaml": content}, **kw)


def base_lines() -> list[str]:
    return dump(BASE).decode().splitlines()


def duplicate_cases() -> list[Case]:
    text = dump(BASE).decode()
    cases = [arch_case("1", "batch twice (the issue's)", (text + "batch: 7\n").encode()),
             arch_case("1", "kernel twice in a flow layer (the issue's)",
                       text.replace("layers:\n", "layers:\n- {type: conv, filters: 8, kernel: 3, kernel: 5}\n", 1)
                       .encode())]
    for key in ("name", "dtype", "loss", "input", "optimizer", "layers"):
        cases.append(arch_case("1", f"top-level {key} twice", (text + f"{key}: {json.dumps(BASE[key])}\n").encode()))
    for key in ("height", "width", "channels"):
        cases.append(arch_case("1", f"input.{key} twice", text.replace("  height: 8\n", f"  height: 8\n  {key}: 9\n")
                               .encode() if key != "height" else text.replace("  height: 8\n", "  height: 8\n  height: 9\n")
                               .encode()))
    for key in ("lr", "momentum", "C"):
        cases.append(arch_case("1", f"optimizer.{key} twice", text.replace("  lr: 0.01\n", f"  lr: 0.01\n  {key}: 0.5\n")
                               .encode() if key != "lr" else text.replace("  lr: 0.01\n", "  lr: 0.01\n  lr: 0.5\n").encode()))
    for key, value in (("filters", 8), ("kernel", 1), ("padding", 0), ("stride", 1), ("pool", 1), ("type", "conv"),
                       ("activation", "none")):
        cases.append(arch_case("1", f"layer {key} twice", text.replace("  filters: 4\n", f"  filters: 4\n  {key}: {value}\n")
                               .encode() if key != "filters" else text.replace("  filters: 4\n", "  filters: 4\n  filters: 8\n")
                               .encode()))
    cases.append(arch_case("1", "units twice", text.replace("  units: 10\n", "  units: 10\n  units: 3\n").encode()))
    cases.append(arch_case("1", "merge key then the key twice",
                           (text + "base: &b {type: full, units: 10}\n").replace(
                               "layers:\n", "layers:\n- {<<: *b, units: 3, units: 4}\n", 1).encode()))
    return cases


def bomb(width: int, depth: int, target: str = "name") -> bytes:
    lines = [f"a0: &a0 [{', '.join(['1'] * width)}]"]
    for d in range(1, depth):
        lines.append(f"a{d}: &a{d} [{', '.join([f'*a{d - 1}'] * width)}]")
    lines.append(f"{target}: *a{depth - 1}")
    return ("\n".join(lines) + "\n").encode() + dump({k: v for k, v in BASE.items() if k != target})


def unbounded_cases() -> list[Case]:
    def link(target):
        return lambda path: os.symlink(target, path)

    def fifo(path):
        os.mkfifo(path)

    def directory(path):
        os.mkdir(path)

    def sock(path):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))  # left bound; the process ends the socket with the run's directory

    big_comment = b"#" + b"x" * (4 << 20) + b"\n" + dump(BASE)

    cases = [arch_case("2", "symlink to /dev/zero (the issue's)", link("/dev/zero")),
             arch_case("2", "a file of more than 4 MiB", lambda p: p.write_bytes(big_comment)),
             arch_case("2", "nested anchors, nine levels of nine (the issue's)", bomb(9, 9)),
             arch_case("2", "symlink to /dev/urandom", link("/dev/urandom")),
             arch_case("2", "a FIFO with no writer", fifo),
             arch_case("2", "a directory", directory),
             arch_case("2", "a Unix socket", sock),
             arch_case("2", "symlink to /proc/self/mem", link("/proc/self/mem")),
             arch_case("2", "two million list items", b"name: x\ninput: {height: 1, width: 1, channels: 1}\nlayers: ["
                       + b"1," * 2_000_000 + b"1]\n"),
             arch_case("2", "recursive alias", b"layers: &a [*a]\n" + dump({k: v for k, v in BASE.items() if k != "layers"})),
             arch_case("2", "undefined alias", b"name: *nope\n"),
             arch_case("2", "symlink loop", lambda p: (os.symlink(p.name + ".b", p), os.symlink(p.name, str(p) + ".b"))),
             arch_case("2", "dangling symlink", link("/nonexistent/arch.yaml")),
             arch_case("2", "a 3 MB name", lambda p: p.write_bytes(dump({**BASE, "name": "n" * (3 << 20)}))),
             arch_case("2", "a 1 MB unknown key", lambda p: p.write_bytes(dump({**BASE, "k" * (1 << 20): 1})))]
    for width, depth, target in ((2, 21, "name"), (4, 11, "layers"), (10, 7, "input"), (30, 5, "optimizer"),
                                 (1000, 3, "batch"), (100, 4, "name"), (3, 14, "bogus")):
        cases.append(arch_case("2", f"alias bomb {width}^{depth} in {target}", bomb(width, depth, target)))
    return cases


def nesting_cases() -> list[Case]:
    rest = dump({k: v for k, v in BASE.items() if k != "name"})
    cases = [arch_case("3", "600 brackets (the issue's)", b"name: " + b"[" * 600 + b"]" * 600 + b"\n" + rest),
             arch_case("3", "'1: 2' appended (the issue's)", dump(BASE) + b"1: 2\n")]
    for depth in (65, 1000, 100_000):
        cases.append(arch_case("3", f"{depth} nested lists", b"name: " + b"[" * depth + b"]" * depth + b"\n" + rest))
        cases.append(arch_case("3", f"{depth} nested mappings", b"name: " + b"{a: " * depth + b"1" + b"}" * depth
                               + b"\n" + rest))
    block = "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v: 1\n"
    cases.append(arch_case("3", "200 nested block mappings", dump(BASE) + ("extra:\n" + block).encode()))
    for key in ("1", "1.5", "on", "yes", "true", "null", "~", "2001-01-01", "0x10", "[1, 2]", "{a: 1}"):
        text = dump(BASE).decode()
        cases.append(arch_case("3", f"key {key!r} at top level", (text + f"{key}: 2\n").encode()
                               if not key.startswith(("[", "{")) else (text + f"? {key}\n: 2\n").encode()))
    for key in ("1", "on", "null"):
        text = dump(BASE).decode().replace("  units: 10\n", f"  units: 10\n  {key}: 3\n")
        cases.append(arch_case("3", f"key {key!r} in a layer", text.encode()))
        text = dump(BASE).decode().replace("  height: 8\n", f"  height: 8\n  {key}: 3\n")
        cases.append(arch_case("3", f"key {key!r} in input", text.encode()))
    return cases


def integer_cases() -> list[Case]:
    cases = [arch_case("4", "batch 10**19 (the issue's)", arch_with(setting("batch", value=10 ** 19))),
             arch_case("4", "1000000x1000000x1, 1000 filters of kernel 1, batch 100000 (the issue's)",
                       arch_with(lambda d: d.update(input={"height": 10 ** 6, "width": 10 ** 6, "channels": 1},
                                                    batch=100000, layers=[{"type": "conv", "filters": 1000, "kernel": 1},
                                                                          {"type": "full", "units": 10}])))]
    places = [("batch",), ("input", "height"), ("input", "width"), ("input", "channels"), ("layers", 0, "filters"),
              ("layers", 0, "kernel"), ("layers", 0, "padding"), ("layers", 0, "stride"), ("layers", 0, "pool"),
              ("layers", 1, "units")]
    for where in places:
        for value in (2 ** 63, 10 ** 30, -(2 ** 63) - 1):
            cases.append(arch_case("4", f"{'.'.join(map(str, where))} = {value:.3g}", arch_with(setting(*where, value=value))))
    text = dump(BASE).decode()
    cases.append(arch_case("4", "an integer of 5000 digits", text.replace("batch: 16", "batch: " + "9" * 5000).encode()))
    cases.append(arch_case("4", "a binary integer of 2000 digits", text.replace("batch: 16", "batch: 0b" + "1" * 2000).encode()))
    cases.append(arch_case("4", "a sexagesimal integer of 3000 parts", text.replace("batch: 16", "batch: " + ":".join(["59"] * 3000))
                           .encode()))
    for batch, hw, filters in ((2 ** 40, 1024, 1), (10 ** 9, 1000, 1000), (1, 3 * 10 ** 9, 1), (10 ** 17, 8, 4),
                               (2 ** 31, 2 ** 16, 1)):
        cases.append(arch_case("4", f"derived sizes overflow: batch {batch:.3g}, input {hw:.3g}^2, {filters} filters",
                               arch_with(lambda d, b=batch, h=hw, f=filters: d.update(
                                   batch=b, input={"height": h, "width": h, "channels": 1},
                                   layers=[{"type": "conv", "filters": f, "kernel": 1}, {"type": "full", "units": 10}]))))
    cases.append(arch_case("4", "full layer of 2**40 units after 2**30 inputs",
                           arch_with(lambda d: d.update(input={"height": 2 ** 15, "width": 2 ** 15, "channels": 1},
                                                        layers=[{"type": "full", "units": 2 ** 40}, {"type": "full", "units": 2}]))))
    return cases


MARKUP_NAMES = ["[/bold] x", "[bold]x", "[red]x[/red]", "[link=http://example.com]y[/link]", ":smile:", ":thumbs_up: :x:",
                "$x$", r"$\frac{1}{0}$", "$$", "$", "\\", "100% & _ { } # ~ ^", "[/]", "a\nb", "a\tb", "\x1b[31mred",
                "\u202eRTL", "𝕏 😀 emoji", "zero\u200bwidth", "<script>x</script>", "%s %d {0}", "n" * 256,
                "[" * 100, "\\textbf{x}", "'; DROP TABLE x; --"]


def markup_cases() -> list[Case]:
    cases = []
    for i, name in enumerate(MARKUP_NAMES):
        literal = name if name.isprintable() else None
        commands = ACCEPT_COMMANDS + ([["predict", "{input}", "--profile", "{profile}", "--plot", "p.png"]]
                                      if "$" in name else [])
        if i < 2:
            commands = commands + [["measure", "{input}", "--steps", "1", "--warmup", "0"]]
        # a control or format character would reach the terminal: refused (costmodel.model.arch._printable)
        cases.append(arch_case("5", f"name {name[:30]!r}", dump({**BASE, "name": name}),
                               expect="accept" if name.isprintable() else "refuse",
                               literal=literal, commands=commands))
    return cases


def optimizer_cases() -> list[Case]:
    cases = [arch_case("7", "lr .inf (the issue's)", dump(BASE).replace(b"lr: 0.01", b"lr: .inf"))]
    for key, value in (("lr", "-.inf"), ("lr", ".nan"), ("lr", "0"), ("lr", "-1"), ("lr", "1e400"), ("lr", "'0.1'"),
                       ("lr", "true"), ("lr", "[1]"), ("lr", "{a: 1}"), ("momentum", "1"), ("momentum", "1.5"),
                       ("momentum", "-0.1"), ("momentum", ".nan"), ("C", "0"), ("C", "-1"), ("C", ".inf"), ("C", "null")):
        old = {"lr": b"lr: 0.01", "momentum": b"momentum: 0.9", "C": b"C: 600.0"}[key]
        cases.append(arch_case("7", f"optimizer {key}: {value}", dump(BASE).replace(old, f"{key}: {value}".encode())))
    return cases


def message_cases() -> list[Case]:
    text = dump(BASE).decode()
    cases = [arch_case("11", "kernal (the issue's)", text.replace("kernel: 3", "kernal: 3").encode()),
             arch_case("11", "out_channels and kernel_size (the issue's)",
                       text.replace("filters: 4", "out_channels: 4").replace("kernel: 3", "kernel_size: 3").encode()),
             arch_case("11", "padding: full", text.replace("padding: 1", "padding: full").encode())]
    for old, new in (("name:", "nmae:"), ("input:", "inputs:"), ("batch:", "batch_size:"), ("dtype:", "dtyp:"),
                     ("loss:", "los:"), ("layers:", "lyers:"), ("optimizer:", "optimiser:"), ("height:", "heigth:"),
                     ("channels:", "chanels:"), ("lr:", "learning_rate:"), ("momentum:", "momentom:"),
                     ("filters:", "filter:"), ("stride:", "strides:"), ("pool:", "pool_size:"), ("units:", "out_features:"),
                     ("activation:", "act:"), ("type: conv", "kind: conv")):
        cases.append(arch_case("11", f"typo {new}", text.replace(old, new, 1).encode()))
    for where, value in ((("layers", 0, "kernel"), "3"), (("layers", 0, "kernel"), 2.5), (("layers", 0, "kernel"), True),
                         (("layers", 0, "kernel"), [3]), (("layers", 0, "kernel"), None), (("batch",), "128"),
                         (("name",), 5), (("name",), ["a"]), (("input",), [8, 8, 1]), (("layers",), {"a": 1}),
                         (("layers",), "conv"), (("layers", 0), "conv"), (("optimizer",), 0.1), (("dtype",), "float16"),
                         (("loss",), "hinge"), (("layers", 0, "activation"), "gelu"), (("layers", 0, "type"), "dense"),
                         (("layers", 0, "padding"), -1), (("layers", 0, "padding"), "1"), (("layers", 1, "units"), 0),
                         (("input", "height"), 0), (("name",), "")):
        cases.append(arch_case("11", f"{'.'.join(map(str, where))} = {value!r}", arch_with(setting(*where, value=value))))
    for drop in (("name",), ("input",), ("layers",), ("input", "width"), ("layers", 0, "kernel"), ("layers", 1, "units"),
                 ("layers", 0, "type")):
        def change(d, drop=drop):
            target = d
            for k in drop[:-1]:
                target = target[k]
            del target[drop[-1]]
        cases.append(arch_case("11", f"missing {'.'.join(map(str, drop))}", arch_with(change)))
    structural = [("conv after full", lambda d: d["layers"].append({"type": "conv", "filters": 1, "kernel": 1})),
                  ("no full layer at the end", lambda d: d["layers"].pop()),
                  ("kernel larger than the input", setting("layers", 0, "kernel", value=99)),
                  ("pool larger than the output", setting("layers", 0, "pool", value=99)),
                  ("no layers", setting("layers", value=[])),
                  ("stride beyond the input", setting("layers", 0, "stride", value=10 ** 6))]
    cases += [arch_case("11", name, arch_with(change)) for name, change in structural]
    raw = [("tab indentation", b"name: x\ninput:\n\theight: 8\n"), ("unclosed flow", b"name: [unclosed"),
           ("python tag", b"!!python/object/apply:os.system ['touch pwned']\n"),
           ("python name tag", b"name: !!python/name:os.system x\n"), ("binary name", b"name: !!binary aGVsbG8=\n"),
           ("two documents", dump(BASE) + b"---\n" + dump(BASE)), ("utf-16", dump(BASE).decode().encode("utf-16")),
           ("a NUL byte", b"name: a\x00b\n"), ("invalid UTF-8", b"name: \xff\xfe\n"), ("empty", b""),
           ("comments only", b"# nothing\n"), ("a list", b"- 1\n- 2\n"), ("a scalar", b"hello\n"),
           ("a set", b"!!set {a, b}\n"), ("a timestamp name", dump(BASE).replace(b"name: hostile-base", b"name: 2001-12-14")),
           ("10,001 layers", lambda p: p.write_bytes(dump({**BASE, "layers": [{"type": "full", "units": 2}] * 10_001}))),
           ("control characters in a key", dump({**BASE, "ke\x1by\n": 1}))]
    cases += [arch_case("11", name, content) for name, content in raw]
    return cases


def arch_inputs() -> list[Case]:
    return (duplicate_cases() + unbounded_cases() + nesting_cases() + integer_cases() + markup_cases()
            + optimizer_cases() + message_cases())


def profile_cases() -> list[Case]:
    ref = json.loads(REFERENCE.read_text())
    arch = dump(BASE)

    def prof(change) -> bytes:
        data = copy.deepcopy(ref)
        change(data)
        return json.dumps(data, indent=1).encode()

    def every_coef(value):
        def change(d):
            for e in d["entries"]:
                for m in e["ops"].values():
                    m["coef"] = [value] * len(m["coef"])
        return change

    commands = [["predict", "arch.yaml", "--profile", "{input}"]]

    def case(name, content, **kw):
        return Case("6", name, commands, files={"profile.json": content, "arch.yaml": arch}, input="profile.json", **kw)

    text = json.dumps(ref, indent=1)
    cases = [case("every coefficient -1e-6 (the issue's)", prof(every_coef(-1e-6))),
             case("every coefficient 1e308 (the issue's)", prof(every_coef(1e308))),
             case("coefficients as strings '1e-6' (the issue's)", prof(every_coef("1e-6"))),
             Case("1", "two 'entries' keys (the issue's)", commands, input="profile.json",
                  files={"profile.json": text.replace('"entries": [', '"entries": [], "entries": [', 1).encode(),
                         "arch.yaml": arch})]
    for value in (float("nan"), float("inf"), -float("inf"), True, None, [], {}, 2.0, 1e-300 * 1e-300 - 1e-9, 10 ** 30):
        cases.append(case(f"every coefficient {value!r}", prof(every_coef(value)).replace(b"Infinity", b"1e999")))
    first = next(iter(ref["entries"][0]["ops"]))
    for field_, value in (("interval", [0.5, 1e999]), ("interval", [2.0, 1.0]), ("interval", "wide"),
                          ("n_samples", 10 ** 30), ("n_samples", "40"), ("n_samples", 0), ("cv_error", -1),
                          ("features", []), ("features", ["flops", "flops"]), ("model", 5), ("extra", 1)):
        cases.append(case(f"op model {field_} = {value!r}",
                          prof(lambda d, f=field_, v=value: d["entries"][0]["ops"][first].__setitem__(f, v))
                          .replace(b"Infinity", b"1e999")))
    for name, change in (("unknown op", lambda d: d["entries"][0]["ops"].__setitem__("convmatmul", d["entries"][0]["ops"][first])),
                         ("peak 1e30 FLOP/s", lambda d: d["ceilings"]["matmul_flops_per_second"].__setitem__("float32", 1e30)),
                         ("bandwidth 1e-300 B/s", lambda d: d["ceilings"]["bandwidth"][0].__setitem__("bytes_per_second", 1e-300)),
                         ("threads 0", lambda d: d["entries"][0].__setitem__("threads", 0)),
                         ("threads '2'", lambda d: d["entries"][0].__setitem__("threads", "2")),
                         ("schema_version 2", lambda d: d.__setitem__("schema_version", 2)),
                         ("schema_version '1'", lambda d: d.__setitem__("schema_version", "1")),
                         ("no schema_version", lambda d: d.pop("schema_version")),
                         ("created without a time zone", lambda d: d.__setitem__("created", "2025-01-01T00:00:00")),
                         ("created not a date", lambda d: d.__setitem__("created", "yesterday")),
                         ("no entries' ops", lambda d: d["entries"][0].__setitem__("ops", {})),
                         ("two entries for one setting", lambda d: d["entries"].append(d["entries"][0]))):
        cases.append(case(name, prof(change)))
    dup_op = text.replace('"coef": [', '"coef": [1], "coef": [', 1).encode()
    cases += [case("a duplicate coef key", dup_op),
              case("a duplicate key in the fingerprint", text.replace('"cpu_model":', '"cpu_model": "x", "cpu_model":', 1).encode()),
              case("not JSON", b"{not json"), case("empty", b""), case("a JSON list", b"[1, 2]"),
              case("truncated", text.encode()[:700]), case("an integer of 5000 digits", b'{"schema_version": ' + b"9" * 5000 + b"}"),
              case("100,000 nested lists", b'{"schema_version": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
              case("NaN as a number", text.replace('"threads": 2', '"threads": NaN', 1).encode()),
              case("invalid UTF-8", b'{"schema_version": 1, "x": "\xff"}'),
              case("symlink to /dev/zero", lambda p: os.symlink("/dev/zero", p)),
              case("a directory", lambda p: os.mkdir(p)),
              case("a FIFO", lambda p: os.mkfifo(p)),
              case("20 MB of spaces then a profile", lambda p: p.write_bytes(b" " * (20 << 20) + text.encode()))]
    return cases


def npz_bytes(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                inner = io.BytesIO()
                np.lib.format.write_array(inner, value, allow_pickle=True)
                value = inner.getvalue()
            zf.writestr(name, value)
    return buf.getvalue()


def lying_header(shape) -> bytes:
    """An .npy member whose header declares `shape` (float64) over 16 bytes of data."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * 16


def bomb_npz(n_bytes: int, shape) -> bytes:
    """A zip whose X.npy expands to n_bytes of zeros (deflate, ~1000:1), written in chunks."""
    import io
    import zlib

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    head = header.getvalue()
    body = n_bytes - len(head)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunks, crc = [comp.compress(head)], zlib.crc32(head)
    zero = bytes(1 << 20)
    left = body
    while left > 0:
        piece = zero[:min(left, len(zero))]
        chunks.append(comp.compress(piece))
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    chunks.append(comp.flush())
    data = b"".join(chunks)
    raw = bytearray()
    # a local header, the deflated data, a central directory, written by hand
    import struct

    name = b"X.npy"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), n_bytes, len(name), 0) + name
    raw += local + data
    y = io.BytesIO()
    np.lib.format.write_array(y, np.zeros(shape[0] if shape[0] < 10 ** 6 else 1, dtype=np.int64))
    yname, ydata = b"y.npy", y.getvalue()
    yoff = len(raw)
    raw += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(ydata), len(ydata), len(ydata),
                       len(yname), 0) + yname + ydata
    cd = len(raw)
    raw += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), n_bytes, len(name),
                       0, 0, 0, 0, 0, 0) + name
    raw += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(ydata), len(ydata),
                       len(ydata), len(yname), 0, 0, 0, 0, 0, yoff) + yname
    raw += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, len(raw) - cd, cd, 0)
    return bytes(raw)


def npz_cases(quick: bool) -> list[Case]:
    arch = dump(BASE)
    X = np.random.default_rng(0).random((40, 8, 8, 1))
    y = np.arange(40) % 10
    commands = [["train", "arch.yaml", "--data", "{input}", "--epochs", "1"]]

    def case(name, content, kind="8"):
        return Case(kind, name, commands, files={"data.npz": content, "arch.yaml": arch}, input="data.npz")

    bad_x = X.copy()
    bad_x[3, 2, 1, 0] = np.nan
    inf_x = X.copy()
    inf_x[0, 0, 0, 0] = np.inf
    cases = [case("members X and y without .npy (the issue's)", npz_bytes({"X": X.tobytes(), "y": y.tobytes()})),
             case("a header declaring a 7 TB X (the issue's)", npz_bytes({"X.npy": lying_header((10 ** 11, 8, 8, 1)),
                                                                           "y.npy": y})),
             case("a zip bomb (the issue's, smaller: 200 MB of zeros)" if quick else "a zip bomb of 2.6 GB (the issue's)",
                  lambda p: p.write_bytes(bomb_npz((200 << 20) if quick else int(2.6e9),
                                                   ((200 << 20) // 64 // 8 - 1, 8, 8, 1)))),
             case("a zip bomb with the wrong shape", lambda p: p.write_bytes(bomb_npz(100 << 20, (100, 1000, 1000)))),
             case("NaN in X (the issue's)", npz_bytes({"X.npy": bad_x, "y.npy": y})),
             case("infinity in X", npz_bytes({"X.npy": inf_x, "y.npy": y})),
             case("labels outside the classes", npz_bytes({"X.npy": X, "y.npy": y + 5})),
             case("negative labels", npz_bytes({"X.npy": X, "y.npy": y - 20})),
             case("float labels", npz_bytes({"X.npy": X, "y.npy": y.astype(float)})),
             case("object arrays (pickles)", npz_bytes({"X.npy": np.array([{"a": 1}] * 40, dtype=object), "y.npy": y})),
             case("an extra member", npz_bytes({"X.npy": X, "y.npy": y, "evil.npy": y})),
             case("a member given twice", npz_bytes({"X.npy": X, "y.npy": y}) + b""),
             case("X of the wrong shape", npz_bytes({"X.npy": X.reshape(40, 64), "y.npy": y})),
             case("X complex", npz_bytes({"X.npy": X.astype(complex), "y.npy": y})),
             case("X strings", npz_bytes({"X.npy": np.array(["a"] * 40), "y.npy": y})),
             case("y of another length", npz_bytes({"X.npy": X, "y.npy": y[:5]})),
             case("a header declaring more than the member", npz_bytes({"X.npy": lying_header((40, 8, 8, 1)), "y.npy": y})),
             case("a header with a negative dimension", npz_bytes({"X.npy": lying_header((-1, 8, 8, 1)), "y.npy": y})),
             case("not a zip", b"hello"), case("an .npy, not an .npz", X.tobytes()),
             case("a truncated zip", npz_bytes({"X.npy": X, "y.npy": y})[:300]),
             case("a directory", lambda p: os.mkdir(p)), case("symlink to /dev/zero", lambda p: os.symlink("/dev/zero", p)),
             case("a FIFO", lambda p: os.mkfifo(p)),
             case("a corrupt member (bad CRC)", npz_bytes({"X.npy": X, "y.npy": y}).replace(X.tobytes()[:64], bytes(64), 1))]
    # a zip with the same member twice
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, value in (("X.npy", X), ("X.npy", X), ("y.npy", y)):
                inner = io.BytesIO()
                np.lib.format.write_array(inner, value)
                zf.writestr(name, inner.getvalue())
    cases[11] = case("a member given twice", buf.getvalue())
    return cases


def cli_cases() -> list[Case]:
    arch = dump(BASE)
    options = [("--batch", "0"), ("--batch", "-1"), ("--batch", "100000000000000000000000"), ("--batch", "10**23"),
               ("--batch", "abc"), ("--batch", "1e3"), ("--batch", ""), ("--batch", str(2 ** 63)),
               ("--batch", str(2 ** 62)), ("--batch", "100000000000000000"), ("--threads", "0"),
               ("--threads", "1000000000"), ("--threads", "two"), ("--impl", "fast"), ("--format", "xml"),
               ("--bogus", None)]
    cases = []
    for option, value in options:
        for command in (["costs", "arch.yaml"], ["predict", "arch.yaml", "--profile", "{profile}"],
                        ["measure", "arch.yaml", "--steps", "1", "--warmup", "0"]):
            argv = command + [option] + ([value] if value is not None else [])
            cases.append(Case("4" if option == "--batch" else "cli", f"{' '.join(argv[:1])} {option} {value}", [argv],
                              files={"arch.yaml": arch}, input="arch.yaml",
                              names=option if not (option == "--batch" and value and value.isdigit() and int(value) < 2 ** 63)
                              else "batch"))
    for argv, names in ((["measure", "arch.yaml", "--steps", "0"], "--steps"),
                        (["measure", "arch.yaml", "--steps", "1000000000000"], "--steps"),
                        (["measure", "arch.yaml", "--warmup", "-1"], "--warmup"),
                        (["predict", "arch.yaml", "--by", "nothing"], "--by"),
                        (["predict", "arch.yaml", "--backend", "jax"], "--backend"),
                        (["predict", "arch.yaml", "--profile", "{profile}", "--plot", "x.txt"], "--plot"),
                        (["predict", "arch.yaml", "--profile", "{profile}", "--plot", "/proc/x.png"], "/proc/x.png"),
                        (["predict", "arch.yaml", "--profile", "/dev/zero"], "/dev/zero"),
                        (["predict", "arch.yaml", "--profile", "nothing.json"], "nothing.json"),
                        (["train", "arch.yaml", "--data", "/dev/zero", "--epochs", "1"], "/dev/zero"),
                        (["train", "arch.yaml", "--data", "nothing.npz"], "nothing.npz"),
                        (["train", "arch.yaml", "--data", "digits", "--epochs", "0"], "--epochs"),
                        (["train", "arch.yaml", "--data", "digits", "--seed", "-1"], "--seed"),
                        (["calibrate", "--quick", "--dtype", "float16", "-o", "p.json"], "--dtype"),
                        (["sweep", "arch.yaml", "--profile", "{profile}", "--vary", "batch=1,x"], "batch=x"),
                        (["costs", "nothing.yaml"], "nothing.yaml")):
        cases.append(Case("cli", " ".join(argv), [argv], files={"arch.yaml": arch}, input="arch.yaml", names=names))
    cases.append(Case("4", "--batch 10**14 on a small network (huge, but every count fits: accepted)",
                      [["costs", "{input}", "--batch", "100000000000000"]], files={"arch.yaml": arch}, expect="accept"))
    # kind 9: PyTorch's step of a 1024x1024x3 input at batch 2048 (the issue's); a step under ulimit -v
    big = dump({**BASE, "input": {"height": 1024, "width": 1024, "channels": 3}})
    cases.append(Case("9", "measure --backend torch, 1024x1024x3 at batch 2048 (the issue's)",
                      [["measure", "{input}", "--backend", "torch", "--batch", "2048", "--steps", "1"]],
                      files={"arch.yaml": big}, names="at batch 2048"))
    mid = dump({**BASE, "input": {"height": 128, "width": 128, "channels": 3},
                "layers": [{"type": "conv", "filters": 64, "kernel": 5, "padding": 2}, {"type": "full", "units": 10}]})
    cases.append(Case("9", "a 2.7 GiB step under ulimit -v 1 GiB (the issue's)",
                      [["measure", "{input}", "--batch", "128", "--steps", "1"],
                       ["train", "{input}", "--data", "digits", "--batch", "128"]],
                      files={"arch.yaml": mid}, rlimit_as=1 << 30, names="RLIMIT_AS"))
    cases.append(Case("9", "compare --backends torch of a 1024x1024x3 input",
                      [["compare", "{input}", "--backends", "torch", "--batch", "2048", "--profile", "{profile}"]],
                      files={"arch.yaml": big}, names="GiB"))
    return cases


def output_cases() -> list[Case]:
    arch = dump(BASE)
    cmd = lambda out: [["calibrate", "--quick", "-o", out]]  # noqa: E731
    cases = [Case("10", "-o notes.txt, an existing file that is not a profile (the issue's)", cmd("{input}"),
                  files={"notes.txt": b"my notes\n"}, input="notes.txt"),
             Case("10", "-o /proc/x (the issue's)", cmd("/proc/x"), names="/proc/x"),
             Case("10", "-o an existing directory (the issue's)", cmd("{input}"), files={"d": lambda p: os.mkdir(p)},
                  input="d"),
             Case("10", "-o a path under a regular file (the issue's)", cmd("f/profile.json"), files={"f": b"x"},
                  names="f/profile.json"),
             Case("10", "-o /dev/null", cmd("/dev/null"), names="/dev/null"),
             Case("10", "-o a symlink to /dev/zero", cmd("{input}"), files={"z.json": lambda p: os.symlink("/dev/zero", p)},
                  input="z.json"),
             Case("10", "-o an empty file", cmd("{input}"), files={"e.json": b""}, input="e.json"),
             Case("10", "-o JSON that is not a profile", cmd("{input}"), files={"j.json": b'{"a": 1}'}, input="j.json"),
             Case("10", "-o the architecture file", cmd("{input}"), files={"arch.yaml": arch}),
             Case("10", "-o in a read-only place (/sys)", cmd("/sys/profile.json"), names="/sys/profile.json")]
    return cases


def signal_cases() -> list[Case]:
    arch = dump({**BASE, "input": {"height": 64, "width": 64, "channels": 3}})
    cases = []
    for sig, after in ((signal.SIGTERM, 2.5), (signal.SIGINT, 2.5)):
        cases.append(Case("signal", f"{sig.name} during measure", [["measure", "{input}", "--steps", "100000"]],
                          files={"arch.yaml": arch}, signal=(sig, after), names=None))
        cases.append(Case("signal", f"{sig.name} during train", [["train", "{input}", "--data", "digits", "--epochs",
                                                                   "100000"]], files={"arch.yaml": dump(BASE)},
                          signal=(sig, after + 1.5), names=None))
        cases.append(Case("signal", f"{sig.name} during calibrate -o", [["calibrate", "--quick", "-o", "p.json"]],
                          signal=(sig, after + 1.0), names=None))
    return cases


def printing_cases() -> list[Case]:
    """Kind 12: a 10,000-layer network's tables (accepted; their time is printed, not judged)."""
    def deep(path):
        path.write_bytes(dump({**BASE, "layers": [{"type": "full", "units": 10}] * 10_000}))

    return [Case("12", "a 10,000-layer network's costs table", [["costs", "{input}"]], expect="accept",
                 files={"arch.yaml": deep}),
            Case("12", "a 10,000-layer network's predicted table",
                 [["predict", "{input}", "--profile", "{profile}"]], expect="accept", files={"arch.yaml": deep})]


def all_cases(quick: bool) -> list[Case]:
    cases = (arch_inputs() + profile_cases() + npz_cases(quick) + cli_cases() + output_cases() + signal_cases()
             + ([] if quick else printing_cases()))
    if quick:  # the examples and a few of each kind
        picked, seen = [], {}
        for c in cases:
            if "the issue's" in c.name or seen.get(c.kind, 0) < 2:
                seen[c.kind] = seen.get(c.kind, 0) + 1
                picked.append(c)
        cases = [c for c in picked if c.signal is None or c.signal[0] == signal.SIGTERM][:60]
    return cases


# -- running ---------------------------------------------------------------------------------

def _listing(directory: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), directory))
    return sorted(out)


def _limit(as_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
        os.setsid()
    return apply


def run_case(case: Case, work: Path, env: dict) -> list[Run]:
    runs = []
    for i, command in enumerate(case.commands):
        directory = work / f"run{i}"
        directory.mkdir(parents=True)
        for name, content in case.files.items():
            target = directory / name
            if callable(content):
                content(target)
            else:
                target.write_bytes(content)
        profile = directory / "reference.json"
        shutil.copyfile(REFERENCE, profile)
        argv = [a.replace("{input}", case.input).replace("{profile}", "reference.json") for a in command]
        before = _listing(directory)
        out, err = directory.parent / f"out{i}", directory.parent / f"err{i}"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            start = time.perf_counter()
            proc = subprocess.Popen(CLI + argv, cwd=directory, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=_limit(case.rlimit_as))
            sent = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                elapsed = time.perf_counter() - start
                if case.signal and not sent and elapsed >= case.signal[1]:
                    os.kill(proc.pid, case.signal[0])
                    sent = True
                if elapsed > TIMEOUT:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    status = -1 << 8  # marked as a timeout below
                    break
                time.sleep(0.005)
            seconds = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status) if status != -1 << 8 else -999
        stdout = out.read_bytes().decode("utf-8", "replace")
        stderr = err.read_bytes().decode("utf-8", "replace")
        after = [p for p in _listing(directory) if p not in ("p.png",) or case.expect != "accept"]
        left = sorted(set(after) - set(before))
        runs.append(Run(case, argv, proc.returncode, seconds, usage.ru_maxrss / 1024,
                        usage.ru_utime + usage.ru_stime, stdout, stderr, left))
    return runs


def judge(run: Run) -> str:
    case = run.case
    if run.status == -999:
        return "timeout"
    if "Traceback" in run.stderr or "Traceback" in run.stdout:
        return "traceback"
    lines = run.stderr.splitlines()
    errors = [line for line in lines if line.startswith("costmodel: error:")]
    if case.expect == "accept":
        if run.status != 0:
            return "wrongly refused"
        if case.literal and "".join(case.literal.split()) not in "".join(run.stdout.split()):  # titles wrap
            return "not printed literally"
        return "accepted"
    if run.status == 0:
        return "silently accepted"
    wanted = {signal.SIGTERM: (143,), signal.SIGINT: (130,)}.get(case.signal[0], (2,)) if case.signal else (2,)
    if run.status not in wanted:
        return f"unclean: exit {run.status}"
    if case.signal:  # progress lines may come first; the last line is the one error line
        if not lines or not lines[-1].startswith("costmodel: error:") or len(errors) != 1:
            return "unclean: no error line last"
    elif len(lines) != 1 or not errors:
        return "unclean: not one line"
    if case.names:
        places = [p.replace("{input}", case.input) for p in
                  (case.names if isinstance(case.names, tuple) else (case.names,))]
        if not any(p in errors[0] for p in places):
            return f"unclean: does not name {places[0]!r}"
    if run.left:
        return f"unclean: left {run.left[:3]}"
    return "refused"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few dozen inputs, one or two of each kind")
    parser.add_argument("--only", nargs="*", help="only these kinds (1..12, cli, signal)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every run")
    args = parser.parse_args()
    cases = all_cases(args.quick)
    if args.only:
        cases = [c for c in cases if c.kind in args.only]
    work = Path(tempfile.mkdtemp(prefix="costmodel-hostile-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache"), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    runs: list[Run] = []
    try:
        for n, case in enumerate(cases):
            for run in run_case(case, work / f"case{n}", env):
                shutil.rmtree(work / f"case{n}", ignore_errors=True)
                run.verdict = judge(run)
                runs.append(run)
                if args.verbose or run.verdict not in ("refused", "accepted"):
                    first = (run.stderr.splitlines() or [""])[0]
                    print(f"[{run.verdict}] kind {case.kind}: {case.name} | costmodel {' '.join(run.argv)[:80]} | "
                          f"exit {run.status}, {run.seconds:.2f} s, {run.rss_mb:.0f} MB | {first[:160]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(cases, runs)


def report(cases: list[Case], runs: list[Run]) -> dict:
    refused = [r for r in runs if r.verdict == "refused"]
    signals = [r for r in refused if r.case.signal]
    plain = [r for r in refused if not r.case.signal]
    summary = {
        "inputs": len(cases), "tried": len(runs), "refused cleanly": len(refused),
        "accepted as expected": sum(r.verdict == "accepted" for r in runs),
        "tracebacks": sum(r.verdict == "traceback" for r in runs),
        "silently accepted": sum(r.verdict == "silently accepted" for r in runs),
        "other failures": sum(r.verdict not in ("refused", "accepted", "traceback", "silently accepted") for r in runs),
    }
    print()
    for key, value in summary.items():
        print(f"{key:>22}: {value}")
    if plain:
        slow = max(plain, key=lambda r: r.seconds)
        busy = max(plain, key=lambda r: r.cpu)
        big = max(plain, key=lambda r: r.rss_mb)
        long_ = max(plain, key=lambda r: len(r.stderr.strip()))
        print(f"{'slowest refusal':>22}: {slow.seconds:.2f} s ({slow.case.name}: costmodel {' '.join(slow.argv)[:60]})")
        print(f"{'most CPU in a refusal':>22}: {busy.cpu:.2f} s user+system ({busy.case.name}: costmodel "
              f"{' '.join(busy.argv)[:60]})")
        print(f"{'largest RSS':>22}: {big.rss_mb:.0f} MB ({big.case.name}: costmodel {' '.join(big.argv)[:60]})")
        print(f"{'longest message':>22}: {len(long_.stderr.strip())} characters ({long_.case.name})")
        over = [r for r in plain if r.seconds > MAX_SECONDS or r.rss_mb > MAX_RSS_MB
                or len(r.stderr.strip()) >= MAX_MESSAGE]
        print(f"{'beyond the targets':>22}: {len(over)} of {len(plain)} refusals "
              f"(> {MAX_SECONDS} s, > {MAX_RSS_MB} MB or >= {MAX_MESSAGE} characters)")
        for r in over[:20]:
            print(f"    {r.seconds:.2f} s ({r.cpu:.2f} s CPU), {r.rss_mb:.0f} MB, {len(r.stderr.strip())} chars: {r.case.name} "
                  f"(costmodel {' '.join(r.argv)[:50]})")
        summary.update(slowest=slow.seconds, most_cpu=busy.cpu, largest_rss_mb=big.rss_mb, longest_message=len(long_.stderr.strip()),
                       beyond_targets=len(over))
    if signals:
        print(f"{'signals':>22}: {len(signals)} runs interrupted cleanly")
    for r in runs:
        if r.case.kind == "12":
            print(f"{'printing':>22}: {r.seconds:.1f} s, {r.rss_mb:.0f} MB: {r.case.name} ({r.verdict})")
    return summary


if __name__ == "__main__":
    main()
