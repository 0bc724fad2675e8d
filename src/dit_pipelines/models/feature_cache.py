"""`FeatureCache`: reuse of DiT block outputs across nearby denoising steps (FORA, Selvaraju et al. 2024).

Between two nearby steps of a sampling chain the attention and MLP outputs of a DiT's blocks barely change. FORA
computes them every `interval` model calls and reuses them in between, where a block then costs only its adaLN map:
x + gate_msa(t) * attn_cached, x + gate_mlp(t) * mlp_cached (the gates are recomputed for the current timestep).
A reuse call skips every attention and MLP, so the transformer's cost drops by about `interval`x; the effect on
sample quality is measured by `benchmarks/sample_quality.py --cache_interval`.
"""

from typing import Callable, Dict, Hashable

import torch


class FeatureCache:
    """Block features of one sampling run, refreshed every `interval` model calls (1: always computed, no reuse).

    The model calls `start_call()` once per forward and `fetch(key, batch, compute)` for each cached feature. A fresh
    cache belongs to each sampling run: it holds the features of that run's latents.

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTModel
        >>> from dit_pipelines.models import FeatureCache
        >>> model = DiTModel.from_preset("DiT-S/8", sample_size=16, num_classes=10, depth=2)
        >>> x, y, cache = torch.randn(2, 4, 16, 16), torch.tensor([3, 7]), FeatureCache(interval=3)
        >>> outs = [model(x, t, y, feature_cache=cache).sample for t in (900, 880, 860, 840)]
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

    def start_call(self) -> None:
        """Begin a model call: every `interval`-th call (the first included) recomputes the features."""
        self._refresh = self.calls % self.interval == 0
        self.calls += 1
        if self._refresh:
            self.computed_calls += 1
        else:
            self.reused_calls += 1

    def fetch(self, key: Hashable, batch: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Feature `key` for a batch of `batch` samples: computed and stored on a refreshing call, or when the stored
        one is missing or of another batch (guidance switched on or off in between); the stored one otherwise."""
        stored = self.features.get(key)
        if self._refresh or stored is None or stored.shape[0] != batch:
            stored = self.features[key] = compute()
        return stored


class NoCache:
    """The uncached path: `fetch` computes every feature."""

    def start_call(self) -> None:
        pass

    def fetch(self, key: Hashable, batch: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute()


NO_CACHE = NoCache()
