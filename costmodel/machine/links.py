"""The links between data-parallel workers: the named Ethernet links (1GbE ... 100GbE) with
their latency alpha and bandwidth 1/beta, a link given by --latency and --bandwidth, and the
profile's measured network (docs/data-parallel.md)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from costmodel.errors import UsageError

#: Ethernet TCP payload over the wire at MTU 1500: 1448 payload bytes (1500 - 20 IP - 32 TCP with
#: timestamps) per 1538 bytes on the wire (+ 14 header, 4 FCS, 8 preamble, 12 inter-frame gap)
TCP_EFFICIENCY = 1448 / 1538

#: links the user may not have: name -> (alpha seconds, line rate bits/s). The line rates are
#: IEEE 802.3's (1000BASE-T, 10GBASE, 25GBASE, 100GBASE); beta = 1 / (rate/8 * TCP_EFFICIENCY).
#: The latencies are ASSUMED typical one-way latencies of a small message through the Linux
#: kernel's TCP stack, two NICs and one switch (order of magnitude, not measured here); gloo adds
#: its own per-call overhead on top: measure yours with `calibrate --network` across the machines.
LINKS: dict[str, tuple[float, float]] = {
    "1GbE": (50e-6, 1e9),
    "10GbE": (20e-6, 10e9),
    "25GbE": (15e-6, 25e9),
    "100GbE": (10e-6, 100e9),
}


def link_alpha_beta(name: str) -> tuple[float, float]:
    """(alpha s, beta s/B) of a named link (LINKS, case-insensitive), or a UsageError listing the
    names."""
    for key, (alpha, rate) in LINKS.items():
        if key.lower() == name.strip().lower():
            return alpha, 1.0 / (rate / 8 * TCP_EFFICIENCY)
    raise UsageError(f"--link: {name!r} is not one of {', '.join(LINKS)}")


def link_name(name: str) -> str:
    """The name of a link of LINKS as LINKS spells it ('10gbe' -> '10GbE'); UsageError otherwise."""
    link_alpha_beta(name)
    return next(k for k in LINKS if k.lower() == name.strip().lower())


_LATENCY_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def parse_latency(text: str) -> float:
    """'50us', '0.2 ms', '1e-5s' -> seconds; a UsageError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(s|ms|us|µs|ns)\s*", text)
    if not match or not math.isfinite(float(match.group(1))):
        raise UsageError(f"--latency: {text!r} is not a time such as 50us, 0.2ms or 1e-5s")
    return float(match.group(1)) * _LATENCY_UNITS[match.group(2)]


def parse_bandwidth(text: str) -> float:
    """'1.25GB/s', '10Gbit/s', '10 Gb/s', '100MB/s' -> bytes per second (SI prefixes: G = 1e9);
    B is bytes, bit or b is bits. A UsageError for anything else, or a rate that is not > 0."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([kKMGT]?)(B|bit|b)(?:/s|ps)\s*", text)
    if not match:
        raise UsageError(f"--bandwidth: {text!r} is not a rate such as 1.25GB/s or 10Gbit/s")
    value = float(match.group(1)) * _PREFIX[match.group(2)] / (1 if match.group(3) == "B" else 8)
    if not value > 0 or not math.isfinite(value):
        raise UsageError(f"--bandwidth: {text!r} is not a positive rate")
    return value


@dataclass(frozen=True)
class Link:
    """The network a data-parallel prediction assumes: the ring model's alpha (seconds per
    message) and beta (seconds per byte), its name and where they come from: source "profile"
    (the profile's network section; name its link: "loopback", "measured", or a given link's
    name) or "given" (``--link NAME``, or ``--latency`` and ``--bandwidth``)."""

    alpha_seconds: float
    beta_seconds_per_byte: float
    name: str
    source: Literal["profile", "given"]

    def facts(self) -> str:
        """alpha and beta read as machine facts: 'latency 50.0 us, 118 MB/s'."""
        from costmodel.units import fmt_seconds, human

        rate = "no cost per byte" if self.beta_seconds_per_byte == 0 else human(1 / self.beta_seconds_per_byte, "B/s")
        return f"latency {fmt_seconds(self.alpha_seconds)}, {rate}"


def given_link(*, link: str | None = None, latency: str | None = None, bandwidth: str | None = None) -> Link | None:
    """The link the user names (``--link NAME``) or describes (``--latency`` and ``--bandwidth``
    together), or None when none of them is given. Errors: UsageError for an unknown name, a
    malformed latency or bandwidth, --link with either of the others, or one of the two alone."""
    if link is not None and (latency is not None or bandwidth is not None):
        raise UsageError("--link names a link with its latency and bandwidth: give either --link or "
                         "--latency and --bandwidth")
    if link is not None:
        alpha, beta = link_alpha_beta(link)
        return Link(alpha, beta, link_name(link), "given")
    if latency is None and bandwidth is None:
        return None
    if latency is None or bandwidth is None:
        raise UsageError("give both --latency and --bandwidth (or --link)")
    return Link(parse_latency(latency), 1.0 / parse_bandwidth(bandwidth), f"{latency.strip()}, {bandwidth.strip()}",
                "given")


def network_link(network, given: Link | None = None) -> Link:
    """The link to predict with: `given` (given_link) if any, else the profile's network section
    `network` (costmodel.machine.profile.Network, or None). Neither: a UsageError saying how to
    get one."""
    if given is not None:
        return given
    if network is None:
        raise UsageError(f"the profile has no network section: run `costmodel calibrate --network` (this "
                         f"machine's loopback) or give --link {'|'.join(LINKS)} (or --latency and --bandwidth)")
    return Link(network.alpha_seconds, network.beta_seconds_per_byte, network.name or network.link, "profile")
