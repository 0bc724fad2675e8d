"""Sample quality of class-conditional MNIST models: a classifier trained on real MNIST tells (a) whether a sample
shows the requested digit and (b), through its penultimate features, how far the samples' distribution is from
the real one (the Fréchet distance of Heusel et al., 2017, in this classifier's feature space instead of
Inception's, which cannot be downloaded here; `dit_pipelines.evaluation.frechet_distance` computes it).
"""

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mnist_data import cache_dir, load_mnist


class MNISTClassifier(nn.Module):
    """A small CNN for 28x28 digits in [0, 1]: two conv blocks, a 128-d feature layer, 10 logits."""

    feature_dim = 128

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.feature = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [0, 1] -> (N, 128) penultimate activations."""
        x = self.convs((images - 0.1307) / 0.3081)
        return F.relu(self.feature(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(images), 0.25, self.training))


def mnist_tensors(split: str, cache: Optional[str] = None):
    """A split of MNIST as (N, 1, 28, 28) float images in [0, 1] and (N,) labels."""
    data = load_mnist(cache).with_format("numpy")[split][:]
    images = torch.from_numpy(np.stack(data["image"])).float().div(255).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(np.asarray(data["label"])).long()


@torch.no_grad()
def accuracy(classifier: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000):
    classifier.eval()
    predictions = torch.cat(
        [classifier(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]
    )
    return (predictions == labels).float().mean().item()


def train_classifier(epochs: int = 3, seed: int = 0, cache: Optional[str] = None) -> MNISTClassifier:
    """Train on the 50,000 training digits (Adam, small random shifts); ~99.3% on the test split."""
    images, labels = mnist_tensors("train", cache)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MNISTClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * (len(images) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images) - 127, 128):
            batch = order[start : start + 128]
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(images[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def load_classifier(cache: Optional[str] = None, min_test_accuracy: float = 0.99) -> MNISTClassifier:
    """The cached classifier, trained on first use (about a minute on 2 CPU cores) and checked to reach
    `min_test_accuracy` on the test split."""
    from safetensors.torch import load_file, save_file

    path = Path(cache or cache_dir()) / "mnist-classifier.safetensors"
    model = MNISTClassifier()
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_classifier(cache=cache)
    test_accuracy = accuracy(model, *mnist_tensors("test", cache))
    if test_accuracy < min_test_accuracy:
        raise RuntimeError(
            f"The MNIST classifier reached {test_accuracy:.4f} on the test split, < {min_test_accuracy}."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path) + ".tmp", metadata={"test_accuracy": f"{test_accuracy:.5f}"})
    os.replace(str(path) + ".tmp", path)
    return model.eval()


@torch.no_grad()
def features(classifier: MNISTClassifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    classifier.eval()
    return torch.cat([classifier.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def class_balanced(images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int = 0):
    """`per_class` images of each class, drawn at random without replacement."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    chosen = torch.cat(chosen)
    return images[chosen], labels[chosen]
