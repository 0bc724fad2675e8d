"""diffusers' attention backends on our models: `set_attention_backend` reaches every attention (self and cross),
the backend it names is the one called, and "native" and "_native_math" (the CPU's two) give the default output."""

import pytest
import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

from .conftest import video_inputs


def models(tiny_dit, tiny_video_dit):
    """(model, args, kwargs) of a tiny image DiT and a tiny interleaved video DiT (self-, temporal and masked
    cross-attention)."""
    image = (tiny_dit(), (torch.randn(2, 4, 8, 8), torch.tensor([3, 900])), {"class_labels": torch.tensor([1, 2])})
    return [image, (tiny_video_dit(attention_layout="interleaved"), *video_inputs())]


@pytest.mark.filterwarnings("ignore:Attention backends are an experimental feature")
@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_backends_reach_every_attention_and_match_the_default(tiny_dit, tiny_video_dit, backend, monkeypatch):
    name = AttentionBackendName(backend)
    real, calls = _AttentionBackendRegistry._backends[name], []

    def counting(*args, **kwargs):
        calls.append(kwargs["query"].shape)
        return real(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counting)
    # set_attention_backend also sets diffusers' process-wide active backend, which reset_attention_backend leaves:
    # restored after the test, or every later test in this process would run the math kernel
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    for model, args, kwargs in models(tiny_dit, tiny_video_dit):
        attentions = [m for m in model.modules() if isinstance(m, AttentionModuleMixin)]
        with torch.no_grad():
            default = model(*args, **kwargs).sample
            model.set_attention_backend(backend)
            calls.clear()
            out = model(*args, **kwargs).sample
        assert {m.processor._attention_backend for m in attentions} == {name}
        assert len(calls) == len(attentions)  # each attention once, through the chosen backend
        torch.testing.assert_close(out, default, rtol=0, atol=1e-5)
        model.reset_attention_backend()
