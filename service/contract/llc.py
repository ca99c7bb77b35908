"""The local learning coefficient (LLC) of a checkpoint: what the API serves, the one sampler
setting it is estimated with, its bounds and its cache key. Shared by the API and the worker;
torch-free.

The LLC (Lau, Furman, Wang, Murfet, Wei 2023, "The local learning coefficient: a
singularity-aware complexity measure") is the effective number of parameters of the solution a
network sits at: the volume of nearby weights with nearly its loss scales as eps^(LLC) for small
eps, so a lower LLC is a simpler, more degenerate solution. It is estimated as

    llc = n_beta * (E_w[L_n(w)] - L_n(w*))

with w drawn by SGLD from the tempered posterior localised at the checkpoint's weights w*, L_n
the member's full-batch training loss (the loss it trains on, over its own training set at
that step) and n_beta = n / log n (the WBIC temperature, n the member's training-set size).
Sampling is by the devinterp package's SGLD (`pip install 'groklab[interp]'`); a worker without
it fails the analysis with that reason.

Each ensemble member is estimated from its own loss: one chain samples every member at once
(their parameters are independent), each member's loss scaled to its own n_beta.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

INTERP_EXTRA = ("the LLC needs the devinterp package on the worker: pip install 'groklab[interp]' "
                "(or groklab[llc], devinterp alone)")
# At most this many loss values per chain in a response's trace (draws averaged in groups).
TRACE_POINTS = 50


@dataclass(frozen=True)
class LLCSetting:
    """The SGLD setting every LLC is estimated with (served with each result, so a number can be
    read with what produced it). The step size scales with the temperature: epsilon = eps_nbeta
    / n_beta (in a pack, the largest member's n_beta), 1e-4 for ci-small's 1325 training pairs,
    4e-5 for nanda2023's 3830. Chosen on the ci-small and nanda2023 runs (see the README's LLC
    section): with it the chains' loss settles within the burn-in and the chains agree at every
    checkpoint of both; a fixed 1e-4 left nanda2023's chains apart by up to 160."""

    version: int = 2
    chains: int = 3
    draws: int = 100  # per chain, after the burn-in; every step is one draw
    burnin: int = 50
    eps_nbeta: float = 0.0184  # the SGLD step size epsilon times n_beta
    localization: float = 1000.0  # gamma: the pull back towards the checkpoint's weights
    nbeta: str = "n/log(n)"  # per member, n its training-set size
    batch: str = "full"  # every step sees the member's whole training set
    seed: int = 0  # the chains' seeds derive from it (numpy SeedSequence)

    def as_dict(self) -> dict:
        return asdict(self)


LLC_SETTING = LLCSetting()
# The analysis cache's kind of an estimate: with the setting's version, so that estimates made
# with an earlier setting are not served as this one's.
LLC_KIND = f"llc:v{LLC_SETTING.version}"

