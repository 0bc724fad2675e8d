"""`compile_repeated_blocks()` (diffusers' regional compilation, from `_repeated_blocks`) on both models: the
blocks are compiled once with inductor and the output equals eager within 1e-4."""

import shutil

import pytest
import torch

from .conftest import video_inputs


@pytest.mark.skipif(shutil.which("cc") is None, reason="inductor on the CPU needs a C compiler")
def test_compiled_repeated_blocks_match_eager(tiny_dit, tiny_video_dit):
    image = (tiny_dit(), (torch.randn(2, 4, 8, 8), torch.tensor([3, 900])), {"class_labels": torch.tensor([1, 2])})
    torch._dynamo.reset()
    for model, args, kwargs in [image, (tiny_video_dit(), *video_inputs())]:
        with torch.no_grad():
            eager = model(*args, **kwargs).sample
            model.compile_repeated_blocks(fullgraph=True)
            compiled = model(*args, **kwargs).sample
        assert all("_compiled_call_impl" in vars(block) for block in model.blocks)  # each block compiled
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-4)
