"""A bounded YAML loader for files a user hands us: safe, strict about keys, and finite.

PyYAML's SafeLoader constructs no object from a tag, but it accepts a duplicate key (the last
one wins), expands aliases without limit (a 500-byte "billion laughs" file becomes billions of
nodes as soon as anything walks the result), recurses once per level of nesting (600 ``[``
overflow Python's stack) and converts integer literals of any length. ``BoundedLoader`` is a
SafeLoader subclass (on libyaml's parser when it is there, for speed; the composer and the
constructor are PyYAML's Python ones, with these checks):

- a key given twice in one mapping is refused, naming both lines (keys brought in by a merge
  key ``<<`` may be overridden, as YAML's merge means);
- with ``string_keys`` (the default) every key is text: ``1: 2`` or ``on: 3`` is refused;
- nesting deeper than ``max_depth`` is refused before Python's stack is at risk;
- the document, with every alias expanded, may hold at most ``max_nodes`` nodes; an alias to
  a node that contains it (a recursive structure) is refused;
- an integer literal longer than ``max_int_chars`` characters is refused.

Every refusal is a ``yaml.MarkedYAMLError`` subclass, ``YAMLLimitError``, with the line and
column of the place. Use ``load(text)``.
"""

from __future__ import annotations

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.error import MarkedYAMLError
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's parser, when PyYAML was built with it
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - depends on the PyYAML build
    CParser = None

__all__ = ["BoundedLoader", "YAMLLimitError", "load", "MAX_DEPTH", "MAX_NODES", "MAX_INT_CHARS"]

#: levels of nesting (an arch file needs about 7: a residual block's conv layer is at 5)
MAX_DEPTH = 64
#: nodes of the document with every alias expanded (a 10,000-layer file has about 170,000)
MAX_NODES = 1_000_000
#: characters of one integer literal (int64 has 19 digits; 0b... 66 characters)
MAX_INT_CHARS = 100


class YAMLLimitError(MarkedYAMLError):
    """A document that breaks one of the loader's bounds; `problem` says which, the mark where."""


class _Bounds(Composer, SafeConstructor):
    """The composer and constructor checks, mixed in front of a parser and a resolver."""

    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES
    max_int_chars = MAX_INT_CHARS
    string_keys = True

    def _init_bounds(self) -> None:
        self._depth = 0
        self._nodes = 0  # nodes composed so far, every alias counted as the nodes it stands for
        self._expanded: dict[int, int] = {}  # id(anchored node) -> its expanded size
        self._open: set[str] = set()  # anchors of the collections being composed

    def _count(self, n: int, mark) -> None:
        self._nodes += n
        if self._nodes > self.max_nodes:
            raise YAMLLimitError(None, None, f"more than {self.max_nodes:,} values once the aliases are "
                                 "expanded (an alias bomb?)", mark)

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            event = self.peek_event()
            anchor = event.anchor
            if anchor in self._open:
                raise YAMLLimitError(None, None, f"alias *{anchor} refers to a value that contains it "
                                     "(a recursive structure)", event.start_mark)
            if anchor in self.anchors:
                self._count(self._expanded.get(id(self.anchors[anchor]), 1), event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias: PyYAML's error
        event = self.peek_event()
        self._count(1, event.start_mark)
        collection = isinstance(event, CollectionStartEvent)
        if collection:
            if self._depth >= self.max_depth:
                raise YAMLLimitError(None, None, f"nested more than {self.max_depth} levels deep",
                                     event.start_mark)
            self._depth += 1
            if event.anchor is not None:
                self._open.add(event.anchor)
        start = self._nodes - 1
        try:
            node = super().compose_node(parent, index)
        finally:
            if collection:
                self._depth -= 1
                self._open.discard(event.anchor)
        if event.anchor is not None:
            self._expanded[id(node)] = self._nodes - start
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, ScalarNode):
                    kind = "list" if isinstance(key_node, SequenceNode) else "mapping"
                    raise YAMLLimitError(None, None, f"a {kind} used as a key (keys are names such as "
                                         "'kernel')", key_node.start_mark)
                key = self.construct_object(key_node)
                if self.string_keys and not isinstance(key, str):
                    from costmodel.model.messages import kind_of

                    raise YAMLLimitError(None, None, f"the key {key_node.value[:40]!r} is read as "
                                         f"{kind_of(key)}, not text (keys are names such as "
                                         "'kernel'; quote it to mean the text)", key_node.start_mark)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise YAMLLimitError(None, None, "a key that cannot be a key", key_node.start_mark) from None
                if first is not None:
                    raise YAMLLimitError(None, None, f"duplicate key {_short(key)} (first given at line "
                                         f"{first.line + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        if len(node.value) > self.max_int_chars:
            raise YAMLLimitError(None, None, f"an integer of {len(node.value):,} characters (at most "
                                 f"{self.max_int_chars})", node.start_mark)
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # e.g. a sexagesimal 1:2:3 with an empty part
            raise YAMLLimitError(None, None, f"{node.value[:40]!r} is not an integer", node.start_mark) from None


_Bounds.add_constructor("tag:yaml.org,2002:int", _Bounds.construct_yaml_int)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 42 else text[:40] + "..."


class BoundedLoader(_Bounds, yaml.SafeLoader):
    """PyYAML's SafeLoader (pure Python) with the bounds above."""

    def __init__(self, stream):
        yaml.SafeLoader.__init__(self, stream)
        self._init_bounds()


if CParser is not None:
    class _FastBoundedLoader(_Bounds, CParser, Resolver):
        """The same bounds over libyaml's parser (about 4x faster on a large file)."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._init_bounds()
        # (CParser's own composer, in C, is not used: _Bounds' Python one comes first in the MRO)
else:  # pragma: no cover
    _FastBoundedLoader = BoundedLoader


def load(text: str | bytes, *, fast: bool = True, max_events: int | None = None):
    """The single document in `text`, as plain data; a MarkedYAMLError (YAMLLimitError for a
    bound, ConstructorError for a refused tag, ...) for anything else.

    `max_events`: refuse, before composing anything, a document of more YAML events (scalars,
    starts and ends of collections, aliases) than this. libyaml counts them in C at about a
    microsecond each, while composing and constructing costs some 20 us a node in Python, so a
    large file of small values is refused in a fraction of the time it would take to read."""
    if fast and max_events is not None and CParser is not None:
        events = CParser(text).raw_parse()
        if events > max_events:
            raise YAMLLimitError(None, None, f"{events:,} YAML values and brackets, more than the "
                                 f"{max_events:,} such a file may have", None)
    loader = (_FastBoundedLoader if fast else BoundedLoader)(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()

