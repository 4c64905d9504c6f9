"""PyTorch modules for the importers' tests, each made by a function of no arguments (so that
``costmodel import tests/import_models.py:lenet5 --input 1x28x28`` reads them too).

``NETWORKS``: name -> (factory, input shape CxHxW or (n,), whether the module ends with a softmax).
Written for these tests after the networks' papers and simpleNN's Python version (its
net/net.py describes CNN_3layers and CNN_6layers in TensorFlow: 'SAME' convolutions with ReLU,
2x2 'SAME' max pooling of stride 2, one dense output layer). Every conv and Linear has a bias,
as the architecture file's layers do.

``UNSUPPORTED``: name -> (factory, input shape, what the refusal names).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """LeCun et al. 1998 in its common modern form, as examples/lenet5.yaml: 32x32 input, tanh
    and 2x2 average pooling (subsampling), 6 and 16 filters of 5x5, C5 a 5x5 conv of 120 filters,
    F6 of 84 units, a Linear output of 10."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5), nn.Tanh())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def _same_block(c_in: int, widths: list[tuple[int, int]]) -> list[nn.Module]:
    """simpleNN's 'SAME' convolutions with ReLU, then 2x2 'SAME' max pooling of stride 2
    (TensorFlow's SAME pooling is PyTorch's ceil mode for a 2x2 window)."""
    layers: list[nn.Module] = []
    for c_out, kernel in widths:
        layers += [nn.Conv2d(c_in, c_out, kernel, padding="same"), nn.ReLU()]
        c_in = c_out
    return layers + [nn.MaxPool2d(2, stride=2, ceil_mode=True)]


class SimpleNNCNN3(nn.Module):
    """simpleNN's CNN_3layers: 32 filters of 5x5, 64 of 3x3, 64 of 3x3, each 'SAME' with ReLU
    and 2x2 'SAME' pooling; a dense output layer."""

    def __init__(self, channels: int = 1, size: int = 28, classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(*_same_block(channels, [(32, 5)]), *_same_block(32, [(64, 3)]),
                                  *_same_block(64, [(64, 3)]))
        side = size
        for _ in range(3):
            side = -(-side // 2)
        self.dense = nn.Linear(64 * side * side, classes)

    def forward(self, x):
        return self.dense(self.conv(x).reshape(x.shape[0], -1))


class SimpleNNCNN6(nn.Module):
    """simpleNN's CNN_6layers: pairs of 'SAME' convolutions (32 5x5 and 32 3x3; 64 and 64; 64
    and 128, 3x3) each pair followed by 2x2 'SAME' pooling; a dense output layer."""

    def __init__(self, channels: int = 3, size: int = 32, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Sequential(*_same_block(channels, [(32, 5), (32, 3)]))
        self.conv2 = nn.Sequential(*_same_block(32, [(64, 3), (64, 3)]))
        self.conv3 = nn.Sequential(*_same_block(64, [(64, 3), (128, 3)]))
        side = size
        for _ in range(3):
            side = -(-side // 2)
        self.dense = nn.Linear(128 * side * side, classes)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.dense(x.view(x.size(0), -1))


class VGG11BN(nn.Module):
    """VGG-11 (Simonyan and Zisserman 2015, configuration A) with batch normalization for 32x32
    CIFAR images: 3x3 convs with padding 1 (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512,
    M; M a 2x2 max pooling), a classifier of 512 -> 512 (ReLU, dropout 0.5) -> 10."""

    CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

    def __init__(self, width: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for item in self.CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                c_out = item // width
                layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(c_in, 512 // width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(512 // width, 10))

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with batch normalization, ReLU between and after the
    addition; where the shape changes, a 1x1 projection with batch normalization (option B)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2): a 3x3 conv of 16, three stages of
    three basic blocks (16, 32, 64 filters; stride 2 entering stages 2 and 3), global average
    pooling, a Linear of 10."""

    def __init__(self, n: int = 3, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(64, classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.layers(out))
        return self.linear(out.view(out.size(0), -1))


class DepthwiseSeparable(nn.Module):
    """A small MobileNet (Howard et al. 2017): a 3x3 conv of 32, then depthwise 3x3 (groups =
    channels) + pointwise 1x1 pairs, each with batch normalization and ReLU (stride 2 in some
    depthwise convs), the mean over the positions, a Linear of 10."""

    PLAN = [(64, 1), (128, 2), (128, 1), (256, 2)]

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()]
        c_in = 32
        for c_out, stride in self.PLAN:
            layers += [nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in), nn.BatchNorm2d(c_in),
                       nn.ReLU(), nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 10)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class MLP(nn.Module):
    """A multilayer perceptron on flattened 28x28 digits: 784 -> 256 (ReLU, dropout 0.2) -> 128
    (batch normalization, sigmoid) -> 10, log-softmax output (nn.NLLLoss's input)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(256, 128), nn.BatchNorm1d(128), nn.Sigmoid(), nn.Linear(128, 10),
                                 nn.LogSoftmax(dim=1))

    def forward(self, x):
        return self.net(x)


class Functional(nn.Module):
    """Built with functional calls on its own parameters: F.pad with TensorFlow's SAME before a
    strided conv (an odd input), F.conv2d, F.relu, torch.tanh, x.sigmoid(), a residual block
    added with torch.add, overlapping max pooling in ceil mode, torch.flatten, F.linear,
    F.dropout and F.log_softmax."""

    def __init__(self):
        super().__init__()

        def param(*shape):
            return nn.Parameter(torch.randn(*shape) * 0.1)

        self.w1, self.b1 = param(8, 3, 4, 4), param(8)
        self.w2, self.b2 = param(8, 8, 3, 3), param(8)
        self.w3, self.b3 = param(8, 8, 3, 3), param(8)
        self.w4, self.b4 = param(16, 8, 3, 3), param(16)
        self.w5, self.b5 = param(32, 16 * 4 * 4), param(32)
        self.w6, self.b6 = param(10, 32), param(10)

    def forward(self, x):
        x = F.pad(x, (1, 2, 1, 2))  # TensorFlow's SAME for 17x17, kernel 4, stride 2
        h = F.relu(F.conv2d(x, self.w1, self.b1, stride=2))  # 8 x 9 x 9
        f = torch.tanh(F.conv2d(h, self.w2, self.b2, padding=1))
        f = F.conv2d(f, self.w3, self.b3, padding=1)
        h = torch.add(h, f).relu()
        h = F.conv2d(h, self.w4, self.b4, padding=1).sigmoid()
        h = F.max_pool2d(h, 3, stride=2, ceil_mode=True)  # 9 -> 4
        h = torch.flatten(h, 1)
        h = F.dropout(F.relu(F.linear(h, self.w5, self.b5)), p=0.25, training=self.training)
        return F.log_softmax(F.linear(h, self.w6, self.b6), dim=1)


def lenet5():
    return LeNet5()


def simplenn_cnn_3layers():
    return SimpleNNCNN3()


def simplenn_cnn_6layers():
    return SimpleNNCNN6()


def vgg11_bn():
    return VGG11BN()


def resnet20():
    return ResNet20()


def depthwise_separable():
    return DepthwiseSeparable()


def mlp():
    return MLP()


def functional():
    return Functional()


#: name -> (factory, one instance's input shape, whether the module's output is a (log-)softmax)
NETWORKS = {
    "lenet5": (lenet5, (1, 32, 32), False),
    "simplenn_cnn_3layers": (simplenn_cnn_3layers, (1, 28, 28), False),
    "simplenn_cnn_6layers": (simplenn_cnn_6layers, (3, 32, 32), False),
    "vgg11_bn": (vgg11_bn, (3, 32, 32), False),
    "resnet20": (resnet20, (3, 32, 32), False),
    "depthwise_separable": (depthwise_separable, (3, 32, 32), False),
    "mlp": (mlp, (1, 28, 28), True),
    "functional": (functional, (3, 17, 17), True),
}


# -- what the format cannot describe ----------------------------------------------------------

class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.rnn = nn.LSTM(6 * 4, 8, batch_first=True)
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        h = F.relu(self.conv(x))  # 4 x 6 x 6
        seq, _ = self.rnn(h.permute(0, 2, 1, 3).flatten(2))
        return self.out(seq[:, -1])


class WithConvTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 4, 3))
        self.out = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.out(torch.flatten(self.features(x), 1))


class Square(torch.autograd.Function):
    """x -> x * x with its own backward: a custom autograd Function."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class WithCustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.out = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.out(torch.flatten(Square.apply(self.conv(x)), 1))


class WithDilation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, dilation=2)
        self.out = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        return self.out(torch.flatten(F.relu(self.conv(x)), 1))


class WithoutBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.out = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.out(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


class ReluAfterPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.out = nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        return self.out(torch.flatten(self.act(self.pool(self.conv(x))), 1))


class UnusedParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.spare = nn.Linear(3, 3)
        self.out = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.out(torch.flatten(F.relu(self.conv(x)), 1))


class Concatenation(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.out(torch.flatten(torch.cat([self.a(x), self.b(x)], 1), 1))


class SharedWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.hidden = nn.Linear(4 * 6 * 6, 10)
        self.twice = nn.Linear(10, 10)

    def forward(self, x):
        h = F.relu(self.hidden(torch.flatten(F.relu(self.conv(x)), 1)))
        return self.twice(F.relu(self.twice(h)))


def with_lstm():
    return WithLSTM()


def with_conv_transpose():
    return WithConvTranspose()


def with_custom_function():
    return WithCustomFunction()


def with_dilation():
    return WithDilation()


def without_bias():
    return WithoutBias()


def relu_after_pool():
    return ReluAfterPool()


def unused_parameter():
    return UnusedParameter()


def concatenation():
    return Concatenation()


def shared_weights():
    return SharedWeights()


def raises():
    raise ValueError("this factory fails")


def not_a_module():
    return [nn.Linear(2, 2)]


#: name -> (factory, input shape, the words the one-line refusal must hold)
UNSUPPORTED = {
    "with_lstm": (with_lstm, (1, 8, 8), ("rnn (LSTM)", "not supported", "Conv2d")),
    "with_conv_transpose": (with_conv_transpose, (1, 8, 8), ("features.2 (ConvTranspose2d)", "not supported")),
    "with_custom_function": (with_custom_function, (1, 8, 8), ("Square (custom autograd Function)",)),
    "with_dilation": (with_dilation, (1, 8, 8), ("conv (Conv2d)", "dilation")),
    "without_bias": (without_bias, (1, 8, 8), ("conv (Conv2d)", "without bias")),
    "relu_after_pool": (relu_after_pool, (1, 8, 8), ("act (ReLU)", "an activation after the pooling")),
    "unused_parameter": (unused_parameter, (1, 8, 8), ("spare.weight", "used by no layer")),
    "concatenation": (concatenation, (1, 8, 8), ("torch.cat", "not supported")),
    "shared_weights": (shared_weights, (1, 8, 8), ("twice (Linear): the parameter twice.weight is used again",)),
}
