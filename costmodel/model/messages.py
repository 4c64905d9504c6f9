"""The one-line messages of a refused architecture file (docs/arch-format.md, "What is an error"):
the place of pydantic's first error in the file's own words (layers[2] (conv): ...), unknown keys
first with a "did you mean", what a field allows, a user's value cut short (reprlib)."""

from __future__ import annotations

import datetime
import reprlib
import types
from dataclasses import dataclass
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from costmodel.model.schema import LAYER_TYPES
from costmodel.units import INT64_MAX


#: names other frameworks use for the fields of a layer (PyTorch, Keras), for "did you mean"
FOREIGN_NAMES = {
    "out_channels": "filters", "num_filters": "filters", "channels": "filters", "kernel_size": "kernel",
    "strides": "stride", "pool_size": "pool", "pooling": "pool", "out_features": "units",
    "num_units": "units", "neurons": "units", "size": "units", "act": "activation", "kind": "type",
    "layer": "type", "learning_rate": "lr", "weight_decay": "C", "batch_size": "batch",
}


class _ShortRepr(reprlib.Repr):
    """repr() of a user's value for a one-line message: strings, lists and mappings cut short,
    an integer of thousands of digits described (its repr would fail beyond 4300 digits),
    true, false and null as YAML and JSON spell them."""

    def __init__(self):
        super().__init__()
        self.maxstring, self.maxother, self.maxlong = 40, 40, 40
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 4
        self.maxlevel = 2

    def repr_int(self, x, level):
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return repr(x)

    def repr_bool(self, x, level):  # as the file (YAML or JSON) spells it, not Python's True
        return "true" if x else "false"

    def repr_NoneType(self, x, level):
        return "null"


_repr = _ShortRepr().repr


#: what a value read from YAML or JSON is, in the file's words (not Python's type names)
_KINDS = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "text",
          list: "a list", tuple: "a list", dict: "a mapping", datetime.date: "a date", datetime.datetime: "a time"}


def kind_of(value) -> str:
    """'null', 'a boolean', 'an integer', 'a number', 'text', 'a list', 'a mapping', 'a date'
    (else the Python type's name): what a user's value is, in the file's words."""
    return _KINDS.get(type(value), type(value).__name__)


def short_repr(value, n: int = 80) -> str:
    """A user's value for a message: reprlib's short repr, and at most `n` characters."""
    text = _repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."


def _unwrap(t):
    """The type a field holds, without Annotated's metadata."""
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _members(t) -> list:
    t = _unwrap(t)
    if get_origin(t) in (Union, types.UnionType):
        return [m for arg in get_args(t) for m in _members(arg)]
    return [t]


def _tag(member) -> str | None:
    """The value of a layer class's `type` Literal (its discriminator), if it has one."""
    field = getattr(member, "model_fields", {}).get("type")
    if field is not None and get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
        return get_args(field.annotation)[0]
    return None


def _bounds_text(metadata, integer: bool) -> str:
    """'a positive integer', 'a number >= 0 and < 1', ... from annotated_types bounds."""
    bounds = {}
    for item in metadata:
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                bounds[name] = value
        for inner in getattr(item, "metadata", ()):  # a FieldInfo inside Annotated
            for name in ("gt", "ge", "lt", "le"):
                value = getattr(inner, name, None)
                if value is not None:
                    bounds[name] = value
    if bounds.get("le") == INT64_MAX:  # every integer's bound, said when it is broken
        del bounds["le"]
    noun = "integer" if integer else "number"
    if bounds == {"gt": 0}:
        return f"a positive {noun}"
    if bounds == {"ge": 0}:
        return f"a non-negative {noun}"
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    limits = [f"{signs[k]} {v}" for k, v in bounds.items()]
    article = "an" if integer else "a"
    return f"{article} {noun} {' and '.join(limits)}".rstrip()


def _join(words: list[str]) -> str:
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + (words[-1] if words else "")


def _alternatives(t, metadata=(), number: bool = False) -> list[str]:
    """What a field of type `t` accepts, as alternatives in words (`number`: an integer's bounds
    said of a number, to compare it with a float's)."""
    if get_origin(t) is Annotated:
        metadata = [*metadata, *get_args(t)[1:]]
    t = _unwrap(t)
    if get_origin(t) in (Union, types.UnionType):
        args = [arg for arg in get_args(t) if arg is not type(None)]
        numbers = {w for arg in args if _unwrap(arg) is float for w in _alternatives(arg)}
        words = []
        for arg in args:
            if _unwrap(arg) is int and _alternatives(arg, number=True)[0] in numbers:
                continue  # `int | float`: "a number" says it all ("an integer or a number" reads as two things)
            words += _alternatives(arg)
        return list(dict.fromkeys(words))
    if get_origin(t) is Literal:
        return [repr(v) for v in get_args(t)]
    if t is bool:
        return ["true or false"]
    if t in (int, float):
        return [_bounds_text(metadata, t is int and not number)]
    if t is str:
        return ["text"]
    if get_origin(t) in (list, tuple):
        return ["a list"]
    if get_origin(t) is dict or isinstance(t, type) and issubclass(t, BaseModel):
        return ["a mapping"]
    return [getattr(t, "__name__", str(t))]


def _allowed(t, metadata=()) -> str:
    """What a field of type `t` accepts, in words: "a positive integer", "'relu' or 'none'",
    "a non-negative integer, 'same' or 'valid'"."""
    return _join(_alternatives(t, metadata))


@dataclass
class _Place:
    text: str  # 'layers[2] (conv): kernel: '
    field: object = None  # the field's type, when the schema knows it
    metadata: tuple = ()
    owner: object = None  # the model class the last key belongs to


def _resolve(loc: tuple, model=None) -> _Place:
    """Walk a pydantic error's loc through the schema of `model`: the place as text, the type of
    the field there and the model it belongs to. A discriminated union's tag becomes ' (conv)'
    after the index; a union member's label ('constrained-int', "literal['same']") is dropped.
    Without a model (or beyond what it describes) the loc is read as keys and indexes."""
    parts: list[str] = []
    t, metadata, owner = model, (), None
    i = 0
    while i < len(loc):
        item = loc[i]
        u = _unwrap(t) if t is not None else None
        members = [m for m in _members(u) if m is not type(None)] if u is not None else []
        if len(members) == 1 and get_origin(u) in (Union, types.UnionType):  # X | None: the place is X's
            u = _unwrap(members[0])
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]" if parts else f"[{item}]"]
            args = get_args(u) if u is not None and get_origin(u) in (list, tuple) else ()
            t = args[item] if get_origin(u) is tuple and len(args) > item and args[-1] is not Ellipsis \
                else (args[0] if args else None)
            metadata = ()
            if model is None and i + 1 < len(loc) and loc[i + 1] in LAYER_TYPES:
                parts[-1] += f" ({loc[i + 1]})"
                i += 1
        elif len(members) > 1:  # a union: a layer's tag, or the label of a member (dropped)
            tagged = [m for m in members if _tag(m) == item]
            if tagged:
                if parts:
                    parts[-1] += f" ({item})"
                t, metadata = tagged[0], ()
        elif isinstance(u, type) and issubclass(u, BaseModel):
            parts.append(str(item))
            owner = u
            field = u.model_fields.get(item)
            t, metadata = (field.annotation, tuple(field.metadata)) if field is not None else (None, ())
        elif get_origin(u) is dict:
            parts.append(str(item))
            t, metadata = get_args(u)[1], ()
        elif u is None:
            parts.append(str(item))
        # else: a label below a scalar field (a validator's): the place stays the field's
        i += 1
    return _Place("".join(f"{p}: " for p in parts), t, metadata, owner)


def _integer_field(place: _Place, value) -> bool:
    """Whether the number at `place` must be an integer (`int`, `PositiveInt | None`, an int or a
    word) rather than any number; a field the schema does not describe: whether `value` is one."""
    numeric = [m for m in map(_unwrap, _members(place.field)) if m in (int, float)] if place.field is not None else []
    return all(m is int for m in numeric) if numeric else isinstance(value, int)


def _custom(place: _Place) -> bool:
    """Whether the field validates with its own function (a PlainValidator, ...): its error's
    words then say what is allowed better than its type does."""
    meta = [*place.metadata, *(get_args(place.field)[1:] if get_origin(place.field) is Annotated else ())]
    return any(type(m).__name__.endswith("Validator") for m in meta)


def loc_to_place(loc: tuple, model=None) -> str:
    """('layers', 2, 'conv', 'kernel') -> 'layers[2] (conv): kernel: '; () -> ''."""
    return _resolve(tuple(loc), model).text


def _suggest(key: str, known: list[str]) -> str:
    """' (did you mean 'kernel'?)' for a misspelt or foreign key, else ''."""
    import difflib

    if not isinstance(key, str):
        return ""
    guess = FOREIGN_NAMES.get(key) if FOREIGN_NAMES.get(key) in known else None
    if guess is None:
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        guess = close[0] if close else None
    return f" (did you mean {guess!r}?)" if guess else ""


def _message(err: dict, model=None, group: list[dict] = ()) -> str:
    """One line for one pydantic error (`group`: the other errors at the same place, e.g. each
    member of a union), naming the place and saying what is allowed there."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    inp = err.get("input")
    place = _resolve(loc, model)
    where = place.text
    allowed = _allowed(place.field, place.metadata) if place.field is not None and not _custom(place) else None
    expected = f"expected {allowed}" if allowed else err.get("msg", "").replace("Input should be ", "expected ")
    if kind == "extra_forbidden":
        parent = _resolve(loc[:-1], model)
        holder = _unwrap(parent.field) if parent.field is not None else None
        known = list(holder.model_fields) if isinstance(holder, type) and issubclass(holder, BaseModel) else []
        return f"{parent.text}unknown key {short_repr(loc[-1])}{_suggest(loc[-1], known)}"
    if kind == "missing":
        return f"{_resolve(loc[:-1], model).text}missing required key {short_repr(loc[-1])}"
    if kind == "union_tag_not_found":
        tags = [t for t in map(_tag, _members(place.field)) if t] if place.field is not None else []
        return f"{where}missing required key 'type' ({' or '.join(tags) or 'conv or full'})"
    if kind == "union_tag_invalid":
        got = inp.get("type") if isinstance(inp, dict) else inp
        tags = [repr(t) for t in map(_tag, _members(place.field)) if t] if place.field is not None else []
        tags = tags or ["'conv'", "'full'"]
        return (f"{where}layer type must be {', '.join(tags[:-1])}{' or ' if len(tags) > 1 else ''}{tags[-1]} "
                f"(got {short_repr(got)})")
    if len({e.get("type") for e in group} | {kind}) > 1:  # a union: no member accepts the value
        return f"{where}{short_repr(inp)} is not allowed ({expected})"
    if kind == "literal_error":
        return f"{where}{short_repr(inp)} is not allowed ({expected})"
    bound = (err.get("ctx") or {}).get("gt" if kind == "greater_than" else "ge", 0)
    if kind in ("greater_than", "greater_than_equal") and bound == 0:
        # the field's kind of value, not the input's: an lr of 0 is not a positive *number*
        what = "integer" if _integer_field(place, inp) else "number"
        sign = "positive" if kind == "greater_than" else "non-negative"
        return f"{where}{short_repr(inp)} is not a {sign} {what}"
    if kind == "less_than_equal" and err.get("ctx", {}).get("le") == INT64_MAX:
        return f"{where}{short_repr(inp)} is larger than int64 (at most {INT64_MAX})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{where}{short_repr(inp)} is out of range ({expected})"
    if kind == "finite_number":
        return f"{where}{short_repr(inp)} is not a finite number"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        shown = "" if inp is None else f" {short_repr(inp)}"
        return f"{where}expected a mapping, got {kind_of(inp)}{shown}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        return f"{where}{short_repr(inp)} has the wrong type ({expected})"
    if kind == "too_short":
        return f"{where}must not be empty"
    if kind == "value_error" and err.get("ctx", {}).get("error") is not None:  # a validator's own words
        return f"{where}{err['ctx']['error']}"
    return f"{where}{err.get('msg', kind)}"


def first_error(exc: ValidationError, model=None) -> str:
    """The one line for a ValidationError: unknown keys first (all of one place together, each
    with a "did you mean"), then missing keys (all of one place together), then the first
    error, with the other errors at its place (a union's members) taken together."""
    errors = exc.errors(include_url=False)

    def parent(e):
        return tuple(e["loc"][:-1])

    wrong_type = [e for e in errors if e["loc"] and e["loc"][-1] == "type" and e["type"] == "literal_error"]
    if wrong_type:  # a layer of the wrong type: its other keys are wrong because of it
        return _message(wrong_type[0], model)

    for kind, word in (("extra_forbidden", "unknown"), ("missing", "missing required")):
        mine = [e for e in errors if e["type"] == kind]
        if mine:
            same = [e for e in mine if parent(e) == parent(mine[0])]
            if len(same) == 1:
                return _message(same[0], model)
            keys = [_message(e, model).rsplit(f"{word} key ", 1)[-1] for e in same[:6]]
            more = f" and {len(same) - 6} more" if len(same) > 6 else ""
            return f"{_resolve(parent(same[0]), model).text}{word} keys {', '.join(keys)}{more}"
    first = errors[0]
    group = [e for e in errors if _resolve(tuple(e["loc"]), model).text == _resolve(tuple(first["loc"]), model).text]
    return _message(first, model, group)


def cut_short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."
