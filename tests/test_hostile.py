"""Hostile input (issue 12): every example of the issue, and at least three more of each kind.

A refusal is one line naming the place, exit status 2 (130/143 for signals), no traceback,
nothing left on disk; nothing is read or allocated without bound; names print literally.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import multiprocessing
import os
import stat
import random
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cli import _one_line, app
from costmodel.errors import ArchError, UsageError
from costmodel.files import atomic_write, clean_stale_temps, locked, read_regular
from costmodel.machine.profile import embedded_profile_path, load_profile
from costmodel.model import yamlload
from costmodel.model.arch import MAX_LAYERS, load_arch, parse_arch
from costmodel.present.report import render_table

from tests.conftest import ROOT

REFERENCE = embedded_profile_path()
BASE = {
    "name": "hostile-base",
    "input": {"height": 8, "width": 8, "channels": 1},
    "batch": 16,
    "optimizer": {"lr": 0.01, "momentum": 0.9, "C": 600.0},
    "layers": [{"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "pool": 2},
               {"type": "full", "units": 10}],
}


def text_of(data=None, **changes) -> str:
    data = copy.deepcopy(BASE if data is None else data)
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def arch_file(tmp_path: Path, content: str | bytes, name: str = "arch.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def refuse(tmp_path: Path, content: str | bytes, *fragments: str) -> str:
    """load_arch refuses the file in one line that starts with its path and holds `fragments`."""
    path = arch_file(tmp_path, content)
    with pytest.raises(ArchError) as info:
        load_arch(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < 300 + len(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def cli(args: list[str], cwd: Path | None = None):
    """The command line, in process: (exit status, stdout, stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_refusal(args, *fragments, status=2):
    code, out, err = cli(args)
    assert code == status, (code, err)
    assert err.count("\n") == 1 and err.startswith("costmodel: error: "), err
    assert "Traceback" not in err and out == ""
    for fragment in fragments:
        assert fragment in err, err
    return err


def run_cli(args, cwd, timeout=60, preexec_fn=None):
    """The command line as its own process (for signals, limits and real files)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / ".cache-home")}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, preexec_fn=preexec_fn)


# == 1. duplicate keys ===========================================================================

def test_kind1_top_level_batch_twice_is_refused(tmp_path):  # the issue's
    refuse(tmp_path, text_of() + "batch: 7\n", "duplicate key 'batch'", "first given at line")


def test_kind1_kernel_twice_in_a_flow_layer_is_refused(tmp_path):  # the issue's
    text = text_of().replace("layers:\n", "layers:\n- {type: conv, filters: 8, kernel: 3, kernel: 5}\n", 1)
    refuse(tmp_path, text, "line ", "duplicate key 'kernel'")


def test_kind1_profile_with_two_entries_keys_is_refused(tmp_path):  # the issue's
    text = REFERENCE.read_text().replace('"entries": [', '"entries": [], "entries": [', 1)
    path = arch_file(tmp_path, text, "profile.json")
    with pytest.raises(UsageError, match=r"profile.json: duplicate key 'entries'"):
        load_profile(path)


@pytest.mark.parametrize("old, new, key", [
    ("  height: 8\n", "  height: 8\n  height: 9\n", "height"),
    ("  lr: 0.01\n", "  lr: 0.01\n  lr: 0.5\n", "lr"),
    ("  units: 10\n", "  units: 10\n  units: 3\n", "units"),
])
def test_kind1_duplicates_in_nested_block_mappings(tmp_path, old, new, key):
    refuse(tmp_path, text_of().replace(old, new), f"duplicate key {key!r}")


def test_kind1_duplicate_deep_in_a_profile_names_its_place(tmp_path):
    text = REFERENCE.read_text().replace('"coef": [', '"coef": [1], "coef": [', 1)
    path = arch_file(tmp_path, text, "profile.json")
    with pytest.raises(UsageError) as info:
        load_profile(path)
    assert f"{path}: entries[0]: ops: " in str(info.value) and "duplicate key 'coef'" in str(info.value)


def test_kind1_a_merge_key_may_be_overridden_once(tmp_path):
    base = "shared: &s {type: full, units: 10}\n" + text_of()
    good = base.replace("- type: full\n  units: 10\n", "- {<<: *s, units: 10}\n")
    with pytest.raises(ArchError, match="unknown key 'shared'"):  # parsed: the merge itself is fine
        load_arch(arch_file(tmp_path, good))
    assert yamlload.load("a: &a {k: 1}\nb: {<<: *a, k: 2}\n") == {"a": {"k": 1}, "b": {"k": 2}}
    with pytest.raises(yamlload.YAMLLimitError, match="duplicate key 'k'"):
        yamlload.load("a: &a {k: 1}\nb: {<<: *a, k: 2, k: 3}\n")


# == 2. unbounded reads and expansions ===========================================================

NESTED_ANCHORS = "".join(
    [f"a: &a [{', '.join(['1'] * 9)}]\n"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")]
) + "name: *i\n"


def test_kind2_symlink_to_dev_zero_is_not_read(tmp_path):  # the issue's
    path = tmp_path / "arch.yaml"
    path.symlink_to("/dev/zero")
    with pytest.raises(ArchError, match="a character device, not a regular file"):
        load_arch(path)


def test_kind2_nested_anchors_are_refused_at_once_with_a_short_message(tmp_path):  # the issue's
    assert len(NESTED_ANCHORS) < 600
    start = time.process_time()
    message = refuse(tmp_path, NESTED_ANCHORS + text_of().split("\n", 1)[1], "aliases are expanded")
    assert len(message) < 300 + len(str(tmp_path))
    assert time.process_time() - start < 30  # not a timing test: it must not expand 9**9 values


@pytest.mark.parametrize("make, fragment", [
    (lambda p: os.mkfifo(p), "a FIFO, not a regular file"),  # opening must not block
    (lambda p: os.mkdir(p), "a directory, not a regular file"),
    (lambda p: p.write_bytes(b"#" * ((4 << 20) + 1)), "more than the 4 MiB"),
    (lambda p: p.symlink_to("/dev/urandom"), "a character device"),
])
def test_kind2_only_regular_files_of_a_sane_size_are_read(tmp_path, make, fragment):
    path = tmp_path / "arch.yaml"
    make(path)
    with pytest.raises(ArchError, match=fragment):
        load_arch(path)


def test_kind2_read_regular_stops_at_its_limit_for_files_without_a_size(tmp_path):
    # /proc files report size 0 and yield more: the read stops at limit + 1
    with pytest.raises(UsageError, match="more than the 16 bytes"):
        read_regular("/proc/self/maps", limit=16)


def test_kind2_values_in_messages_are_cut_short(tmp_path):
    message = refuse(tmp_path, text_of(name=["x" * 100_000] * 10), "name: ", "has the wrong type")
    assert len(message) < 200 + len(str(tmp_path))
    message = refuse(tmp_path, text_of() + "? " + "k" * 100_000 + "\n: 1\n", "unknown key 'kkkk")
    assert len(message) < 200 + len(str(tmp_path))


def test_kind2_recursive_and_wide_aliases(tmp_path):
    refuse(tmp_path, "layers: &a [*a]\n" + text_of(), "recursive")
    wide = "a: &a [" + ", ".join(["1"] * 1000) + "]\nb: &b [" + ", ".join(["*a"] * 1000) + "]\nname: *b\n"
    refuse(tmp_path, wide, "aliases are expanded")


def test_kind2_a_file_of_millions_of_values_is_refused_before_it_is_composed(tmp_path):
    refuse(tmp_path, "name: x\nlayers: [" + "1," * 400_000 + "1]\n", "YAML values", "more than the 300,000")


# == 3. nesting and key types ===================================================================

def test_kind3_600_brackets_are_refused(tmp_path):  # the issue's
    refuse(tmp_path, "name: " + "[" * 600 + "]" * 600 + "\n", "nested more than 64 levels")


def test_kind3_an_integer_key_is_refused_naming_its_line(tmp_path):  # the issue's
    text = text_of()
    refuse(tmp_path, text + "1: 2\n", f"line {text.count(chr(10)) + 1}", "the key '1' is read as an integer")


@pytest.mark.parametrize("key, kind", [("on", "a boolean"), ("~", "null"), ("2001-01-01", "a date"),
                                       ("1.5", "a number")])
def test_kind3_keys_that_are_not_text(tmp_path, key, kind):
    refuse(tmp_path, text_of() + f"{key}: 2\n", f"is read as {kind}, not text")


def test_kind3_deep_mappings_and_list_keys(tmp_path):
    refuse(tmp_path, "name: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nest")  # libyaml's or ours
    refuse(tmp_path, text_of() + "? [1, 2]\n: 3\n", "a list used as a key")


def test_kind3_deep_json_in_a_profile(tmp_path):
    path = arch_file(tmp_path, '{"schema_version": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "p.json")
    with pytest.raises(UsageError, match="p.json: "):
        load_profile(path)


def test_kind3_error_places_with_odd_locs():
    from costmodel.model.messages import loc_to_place

    assert loc_to_place((1,)) == "[1]: "
    assert loc_to_place((0, "x", 2)) == "[0]: x[2]: "


# == 4. integers beyond int64 ===================================================================

def test_kind4_batch_beyond_int64_in_the_file(tmp_path):  # the issue's
    refuse(tmp_path, text_of(batch=10_000_000_000_000_000_000), "batch: 10000000000000000000 is larger than int64")


def usage_refusal(tmp_path, args, *fragments):
    """The console script's usage errors (click's, before any command runs): one line, exit 2."""
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("costmodel: error: ") and proc.stdout == ""
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_kind4_batch_option_beyond_int64_is_one_line_naming_it(tmp_path):  # the issue's
    path = arch_file(tmp_path, text_of())
    usage_refusal(tmp_path, ["costs", path, "--batch", str(10 ** 23)], "--batch", "9223372036854775807")
    usage_refusal(tmp_path, ["predict", path, "--batch", "10**23"], "--batch")


def test_kind4_sizes_whose_products_leave_int64_are_refused(tmp_path):  # the issue's
    content = text_of(input={"height": 1_000_000, "width": 1_000_000, "channels": 1}, batch=100_000,
                      layers=[{"type": "conv", "filters": 1000, "kernel": 1}, {"type": "full", "units": 10}])
    refuse(tmp_path, content, "layers[0] (conv): ", "int64")


@pytest.mark.parametrize("where, value, fragment", [
    (("layers", 0, "filters"), 2 ** 63, "layers[0] (conv): filters: 9223372036854775808 is larger than int64"),
    (("layers", 1, "units"), 10 ** 30, "layers[1] (full): units: 1000000000000000000000000000000 is larger"),
    (("input", "height"), 2 ** 62, "input: the mini-batch of inputs Z^1 (I a b d) has 5.9e+20 elements"),
])
def test_kind4_any_integer_field(tmp_path, where, value, fragment):
    data = copy.deepcopy(BASE)
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    refuse(tmp_path, text_of(data), fragment)


def test_kind4_integer_literals_of_thousands_of_digits(tmp_path):
    refuse(tmp_path, text_of().replace("batch: 16", "batch: " + "9" * 5000), "an integer of 5,000 characters")


def test_kind4_a_batch_that_makes_the_step_overflow(tmp_path):
    arch = parse_arch(BASE)
    with pytest.raises(ArchError, match="batch 1000000000000000: .*int64"):
        arch.with_batch(10 ** 15)
    path = arch_file(tmp_path, text_of())
    one_line_refusal(["costs", path, "--batch", str(2 ** 62)], "int64")


def test_kind4_profile_integers_beyond_int64(tmp_path):
    data = json.loads(REFERENCE.read_text())
    first = next(iter(data["entries"][0]["ops"]))
    data["entries"][0]["ops"][first]["n_samples"] = 10 ** 30
    path = arch_file(tmp_path, json.dumps(data), "p.json")
    with pytest.raises(UsageError, match=f"entries\\[0\\]: ops: {first}: n_samples: .* beyond int64"):
        load_profile(path)


# == 5. markup in names =========================================================================

MARKUP = "[/bold] x $\\frac{a}{b}$ :smile: [red]y[/red]"


@pytest.mark.parametrize("command", [["costs"], ["predict", "--profile", str(REFERENCE)],
                                     ["sweep", "--vary", "batch=1,2", "--profile", str(REFERENCE)]])
def test_kind5_markup_in_a_name_prints_literally(tmp_path, command):  # the issue's
    path = arch_file(tmp_path, text_of(name=MARKUP))
    code, out, err = cli([command[0], path, *command[1:]])
    assert code == 0, err
    assert MARKUP in out and "Traceback" not in err


@pytest.mark.parametrize("name", ["\x1b[31mRED\x1b]0;title\x07", "a\nb", "a\tb", "\u202eRTL", "zero\u200bwidth"])
def test_kind5_a_control_or_format_character_in_a_name_is_refused(tmp_path, name):
    """An escape sequence in a name would set the terminal's title or colours from every table."""
    path = arch_file(tmp_path, text_of(name=name))
    one_line_refusal(["costs", path], "name: character U+", "is not printable")


@pytest.mark.slow
def test_kind5_markup_after_measure(tmp_path):  # the issue's: after measure has run its steps
    path = arch_file(tmp_path, text_of(name="[/bold] x"))
    code, out, err = cli(["measure", path, "--steps", "1", "--warmup", "0"])
    assert code == 0, err
    assert "[/bold] x" in out


@pytest.mark.parametrize("command", [["predict", "--profile", str(REFERENCE)],
                                     ["sweep", "--vary", "batch=1,2", "--profile", str(REFERENCE)]])
def test_kind5_mathtext_in_a_name_draws(tmp_path, command, monkeypatch):  # the issue's
    import costmodel.present.plots as plots

    drawn = []
    original = plots.save

    def save(fig, where):
        fig.draw_without_rendering()  # mathtext is parsed when drawn
        drawn.append(fig._suptitle.get_text())
        original(fig, where)

    monkeypatch.setattr(plots, "save", save)
    name = "$\\frac{1}{0$ and $x^"
    path = arch_file(tmp_path, text_of(name=name))
    plot = tmp_path / "p.png"
    code, _, err = cli([command[0], path, *command[1:], "--plot", plot])
    assert code == 0, err
    assert plot.stat().st_size > 0 and name.replace("$", "\\$") in drawn[0]


def test_kind5_emoji_codes_and_markup_in_every_part_of_a_table():
    table = render_table(":smile: [bold]t", [("[h]", "name", str), (":x:", "v", str)],
                         [{"name": "[/] :smile:", "v": "[b]1"}], [":thumbs_up: [/bold] f"])
    for text in (":smile: [bold]t", "[h]", ":x:", "[/] :smile:", "[b]1", ":thumbs_up: [/bold] f"):
        assert text in table


def test_kind5_latex_escapes_every_user_string(tmp_path):
    from costmodel.present.latex import latex_document

    name = "a_b & 100% $x$ #1 {y} ~ ^ \\ <>|"
    text = latex_document(parse_arch({**BASE, "name": name}), standalone=True)
    assert name not in text
    assert r"a\_b \& 100\% \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} " \
           r"\textless{}\textgreater{}\textbar{}" in text


def test_kind5_control_characters_keep_the_error_one_line():
    assert _one_line("a\nb\x1b[31m\tc") == "a\\nb\\x1b[31m\\tc"
    table = render_table("t", [("n", "name", str)], [{"name": "a\nb"}])  # rich lays this one out
    assert "a" in table and "b" in table


# == 6. profile values ==========================================================================

def _profile(tmp_path, change) -> Path:
    data = json.loads(REFERENCE.read_text())
    change(data)
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def _every_coef(value):
    def change(data):
        for entry in data["entries"]:
            for model in entry["ops"].values():
                model["coef"] = [value] * len(model["coef"])
    return change


@pytest.mark.parametrize("value, fragment", [
    (-1e-6, "coef[0]: -1e-06 is not a non-negative number"),  # the issue's
    (1e308, "coef[0]: 1e+308 is out of range"),  # the issue's
    ("1e-6", "coef[0]: '1e-6' has the wrong type"),  # the issue's
])
def test_kind6_the_issues_profile_values(tmp_path, value, fragment):
    path = _profile(tmp_path, _every_coef(value))
    with pytest.raises(UsageError) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: entries[0]: ops: ") and fragment in str(info.value)
    arch = arch_file(tmp_path, text_of())
    one_line_refusal(["predict", arch, "--profile", path], str(path), fragment)


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d["entries"][0]["ops"][next(iter(d["entries"][0]["ops"]))].__setitem__("interval", [0.5, 1e999]),
     "is not a finite number"),
    (lambda d: d["ceilings"]["bandwidth"][0].__setitem__("bytes_per_second", 1e-300), "is not a measurement of a CPU"),
    (lambda d: d["entries"][0].__setitem__("threads", True), "threads: true has the wrong type"),
    (lambda d: d["entries"][0].__setitem__("threads", "2"), "threads: '2' has the wrong type"),
])
def test_kind6_more_profile_values(tmp_path, change, fragment):
    path = _profile(tmp_path, change)
    with pytest.raises(UsageError, match=None) as info:
        load_profile(path)
    assert fragment in str(info.value) and str(info.value).startswith(str(path))


def test_kind6_nan_coefficients(tmp_path):
    path = _profile(tmp_path, _every_coef(float("nan")))
    with pytest.raises(UsageError, match="is not a finite number"):
        load_profile(path)


def test_kind6_a_missing_entry_names_the_profile_and_exits_2(tmp_path, monkeypatch):
    from costmodel.machine import fingerprint

    monkeypatch.setattr(fingerprint, "available_cores", lambda: 64)  # 7 threads are possible here: calibrate them
    arch = arch_file(tmp_path, text_of())
    code, out, err = cli(["predict", arch, "--profile", REFERENCE, "--threads", "7"])
    assert code == 2 and out == "" and "Traceback" not in err
    *warnings, last = err.splitlines()  # a warning that the profile is another machine's may come first
    assert all(w.startswith("costmodel: warning: ") for w in warnings)
    assert last.startswith(f"costmodel: error: {REFERENCE}: ")
    assert "costmodel calibrate --dtype float32 --impl index --threads 7" in last
    monkeypatch.setattr(fingerprint, "available_cores", lambda: 2)  # more threads than cores: no command to run
    code, out, err = cli(["predict", arch, "--profile", REFERENCE, "--threads", "7"])
    assert code == 2 and "this machine has 2 cores, so that entry must be calibrated on a machine with more" in err


# == 7. optimizer values ========================================================================

def test_kind7_infinite_lr_is_refused(tmp_path):  # the issue's
    refuse(tmp_path, text_of().replace("lr: 0.01", "lr: .inf"), "optimizer: lr: inf is not a finite number")


@pytest.mark.parametrize("change, fragment", [
    (("lr", ".nan"), "lr: nan is not a finite number"),
    (("momentum", "1.0"), "momentum: 1.0 is out of range (expected a number >= 0 and < 1)"),
    (("momentum", "-0.1"), "momentum: -0.1 is not a non-negative number"),
    (("C", "-.inf"), "C: -inf is not a finite number"),
    (("lr", "'0.1'"), "lr: '0.1' has the wrong type"),
])
def test_kind7_optimizer_values_finite_and_in_range(tmp_path, change, fragment):
    key, value = change
    old = {"lr": "lr: 0.01", "momentum": "momentum: 0.9", "C": "C: 600.0"}[key]
    refuse(tmp_path, text_of().replace(old, f"{key}: {value}"), f"optimizer: {fragment}")


@pytest.mark.slow
def test_kind7_a_diverging_training_is_an_error_not_a_nan_loss():
    from calib.train import train

    arch = load_arch(ROOT / "examples" / "digits-small.yaml")
    arch = arch.model_copy(update={"optimizer": arch.optimizer.model_copy(update={"lr": 1e30})})
    with pytest.raises(UsageError, match="training diverged in epoch 1"), np.errstate(all="ignore"):
        train(arch, "digits", epochs=1)


# == 8. train --data ============================================================================

DIGITS = ROOT / "examples" / "digits-small.yaml"
X = np.random.default_rng(0).random((40, 8, 8, 1))
Y = np.arange(40) % 10


def npz(tmp_path: Path, members: dict, name="data.npz", compression=zipfile.ZIP_STORED) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression) as zf:
        for member, value in members.items():
            if isinstance(value, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=True)
                value = buf.getvalue()
            zf.writestr(member, value)
    return path


def header_only(shape, descr="<f8", extra=16) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\0" * extra


def load(path):
    from calib.train import load_data

    return load_data(path, load_arch(DIGITS))


@pytest.fixture
def no_array_read(monkeypatch):
    """Fail if an array's data is read: the refusals below come from headers alone."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an array was read")

    monkeypatch.setattr(np.lib.format, "read_array", forbidden)


def test_kind8_members_without_npy_suffix(tmp_path, no_array_read):  # the issue's
    path = npz(tmp_path, {"X": X.tobytes(), "y": Y.tobytes()})
    with pytest.raises(UsageError, match="the members 'X', 'y' must be .npy arrays named X.npy and y.npy"):
        load(path)


def test_kind8_a_small_file_declaring_a_7_tb_array(tmp_path, no_array_read):  # the issue's
    path = npz(tmp_path, {"X.npy": header_only((10 ** 11, 8, 8, 1)), "y.npy": Y})
    assert path.stat().st_size < 2048
    with pytest.raises(UsageError, match="header describes .* but the archive declares"):
        load(path)


def test_kind8_a_zip_bomb_is_not_decompressed(tmp_path, no_array_read):  # the issue's (smaller)
    import zlib

    n = 100 << 20  # 100 MiB of zeros that deflate to ~100 KiB
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("X.npy", "w") as fp:
            fp.write(header_only((n // 512, 8, 8, 1), extra=0))
            zero = bytes(1 << 20)
            for _ in range(100):
                fp.write(zero)
        zf.writestr("y.npy", b"")
    assert path.stat().st_size < (2 << 20)
    with pytest.raises(UsageError, match="X.npy expands .*:1 .* a zip bomb"):
        load(path)
    del zlib


def test_kind8_the_shape_is_refused_from_the_header(tmp_path, no_array_read):
    path = npz(tmp_path, {"X.npy": header_only((40, 28, 28, 1), extra=40 * 28 * 28 * 8), "y.npy": Y})
    with pytest.raises(UsageError, match=r"X has shape \(40, 28, 28, 1\), but digits-small takes"):
        load(path)


def test_kind8_non_finite_x_is_refused(tmp_path):  # the issue's
    for bad in (np.nan, np.inf, -np.inf):
        data = X.copy()
        data[1, 2, 3, 0] = bad
        with pytest.raises(UsageError, match="X holds 1 values that are not finite"):
            load(npz(tmp_path, {"X.npy": data, "y.npy": Y}))


@pytest.mark.parametrize("members, fragment", [
    ({"X.npy": X, "y.npy": Y, "evil.npy": Y}, "unexpected member 'evil.npy'"),
    ({"X.npy": np.array([{"a": 1}] * 40, dtype=object), "y.npy": Y}, "holds Python objects"),
    ({"X.npy": X, "y.npy": Y - 20}, "labels must lie in 0..9"),
    ({"X.npy": header_only((-1, 8, 8, 1)), "y.npy": Y}, r"X.npy has an impossible shape \(-1, 8, 8, 1\)"),
])
def test_kind8_more_bad_archives(tmp_path, members, fragment):
    with pytest.raises(UsageError, match=fragment):
        load(npz(tmp_path, members))


def test_kind8_a_member_given_twice(tmp_path):
    import warnings

    path = tmp_path / "twice.npz"
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            zf.writestr("X.npy", b"")
        zf.writestr("y.npy", b"")
    with pytest.raises(UsageError, match="the member 'X.npy' appears twice"):
        load(path)


def test_kind8_an_array_larger_than_the_memory_left(tmp_path, no_array_read):
    from calib.memory import MemoryLimit
    from calib.train import _load_npz

    path = npz(tmp_path, {"X.npy": X, "y.npy": Y})
    with pytest.raises(UsageError, match=r"needs about .* GiB, but only 0.0 GiB is available \(test\)"):
        _load_npz(path, load_arch(DIGITS), MemoryLimit(1000, "test"))


def test_kind8_data_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    for path in (Path("/dev/zero"), fifo, tmp_path):
        with pytest.raises(UsageError, match="not a regular file"):
            load(path)


# == 9. memory ==================================================================================

def test_kind9_torch_step_memory_is_checked_before_torch_runs(tmp_path, monkeypatch):  # the issue's
    import calib.backends.torch as backend

    monkeypatch.setattr(backend, "measure_torch", lambda *a, **k: pytest.fail("torch ran"))
    path = arch_file(tmp_path, text_of(input={"height": 1024, "width": 1024, "channels": 3}))
    one_line_refusal(["measure", path, "--backend", "torch", "--batch", "2048"], "(PyTorch) needs an estimated",
                     "GiB is available")


def test_kind9_a_step_under_ulimit_v_is_refused_naming_the_limit(tmp_path):  # the issue's
    path = arch_file(tmp_path, text_of(input={"height": 128, "width": 128, "channels": 3}, batch=128,
                                       layers=[{"type": "conv", "filters": 64, "kernel": 5, "padding": 2},
                                               {"type": "full", "units": 10}]))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = run_cli(["measure", path, "--steps", "1"], tmp_path, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "RLIMIT_AS (ulimit -v)" in proc.stderr and "Traceback" not in proc.stderr


def test_kind9_the_limit_is_the_smallest_of_the_three(tmp_path):
    from calib.memory import memory_limit

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n")
    status = tmp_path / "status"
    status.write_text("VmSize:\t  100000 kB\n")
    none = tmp_path / "no-cgroup"
    assert memory_limit(meminfo, self_cgroup=none, status=status, rlimit_as=resource.RLIM_INFINITY) \
        .source == "MemAvailable"
    limited = memory_limit(meminfo, self_cgroup=none, status=status, rlimit_as=1 << 30)
    assert limited.bytes == (1 << 30) - 100000 * 1024 and limited.source.startswith("RLIMIT_AS")


def test_kind9_cgroup_v2_and_v1_limits(tmp_path):
    from calib.memory import memory_limit

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 40000000 kB\n")
    v2 = tmp_path / "v2"
    (v2 / "job" / "task").mkdir(parents=True)
    (v2 / "cgroup.controllers").write_text("memory\n")
    (v2 / "job" / "memory.max").write_text(f"{2 << 30}\n")
    (v2 / "job" / "memory.current").write_text(f"{1 << 30}\n")
    (v2 / "job" / "task" / "memory.max").write_text("max\n")
    me = tmp_path / "cgroup"
    me.write_text("0::/job/task\n")
    got = memory_limit(meminfo, self_cgroup=me, cgroup_root=v2, rlimit_as=resource.RLIM_INFINITY)
    assert got.bytes == 1 << 30 and got.source == "cgroup memory.max of /job"
    v1 = tmp_path / "v1"
    (v1 / "memory" / "box").mkdir(parents=True)
    (v1 / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
    (v1 / "memory" / "box" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # unlimited
    me.write_text("4:memory:/box\n1:cpu:/\n")
    got = memory_limit(meminfo, self_cgroup=me, cgroup_root=v1, rlimit_as=resource.RLIM_INFINITY)
    assert got.bytes == 2 << 30 and "memory.limit_in_bytes of /box" in got.source


def test_kind9_torch_estimate_grows_with_the_batch_and_float64_columns():
    from calib.memory import check_memory, estimate_torch_step_bytes, MemoryLimit

    arch = load_arch(ROOT / "examples" / "cifar10-layer7.yaml")
    small, big = estimate_torch_step_bytes(arch.with_batch(1)), estimate_torch_step_bytes(arch.with_batch(64))
    assert 0 < small < big
    assert estimate_torch_step_bytes(arch.with_dtype("float64")) > 2 * estimate_torch_step_bytes(arch)
    with pytest.raises(UsageError, match=r"\(PyTorch\) needs an estimated .* \(a cgroup\)"):
        check_memory(arch, "torch", limit=MemoryLimit(1 << 20, "a cgroup"))


# == 10. calibrate -o ===========================================================================

@pytest.fixture
def no_calibration(monkeypatch):
    import calib.calibrate

    monkeypatch.setattr(calib.calibrate, "calibrate", lambda *a, **k: pytest.fail("calibrated before checking -o"))


def test_kind10_an_existing_file_that_is_not_a_profile_is_kept(tmp_path, no_calibration):  # the issue's
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    one_line_refusal(["calibrate", "--quick", "-o", notes], "notes.txt: the file exists and is not a costmodel profile")
    assert notes.read_text() == "my notes\n" and sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("target, fragment", [
    ("/proc/x", "cannot write in /proc"),  # the issue's
    ("{dir}", "a directory, not a file that can be replaced"),  # the issue's
    ("{file}/profile.json", "cannot write there (Not a directory)"),  # the issue's
    ("/dev/null", "a character device, not a file that can be replaced"),
])
def test_kind10_places_a_profile_cannot_go_are_refused_at_once(tmp_path, no_calibration, target, fragment):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    out = target.format(dir=tmp_path / "d", file=tmp_path / "f")
    before = sorted(os.listdir(tmp_path))
    one_line_refusal(["calibrate", "--quick", "-o", out], fragment)
    assert sorted(os.listdir(tmp_path)) == before


def test_kind10_sigterm_during_calibration_leaves_nothing(tmp_path):  # the issue's
    out = tmp_path / "profile.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "calibrate", "--quick", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(3.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("costmodel: error: terminated") and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_kind10_stale_temporary_files_are_cleaned(tmp_path):  # the issue's
    path = tmp_path / "profile.json"
    old = tmp_path / ".profile.json.abc123.tmp"
    young = tmp_path / ".profile.json.def456.tmp"
    other = tmp_path / ".other.json.abc.tmp"
    for p in (old, young, other):
        p.write_text("partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    assert clean_stale_temps(path) == [old]
    assert sorted(os.listdir(tmp_path)) == sorted([young.name, other.name])


def _merge_n(path: str, tag: str, n: int) -> None:
    """n read-merge-writes of one JSON list under the lock, each slow enough to collide."""
    for i in range(n):
        with locked(path):
            items = json.loads(Path(path).read_text()) if Path(path).exists() else []
            time.sleep(0.002)
            atomic_write(path, json.dumps(items + [f"{tag}{i}"]))


def test_kind10_concurrent_read_merge_writes_lose_nothing(tmp_path):  # the issue's (float32 and float64)
    path = str(tmp_path / "profile.json")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_merge_n, args=(path, tag, 25)) for tag in ("float32-", "float64-")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sorted(json.loads(Path(path).read_text())) == sorted(f"{t}{i}" for t in ("float32-", "float64-")
                                                                 for i in range(25))
    assert os.listdir(tmp_path) == ["profile.json"]  # the lock file is gone too


def test_kind10_a_damaged_profile_may_be_replaced(tmp_path):
    from calib.commands import check_profile_output

    path = tmp_path / "profile.json"
    path.write_text(REFERENCE.read_text()[:500])  # truncated: still a profile's beginning
    check_profile_output(path)
    path.write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a costmodel profile"):
        check_profile_output(path)
    check_profile_output(tmp_path / "new" / "dir" / "profile.json", make_parents=True)  # the default place
    with pytest.raises(UsageError, match="no folder .*new/dir .a typo"):  # a -o path: a missing folder is refused
        check_profile_output(tmp_path / "new" / "dir" / "profile.json")
    assert sorted(os.listdir(tmp_path)) == ["profile.json"]


def test_kind10_an_output_keeps_a_files_permissions_follows_a_link_and_makes_no_folder(tmp_path):
    """latex -o over a private file keeps it private; over a symbolic link it writes the link's
    target; into a missing folder it is refused before anything runs."""
    private = tmp_path / "private.tex"
    private.write_text("old")
    private.chmod(0o600)
    link = tmp_path / "link.tex"
    link.symlink_to(private)
    code, _, err = cli(["latex", "--example", "digits-small", "--profile", REFERENCE, "-o", link])
    assert code == 0, err
    assert link.is_symlink() and private.read_text().startswith("% costmodel latex: the SG step of digits-small")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    one_line_refusal(["latex", "--example", "digits-small", "--profile", REFERENCE, "-o", tmp_path / "nodir" / "a.tex"],
                     "no folder")
    assert not (tmp_path / "nodir").exists()


def test_kind10_sigint_and_exceptions_during_a_write_leave_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.json"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "data")
    assert os.listdir(tmp_path) == []


# == 11. messages ===============================================================================

def test_kind11_an_unknown_key_is_named_first_with_a_suggestion(tmp_path):  # the issue's
    refuse(tmp_path, text_of().replace("kernel: 3", "kernal: 3"),
           "layers[0] (conv): unknown key 'kernal' (did you mean 'kernel'?)")


def test_kind11_pytorch_names_are_reported_together(tmp_path):  # the issue's
    message = refuse(tmp_path, text_of().replace("filters: 4", "out_channels: 4").replace("kernel: 3", "kernel_size: 3"))
    assert message.endswith("layers[0] (conv): unknown keys 'out_channels' (did you mean 'filters'?), "
                            "'kernel_size' (did you mean 'kernel'?)")


def test_kind11_a_wrong_value_says_what_is_allowed(tmp_path):  # the issue's (padding)
    message = refuse(tmp_path, text_of().replace("padding: 1", "padding: full"),
                     "layers[0] (conv): padding: 'full' ")
    assert "expected" in message and "non-negative integer" in message


def test_kind11_profile_errors_exit_2_naming_the_file(tmp_path):  # the issue's
    path = tmp_path / "p.json"
    path.write_text("{not json")
    one_line_refusal(["predict", arch_file(tmp_path, text_of()), "--profile", path], f"{path}: not valid JSON")


@pytest.mark.parametrize("old, new, fragment", [
    ("layers:", "lyers:", "unknown key 'lyers' (did you mean 'layers'?)"),
    ("momentum:", "momentom:", "optimizer: unknown key 'momentom' (did you mean 'momentum'?)"),
    ("units: 10", "out_features: 10", "layers[1] (full): unknown key 'out_features' (did you mean 'units'?)"),
    ("batch: 16", "batch: '16'", "batch: '16' has the wrong type (expected a positive integer)"),
])
def test_kind11_more_messages(tmp_path, old, new, fragment):
    refuse(tmp_path, text_of().replace(old, new, 1), fragment)


def test_kind11_literal_choices_are_listed(tmp_path):
    refuse(tmp_path, text_of(dtype="float16"), "dtype: 'float16' is not allowed (expected 'float32' or 'float64')")
    refuse(tmp_path, text_of(loss="hinge"), "'mse' or 'softmax_ce'")


def test_kind11_missing_keys_of_one_place_together(tmp_path):
    refuse(tmp_path, text_of(layers=[{"type": "conv"}, {"type": "full", "units": 2}]),
           "layers[0] (conv): missing required keys 'filters', 'kernel'")


def test_kind11_usage_errors_are_one_line(tmp_path):
    path = arch_file(tmp_path, text_of())
    usage_refusal(tmp_path, ["costs", path, "--format", "xml"], "--format", "'xml' is not one of")
    usage_refusal(tmp_path, ["measure", path, "--bogus"], "No such option: --bogus")


# == 12. what is printed ========================================================================

def test_kind12_a_10000_layer_table_is_laid_out_without_rich(monkeypatch):  # the issue's
    import costmodel.present.report as report

    monkeypatch.setattr(report, "_render_rich", lambda *a: pytest.fail("rich laid out a plain table"))
    rows = [{"layer": m, "layer_type": "full", "op": op, "phase": "forward", "flops": 1.5e6 * m, "bytes": 4096}
            for m in range(1, 10_001) for op in ("full_matmul", "bias", "activation", "update")]
    columns = [("layer", "layer", str), ("type", "layer_type", str), ("op", "op", str), ("phase", "phase", str),
               ("FLOPs", "flops", report.human), ("bytes", "bytes", lambda b: report.human(b, "B"))]
    text = render_table("Costs: a 10,000-layer network", columns, rows, ["a footer"])
    assert text.count("\n") == 40_000 + 4 and "10000 │ full │ update" in text


def _rich(title, columns, rows, footer):
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), title_justify="left", show_edge=False, pad_edge=False)
    for header, key, _ in columns:
        table.add_column(Text(header), justify="left" if key in ("op", "name") else "right")
    for row in rows:
        table.add_row(*(Text(str(fmt(row.get(key)))) for _, key, fmt in columns))
    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    console.print(table)
    for line in footer:
        console.print(Text(line))
    return console.file.getvalue()


def test_kind12_the_lean_layout_is_richs_layout():
    rng = random.Random(12)
    alphabet = list("abc XYZ_0123.-%()  ") + ["é", "中", "😀", "\u00a0"]

    def word(k):
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, k)))

    for _ in range(300):
        keys = rng.sample(["op", "name", "x", "y", "z"], rng.randint(1, 5))
        columns = [(word(8), k, str) for k in keys]
        rows = [{k: word(rng.choice([3, 12, 30])) for k in keys} for _ in range(rng.randint(0, 5))]
        title, footer = word(rng.choice([0, 5, 60, 250])), [word(80) for _ in range(rng.randint(0, 2))]
        assert render_table(title, columns, rows, footer) == _rich(title, columns, rows, footer)


def test_kind12_a_table_wider_than_the_console_is_wrapped_by_rich():
    columns = [(f"column {i}", f"c{i}", str) for i in range(12)]
    rows = [{f"c{i}": "word " * 8 for i in range(12)}]
    text = render_table("wide", columns, rows)
    assert max(len(line) for line in text.splitlines()) <= 200 and text == _rich("wide", columns, rows, [])


def test_kind12_the_arch_file_has_a_layer_limit(tmp_path):
    refuse(tmp_path, text_of(layers=[{"type": "full", "units": 2}] * (MAX_LAYERS + 1)),
           f"layers: {MAX_LAYERS + 1:,} layers, more than the {MAX_LAYERS:,}")


# == the hostile-input script, a fast subset ====================================================

def _hostile():
    spec = importlib.util.spec_from_file_location("hostile", ROOT / "benchmarks" / "hostile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hostile_script_quick_subset(tmp_path):
    hostile = _hostile()
    cases = [c for c in hostile.all_cases(quick=True) if c.kind != "signal"][:36]
    for case in cases:  # one command each: costs for files, the case's own command otherwise
        case.commands = case.commands[:1]
    assert len(cases) >= 30
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    runs = []
    for n, case in enumerate(cases):
        for run in hostile.run_case(case, tmp_path / f"case{n}", env):
            run.verdict = hostile.judge(run)
            runs.append(run)
    bad = [(r.case.name, r.argv, r.verdict, r.stderr[-300:]) for r in runs if r.verdict not in ("refused", "accepted")]
    assert bad == []


def test_hostile_script_generates_at_least_300_inputs():
    assert len(_hostile().all_cases(quick=False)) >= 300


def test_a_refusal_after_the_profile_warning_is_still_one_line(tmp_path, monkeypatch):
    """The reference profile's warning is held until the command ends: a refusal after it (999
    threads, more than the cores a probe could transfer it to) is the one line, before any probe."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no profile of this machine: the reference
    monkeypatch.delenv("COSTMODEL_PROFILE", raising=False)
    one_line_refusal(["predict", "--example", "digits-small", "--threads", "999"],
                     "--threads 999: this process may use", "cannot run 999 threads on them")
    code, out, err = cli(["predict", "--example", "digits-small", "--by", "kind"])
    assert code == 0 and "step:" in out
    assert err.startswith("costmodel: warning: ") and "reference profile" in err  # printed on success


def test_a_bad_option_value_is_named_without_the_validators_prefix(tmp_path):
    result = run_cli(["predict", "--example", "digits-small", "--format", "xml"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("costmodel: error: Invalid value for '--format': 'xml' is not one of 'table', "
                             "'json', 'csv'.\n")


def test_a_signal_a_finalizer_swallowed_still_stops_the_write(tmp_path):
    """Python raises ^C's KeyboardInterrupt wherever the main thread is; inside a finalizer run by
    the garbage collector it is only printed, and a calibration went on to write its profile and
    exit 0 (seen once in CI). The handlers note the signal; the write and the command check it."""
    import typer

    from costmodel.errors import clear_signals, note_signal
    from costmodel.files import atomic_write
    from costmodel.present.terminal import domain_errors

    target = tmp_path / "profile.json"
    note_signal("SIGINT")
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(target, "{}")
    finally:
        clear_signals()
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary

    @domain_errors
    def command(signal_name):
        note_signal(signal_name)  # as if its exception had been swallowed
        return "done"

    for name, status in (("SIGINT", 130), ("SIGTERM", 143)):
        with pytest.raises(typer.Exit) as stopped:
            command(name)
        assert stopped.value.exit_code == status
    assert command.__wrapped__ is not None and atomic_write(target, "{}") is None  # cleared after the command
    assert target.read_text() == "{}"


def test_a_signal_raised_inside_a_finalizer_is_noted_not_printed(capsys):
    """The unraisable hook the CLI installs: KeyboardInterrupt in a __del__ is noted (and the
    command stops at its next check), not printed as a traceback; other errors as Python prints
    them."""
    import gc
    import sys

    from costmodel.errors import check_signals, clear_signals
    from costmodel.present.terminal import handle_sigterm

    class Finalizer:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    previous = handle_sigterm()
    try:
        Finalizer(KeyboardInterrupt())
        gc.collect()
        with pytest.raises(KeyboardInterrupt):
            check_signals()
        clear_signals()
        Finalizer(ValueError("shown"))
        gc.collect()
    finally:
        import signal

        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        sys.unraisablehook = sys.__unraisablehook__
        clear_signals()
    err = capsys.readouterr().err
    assert "KeyboardInterrupt" not in err and "ValueError: shown" in err
