"""Context parallelism on 2 CPU processes over gloo (Ulysses degree 2): `DiTModel` and the full-layout
`VideoDiTModel` give the single-process forward within 1e-5, with each process's blocks seeing half the tokens;
the factorized layouts are refused with a clear error."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dit_pipelines import VideoDiTModel

from .launching import free_port

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch, torch.distributed as dist
    from dit_pipelines import DiTModel, VideoDiTModel
    from dit_pipelines.parallel import enable_context_parallel_on_cpu

    def randomized(model):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
        return model.eval()

    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same weights and inputs on both processes
    image = randomized(DiTModel(sample_size=8, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10))
    video = randomized(VideoDiTModel(sample_size=4, sample_frames=4, in_channels=4, hidden_size=32, depth=2,
                                     num_heads=4, text_embed_dim=16, attention_layout="full"))
    t = torch.tensor([3, 900])
    cases = {
        "image": (image, (torch.randn(2, 4, 8, 8), t), {"class_labels": torch.tensor([1, 2])}),
        "video": (video, (torch.randn(2, 4, 4, 4, 4), t),
                  {"encoder_hidden_states": torch.randn(2, 5, 16),
                   "encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}),
    }
    results = {}
    for name, (model, args, kwargs) in cases.items():
        seen = []
        model.blocks[-1].mlp.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
        with torch.no_grad():
            single = model(*args, **kwargs).sample
            enable_context_parallel_on_cpu(model)
            parallel = model(*args, **kwargs).sample
        results[name] = {"difference": (parallel - single).abs().max().item(), "tokens": seen,
                         "shapes": [list(single.shape), list(parallel.shape)]}
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    # leave without running C++ destructors: a gloo/functional-collective thread still joinable at interpreter exit
    # aborts the process ("terminate called without an active exception", seen once in CI)
    sys.stdout.flush(); sys.stderr.flush()
    import os; os._exit(0)
    """
)


def test_ulysses_over_two_cpu_processes_equals_one_process(tmp_path):
    script, output = tmp_path / "worker.py", tmp_path / "results.json"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(script), str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(output.read_text())
    for name, tokens in (("image", 16), ("video", 4 * 4)):
        result = results[name]
        assert result["tokens"] == [tokens, tokens // 2], result  # alone all tokens, then half on each process
        assert result["shapes"][0] == result["shapes"][1]  # the whole output gathered on every process
        assert result["difference"] <= 1e-5, result


@pytest.mark.parametrize("layout", ["factorized", "interleaved"])
def test_factorized_layouts_have_no_plan(layout):
    model = VideoDiTModel(
        sample_size=4, hidden_size=32, depth=1, num_heads=4, text_embed_dim=16, attention_layout=layout
    )
    with pytest.raises(ValueError, match="attention_layout='full'"):
        model._cp_plan


def test_the_cpu_helper_needs_torch_distributed(tiny_dit):
    from dit_pipelines.parallel import enable_context_parallel_on_cpu

    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        enable_context_parallel_on_cpu(tiny_dit())
