"""``costmodel import SOURCE``: a PyTorch module, an ONNX file or a simpleNN config as an
arch.yaml, commented with where it comes from, checked to give the same Architecture when it is
read back (docs/import.md)."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

import costmodel
from costmodel.errors import ArchError, UsageError
from costmodel.model.arch import Architecture, parse_arch

LOSSES = ("mse", "softmax_ce")


@dataclass(frozen=True)
class Imported:
    """An imported network: its Architecture, the arch.yaml text (comment header included), the
    parameter count of the source (the module's or the ONNX initializers') and a one-line
    summary."""

    arch: Architecture
    text: str
    source_parameters: int
    summary: str


def parse_input(text: str) -> tuple[int, ...]:
    """--input CxHxW (``3x32x32``) or n (``784``, a vector) as a tuple of positive integers."""
    parts = re.split(r"[x,×]", text.strip().lower())
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d{1,9}", p) for p in parts) or any(int(p) == 0 for p in parts):
        raise UsageError(f"--input {text[:40]!r}: give CxHxW (channels x height x width, e.g. 3x32x32) or n for a "
                         "vector")
    return tuple(int(p) for p in parts)


def _kind(source: str) -> str:
    head, sep, tail = source.rpartition(":")
    if sep and head.endswith(".py") and tail:
        return "torch"
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".config":
        return "config"
    raise UsageError(f"{source[:120]}: give FILE.py:NAME (a function or class making a torch.nn.Module), an .onnx "
                     "file or a simpleNN .config")


def _comment(text: str) -> str:
    """Text safe inside a YAML comment line: no line breaks, no control characters."""
    return "".join(c if c.isprintable() else "?" for c in text)


def import_source(source: str, *, input_shape: tuple[int, ...] | None = None, batch: int | None = None,
                  name: str | None = None, loss: str | None = None, today: datetime.date | None = None) -> Imported:
    """Import `source` (FILE.py:NAME, FILE.onnx or FILE.config) as an arch.yaml text.

    `input_shape` (C, H, W) or (n,): required for a PyTorch module, optional for an ONNX file
    (its symbolic sizes); `batch`: I (default: the format's 128); `name`: the network's name
    (default: NAME or the file's stem); `loss`: mse or softmax_ce (default: softmax_ce for a
    network that ends with a softmax or with logits; a config's is mse, simpleNN's).
    Raises UsageError or ArchError (one line naming the place); writes nothing."""
    from costmodel.importers.fold import to_arch_data

    if loss is not None and loss not in LOSSES:
        raise UsageError(f"--loss {loss!r}: one of {', '.join(LOSSES)}")
    kind = _kind(source)
    shape_text = "x".join(map(str, input_shape)) if input_shape else None
    if kind == "torch":
        if input_shape is None:
            raise UsageError(f"{source}: give the input of one instance with --input CxHxW (e.g. 3x32x32), or n")
        from costmodel.importers.torchmodule import load_module
        from costmodel.importers.fx_map import module_graph

        module, path, attr = load_module(source)
        graph, how = module_graph(module, input_shape)
        parameters = sum(p.numel() for p in module.parameters())
        what = f"PyTorch module {type(module).__name__}, traced with {how}"
        label, default_name, notes = source, attr, []
    elif kind == "onnx":
        from costmodel.importers.onnxfile import onnx_graph

        graph, notes, parameters = onnx_graph(source, input_shape)
        shape_text = "x".join(map(str, graph.input_shape))
        what = "ONNX file, parsed"
        label, default_name = source, Path(source).stem
    else:
        return _config(source, batch=batch, name=name, loss=loss, input_shape=input_shape, today=today)
    data, more = to_arch_data(graph, name=name or default_name, batch=batch, loss=loss)
    notes = [*notes, *more]
    arch = parse_arch(data, label)
    if arch.parameter_count() != parameters:  # the importer's own check: every parameter in a layer
        raise ArchError(f"{label}: the imported network has {arch.parameter_count():,} parameters, the source "
                        f"{parameters:,}")
    header = [f"Imported by costmodel {costmodel.__version__} on {(today or datetime.date.today()).isoformat()} "
              f"from {label} ({what}), input {shape_text}.",
              f"{parameters:,} parameters, as the source counts them."]
    if batch is None:
        header.append(f"batch {arch.batch}: the format's default (costmodel import --batch I sets it).")
    header += [f"Note: {note}" for note in notes]
    text = arch_text(arch, data, header)
    summary = (f"imported {label}: {len(data['layers'])} layers of the file ({arch.L} in the flat list), "
               f"{parameters:,} parameters")
    return Imported(arch, text, parameters, summary)


def _config(source: str, *, batch, name, loss, input_shape, today) -> Imported:
    from costmodel.files import read_regular
    from costmodel.model.simplenn import parse_config

    if input_shape is not None:
        raise UsageError("--input: a simpleNN config gives its input itself (wd_input, ht_input, ch_input)")
    raw = read_regular(source, limit=MAX_CONFIG_BYTES, what="simpleNN config", error=ArchError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ArchError(f"{source}: not UTF-8 text") from None
    data = parse_config(text, source, name or Path(source).stem)
    if batch is not None:
        data["batch"] = batch
    if loss is not None:
        data["loss"] = loss
    arch = parse_arch(data, source)
    header = [f"Imported by costmodel {costmodel.__version__} on {(today or datetime.date.today()).isoformat()} "
              f"from {source} (simpleNN config, read as data).",
              f"{arch.parameter_count():,} parameters."]
    out = arch_text(arch, data, header)
    return Imported(arch, out, arch.parameter_count(), f"imported {source}: {len(data['layers'])} layers, "
                    f"{arch.parameter_count():,} parameters")


#: the largest simpleNN config read (they have a dozen lines)
MAX_CONFIG_BYTES = 1 << 20


def _flow(value) -> str:
    """One YAML flow value on one line (a scalar quoted where YAML needs it)."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def arch_text(arch: Architecture, data: dict, header: list[str]) -> str:
    """The arch.yaml text of `data` (one layer a line, a residual block's layers below it) after
    the comment lines `header`; checked to give `arch` again (else RuntimeError: a bug here)."""
    lines = [f"# {_comment(line)}" for line in header]
    for key in ("name", "input", "batch", "dtype", "loss", "optimizer"):
        if key in data:
            lines.append(f"{key}: {_flow(data[key])}")
    lines.append("layers:")
    for layer in data["layers"]:
        if layer["type"] != "residual":
            lines.append(f"  - {_flow(layer)}")
            continue
        lines.append("  - type: residual")
        for key, value in layer.items():
            if key not in ("type", "layers"):
                lines.append(f"    {key}: {_flow(value)}")
        lines.append("    layers:")
        lines += [f"      - {_flow(inner)}" for inner in layer["layers"]]
    text = "\n".join(lines) + "\n"
    back = parse_arch(yaml.safe_load(text), "<imported>")
    if back != arch:
        raise RuntimeError("the imported arch.yaml does not read back as the imported network")
    return text
