"""The reference CNN's SG step against PyTorch's on the CIFAR-10 examples.

For each example at batch 128 in float32, with the machine's threads for both NumPy's BLAS
and PyTorch, prints the median step time of the index and strided implementations and of
PyTorch (calib.backends.torch.torch_layers: nn.Conv2d/BatchNorm2d/ReLU/MaxPool2d/Linear, the
residual additions, global average pooling, the same loss and the same SG-with-momentum
update, written out), and the ratios to PyTorch. ResNet-20 and VGG11 (the extended
vocabulary's examples) run strided and PyTorch only by default (`--index` adds simpleNN's
index implementation, whose scatter-adds take minutes there). The three run in alternating blocks of
steps (--rounds blocks each, the first step of a block untimed), so that a change in the
machine's load affects them alike while each runs in its steady state (interleaving single
steps lets the idle BLAS and OpenMP threads of one spin on the cores the other needs);
every step starts from the same weights.

    python benchmarks/vs_torch.py [--steps 12] [--rounds 3] [--batch 128] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from calib.cnn import ReferenceCNN
from calib.measure import synthetic_batch
from calib.backends.torch import TorchStep
from costmodel.model.arch import load_arch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["cifar10-demo-layer4.yaml", "cifar10-layer7.yaml", "resnet20-cifar10.yaml", "vgg11-cifar10.yaml"]
#: the examples the index implementation runs on by default
INDEX = {"cifar10-demo-layer4.yaml", "cifar10-layer7.yaml"}


def numpy_step(cnn: ReferenceCNN, X: np.ndarray, Y: np.ndarray):
    params = cnn.state()  # W, b, their velocities; batch norm's gamma, beta and running averages
    start = [a.copy() for a in params]

    def restore() -> None:
        for a, a0 in zip(params, start):
            np.copyto(a, a0)

    return restore, lambda: cnn.step(X, Y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per implementation")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--index", action="store_true", help="the index implementation on every example")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, float32, {args.threads} threads (NumPy's BLAS and PyTorch), "
          f"median of {args.steps} steps; torch {torch.__version__}, numpy {np.__version__}")
    print(f"{'arch':<22}{'index s':>10}{'strided s':>11}{'torch s':>10}"
          f"{'index/torch':>13}{'strided/torch':>15}")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for name in EXAMPLES:
            arch = load_arch(ROOT / "examples" / name).with_batch(args.batch).with_dtype("float32")
            X, Y = synthetic_batch(arch)
            runners = {}
            for impl in ("index", "strided") if args.index or name in INDEX else ("strided",):
                runners[impl] = numpy_step(ReferenceCNN(arch, impl=impl), X, Y)
            ts = TorchStep(arch, ReferenceCNN(arch, impl="strided"), X, Y)
            runners["torch"] = (ts.restore, ts.step)
            seconds = {key: [] for key in runners}
            for block in range(args.rounds):
                for key, (restore, step) in runners.items():
                    for i in range(args.warmup + args.steps // args.rounds):
                        restore()
                        t0 = time.perf_counter()
                        step()
                        if i >= args.warmup:
                            seconds[key].append(time.perf_counter() - t0)
            med = {key: float(np.median(values)) for key, values in seconds.items()}
            index = f"{med['index']:>10.4f}" if "index" in med else f"{'-':>10}"
            index_ratio = f"{med['index'] / med['torch']:>13.2f}" if "index" in med else f"{'-':>13}"
            print(f"{arch.name:<22}{index}{med['strided']:>11.4f}{med['torch']:>10.4f}"
                  f"{index_ratio}{med['strided'] / med['torch']:>15.2f}", flush=True)


if __name__ == "__main__":
    main()
