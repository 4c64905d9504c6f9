"""costmodel import of ONNX files: the exports of the eight networks of tests/import_models.py
(torch.onnx.export, in training mode) import as the same architecture as their modules; graphs
written with onnx.helper (a Keras-style MatMul + Add network, symbolic sizes); what the format
cannot describe and files that are not ONNX models are refused in one line."""

from __future__ import annotations

import functools
import os
import warnings

import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from costmodel.errors import ArchError, UsageError  # noqa: E402
from costmodel.importers.fold import to_arch_data  # noqa: E402
from costmodel.importers.onnxfile import MAX_ONNX_BYTES, onnx_graph  # noqa: E402
from costmodel.importers.source import import_source  # noqa: E402
from costmodel.model.arch import parse_arch  # noqa: E402

from tests.import_models import NETWORKS, UNSUPPORTED  # noqa: E402
from tests.test_import_torch import imported  # noqa: E402


def export(module, shape, path, *, training: bool = True, dynamic_batch: bool = False) -> None:
    """torch.onnx.export with the TorchScript exporter (dynamo=False: the dynamo exporter needs
    onnxscript, which costmodel does not need), in training mode (batch normalization stays a
    node of its own, dropout stays)."""
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    if not training:
        module.eval()
    extra = {"input_names": ["x"], "dynamic_axes": {"x": {0: "N"}}} if dynamic_batch else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        torch.onnx.export(module, (torch.randn(2, *shape),), str(path), dynamo=False, training=mode, **extra)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> path of the ONNX export of NETWORKS[name] (made on first use)."""
    folder = tmp_path_factory.mktemp("onnx")

    @functools.lru_cache(maxsize=None)
    def get(name: str):
        _, shape, _ = NETWORKS[name]
        path = folder / f"{name}.onnx"
        export(imported(name)[0], shape, path)
        return path

    return get


def _arch(path, **options):
    graph, notes, params = onnx_graph(path, **options)
    data, more = to_arch_data(graph, name="net")
    return parse_arch(data), notes + more, params


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_an_export_imports_as_its_module(name, exports):
    """The ONNX file gives the architecture the module gives (hence its parameters, FLOPs and
    kernels, tests/test_import_torch.py), and its initializers the module's parameter count."""
    module, from_module = imported(name)
    arch, notes, params = _arch(exports(name))
    assert arch == from_module.model_copy(update={"name": "net"})
    assert params == arch.parameter_count() == sum(p.numel() for p in module.parameters())
    assert not [note for note in notes if not note.startswith("loss softmax_ce: assumed")]


def test_the_imported_file_says_where_it_comes_from(exports):
    result = import_source(str(exports("resnet20")), batch=16)
    first = result.text.splitlines()[0]
    assert "from " + str(exports("resnet20")) + " (ONNX file, parsed), input 3x32x32." in first
    assert result.arch.batch == 16 and result.arch.name == "resnet20"


def test_a_symbolic_batch_and_a_symbolic_image(tmp_path):
    """A batch axis named N is fine; a symbolic height needs --input, which fills it."""
    path = tmp_path / "dyn.onnx"
    module = NETWORKS["resnet20"][0]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING, input_names=["x"],
                          dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    with pytest.raises(ArchError, match=r"input x has a symbolic size \(3x\?x\?\); give it with costmodel import "
                                        r"--input CxHxW"):
        onnx_graph(path)
    arch, _, _ = _arch(path, input_shape=(3, 32, 32))
    assert arch == imported("resnet20")[1].model_copy(update={"name": "net"})
    with pytest.raises(UsageError, match=r"--input 1x32x32: the file's input x is 3x\?x\?"):
        onnx_graph(path, input_shape=(1, 32, 32))


def _model(nodes, inits, shape=("N", 784), out=10, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out])
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_a_keras_style_matmul_add_network(tmp_path):
    """MatMul with an initializer then Add of the bias is a full layer; Softmax at the end is the loss."""
    import numpy as np

    inits = {"W1": np.zeros((784, 64), np.float32), "b1": np.zeros(64, np.float32),
             "W2": np.zeros((64, 10), np.float32), "b2": np.zeros(10, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="dense/MatMul"),
             helper.make_node("Add", ["h", "b1"], ["h1"], name="dense/BiasAdd"),
             helper.make_node("Relu", ["h1"], ["h2"], name="dense/Relu"),
             helper.make_node("MatMul", ["h2", "W2"], ["o"], name="out/MatMul"),
             helper.make_node("Add", ["o", "b2"], ["o1"], name="out/BiasAdd"),
             helper.make_node("Softmax", ["o1"], ["y"], name="out/Softmax", axis=-1)]
    path = tmp_path / "keras.onnx"
    onnx.save(_model(nodes, inits), path)
    arch, notes, params = _arch(path)
    assert [layer.model_dump(exclude_defaults=True) for layer in arch.layers] == [
        {"type": "full", "units": 64}, {"type": "full", "units": 10}]
    assert (arch.input.channels, arch.input.height, arch.loss) == (784, 1, "softmax_ce")
    assert params == arch.parameter_count() == 784 * 64 + 64 + 650


def test_an_addition_of_a_constant_is_refused(tmp_path):
    import numpy as np

    nodes = [helper.make_node("Add", ["x", "c"], ["h"], name="shift"),
             helper.make_node("Gemm", ["h", "W", "b"], ["y"], name="fc", transB=1)]
    path = tmp_path / "shift.onnx"
    onnx.save(_model(nodes, {"c": np.ones(784, np.float32), "W": np.zeros((10, 784), np.float32),
                             "b": np.zeros(10, np.float32)}), path)
    with pytest.raises(ArchError, match=r"^shift \(Add\): an addition of a constant"):
        _arch(path)


def test_a_node_of_another_domain_is_refused(tmp_path):
    nodes = [helper.make_node("Mystery", ["x"], ["y"], name="custom", domain="com.example")]
    model = _model(nodes, {}, out=784)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    with pytest.raises(ArchError, match=r"^.*custom \(Mystery\): an op of the domain 'com.example'"):
        _arch(path)


@pytest.mark.parametrize("name, words", [
    ("with_lstm", ("/rnn/LSTM (LSTM): not supported", "Conv, Gemm")),
    ("with_conv_transpose", ("/features/features.2/ConvTranspose (ConvTranspose): not supported",)),
    ("with_custom_function", ("(Mul): not supported",)),
    ("with_dilation", ("/conv/Conv (Conv): dilation (2, 2)",)),
    ("without_bias", ("/conv/Conv (Conv): a conv without bias",)),
    ("relu_after_pool", ("/act/Relu (Relu): an activation after the pooling of /conv/Conv (Conv)",)),
    ("concatenation", ("/Concat (Concat): not supported",)),
    ("shared_weights", ("/twice_1/Gemm (Gemm): its weight 'twice.weight' is used again (first by /twice/Gemm (Gemm))",)),
])
def test_what_the_format_cannot_describe_is_refused_in_one_line(name, words, tmp_path):
    factory, shape, _ = UNSUPPORTED[name]
    path = tmp_path / f"{name}.onnx"
    export(factory(), shape, path)
    with pytest.raises(ArchError) as info:
        _arch(path)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_an_inference_export_describes_the_inference_network(tmp_path):
    """An export in eval mode folds batch normalization into the conv before it and drops
    dropout: the file describes that network, with fewer parameters (docs/import.md)."""
    module, arch = imported("vgg11_bn")
    path = tmp_path / "eval.onnx"
    export(NETWORKS["vgg11_bn"][0](), (3, 32, 32), path, training=False)
    folded, _, params = _arch(path)
    assert not any(getattr(layer, "batch_norm", False) or getattr(layer, "dropout", 0) for layer in folded.layers)
    assert params == folded.parameter_count() < arch.parameter_count()


# -- files that are not ONNX models -------------------------------------------------------------

def test_a_truncated_file_is_one_line(exports, tmp_path):
    data = exports("resnet20").read_bytes()
    for cut in (len(data) // 2, 100, 7):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(ArchError) as info:
            onnx_graph(path)
        assert str(info.value).startswith(f"{path}: not ")
        assert "\n" not in str(info.value)


def test_a_file_of_two_gigabytes_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as fh:
        fh.truncate(2 << 30)  # sparse: 2 GiB by its size, nothing on disk
    with pytest.raises(ArchError, match=r"huge.onnx: 2 GiB, more than the 1 GiB a model file \(ONNX\) may have"):
        onnx_graph(path)
    assert MAX_ONNX_BYTES == 1 << 30


@pytest.mark.parametrize("content, message", [
    (b"", r"not an ONNX model \(no graph nodes\)"),
    (b"\xff\xfe garbage \x00\x01" * 10, r"not an ONNX model \(protobuf"),
    (b"name: lenet\nlayers: []\n", "not an ONNX model"),
])
def test_bytes_that_are_not_a_model(tmp_path, content, message):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ArchError, match=message):
        onnx_graph(path)


def test_not_a_regular_file(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ArchError, match="a directory, not a regular file"):
        onnx_graph(tmp_path / "dir.onnx")
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    with pytest.raises(ArchError, match="a character device, not a regular file"):
        onnx_graph(tmp_path / "zero.onnx")


@pytest.mark.parametrize("location", ["weights.bin", "/etc/passwd", "../../missing.bin"])
def test_weights_in_another_file_are_never_read(exports, tmp_path, location):
    """PyTorch's default (dynamo) exporter writes the weights beside the model: only their shapes
    are used, and the file they name is never opened (here: absent, or not weights at all)."""
    model = onnx.load(exports("resnet20"))
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
    path = tmp_path / "external.onnx"
    path.write_bytes(model.SerializeToString())
    arch, _, params = _arch(path)
    assert arch == imported("resnet20")[1].model_copy(update={"name": "net"})
    assert params == arch.parameter_count()


def test_without_the_onnx_package(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(UsageError, match=r"^reading an ONNX file needs the onnx package: pip install "
                                         r"'costmodel\[onnx\]'$"):
        onnx_graph(path)


@pytest.mark.parametrize("attrs, words", [
    ({"strides": [0, 0]}, "strides (0, 0): two positive sizes expected"),
    ({"pads": [-1, -1, -1, -1]}, "pads (-1, -1, -1, -1): four sizes of zero or more expected"),
    ({"kernel_shape": [5, 5]}, "kernel_shape (5, 5) and a weight of 4x1x3x3"),
])
def test_a_conv_with_impossible_attributes_is_refused(tmp_path, attrs, words):
    import numpy as np

    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
             helper.make_node("Flatten", ["c"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G", "b"], ["y"], name="fc", transB=1)]
    inits = {"W": np.zeros((4, 1, 3, 3), np.float32), "B": np.zeros(4, np.float32),
             "G": np.zeros((10, 144), np.float32), "b": np.zeros(10, np.float32)}
    path = tmp_path / "bad.onnx"
    model = _model(nodes, inits, shape=("N", 1, 8, 8))
    path.write_bytes(model.SerializeToString())  # not checked by onnx.save: the reader must refuse it
    with pytest.raises(ArchError) as info:
        _arch(path)
    assert words in str(info.value) and "\n" not in str(info.value)
