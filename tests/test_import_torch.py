"""costmodel import of PyTorch modules: for eight networks written in tests/import_models.py the
imported architecture has the module's parameters, its matrix products have the FLOPs that
torch.utils.flop_counter counts in the module's forward and backward, and the torch backend's
network of it runs the module's kernels in the module's order; what the format cannot describe
is refused in one line naming it."""

from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from costmodel.errors import ArchError, UsageError  # noqa: E402
from costmodel.importers.fold import to_arch_data  # noqa: E402
from costmodel.importers.source import import_source, parse_input  # noqa: E402
from costmodel.importers.fx_map import module_graph  # noqa: E402
from costmodel.model.arch import load_arch, parse_arch  # noqa: E402

from tests.test_costs import _conv_backward_flop  # noqa: E402  (grouped weight gradients counted once)
from tests.conftest import ROOT  # noqa: E402
from tests.import_models import NETWORKS, UNSUPPORTED  # noqa: E402

MODELS = ROOT / "tests" / "import_models.py"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batches: one thread (several only wait for each other on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def imported(name: str):
    """(module, imported Architecture) of NETWORKS[name], traced once per test session."""
    factory, shape, _ = NETWORKS[name]
    module = factory()
    graph, _ = module_graph(module, shape)
    data, _ = to_arch_data(graph, name=name)
    return module, parse_arch(data, name)


def _input(name: str, batch: int):
    shape = NETWORKS[name][1]
    return torch.randn((batch, *shape), generator=torch.Generator().manual_seed(1))


# -- what the imported file says ----------------------------------------------------------------

def test_lenet5_is_the_shipped_example_network():
    """LeNet-5 with tanh and average pooling is examples/lenet5.yaml (its logits: softmax_ce)."""
    _, arch = imported("lenet5")
    shipped = load_arch(ROOT / "examples" / "lenet5.yaml")
    assert arch == shipped.model_copy(update={"name": "lenet5"})


def test_simplenn_cnn_3layers_keeps_tensorflows_same_pooling():
    """28 -> 14 -> 7 -> 4: 'SAME' 2x2 pooling of a 7x7 map is PyTorch's ceil mode."""
    _, arch = imported("simplenn_cnn_3layers")
    sizes = arch.sizes()
    assert [(sz.a_next, sz.pool_ceil, sz.p) for sz in sizes[:3]] == [(14, True, 2), (7, True, 1), (4, True, 1)]
    assert arch.layers[-1].units == 10 and sizes[-1].n_in == 64 * 4 * 4


def test_resnet20_has_its_blocks_and_projections():
    _, arch = imported("resnet20")
    kinds = [layer.type for layer in arch.layers]
    assert kinds == ["conv"] + ["residual"] * 9 + ["global_avg_pool", "full"]
    assert [block.shortcut for block in arch.layers[1:10]] == ["identity"] * 3 + ["projection", "identity",
                                                                                  "identity"] * 2
    assert all(inner.batch_norm for block in arch.layers[1:10] for inner in block.layers)


def test_functional_network():
    """F.pad with TensorFlow's SAME before a strided F.conv2d is `padding: same`; the residual
    block added with torch.add (the identity first) is found; log_softmax is the loss."""
    _, arch = imported("functional")
    first = arch.layers[0]
    assert (first.padding, first.stride, first.kernel) == ("same", 2, 4)
    assert arch.layers[1].type == "residual" and arch.layers[1].shortcut == "identity"
    assert [inner.activation for inner in arch.layers[1].layers] == ["tanh", "none"]
    assert (arch.layers[2].activation, arch.layers[2].pool, arch.layers[2].pool_stride,
            arch.layers[2].pool_ceil) == ("sigmoid", 3, 2, True)
    assert arch.layers[3].dropout == 0.25 and arch.loss == "softmax_ce"


# -- what must hold for every network -----------------------------------------------------------

@pytest.mark.parametrize("name", list(NETWORKS))
def test_parameter_count_is_the_modules(name):
    module, arch = imported(name)
    assert arch.parameter_count() == sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(NETWORKS))
def test_matrix_product_flops_are_the_flop_counters_of_the_module(name):
    """FLOPs of the imported step's matrix products (costmodel.model.step.step_costs, the ops of
    kind "matrix product") = FlopCounterMode's count of the module's forward and backward (no
    input gradient for the network's input, as the step has none)."""
    from torch.utils.flop_counter import FlopCounterMode

    from costmodel.model.ops import MATMUL
    from costmodel.model.step import step_costs

    module, arch = imported(name)
    batch = 3
    costs = step_costs(arch.with_batch(batch), "index")
    ours = sum(int(costs.flops[i]) for i, ref in enumerate(costs.ops) if ref.kind == MATMUL)
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop}) \
            as counter:
        module(_input(name, batch)).sum().backward()
    assert ours == counter.get_total_flops()


#: top-level profiler events that are no kernel of their own (views), and names of one kernel
_VIEWS = {"aten::view", "aten::flatten", "aten::reshape", "aten::_reshape_alias", "aten::squeeze",
          "aten::_unsafe_view"}
#: adaptive_avg_pool2d to (1, 1) runs aten::mean, as torch.mean over the positions does
_SAME_KERNEL = {"aten::adaptive_avg_pool2d": "aten::mean"}


def _kernels(fn) -> list[str]:
    """The top-level ops and autograd nodes that one call of `fn` runs under torch.profiler, in
    order: in-place and out-of-place forms named alike (relu_/relu, add_/add), views left out."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = []
    for e in prof.events():
        if e.cpu_parent is not None:
            continue
        name = e.name.rstrip("_") if e.name.startswith("aten::") else e.name
        name = _SAME_KERNEL.get(name, name)
        if name in _VIEWS or name.endswith(("ViewBackward0", "ReshapeAliasBackward0")):
            continue
        out.append(name)
    return out


@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_torch_backend_runs_the_modules_kernels_in_order(name):
    """The torch backend's network of the imported architecture (calib.backends.torch.torch_net,
    what measure_torch profiles) runs the same aten ops and autograd nodes as the module, in the
    same order, in a forward and backward (and the module's own log_softmax, when it ends with
    one, after the backend's network)."""
    from calib.backends.torch import torch_net

    module, arch = imported(name)
    net = torch_net(arch)
    x = _input(name, 3)
    softmax = NETWORKS[name][2]

    def step(model, own_softmax: bool):
        flat = model is net and arch.sizes()[0].kind == "full"
        out = model(x.flatten(1) if flat else x)
        if own_softmax:
            out = F.log_softmax(out, dim=1)
        out.backward(torch.ones_like(out))

    theirs = _kernels(lambda: step(module, False))
    ours = _kernels(lambda: step(net, softmax))
    assert ours == theirs
    assert sum(n.startswith("aten::conv2d") or n == "aten::linear" for n in ours) == arch.n_conv + sum(
        sz.kind == "full" for sz in arch.sizes())


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "mlp"])
def test_measure_torch_measures_the_predicted_rows_of_an_imported_network(name):
    """measure_torch on the imported architecture: its rows are the torch backend's predicted
    rows, in order (with the kernels above, the module's own profile would give the same)."""
    from calib.backends.torch import measure_torch
    from costmodel.machine.backends.torch import BYTES_IMPL, TorchBackend
    from costmodel.model.step import step_costs

    _, arch = imported(name)
    arch = arch.with_batch(2)
    result = measure_torch(arch, steps=1, warmup=0, threads=1)
    measured = [(o["layer"], o["op"], o["phase"]) for o in result["ops"]]
    assert measured == [r.key for r in TorchBackend().rows_of(step_costs(arch, BYTES_IMPL))]


# -- round trip ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NETWORKS))
def test_the_imported_file_reads_back_as_the_imported_network(name, tmp_path):
    _, shape, _ = NETWORKS[name]
    result = import_source(f"{MODELS}:{name}", input_shape=shape, batch=32)
    path = tmp_path / "arch.yaml"
    path.write_text(result.text)
    arch = load_arch(path)
    assert arch == result.arch
    assert arch == imported(name)[1].model_copy(update={"batch": 32})
    assert result.text.startswith("# Imported by costmodel ")
    assert f"from {MODELS}:{name} (PyTorch module " in result.text.splitlines()[0]


def test_header_names_the_source_input_date_and_notes():
    import datetime

    from costmodel import __version__

    result = import_source(f"{MODELS}:lenet5", input_shape=(1, 32, 32), today=datetime.date(2024, 5, 6))
    head = [line for line in result.text.splitlines() if line.startswith("#")]
    assert head[0] == (f"# Imported by costmodel {__version__} on 2024-05-06 from {MODELS}:lenet5 (PyTorch module "
                       "LeNet5, traced with torch.fx), input 1x32x32.")
    assert head[1] == "# 61,706 parameters, as the source counts them."
    assert any("batch 128" in line for line in head)
    assert any("loss softmax_ce: assumed" in line for line in head)


def test_loss_and_name_options():
    result = import_source(f"{MODELS}:lenet5", input_shape=(1, 32, 32), loss="mse", name="mine")
    assert (result.arch.loss, result.arch.name) == ("mse", "mine")
    with pytest.raises(ArchError, match="ends with a softmax, whose loss is softmax_ce"):
        import_source(f"{MODELS}:mlp", input_shape=(1, 28, 28), loss="mse")


def test_batch_norm_constants_that_change_no_cost_are_noted():
    from torch import nn

    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, eps=1e-3, momentum=0.01), nn.ReLU(), nn.Flatten(),
                           nn.Linear(2 * 4 * 4, 3))
    data, notes = to_arch_data(module_graph(module, (1, 6, 6))[0], name="bn")
    assert data["layers"][0]["batch_norm"] is True
    assert notes[0] == "1 (BatchNorm2d): eps 0.001 (the format's batch norm has 1e-05; no cost changes)"
    assert notes[1].startswith("1 (BatchNorm2d): momentum 0.01")


def test_torch_export_traces_what_fx_cannot():
    """Control flow on a shape: torch.fx refuses, torch.export traces (and specialises) it."""
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(0.1)
            self.out = nn.Linear(4 * 4 * 4, 5)

        def forward(self, x):
            x = self.bn(self.conv(x))
            if x.shape[1] > 2:
                x = torch.relu(x)
            return self.out(self.drop(F.max_pool2d(x, 2)).flatten(1))

    module = Branchy()
    graph, how = module_graph(module, (3, 8, 8))
    assert how == "torch.export"
    data, _ = to_arch_data(graph, name="b")
    assert data["layers"] == [{"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "batch_norm": True,
                               "pool": 2, "dropout": 0.1}, {"type": "full", "units": 5}]
    assert parse_arch(data).parameter_count() == sum(p.numel() for p in module.parameters())


# -- refusals -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_what_the_format_cannot_describe_is_refused_in_one_line(name):
    factory, shape, words = UNSUPPORTED[name]
    with pytest.raises((ArchError, UsageError)) as info:
        data, _ = to_arch_data(module_graph(factory(), shape)[0], name=name)
        parse_arch(data)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_an_unsupported_function_is_named_with_its_line():
    with pytest.raises(ArchError) as info:
        module_graph(UNSUPPORTED["concatenation"][0](), (1, 8, 8))
    assert str(info.value).startswith("cat at import_models.py:")


@pytest.mark.parametrize("text, message", [
    ("raise ValueError('broken model file')", "running the file raised ValueError: broken model file"),
    ("import sys; sys.exit(3)", "running the file raised SystemExit: 3"),
    ("def make(:\n  pass", "running the file raised SyntaxError"),
    ("def make():\n    raise RuntimeError('no')", "make: calling it with no arguments raised RuntimeError: no"),
    ("def make(width):\n    pass", "make: calling it with no arguments raised TypeError"),
    ("def make():\n    return 42", "make: returned a int, not a torch.nn.Module"),
    ("make = 3", "make: a int, not a function or class"),
    ("x = 1", "no 'make' in the file"),
])
def test_a_model_file_that_fails_is_one_line(tmp_path, text, message):
    path = tmp_path / "model.py"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        import_source(f"{path}:make", input_shape=(1, 8, 8))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_module_must_take_the_input(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                    "torch.nn.Flatten(), torch.nn.Linear(4, 2))\n")
    with pytest.raises(UsageError, match=r"its forward on a 2x1x8x8 input raised RuntimeError.*--input 1x8x8"):
        import_source(f"{path}:make", input_shape=(1, 8, 8))


@pytest.mark.parametrize("text", ["3x32x32", "784", "3,32,32"])
def test_parse_input(text):
    assert parse_input(text) in ((3, 32, 32), (784,))


@pytest.mark.parametrize("text", ["", "3x32", "0x2x2", "axbxc", "3x32x32x1", "9" * 20])
def test_parse_input_refuses(text):
    with pytest.raises(UsageError, match="--input"):
        parse_input(text)


def test_the_model_file_imports_its_neighbours(tmp_path):
    """The file's folder is on sys.path while it runs and while the factory runs (then no more)."""
    import sys

    (tmp_path / "blocks.py").write_text("import torch\ndef head():\n    return torch.nn.Linear(4 * 6 * 6, 3)\n")
    (tmp_path / "model.py").write_text(
        "import torch\nimport blocks\n"
        "def make():\n    import blocks as again\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), again.head())\n")
    result = import_source(f"{tmp_path / 'model.py'}:make", input_shape=(1, 8, 8))
    assert result.arch.parameter_count() == 4 * 9 + 4 + 144 * 3 + 3
    assert str(tmp_path) not in sys.path


@pytest.mark.parametrize("layers, padding", [
    (lambda nn: [nn.Conv2d(1, 2, 4, padding="same")], "same"),  # torch's extra row and column at the end
    (lambda nn: [nn.Conv2d(1, 2, 3, padding="valid")], None),
    (lambda nn: [nn.ZeroPad2d(1), nn.Conv2d(1, 2, 3, padding=1)], 2),  # folded: 1 + 1 on every border
    (lambda nn: [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 2, 2, stride=2)], "same"),  # TensorFlow's SAME of 9
])
def test_paddings_fold_into_the_conv(layers, padding):
    from torch import nn

    module = nn.Sequential(*layers(nn), nn.Flatten(), nn.LazyLinear(3))
    module(torch.zeros(1, 1, 9, 9))  # the lazy Linear learns its input size
    data, _ = to_arch_data(module_graph(module, (1, 9, 9))[0], name="p")
    assert data["layers"][0].get("padding") == padding


def test_an_asymmetric_padding_that_is_not_same_is_refused():
    from torch import nn

    module = nn.Sequential(nn.ZeroPad2d((2, 0, 0, 0)), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 7 * 9, 3))
    with pytest.raises(ArchError, match=r"^1 \(Conv2d\): padding of 0/0 rows and 2/0 columns .* is neither the "
                                        r"same on every border nor TensorFlow's SAME for a 9x9 input$"):
        to_arch_data(module_graph(module, (1, 9, 9))[0], name="p")
