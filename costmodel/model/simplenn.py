"""simpleNN's network configuration files (MATLAB/config/*.config), read as data.

simpleNN's own reader (read_config.m) runs `eval` on every line; here each line is parsed:
``NAME = VALUE;`` where VALUE is an integer or a MATLAB row vector of integers (``[1,32,64]``
or ``[1 32 64]``), ``%`` starts a comment, and nothing is ever evaluated. The keys are the
course's symbols (Wang, Tan, Lin and Wei, "Newton methods for convolutional neural networks"):

| key | meaning | architecture file |
| --- | --- | --- |
| L, LC, LF | layers, conv layers, full layers (L = LC + LF) | the number of entries of `layers` |
| wd_input, ht_input | a^1 and b^1: the input's width and height | input.width, input.height |
| ch_input | d^1, d^2, ..., d^{LC+1}: the input's channels, then each conv layer's filters | input.channels, filters |
| wd_pad_added | p^m of each conv layer | padding |
| wd_filter | h^m of each conv layer | kernel |
| strides | s^m of each conv layer | stride |
| wd_subimage_pool | the pooling width of each conv layer | pool |
| full_neurons | n^{m+1} of each full layer | units |

A config says nothing of the mini-batch, the dtype or the loss: they take the architecture
file's defaults (batch 128, float32, simpleNN's squared loss). Every error names the line.
"""

from __future__ import annotations

import re

from costmodel.errors import ArchError

#: the keys of a config, and whether each is one integer ("int") or a vector ("vector")
KEYS = {"L": "int", "LC": "int", "LF": "int", "wd_input": "vector", "ht_input": "vector", "ch_input": "vector",
        "wd_pad_added": "vector", "wd_filter": "vector", "strides": "vector", "wd_subimage_pool": "vector",
        "full_neurons": "vector"}
#: per conv layer: config key -> conv layer field
CONV_FIELDS = {"wd_pad_added": "padding", "wd_filter": "kernel", "strides": "stride", "wd_subimage_pool": "pool"}
MAX_LINES = 10_000
MAX_LINE_LENGTH = 10_000

_STATEMENT = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*(.*?)\s*;?\s*$")
_INTEGER = re.compile(r"[+-]?\d{1,19}")


def _value(text: str, where: str) -> list[int]:
    """'28' -> [28]; '[1,32, 64]' or '[1 32 64]' -> [1, 32, 64]."""
    inner = text
    if text.startswith("["):
        if not text.endswith("]"):
            raise ArchError(f"{where}: {text[:40]!r} opens '[' without closing it")
        inner = text[1:-1]
    items = [item for item in re.split(r"[,\s]+", inner.strip()) if item]
    if not items:
        raise ArchError(f"{where}: no value")
    bad = next((item for item in items if not _INTEGER.fullmatch(item)), None)
    if bad is not None:
        raise ArchError(f"{where}: {bad[:40]!r} is not an integer (a config holds integers and vectors of "
                        "integers only; nothing in it is evaluated)")
    return [int(item) for item in items]


def parse_config(text: str, source: str = "<config>", name: str | None = None) -> dict:
    """The architecture file's data (a dict for costmodel.model.arch.parse_arch) of a simpleNN
    config's text; ArchError naming the line for a line that is not ``NAME = VALUE``, an
    unknown or repeated key, a value of the wrong kind or count."""
    from difflib import get_close_matches

    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise ArchError(f"{source}: {len(lines)} lines; a simpleNN config has a dozen")
    values: dict[str, tuple[int, list[int]]] = {}
    for number, line in enumerate(lines, start=1):
        where = f"{source}: line {number}"
        if len(line) > MAX_LINE_LENGTH:
            raise ArchError(f"{where}: a line of {len(line)} characters")
        code = line.split("%", 1)[0].strip()
        if not code:
            continue
        match = _STATEMENT.fullmatch(code)
        if not match:
            raise ArchError(f"{where}: {code[:40]!r} is not NAME = VALUE;")
        key, value = match.groups()
        if ";" in value:
            raise ArchError(f"{where}: one NAME = VALUE per line ({code[:40]!r} has more)")
        if key not in KEYS:
            close = get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (the keys are {', '.join(KEYS)})"
            raise ArchError(f"{where}: unknown key {key[:40]!r}{hint}")
        if key in values:
            raise ArchError(f"{where}: {key} is set again (first on line {values[key][0]})")
        parsed = _value(value, f"{where}: {key}")
        if KEYS[key] == "int" and len(parsed) != 1:
            raise ArchError(f"{where}: {key} must be one integer, not {len(parsed)}")
        values[key] = (number, parsed)

    def get(key: str) -> list[int]:
        if key not in values:
            raise ArchError(f"{source}: missing key {key!r}")
        return values[key][1]

    def expect(key: str, count: int, what: str) -> list[int]:
        got = get(key)
        if len(got) != count:
            raise ArchError(f"{source}: line {values[key][0]}: {key} has {len(got)} values, {what} needs {count}")
        return got

    L, LC, LF = get("L")[0], get("LC")[0], get("LF")[0]
    if L != LC + LF or LC < 0 or LF < 1:
        raise ArchError(f"{source}: line {values['L'][0]}: L = {L} must be LC + LF = {LC} + {LF}, with LF >= 1")
    width, height = expect("wd_input", 1, "the input")[0], expect("ht_input", 1, "the input")[0]
    channels = expect("ch_input", LC + 1, f"LC + 1 = {LC + 1} (the input and each conv layer)")
    conv = {field: expect(key, LC, f"LC = {LC}") for key, field in CONV_FIELDS.items() if LC or key in values}
    units = expect("full_neurons", LF, f"LF = {LF}")
    layers = [{"type": "conv", "filters": channels[m + 1], **{field: conv[field][m] for field in conv}}
              for m in range(LC)]
    layers += [{"type": "full", "units": n} for n in units]
    return {"name": name or source, "input": {"height": height, "width": width, "channels": channels[0]},
            "layers": layers}
