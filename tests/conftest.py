import pytest
import torch

from dit_pipelines import DiTModel, VideoDiTModel


def randomize_(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Fill every trainable parameter with noise, so zero-initialised layers do not hide mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


@pytest.fixture
def tiny_dit():
    """A factory of tiny DiTs (2 blocks, width 32), randomised unless `random=False`."""

    def make(random: bool = True, **overrides) -> DiTModel:
        config = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
        config.update(overrides)
        torch.manual_seed(0)
        model = DiTModel(**config).eval()
        return randomize_(model) if random else model

    return make


@pytest.fixture
def tiny_video_dit():
    """A factory of tiny text-conditioned video DiTs (3 frames of 4x4x4 latents, width 32, 4 heads, 2 depth steps,
    16-wide text), randomised with std 0.1; `video_inputs` gives them inputs."""

    def make(**overrides) -> VideoDiTModel:
        config = dict(sample_size=4, sample_frames=3, in_channels=4, hidden_size=32, depth=2, num_heads=4)
        config.update(text_embed_dim=16, **overrides)
        torch.manual_seed(0)
        return randomize_(VideoDiTModel(**config), std=0.1).eval()

    return make


def video_inputs(frames: int = 3):
    """(args, kwargs) of a `tiny_video_dit` forward on 2 clips: one prompt of 3 tokens padded to 5, one of 5."""
    generator = torch.Generator().manual_seed(2)
    clips, text = torch.randn(2, 4, frames, 4, 4, generator=generator), torch.randn(2, 5, 16, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return (clips, torch.tensor([3, 900])), {"encoder_hidden_states": text, "encoder_attention_mask": mask}


def hybrid_losses(model: torch.nn.Module, steps: int = 15, lr: float = 1e-3) -> tuple:
    """The hybrid loss of a class-conditional denoiser (1-channel 8x8 inputs, classes 0 and 1) on one fixed batch
    before and after `steps` AdamW steps on it: two classes of half-lit squares, fixed noise and timesteps."""
    from dit_pipelines import DiTDDPMScheduler

    scheduler, generator = DiTDDPMScheduler(), torch.Generator().manual_seed(0)
    x0 = torch.zeros(8, 1, 8, 8)
    x0[:4, :, :4] = 1.0  # class 0: the top half lit; class 1: the bottom half
    x0[4:, :, 4:] = 1.0
    labels = torch.tensor([0] * 4 + [1] * 4)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, 1000, (8,), generator=generator)

    def loss():
        output = model(scheduler.add_noise(x0, noise, t), t, labels).sample
        return scheduler.training_loss(output, x0, noise, t).loss.mean()

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    first = loss().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return first, loss().item()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the slow tests (real MNIST, demo runs)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class CallCounter:
    """Counts the forward calls of some modules through hooks; a context manager that removes its hooks on exit."""

    def __init__(self, modules):
        self.count = 0
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, *_):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for handle in self.handles:
            handle.remove()


def check_caching_every_k_steps(sample) -> None:
    """`sample(**kwargs)` -> (output, number of steps on which the blocks ran) for a 7-step chain: exact and all 7
    steps without a cache and with `cache_interval=1`; steps 0, 3 and 6 only, and another output, with 3; a
    `ValueError` for 0."""
    exact, steps = sample()
    assert steps == 7
    same, steps = sample(cache_interval=1)
    assert steps == 7
    torch.testing.assert_close(same, exact, rtol=0, atol=0)
    cached, steps = sample(cache_interval=3)
    assert steps == 3 and not torch.allclose(cached, exact)
    with pytest.raises(ValueError, match="positive integer"):
        sample(cache_interval=0)
