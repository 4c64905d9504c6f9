"""Two network namespaces joined by a veth pair whose both ends are shaped with `tc`: an emulated
link between two data-parallel workers on one machine (benchmarks/data_parallel.py, tests).

Shaping: `tc qdisc ... netem rate R delay D` on both ends (each direction: R, and D one way);
when the kernel has no netem (CONFIG_NET_SCH_NETEM off, as on some VMs), `tbf rate R` only, without
the delay, and ``shaping`` says so. Everything it creates carries a name with this process's id and
a random tag (namespaces cmdp-TAG-a/-b, interfaces cmdpTAGa/b), the addresses 10.231.0.1/.2 exist
only inside those two namespaces, and every command is bounded in time. Leaving the context (also on
an exception, ^C or SIGTERM) deletes both namespaces, which deletes the veth pair with them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass

COMMAND_TIMEOUT = 10.0
ADDRESSES = ("10.231.0.1", "10.231.0.2")
PREFIX = "cmdp"


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no `ip`, no netns support)."""


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=check)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can (a probe namespace is made and
    deleted)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` (apt-get install iproute2)"
    name = f"{PREFIX}-probe-{os.getpid()}-{secrets.token_hex(2)}"
    try:
        made = _run(["ip", "netns", "add", name], check=False)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip() or made.returncode}"
        veth = _run(["ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb"], check=False)
        if veth.returncode != 0:
            return f"no veth pairs: {veth.stderr.strip()}"
        return None
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT)


@dataclass(frozen=True)
class Shaping:
    rate: str | None  # tc's rate, e.g. "1gbit"; None: not shaped
    delay_ms: float | None
    qdisc: str  # what tc runs on each end: "netem ...", "tbf ..." or "none"
    note: str = ""


def _rate_bits(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    for unit, factor in units.items():
        if rate.lower().endswith(unit):
            return float(rate[: -len(unit)]) * factor
    raise ValueError(f"rate {rate!r}: give kbit, mbit or gbit")


class VethLink:
    """Context: two namespaces joined by a veth pair, shaped (see the module docstring).

    ``prefix(i)`` is the command prefix that runs a program in namespace i (0 or 1),
    ``address(i)`` its address and ``interface(i)`` its interface (GLOO_SOCKET_IFNAME)."""

    def __init__(self, rate: str | None = None, delay_ms: float | None = None):
        tag = f"{os.getpid() % 100000}{secrets.token_hex(1)}"
        self.namespaces = (f"{PREFIX}-{tag}-a", f"{PREFIX}-{tag}-b")
        self.interfaces = (f"{PREFIX}{tag}a", f"{PREFIX}{tag}b")  # at most 15 characters
        self.rate, self.delay_ms = rate, delay_ms
        self.shaping: Shaping | None = None
        self._made: list[str] = []
        self._previous = None

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]]

    def address(self, i: int) -> str:
        return ADDRESSES[i]

    def interface(self, i: int) -> str:
        return self.interfaces[i]

    def __enter__(self) -> "VethLink":
        reason = netns_unavailable()
        if reason is not None:
            raise NetnsUnavailable(reason)
        # SIGTERM unwinds like ^C, so that __exit__ runs
        self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for ns in self.namespaces:
                _run(["ip", "netns", "add", ns])
                self._made.append(ns)
            a, b = self.interfaces
            _run(["ip", "-n", self.namespaces[0], "link", "add", a, "type", "veth", "peer", "name", b,
                  "netns", self.namespaces[1]])
            for i, (ns, dev) in enumerate(zip(self.namespaces, self.interfaces)):
                _run(["ip", "-n", ns, "addr", "add", f"{ADDRESSES[i]}/24", "dev", dev])
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.shaping = self.shape(self.rate, self.delay_ms)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def shape(self, rate: str | None, delay_ms: float | None) -> Shaping:
        """Shape both ends (replacing any earlier shaping): netem rate and delay, else tbf rate."""
        if rate is None and delay_ms is None:
            for ns, dev in zip(self.namespaces, self.interfaces):
                _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
            self.shaping = Shaping(None, None, "none")
            return self.shaping
        netem = ["netem"] + (["rate", rate] if rate else []) + (["delay", f"{delay_ms}ms"] if delay_ms else []) \
            + ["limit", "100000"]
        done = [_run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *netem], check=False)
                for ns, dev in zip(self.namespaces, self.interfaces)]
        if all(d.returncode == 0 for d in done):
            self.shaping = Shaping(rate, delay_ms, " ".join(netem))
            return self.shaping
        if rate is None:
            raise NetnsUnavailable(f"tc netem: {done[0].stderr.strip()} (a delay needs netem)")
        # no netem in this kernel: a token bucket at the rate; the burst holds a 64 KiB GSO packet
        burst = max(256 * 1024, int(_rate_bits(rate) / 8 * 2e-3))
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "100ms"]
        for ns, dev in zip(self.namespaces, self.interfaces):
            _run(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *tbf])
        note = (f"tc netem unavailable here ({done[0].stderr.strip()}): rate only, "
                f"no added delay{'' if not delay_ms else f' (asked {delay_ms} ms)'}")
        self.shaping = Shaping(rate, None, " ".join(tbf), note)
        return self.shaping

    def __exit__(self, *exc) -> bool:
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=COMMAND_TIMEOUT)
        self._made.clear()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def our_namespaces() -> list[str]:
    """Namespaces of this module's naming that exist now (`ip netns list`)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{PREFIX}-")]
