"""The fold of the walked graph into the architecture file's layers, one open layer at a time
(costmodel.importers.graph describes the nodes, the walk and the format's order of a layer's
ops): to_arch_data."""

from __future__ import annotations

from math import prod

from costmodel.errors import ArchError
from costmodel.importers.graph import (BN_EPS, BN_MOMENTUM, Block, CONV_STAGES, Graph, LAYER_ORDER, Node, check_shape,
                                       ordered_keys, pooled_size, same_pads, shape_text, walk)


def to_arch_data(graph: Graph, *, name: str, batch: int | None = None, loss: str | None = None,
                 default_loss: str = "softmax_ce") -> tuple[dict, list[str]]:
    """The architecture file's data (for costmodel.model.arch.parse_arch) of `graph`, and the
    notes to write beside it (what the file cannot say and changes no cost, what was assumed).

    `loss`: "mse" or "softmax_ce", None for the graph's own (softmax or log_softmax at its end:
    softmax_ce) else `default_loss`. Raises ArchError naming the node that does not fit the
    format (module docstring)."""
    shape = graph.input_shape
    if len(shape) == 3:
        channels, height, width = shape
    elif len(shape) == 1:
        channels, height, width = shape[0], 1, 1
    else:
        raise ArchError(f"the network's input has the shape {shape_text(shape)} per instance; the format's input is "
                        "an image CxHxW or a vector")
    notes: list[str] = []
    items = walk(graph)
    fold = _Fold(graph, notes)
    for item in items:
        fold.item(item)
    layers = fold.finish()
    if fold.softmax is not None:
        if loss == "mse":
            raise ArchError(f"{fold.softmax.where}: the network ends with a softmax, whose loss is softmax_ce, "
                            "not mse")
        loss = "softmax_ce"
    elif loss is None:
        loss = default_loss
        notes.append(f"loss {loss}: assumed, the network ends with its output layer's values"
                     + (" (logits, as for nn.CrossEntropyLoss)" if loss == "softmax_ce" else ""))
    data = {"name": name, "input": {"height": height, "width": width, "channels": channels}}
    if batch is not None:
        data["batch"] = batch
    data.update({"dtype": graph.dtype, "loss": loss, "layers": layers})
    return data, notes


class _Fold:
    """Folds the walk's items into the file's layers, one open layer at a time (``open`` is the
    layer whose later ops may still come, ``stage`` the last of its ops so far)."""

    def __init__(self, graph: Graph, notes: list[str], inside: str | None = None):
        self.graph = graph
        self.notes = notes
        self.inside = inside  # the block's addition, for messages, when folding a residual branch
        self.layers: list[dict] = []
        self.open: dict | None = None
        self.open_node: Node | None = None
        self.stage = -1
        self.pad: Node | None = None
        self.last = "input"  # kind of what came last: input, conv, full, global_avg_pool, residual
        self.shape = graph.input_shape
        self.softmax: Node | None = None
        self.last_act: Node | None = None  # the activation of the open full layer (for the output check)

    # -- helpers
    def _close(self) -> None:
        if self.open is not None:
            if self.stage < CONV_STAGES["act"]:
                self.open["activation"] = "none"
            self.layers.append(ordered_keys(self.open))
        self.open, self.open_node, self.stage = None, None, -1

    def _need_open(self, node: Node, what: str) -> dict:
        if self.open is None:
            after = {"input": "the network's input", "global_avg_pool": "global average pooling",
                     "residual": "a residual block's addition"}.get(self.last, "a layer")
            raise ArchError(f"{node.where}: {what} after {after}; in the format it belongs to a conv or Linear layer "
                            f"(order: {LAYER_ORDER})")
        return self.open

    def _order(self, node: Node, stage: str, what: str) -> None:
        if self.stage >= CONV_STAGES[stage]:
            raise ArchError(f"{node.where}: {what} after the {self._stage_name()} of {self.open_node.where}; the "
                            f"format's layer runs {LAYER_ORDER}, in this order, each once")
        self.stage = CONV_STAGES[stage]

    def _stage_name(self) -> str:
        return {v: k for k, v in CONV_STAGES.items()}[self.stage].replace("act", "activation").replace(
            "pool", "pooling").replace("batch_norm", "batch normalization")

    # -- items
    def item(self, item) -> None:
        if isinstance(item, Block):
            self.block(item)
            return
        node = item
        if self.pad is not None and node.op not in ("conv", "identity"):
            raise ArchError(f"{self.pad.where}: a padding that no conv follows ({node.where} does); the format pads "
                            "only a conv layer's input")
        getattr(self, f"op_{node.op}", self.op_other)(node)
        if node.op != "pad":  # a conv reads the padding's input with the padding folded in
            self.shape = node.shape

    def op_other(self, node: Node) -> None:
        raise ArchError(f"{node.where}: not supported here")  # a front-end refuses unknown ops first

    def op_identity(self, node: Node) -> None:
        pass

    def op_add(self, node: Node) -> None:  # walk takes every addition into a block
        raise ArchError(f"{node.where}: an addition that is not a residual block's")

    def op_pad(self, node: Node) -> None:
        a = node.attrs
        if self.pad is not None:
            raise ArchError(f"{node.where}: a second padding in a row ({self.pad.where} first)")
        if a.get("mode", "constant") != "constant" or (a.get("value") or 0) != 0:
            raise ArchError(f"{node.where}: {a.get('mode')} padding with {a.get('value')}; the format pads with zeros")
        if len(self.shape) != 3 or any(p < 0 for p in a["pads"]):
            raise ArchError(f"{node.where}: only zeros around an image's rows and columns fold into a conv layer "
                            f"(pads {a['pads']} of a {shape_text(self.shape)} input)")
        self.pad = node

    def op_conv(self, node: Node) -> None:
        a = node.attrs
        self._close()
        if len(self.shape) != 3:
            raise ArchError(f"{node.where}: a conv on a {shape_text(self.shape)} input; the format's conv layers come "
                            "before the flatten")
        kh, kw = a["kernel"]
        sh, sw = a["stride"]
        if kh != kw:
            raise ArchError(f"{node.where}: kernel {kh}x{kw}; the format's kernels are square (h^m x h^m)")
        if sh != sw:
            raise ArchError(f"{node.where}: stride {sh}x{sw}; the format's stride is the same on both axes")
        if tuple(a["dilation"]) != (1, 1):
            raise ArchError(f"{node.where}: dilation {a['dilation']}; the format's conv is not dilated")
        if a.get("padding_mode", "zeros") != "zeros":
            raise ArchError(f"{node.where}: padding_mode {a['padding_mode']!r}; the format pads with zeros")
        if not a["bias"]:
            raise ArchError(f"{node.where}: a conv without bias; the format's conv layer always has a bias b^m, so "
                            "its parameters and update would differ (PyTorch: bias=True)")
        pads = a["pads"]
        if self.pad is not None:
            pads = tuple(p + q for p, q in zip(pads, self.pad.attrs["pads"]))
        d, height, width = self.shape
        top, left, bottom, right = pads
        if top == bottom == left == right:
            padding: int | str = top
        elif (top, bottom) == same_pads(height, kh, sh) and (left, right) == same_pads(width, kh, sh):
            padding = "same"
        else:
            raise ArchError(f"{node.where}: padding of {top}/{bottom} rows and {left}/{right} columns (top/bottom, "
                            f"left/right) is neither the same on every border nor TensorFlow's SAME for a "
                            f"{height}x{width} input")
        expect = (a["filters"], (height + top + bottom - kh) // sh + 1, (width + left + right - kh) // sh + 1)
        check_shape(node, expect)
        layer = {"type": "conv", "filters": a["filters"], "kernel": kh}
        if padding:
            layer["padding"] = padding
        if sh != 1:
            layer["stride"] = sh
        if a["groups"] != 1:
            layer["groups"] = a["groups"]
        self.pad = None
        self.open, self.open_node, self.stage, self.last = layer, node, 0, "conv"

    def op_linear(self, node: Node) -> None:
        a = node.attrs
        self._close()
        if self.inside:
            raise ArchError(f"{node.where}: a Linear inside a residual block; the format's blocks hold conv layers")
        if len(self.shape) != 1:
            raise ArchError(f"{node.where}: a Linear on a {shape_text(self.shape)} input; the format's full layer reads "
                            "a vector (flatten the image first)")
        if a["in_features"] != self.shape[0]:
            raise ArchError(f"{node.where}: {a['in_features']} inputs, but it reads {self.shape[0]} values")
        if not a["bias"]:
            raise ArchError(f"{node.where}: a Linear without bias; the format's full layer always has a bias b^m, "
                            "so its parameters and update would differ (PyTorch: bias=True)")
        check_shape(node, (a["out_features"],))
        self.open, self.open_node, self.stage, self.last = {"type": "full", "units": a["out_features"]}, node, 0, "full"
        self.last_act = None

    def op_batch_norm(self, node: Node) -> None:
        a = node.attrs
        layer = self._need_open(node, "batch normalization")
        self._order(node, "batch_norm", "batch normalization")
        image = layer["type"] == "conv"
        if image != (len(self.shape) == 3):
            raise ArchError(f"{node.where}: batch normalization of a {shape_text(self.shape)} input after "
                            f"{self.open_node.where}; the format normalizes a conv layer's channels (BatchNorm2d) "
                            "or a full layer's units (BatchNorm1d)")
        if a["features"] != self.shape[0]:
            raise ArchError(f"{node.where}: {a['features']} features, but its input has {self.shape[0]}")
        if not a["affine"]:
            raise ArchError(f"{node.where}: batch normalization without a learnable scale and shift (affine=False); "
                            "the format's has gamma and beta")
        if not a["running"]:
            raise ArchError(f"{node.where}: batch normalization without running averages "
                            "(track_running_stats=False); the format's updates them")
        for what, value, default in (("eps", a["eps"], BN_EPS), ("momentum", a["momentum"], BN_MOMENTUM)):
            if value is not None and abs(value - default) > 1e-6 * default:
                self.notes.append(f"{node.where}: {what} {value:g} (the format's batch norm has {default:g}; "
                                  "no cost changes)")
        layer["batch_norm"] = True

    def op_act(self, node: Node) -> None:
        layer = self._need_open(node, "an activation")
        if self.stage >= CONV_STAGES["pool"] and layer["type"] == "conv":
            raise ArchError(f"{node.where}: an activation after the {self._stage_name()} of {self.open_node.where}; "
                            f"the format's conv layer runs {LAYER_ORDER}, in this order (write the activation before "
                            "the pooling)")
        self._order(node, "act", "an activation")
        layer["activation"] = node.attrs["fn"]
        self.last_act = node

    def _pool(self, node: Node, kind: str) -> None:
        a = node.attrs
        if self.open is None and kind == "avg" and self.last in ("residual", "conv") and node.shape[1:] == (1, 1) \
                and tuple(a["kernel"]) == self.shape[1:] and not any(a["pads"]):
            self.op_global_avg_pool(node)  # a window over the whole map: global average pooling
            return
        what = "pooling"
        if self.inside:
            raise ArchError(f"{node.where}: pooling inside a residual block; the format's blocks hold conv layers "
                            "without pooling")
        layer = self._need_open(node, what)
        if layer["type"] != "conv" or len(self.shape) != 3:
            raise ArchError(f"{node.where}: pooling of a {shape_text(self.shape)} input; the format pools a conv "
                            "layer's output")
        self._order(node, "pool", what)
        (kh, kw), (sh, sw) = a["kernel"], a["stride"]
        if kh != kw or sh != sw:
            raise ArchError(f"{node.where}: a {kh}x{kw} window with stride {sh}x{sw}; the format's pooling window "
                            "and stride are square")
        if any(a["pads"]):
            raise ArchError(f"{node.where}: pooling with padding {a['pads']}; the format's pooling pads nothing")
        if tuple(a.get("dilation", (1, 1))) != (1, 1):
            raise ArchError(f"{node.where}: dilated pooling; the format's is not")
        if a.get("divisor_override"):
            raise ArchError(f"{node.where}: divisor_override {a['divisor_override']}; the format's average divides "
                            "by the window's elements")
        if kh == 1:
            raise ArchError(f"{node.where}: a pooling window of 1 (stride {sh}); the format's pool 1 means no "
                            "pooling")
        _, height, width = self.shape
        expect = (self.shape[0], pooled_size(height, kh, sh, a["ceil"]), pooled_size(width, kh, sh, a["ceil"]))
        check_shape(node, expect)
        layer["pool"] = kh
        if sh != kh:
            layer["pool_stride"] = sh
        if kind == "avg":
            layer["pool_type"] = "avg"
        if a["ceil"]:
            layer["pool_ceil"] = True

    def op_max_pool(self, node: Node) -> None:
        self._pool(node, "max")

    def op_avg_pool(self, node: Node) -> None:
        self._pool(node, "avg")

    def op_global_avg_pool(self, node: Node) -> None:
        if self.inside:
            raise ArchError(f"{node.where}: global average pooling inside a residual block")
        self._close()
        if len(self.shape) != 3 or self.last not in ("conv", "residual"):
            raise ArchError(f"{node.where}: global average pooling of {shape_text(self.shape)} values after "
                            f"{'the input' if self.last == 'input' else 'a ' + self.last + ' layer'}; the format "
                            "has it after a conv layer or a residual block")
        if node.shape not in ((self.shape[0], 1, 1), (self.shape[0],)):
            raise ArchError(f"{node.where}: gives {shape_text(node.shape)} from {shape_text(self.shape)}, not the mean of "
                            "each channel")
        self.layers.append({"type": "global_avg_pool"})
        self.last = "global_avg_pool"

    def op_dropout(self, node: Node) -> None:
        rate = node.attrs["rate"]
        if rate == 0:
            return
        layer = self._need_open(node, "dropout")
        self._order(node, "dropout", "dropout")
        layer["dropout"] = rate

    def op_reshape(self, node: Node) -> None:
        if node.shape == self.shape:
            return
        if self.inside or len(self.shape) != 3 or node.shape != (prod(self.shape),):
            raise ArchError(f"{node.where}: a reshape from {shape_text(self.shape)} to {shape_text(node.shape)}; the format "
                            "only flattens an image to a vector (before the first full layer)")
        if self.open is not None and self.stage < CONV_STAGES["pool"]:
            self.stage = CONV_STAGES["pool"]  # after the flatten, only dropout may join the conv layer

    def op_softmax(self, node: Node) -> None:
        if node.output != self.graph.output:
            raise ArchError(f"{node.where}: a softmax inside the network; the format has it only in the loss, after "
                            "the output layer")
        if self.open is None or self.open["type"] != "full" or len(self.shape) != 1:
            raise ArchError(f"{node.where}: a softmax that does not follow the output Linear layer")
        if node.attrs["dim"] not in (1, -1):
            raise ArchError(f"{node.where}: a softmax over axis {node.attrs['dim']}, not the classes")
        self.softmax = node

    def block(self, block: Block) -> None:
        self._close()
        if self.pad is not None:
            raise ArchError(f"{self.pad.where}: a padding before a residual block")
        if self.inside:
            raise ArchError(f"{block.add.where}: a residual block inside a residual block")
        if len(self.shape) != 3 or self.last in ("full",):
            raise ArchError(f"{block.add.where}: a residual block on {shape_text(self.shape)} values; the format's "
                            "blocks come before the full layers")
        f = self._branch(block.f, block)
        shortcut = "identity"
        if block.shortcut:
            projection = self._branch(block.shortcut, block)
            strides = prod(layer.get("stride", 1) for layer in f)
            bn = any(layer.get("batch_norm") for layer in f)
            p = projection[0] if len(projection) == 1 else {}
            if (len(projection) != 1 or p["kernel"] != 1 or p.get("padding", 0) or p.get("groups", 1) != 1
                    or p.get("stride", 1) != strides or p.get("activation", "relu") != "none" or p.get("dropout")
                    or bool(p.get("batch_norm")) != bn):
                raise ArchError(f"{block.shortcut[0].where}: the shortcut of the residual block that ends in "
                                f"{block.add.where} is not the format's projection: one 1x1 conv with stride {strides} "
                                f"(F's), no padding, {'with' if bn else 'without'} batch normalization (as F), no "
                                "activation")
            shortcut = "projection"
        layer = {"type": "residual", "layers": f, "shortcut": shortcut}
        layer["activation"] = block.act.attrs["fn"] if block.act else "none"
        if layer["activation"] == "relu":
            del layer["activation"]
        self.layers.append(layer)
        self.shape = (block.act or block.add).shape
        self.last = "residual"

    def _branch(self, nodes: list[Node], block: Block) -> list[dict]:
        inner = _Fold(self.graph, self.notes, inside=block.add.where)
        inner.shape = self.shape
        inner.last = "conv"
        for node in nodes:
            inner.item(node)
        if inner.pad is not None:
            raise ArchError(f"{inner.pad.where}: a padding that no conv follows")
        inner._close()
        return inner.layers

    def finish(self) -> list[dict]:
        if self.pad is not None:
            raise ArchError(f"{self.pad.where}: a padding that no conv follows")
        output = self.open
        act = self.last_act if output is not None and output["type"] == "full" else None
        self._close()
        if output is None or output["type"] != "full":
            raise ArchError("the network must end with a Linear layer: the format's output layer is a full layer, "
                            "its loss after it")
        if act is not None:
            raise ArchError(f"{act.where}: an activation after the output layer {self.open_node.where if self.open_node else ''}"
                            .rstrip() + "; the format's output layer is linear (its loss follows it)")
        del self.layers[-1]["activation"]  # the last full layer is always linear
        return self.layers
