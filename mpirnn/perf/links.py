"""α–β(–γ) costs of point-to-point messages and collectives over one kind of link.

    python -m pytest -q tests/test_perf_model.py -k link

A message of n bytes costs α + n·β; a reduction also pays γ per byte it adds up. The
collective formulas are the textbook ones MPI libraries approach for large messages
(Thakur, Rabenseifner and Gropp, "Optimization of Collective Communication Operations in
MPICH", IJHPCA 2005): recursive halving/doubling rounds for latency, (p−1)/p of the data
over each link for bandwidth. Intra-node figures of a CPU host come from a measurement
(mpirnn/perf/comm_bench.py); the GPU and cluster figures below are documented
defaults, each with its source beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Link:
    alpha_s: float               # latency of one message
    beta_s_per_byte: float       # 1 / bandwidth of one direction
    gamma_s_per_byte: float = 0.0  # adding up received bytes (allreduce, reduce-scatter)
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Link":
        return cls(**{k: data[k] for k in ("alpha_s", "beta_s_per_byte", "gamma_s_per_byte", "source") if k in data})

    def plus(self, other: "Link | None") -> "Link":
        """A path through two links in series (e.g. host staging, then the wire)."""
        if other is None:
            return self
        return Link(self.alpha_s + other.alpha_s, self.beta_s_per_byte + other.beta_s_per_byte,
                    max(self.gamma_s_per_byte, other.gamma_s_per_byte), f"{self.source} + {other.source}")


def _rounds(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


def p2p(link: Link, nbytes: float) -> float:
    """One message of nbytes between two ranks."""
    return link.alpha_s + nbytes * link.beta_s_per_byte


def allreduce(link: Link, nbytes: float, p: int) -> float:
    """Sum of nbytes over p ranks: reduce-scatter then allgather (Rabenseifner)."""
    if p <= 1:
        return 0.0
    share = (p - 1) / p * nbytes
    return 2 * _rounds(p) * link.alpha_s + 2 * share * link.beta_s_per_byte + share * link.gamma_s_per_byte


def allgather(link: Link, nbytes_per_rank: float, p: int) -> float:
    """Every rank ends with all p pieces of nbytes_per_rank (recursive doubling)."""
    if p <= 1:
        return 0.0
    return _rounds(p) * link.alpha_s + (p - 1) * nbytes_per_rank * link.beta_s_per_byte


def reduce_scatter(link: Link, nbytes_total: float, p: int) -> float:
    """Sum of nbytes_total over p ranks, each keeping 1/p of it (recursive halving)."""
    if p <= 1:
        return 0.0
    share = (p - 1) / p * nbytes_total
    return _rounds(p) * link.alpha_s + share * (link.beta_s_per_byte + link.gamma_s_per_byte)


COLLECTIVES = {"p2p": lambda link, n, p: p2p(link, n), "allreduce": allreduce,
               "allgather": lambda link, n, p: allgather(link, n / p, p), "reduce_scatter": reduce_scatter}
"""Cost by name, every one taking the TOTAL bytes of the operation (allgather: all p pieces together)."""


# ---------------------------------------------------------------- documented defaults (not measured here)

NDR_INFINIBAND = Link(
    alpha_s=1.5e-6, beta_s_per_byte=1 / 50e9, gamma_s_per_byte=1 / 1.5e12,
    source="NDR InfiniBand, 400 Gb/s = 50 GB/s per port and direction (NVIDIA ConnectX-7 / Quantum-2 "
           "datasheets); ~1-2 us MPI latency (vendor figures, not measured here); one port per GPU "
           "(DGX H100: 8 ConnectX-7 per node); gamma: the GPU adds at HBM3 speed")
NVLINK4 = Link(
    alpha_s=3e-6, beta_s_per_byte=1 / 450e9, gamma_s_per_byte=1 / 1.5e12,
    source="NVLink 4: 900 GB/s per H100 in both directions together = 450 GB/s per direction (NVIDIA H100 "
           "datasheet); ~3 us latency through NVSwitch (assumed, typical NCCL small-message figure); gamma: "
           "adding at ~1.5 TB/s, half of HBM3's 3.35 TB/s (three streams per add)")
def staging(device: str, cuda_aware_mpi: bool) -> "Link | None":
    """The extra hop every message of a run pays: device->host->device copies only for CUDA
    tensors under an MPI that is not CUDA-aware (mpirnn/distributed/transport.py's routes)."""
    return HOST_STAGING if device == "cuda" and not cuda_aware_mpi else None


HOST_STAGING = Link(
    alpha_s=1.0e-5, beta_s_per_byte=2 / 50e9, gamma_s_per_byte=1 / 10e9,
    source="mpirnn's transport without CUDA-aware MPI copies every GPU message to pinned host memory and "
           "back: a stream synchronisation (~10 us, assumed) and two PCIe Gen5 x16 copies at ~50 GB/s each "
           "(64 GB/s nominal per direction); reductions then run on the host CPU at ~10 GB/s (assumed)")
