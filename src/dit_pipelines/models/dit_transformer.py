"""`DiTModel`: the class-conditional Diffusion Transformer of Peebles & Xie (2023)."""

from typing import Optional, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .caching import DiTCacheMixin
from .dit_blocks import BLOCK_CLASSES, DiTBlock, block_class
from .embeddings import LabelEmbedder, TimestepEmbedder, sincos_2d
from .feature_cache import FeatureCache, cache_for_forward
from .flops import dit_flops
from .initialization import initialize_dit_weights
from .layers import FinalLayer
from .presets import preset_config

__all__ = ["DiTBlock", "DiTModel"]


# Context parallelism (diffusers `enable_parallelism`): the patch tokens are split across processes as they enter the
# first block and gathered as they leave the final layer; the self-attention exchanges them (Ulysses).
DIT_CP_PLAN = {
    "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
    "final_layer": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


class DiTModel(ModelMixin, ConfigMixin, DiTCacheMixin, PeftAdapterMixin):
    r"""The Diffusion Transformer (DiT) of Peebles & Xie (2023), "Scalable Diffusion Models with Transformers".

    Patchify (a stride-p convolution) and fixed 2D sin-cos positions, then `depth` adaLN-Zero blocks conditioned on
    ONE shared timestep + class embedding, then a final adaLN layer and unpatchify. Initialised as in the paper, so
    the output is exactly zero at initialisation. The paper's other three block designs (§3.2) are a `block_type`
    away (`models/dit_blocks.py`), and `gflops()` counts a forward as the paper's Table 4 does.

    Args:
        sample_size (`int`, defaults to 32): the side of the inputs seen in training (latent pixels). Any height and
            width divisible by `patch_size` are accepted; positions are computed for the input's patch grid.
        patch_size (`int`, defaults to 2): side of the square patches (tokens = H*W / p²).
        in_channels (`int`, defaults to 4): input channels (4 for Stable Diffusion VAE latents).
        hidden_size (`int`, defaults to 1152), depth (`int`, defaults to 28), num_heads (`int`, defaults to 16):
            transformer width, number of blocks, attention heads.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden width over `hidden_size`.
        class_dropout_prob (`float`, defaults to 0.1): the probability, per training sample, with which the training
            loss replaces the label by the null class (classifier-free guidance; `dit_pipelines.training.drop_labels`,
            never the model itself). With 0 there is no null class and no guidance.
        num_classes (`int`, defaults to 1000): number of classes (the null class is extra).
        learn_sigma (`bool`, defaults to `True`): predict the variance too (Improved DDPM); the output then has
            `2 * in_channels` channels: the prediction, then the variance interpolation values.
        timestep_freq_shift (`float`, defaults to 0.0): frequency shift of the timestep features; 0 is the original
            DiT, 1 reproduces diffusers' `DiTTransformer2DModel`.
        mlp_norm_eps (`float`, defaults to 1e-6): epsilon of the LayerNorm before each MLP; 1e-6 in the original
            DiT, 1e-5 in diffusers' `DiTTransformer2DModel`.
        block_type (`str`, defaults to `"adaln_zero"`): the block design of DiT §3.2: `"adaln_zero"`, `"adaln"` (no
            gates, no zero initialisation), `"cross_attention"` (cross-attention to the sequence [t, c]) or
            `"in_context"` (t and c as two extra tokens). The final layer is adaptive for the adaLN designs, a plain
            LayerNorm otherwise; it starts at zero in all four. Conversion from and to the original DiT and
            diffusers' `DiTTransformer2DModel`, feature caching's gates and context parallelism's token split are
            the adaLN-Zero model's (context parallelism refuses `"in_context"`, whose two extra tokens do not split).
        decoder_depth (`int`, defaults to 0): blocks of a MaskDiT decoder (Zheng et al., 2023) after the `depth`
            encoder blocks, for masked training: `forward(..., keep_indices=...)` runs the encoder on the kept patch
            tokens only, and the decoder fills the dropped ones with a learned mask token, adds its own positions and
            restores the full sequence. It runs at sampling too, on every token. 0: no decoder (the DiT of the paper).
        decoder_hidden_size (`int`, *optional*): the decoder's width (MaskDiT's is narrower than its encoder); the
            encoder's by default. A bridge (norm, modulation, linear map) leads from the encoder's width to it.

    Example:
        >>> import torch
        >>> from dit_pipelines import DiTModel
        >>> model = DiTModel.from_preset("DiT-S/8", sample_size=16, num_classes=10)
        >>> out = model(torch.randn(2, 4, 16, 16), timestep=torch.tensor([10, 500]), class_labels=torch.tensor([3, 7]))
        >>> out.sample.shape  # learned sigma: 2 x 4 channels
        torch.Size([2, 8, 16, 16])
        >>> round(model.gflops(32, 32), 2)  # on 32x32 latents (256x256 images): Table 4 gives DiT-S/8 0.36
        0.36
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = [cls.__name__ for cls in BLOCK_CLASSES.values()]
    _repeated_blocks = _no_split_modules  # `compile_repeated_blocks()` compiles one block and reuses it
    _guidance_batched_inputs = ("class_labels",)  # for FasterCache (`DiTCacheMixin`)

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        timestep_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
        block_type: str = "adaln_zero",
        decoder_depth: int = 0,
        decoder_hidden_size: Optional[int] = None,
    ):
        super().__init__()
        block = block_class(block_type)  # a ValueError for an unknown design
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        if sample_size % patch_size:
            raise ValueError(f"sample_size ({sample_size}) must be divisible by patch_size ({patch_size}).")
        if hidden_size % 4:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by 4 for the 2D sin-cos positions.")
        decoder_width = decoder_hidden_size or hidden_size
        if decoder_depth and (decoder_width % num_heads or decoder_width % 4):
            raise ValueError(
                f"decoder_hidden_size ({decoder_width}) must be divisible by num_heads ({num_heads}) and by 4."
            )
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.gradient_checkpointing = False

        self.patch_embed = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        # The fixed sin-cos table of the training grid, a frozen parameter as in the original DiT (whose published
        # parameter counts include it); other grids get theirs computed in `forward`.
        grid = sample_size // patch_size
        table = sincos_2d(hidden_size, grid, grid)[None].clone()  # a copy: the cached table must not alias it
        self.pos_embed = nn.Parameter(table, requires_grad=False)  # (1, T, D)
        self.timestep_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.class_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.blocks = nn.ModuleList(block(hidden_size, num_heads, mlp_ratio, mlp_norm_eps) for _ in range(depth))
        adaptive = block_type in ("adaln_zero", "adaln")
        if decoder_depth:  # MaskDiT: bridge, mask token, decoder blocks (`restore_tokens`)
            self.decoder_embed = FinalLayer(hidden_size, decoder_width, adaptive=adaptive)
            # the decoder's blocks read the condition at their width (the in-context tokens cross the bridge)
            projected = decoder_width != hidden_size and block_type != "in_context"
            self.decoder_condition = nn.Linear(hidden_size, decoder_width) if projected else None
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
            self.decoder_blocks = nn.ModuleList(
                block(decoder_width, num_heads, mlp_ratio, mlp_norm_eps) for _ in range(decoder_depth)
            )
        else:
            self.decoder_blocks = nn.ModuleList()
        self.final_layer = FinalLayer(decoder_width, patch_size * patch_size * self.out_channels, adaptive=adaptive)
        self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DiTModel":
        """A randomly initialised model of preset `name` (see `DIT_PRESETS`), e.g. `DiTModel.from_preset("DiT-XL/2")`;
        keyword arguments override the preset and the defaults (`sample_size`, `num_classes`, ...)."""
        return cls(**{**preset_config(name), **overrides})

    @property
    def num_classes(self) -> int:
        """The classes, the null class not counted (what the pipelines and training read of any denoiser)."""
        return self.config.num_classes

    @property
    def learn_sigma(self) -> bool:
        return self.config.learn_sigma

    @property
    def input_multiple(self) -> int:
        """What input heights and widths must be multiples of: the patch size."""
        return self.config.patch_size

    @property
    def has_null_class(self) -> bool:
        """Whether the class table has the null class used by classifier-free guidance."""
        return self.class_embedder.has_null_class

    def attention_identifiers(self) -> dict:
        """Every block's self-attention is spatial; the cross-attention design's attends to [t, c] (for
        PyramidAttentionBroadcast and FasterCache, `DiTCacheMixin`)."""
        blocks = r"^(decoder_)?blocks\.\d+"  # the encoder's and a MaskDiT decoder's
        return {"spatial": [blocks + r"\.attn$"], "temporal": [], "cross": [blocks + r"\.cross_attn$"]}

    def initialize_weights(self) -> None:
        """DiT initialisation (Peebles & Xie, §3.2): see `initialize_dit_weights`. The output is exactly zero; with
        adaLN-Zero blocks every block is the identity too (their modulation is zero)."""
        mlp = self.timestep_embedder.mlp
        final_layers = [self.final_layer] + ([self.decoder_embed] if self.decoder_blocks else [])
        zero = [self.final_layer.linear] + [layer.modulation for layer in final_layers if layer.adaptive]
        if self.config.block_type == "adaln_zero":
            zero += [block.modulation for block in [*self.blocks, *self.decoder_blocks]]
        initialize_dit_weights(
            self, self.patch_embed, normal=[self.class_embedder.embedding_table, mlp[0], mlp[2]], zero=zero
        )
        if self.decoder_blocks:
            nn.init.normal_(self.mask_token, std=0.02)  # as MAE's

    def gflops(self, height: Optional[int] = None, width: Optional[int] = None) -> float:
        """Forward Gflops per image on `height` x `width` inputs (default `sample_size` square), counted as the DiT
        paper's Table 4 counts them (fvcore: multiply-accumulates, layer norms at 4-5 per element): DiT-XL/2 at
        32x32 latents gives 118.69 against the paper's 118.64. See `models/flops.py`."""
        size = self.config.sample_size
        return dit_flops(self.config, height or size, width or size).total / 1e9

    @property
    def _cp_plan(self):
        """The context-parallel plan (tokens split at the first block, gathered at the final layer). The in-context
        design carries two conditioning tokens through the blocks, which the split would scatter: refused."""
        if self.config.block_type == "in_context":
            raise ValueError(
                "Context parallelism needs a block_type other than 'in_context' (its two conditioning "
                "tokens would be split across processes with the patch tokens)."
            )
        if self.config.decoder_depth:
            raise ValueError("Context parallelism does not split a model with a MaskDiT decoder (decoder_depth > 0).")
        return DIT_CP_PLAN

    def enable_parallelism(self, *, config, cp_plan=None):
        """diffusers' `enable_parallelism`, with the block type checked before diffusers sets anything up."""
        if cp_plan is None:
            self._cp_plan  # noqa: B018 (a ValueError for the in-context design)
        return super().enable_parallelism(config=config, cp_plan=cp_plan)

    def positions(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The (1, T, D) position table for a `grid_height` x `grid_width` patch grid."""
        training_grid = self.config.sample_size // self.config.patch_size
        if grid_height == grid_width == training_grid:
            return self.pos_embed
        table = sincos_2d(self.config.hidden_size, grid_height, grid_width)
        return table[None].to(self.pos_embed.device)

    def condition(self, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """What the blocks are conditioned on: for the adaLN designs SiLU(t_emb + y_emb) (N, D), fed to every
        modulation; for the others the two embeddings as a sequence (N, 2, D) (the cross-attention's context, the
        in-context tokens)."""
        t_emb, y_emb = self.timestep_embedder(timestep), self.class_embedder(class_labels)
        if self.final_layer.adaptive:
            return F.silu(t_emb + y_emb)
        return torch.stack([t_emb, y_emb], dim=1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        class_labels: torch.Tensor,
        return_dict: bool = True,
        feature_cache: Optional[FeatureCache] = None,
        keep_indices: Optional[torch.Tensor] = None,
    ) -> Union[Transformer2DModelOutput, tuple]:
        """Predict from noisy latents `hidden_states` (N, C, H, W) at `timestep` (scalar or (N,)) for `class_labels`
        (N,) (index `num_classes` is the null class). Returns (N, C_out, H, W) in a `Transformer2DModelOutput`, or a
        1-tuple if `return_dict=False`. `feature_cache` (a `FeatureCache`, one per sampling run) lets the blocks
        reuse their attention and MLP outputs of an earlier call (FORA); without it every call is exact.
        `keep_indices` (N, K) (masked training, `dit_pipelines.training.masking`): the patch tokens (row-major) the
        encoder sees; the decoder restores the others. Needs `decoder_depth` > 0."""
        sample = hidden_states
        n, _, height, width = sample.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"Height and width ({height}x{width}) must be divisible by the patch size {p}.")
        grid_h, grid_w = height // p, width // p
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(n)

        if keep_indices is not None and not self.decoder_blocks:
            raise ValueError("keep_indices (masked training) needs a model with a decoder (decoder_depth > 0).")

        x = self.patch_embed(sample).flatten(2).transpose(1, 2)  # (N, T, D), T = grid_h * grid_w
        x = x + self.positions(grid_h, grid_w).to(x.dtype)
        if keep_indices is not None:  # MaskDiT: positions are added first, so the kept tokens keep theirs
            x = x.gather(1, keep_indices[..., None].expand(-1, -1, x.shape[-1]))
        c = self.condition(timestep, class_labels).to(x.dtype)  # (N, D), or (N, 2, D) for the non-adaLN designs
        cache = cache_for_forward(feature_cache)
        cache.start_call(tuple(sample.shape))
        x = self._run_blocks(self.blocks, x, c, cache)
        if self.decoder_blocks:
            x, c = self.restore_tokens(x, c, keep_indices, grid_h, grid_w)
            x = self._run_blocks(self.decoder_blocks, x, c, cache, first_index=len(self.blocks))
        x = self.final_layer(x, c if self.final_layer.adaptive else None)  # (N, T, p*p*C_out)

        # Unpatchify: (N, h, w, p, q, C) -> (N, C, h*p, w*q).
        x = x.reshape(n, grid_h, grid_w, p, p, self.out_channels)
        output = torch.einsum("nhwpqc->nchpwq", x).reshape(n, self.out_channels, height, width)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)

    def _run_blocks(self, blocks, x, c, cache, first_index: int = 0) -> torch.Tensor:
        """`blocks` on the tokens `x` with the condition `c`; the in-context design carries `c` as two more tokens,
        appended here and dropped after the last block."""
        tokens = x.shape[1]
        in_context = self.config.block_type == "in_context"
        if in_context:
            x, c = torch.cat([x, c], dim=1), None  # the two conditioning tokens join the patch tokens
        for index, block in enumerate(blocks, start=first_index):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c, cache, index)
        return x[:, :tokens] if in_context else x

    def restore_tokens(self, x, c, keep_indices, grid_height: int, grid_width: int):
        """The MaskDiT decoder's input: the encoder's tokens `x` (N, K, D) through the bridge to the decoder's width,
        put back at `keep_indices` among T = `grid_height` x `grid_width` learned mask tokens (all T kept when
        `keep_indices` is None), plus the decoder's own sin-cos positions. Returns the tokens (N, T, D_dec) and the
        condition `c` at the decoder's width."""
        adaptive = self.final_layer.adaptive
        x = self.decoder_embed(x, c if adaptive else None)
        if self.decoder_condition is not None:
            c = self.decoder_condition(c)
        elif not adaptive and self.config.block_type == "in_context":
            c = self.decoder_embed(c)  # the in-context tokens cross the bridge as the patch tokens do
        if keep_indices is not None:
            full = self.mask_token.to(x.dtype).expand(x.shape[0], grid_height * grid_width, -1)
            x = full.scatter(1, keep_indices[..., None].expand(-1, -1, x.shape[-1]), x)
        table = sincos_2d(x.shape[-1], grid_height, grid_width)[None].to(x.device, x.dtype)
        return x + table, c
