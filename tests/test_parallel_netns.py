"""Two data-parallel workers in separate network namespaces joined by a shaped veth pair
(calib/parallel/netns.py): the `--init tcp://HOST:PORT --rank R --world-size P` path across a
link, and the namespaces always removed. Skipped where namespaces cannot be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DIGITS = ROOT / "examples" / "digits-small.yaml"


def _need_netns():
    from calib.parallel.netns import netns_unavailable

    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


def test_namespaces_are_removed_even_when_the_body_fails():
    _need_netns()
    from calib.parallel.netns import VethLink, our_namespaces

    with pytest.raises(ZeroDivisionError):
        with VethLink("10gbit", 0.1) as link:
            made = set(link.namespaces)
            assert made <= set(our_namespaces())
            1 / 0
    assert not made & set(our_namespaces())


def test_two_ranks_join_across_an_emulated_link():
    _need_netns()
    pytest.importorskip("torch")
    from calib.parallel.netns import VethLink, our_namespaces

    with VethLink("10gbit", 0.1) as link:
        assert link.shaping.rate == "10gbit"
        procs = []
        try:
            for r in range(2):
                env = dict(os.environ, GLOO_SOCKET_IFNAME=link.interface(r))
                cmd = link.prefix(r) + [sys.executable, str(ROOT / "cli.py"), "measure", str(DIGITS), "--steps", "2",
                                        "--warmup", "1", "--threads", "1", "--format", "json", "--overlap",
                                        "--init", f"tcp://{link.address(0)}:29511", "--rank", str(r),
                                        "--world-size", "2", "--timeout", "60"]
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              text=True, cwd=ROOT))
            outs = [p.communicate(timeout=240) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        namespaces = link.namespaces
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    for out in (outs[0][0], outs[1][0]):  # every rank prints every rank's rows
        data = json.loads(out)
        assert data["mode"] == "joined" and data["workers"] == 2
        assert [r["rank"] for r in data["ranks"]] == [0, 1]
        for worker in data["ranks"]:
            comm = [r for r in worker["ops"] if r["phase"] == "communication"]
            assert [r["layer"] for r in comm] == [4, 3, 2, 1]
    assert not set(namespaces) & set(our_namespaces())
