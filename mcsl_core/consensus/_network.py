"""Network and cost model of the consortium (frozen dataclass, validated on creation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcsl_core._validation import check_range

__all__ = ["LATENCY_KINDS", "NetworkModel"]

LATENCY_KINDS = ("constant", "exponential", "pareto")

# Measured by ``python benchmarks/crypto_costs.py`` on 2026-11-25, AMD EPYC (2 cores,
# shared), cryptography 50.0.2 / OpenSSL Ed25519, hashlib SHA-256:
#   Ed25519 sign of a 32-byte digest   39.5 us
#   Ed25519 verify of a 32-byte digest 150.3 us
#   SHA-256 of a 300 KB update         213.5 us (0.712 ns/byte)
_SIGN_S = 39.5e-6
_VERIFY_S = 150.3e-6
_HASH_S_PER_BYTE = 0.712e-9


@dataclass(frozen=True)
class NetworkModel:
    """Links, bandwidths and CPU costs of the consortium (SPEC.md 3; paper V-B).

    Defaults describe a consortium of data-centre nodes in one region:

    - ``latency="pareto"``, ``latency_mean_s=0.02``, ``latency_shape=5``: per-message
      one-way latency drawn from a Pareto law with that mean, as SimBlock does
      (shape 5, scale = mean * (shape - 1) / shape);
    - ``upload_bps = download_bps = 1e9``: 1 Gbit/s per node, messages serialised on
      the sender's uplink and then the receiver's downlink;
    - ``edge_upload_bps=1e8``: an edge server's uplink (100 Mbit/s);
    - ``client_download_bps=1e9``: the client (requestor gateway) that collects replies;
    - ``processing_s=20e-6``: fixed per-message handling (parsing, bookkeeping);
    - ``sign_s``, ``verify_s``, ``hash_s_per_byte``: Ed25519 and SHA-256 costs measured
      on this machine by ``benchmarks/crypto_costs.py`` (see the module comment);
    - ``header_bytes=256``: a signed protocol message without payload (view, sequence,
      32-byte digest, ids, 64-byte signature, framing);
    - ``view_timeout_s=None``: the base view-change timeout (it doubles in each new
      view). ``None`` sets it per call to ``2 * estimate + 1 s`` where ``estimate``
      is the normal-case time bound of ``_api._auto_timeout`` (an operator sizing the
      timer to the block), so that honest runs see no spurious view change.
    """

    latency: str = "pareto"
    latency_mean_s: float = 0.02
    latency_shape: float = 5.0
    upload_bps: float = 1e9
    download_bps: float = 1e9
    edge_upload_bps: float = 1e8
    client_download_bps: float = 1e9
    processing_s: float = 20e-6
    sign_s: float = _SIGN_S
    verify_s: float = _VERIFY_S
    hash_s_per_byte: float = _HASH_S_PER_BYTE
    header_bytes: float = 256.0
    view_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.latency not in LATENCY_KINDS:
            raise ValueError(f"latency must be one of {LATENCY_KINDS}, got {self.latency!r}")
        check_range("latency_mean_s", self.latency_mean_s, 0.0)
        check_range("latency_shape", self.latency_shape, 1.0, lo_open=True)
        for name in ("upload_bps", "download_bps", "edge_upload_bps", "client_download_bps"):
            check_range(name, getattr(self, name), 0.0, lo_open=True)
        for name in ("processing_s", "sign_s", "verify_s", "hash_s_per_byte", "header_bytes"):
            check_range(name, getattr(self, name), 0.0)
        if self.view_timeout_s is not None:
            check_range("view_timeout_s", self.view_timeout_s, 0.0, lo_open=True)

    @property
    def latency_code(self) -> int:
        return LATENCY_KINDS.index(self.latency)

    def seconds_per_byte(self) -> np.ndarray:
        """``[consortium up, consortium down, edge up, client down]`` seconds per byte."""
        return np.array(self.seconds_per_byte_tuple())

    def seconds_per_byte_tuple(self) -> tuple[float, float, float, float]:
        """:meth:`seconds_per_byte` as Python floats (no NumPy on a per-call path)."""
        bps = (self.upload_bps, self.download_bps, self.edge_upload_bps, self.client_download_bps)
        return tuple(8.0 / b for b in bps)
