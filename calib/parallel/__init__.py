"""Data-parallel SG on torch.distributed (gloo): real steps, the allreduce microbenchmark, and
emulated links (docs/data-parallel.md).

- ``process_group``: who the workers are (``--workers P`` on this machine, or one rank of a group
  given by ``--init tcp://HOST:PORT --rank R --world-size P`` or torchrun's environment), their
  cores and threads; joining the gloo group with a bounded timeout. ``launch``: starting them
  (torch.multiprocessing), collecting their results, and stopping all of them when one fails.
- ``step``: one data-parallel step of the reference NumPy CNN (its gradients allreduced in place
  through torch.from_numpy, layer by layer as the backward produces them, optionally
  asynchronously), ``ddp``: of PyTorch under DistributedDataParallel; timed per op, plus
  ``allreduce`` rows (phase ``communication``).
- ``network``: the gloo allreduce microbenchmark and the fit of the ring model's alpha and beta;
  links the user does not have (``--link 10GbE``, ``--latency``/``--bandwidth``).
- ``netns``: two network namespaces joined by a shaped veth pair, for checking on one machine.

torch is optional: every module imports it inside functions (calib.backends.torch.import_torch).
"""
