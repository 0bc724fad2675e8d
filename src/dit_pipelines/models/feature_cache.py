"""`FeatureCache`: reuse of DiT block outputs across nearby denoising steps (FORA, Selvaraju et al. 2024).

Between two nearby steps of a sampling chain the attention and MLP outputs of a DiT's blocks barely change. FORA
computes them every `interval` model calls and reuses them in between, where a block then costs only its adaLN map:
x + gate_msa(t) * attn_cached, x + gate_mlp(t) * mlp_cached (the gates are recomputed for the current timestep).
A reuse call skips every attention and MLP, so the transformer's cost drops by about `interval`x; the effect on
sample quality is measured in `benchmarks/RESULTS.md`. The price is memory: two to four
(N, T, D) tensors a block (about 1 GB for a guided DiT-XL/2 batch of 8).
"""

from typing import Callable, Dict, Hashable, Optional, Tuple, Union

import torch


class FeatureCache:
    """Block features of one sampling run, refreshed every `interval` model calls (1: always computed, no reuse).
    Model calls, not sampler steps: a sampler calling the model twice a step (Heun) refreshes twice as often.

    The model calls `start_call(shape)` once per forward, with its input's shape, and `fetch(key, compute)` for each
    cached feature. A call whose input shape differs from the previous call's (guidance switched on or off, another
    resolution) recomputes. Inference only: the models refuse a cache while gradients are enabled.

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTModel
        >>> from dit_pipelines.models import FeatureCache
        >>> model = DiTModel.from_preset("DiT-S/8", sample_size=16, num_classes=10, depth=2)
        >>> x, y, cache = torch.randn(2, 4, 16, 16), torch.tensor([3, 7]), FeatureCache(interval=3)
        >>> with torch.no_grad():
        ...     outs = [model(x, t, y, feature_cache=cache).sample for t in (900, 880, 860, 840)]
        >>> cache.computed_calls, cache.reused_calls  # calls 0 and 3 computed the blocks
        (2, 2)
    """

    def __init__(self, interval: int):
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"The cache interval must be a positive integer (1 = no reuse), got {interval!r}.")
        self.interval = interval
        self.calls = 0
        self.computed_calls = 0
        self.reused_calls = 0
        self.features: Dict[Hashable, torch.Tensor] = {}
        self._refresh = True
        self._shape: Optional[Tuple[int, ...]] = None

    def start_call(self, shape: Tuple[int, ...]) -> None:
        """Begin a model call on an input of `shape`: every `interval`-th call (the first included), and any call
        whose input shape changed, recomputes the features."""
        self._refresh = self.calls % self.interval == 0 or tuple(shape) != self._shape
        self._shape = tuple(shape)
        self.calls += 1
        if self._refresh:
            self.computed_calls += 1
        else:
            self.reused_calls += 1

    def fetch(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Feature `key` of this call: computed and stored on a refreshing call, the stored one otherwise."""
        if self._refresh or key not in self.features:
            self.features[key] = compute()
        return self.features[key]


class NoCache:
    """The uncached path: `fetch` computes every feature."""

    def start_call(self, shape: Tuple[int, ...]) -> None:
        pass

    def fetch(self, key: Hashable, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


NO_CACHE = NoCache()
BlockCache = Union[FeatureCache, NoCache]


def feature_cache_for(interval: Optional[int]) -> Optional[FeatureCache]:
    """The cache a pipeline run uses for `cache_interval=interval`: None when off (None or 1), after checking that
    the interval is a positive integer (a `ValueError` otherwise)."""
    if interval is None:
        return None
    cache = FeatureCache(interval)
    return cache if interval > 1 else None


def cache_for_forward(feature_cache: Optional[FeatureCache]) -> BlockCache:
    """The cache a model forward uses: `NO_CACHE` without one; with one, gradients must be off (stored features
    would keep their graphs alive and tie a later backward to an earlier call)."""
    if feature_cache is None:
        return NO_CACHE
    if torch.is_grad_enabled():
        raise ValueError("A feature_cache is for sampling only: call the model under torch.no_grad().")
    return feature_cache
