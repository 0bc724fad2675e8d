"""`compile_repeated_blocks()` (diffusers' regional compilation, from `_repeated_blocks`) on both models: the
blocks are compiled once with inductor and the output equals eager within 1e-4."""

import shutil

import pytest
import torch

from dit_pipelines import VideoDiTModel

from .conftest import randomize_


@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor on the CPU needs a C compiler")
def test_compiled_repeated_blocks_match_eager(tiny_dit):
    torch.manual_seed(0)
    video = VideoDiTModel(
        sample_size=4, sample_frames=3, in_channels=4, hidden_size=32, depth=2, num_heads=4, text_embed_dim=16
    )
    text, mask = torch.randn(2, 5, 16), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    t = torch.tensor([3, 900])
    cases = [
        (tiny_dit(), (torch.randn(2, 4, 8, 8), t), {"class_labels": torch.tensor([1, 2])}),
        (
            randomize_(video, std=0.1).eval(),
            (torch.randn(2, 4, 3, 4, 4), t),
            {"encoder_hidden_states": text, "encoder_attention_mask": mask},
        ),
    ]
    torch._dynamo.reset()
    for model, args, kwargs in cases:
        with torch.no_grad():
            eager = model(*args, **kwargs).sample
            model.compile_repeated_blocks(fullgraph=True)
            compiled = model(*args, **kwargs).sample
        assert all(hasattr(block, "_orig_mod") or "_compiled_call_impl" in vars(block) for block in model.blocks)
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
