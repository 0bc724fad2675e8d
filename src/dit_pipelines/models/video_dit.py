"""`VideoDiTModel`: a spatio-temporal DiT on latent video (Latte, Ma et al. 2024; Open-Sora's STDiT), conditioned on
T5 text embeddings or class labels, with the image DiT's adaLN-Zero blocks."""

from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from .caching import DiTCacheMixin
from .dit_transformer import DiTModel
from .embeddings import LabelEmbedder, TimestepEmbedder, sincos_1d, sincos_2d
from .feature_cache import FeatureCache, cache_for_forward
from .initialization import initialize_dit_weights
from .layers import FinalLayer
from .video_blocks import LAYOUT_MIXINGS, Mixing, VideoDiTBlock, split_temporal_modulation

ATTENTION_LAYOUTS = tuple(LAYOUT_MIXINGS)
CONDITIONINGS = ("text", "class")


def pooled_text(states: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, D) mean of the text embeddings (B, L, D) over the tokens the mask (B, L) keeps (padding excluded)."""
    if mask is None:
        return states.mean(1)
    weights = mask.to(states.dtype)[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


#: Context parallelism of the full space-time layout: the tokens (B, F·S, D) and their temporal positions (1, F·S, D)
#: are split across processes as they enter the blocks, the final layer's output is gathered; self-attention
#: exchanges the tokens (Ulysses), cross-attention needs nothing (every process has the whole text).
FULL_LAYOUT_CP_PLAN = {
    "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
    "blocks.*": {"temporal_pos": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
    "final_layer": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


class VideoDiTModel(ModelMixin, ConfigMixin, DiTCacheMixin, PeftAdapterMixin):
    r"""A spatio-temporal Diffusion Transformer on latent video (B, C, F, H, W).

    Tubelets of `temporal_patch_size` x `patch_size`² pixels become tokens with fixed 2D sin-cos positions in space
    and 1D sin-cos positions in time; `attention_layout` chooses how space and time mix:

    - "interleaved": `depth` spatial blocks, each followed by a temporal block (Latte, variant 1);
    - "factorized": `depth` blocks, each with spatial then temporal attention (STDiT);
    - "full": `depth` blocks attending over all space-time tokens (CogVideoX-like).

    Conditioning is the timestep through adaLN-Zero plus either T5 text embeddings (`conditioning="text"`:
    a caption projection and cross-attention in every block, padding masked; with `pooled_text_conditioning` the
    caption's mean token also joins the timestep embedding that drives adaLN, as in SD3) or class labels with a null
    class. `temporal_cross_attention=False` leaves the cross-attention out of the interleaved layout's temporal
    blocks, as Latte does.
    One frame (F = 1) is an image. Frame counts above `sample_frames` get their temporal positions interpolated
    into the trained range, so a model trained on 8 frames samples 12.

    Example:
        >>> import torch
        >>> from dit_pipelines import VideoDiTModel
        >>> model = VideoDiTModel(sample_size=8, in_channels=4, hidden_size=64, depth=2, num_heads=4, text_embed_dim=32)
        >>> video = torch.randn(1, 4, 5, 8, 8)  # (B, C, F, H, W)
        >>> text, mask = torch.randn(1, 7, 32), torch.ones(1, 7)
        >>> model(video, 500, encoder_hidden_states=text, encoder_attention_mask=mask).sample.shape
        torch.Size([1, 8, 5, 8, 8])
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VideoDiTBlock"]
    _repeated_blocks = ["VideoDiTBlock"]  # `compile_repeated_blocks()` compiles one block and reuses it
    _guidance_batched_inputs = ("class_labels",)  # for FasterCache (`DiTCacheMixin`)
    _output_format = "BCFHW"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 16,
        sample_frames: int = 8,
        patch_size: int = 2,
        temporal_patch_size: int = 1,
        in_channels: int = 4,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        attention_layout: str = "factorized",
        conditioning: str = "text",
        text_embed_dim: int = 4096,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
        interpolate_temporal_positions: bool = True,
        pooled_text_conditioning: bool = False,
        timestep_freq_shift: float = 0.0,
        mlp_norm_eps: float = 1e-6,
        temporal_cross_attention: bool = True,
    ):
        super().__init__()
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"Unknown attention_layout {attention_layout!r}; choose one of {ATTENTION_LAYOUTS}.")
        if not temporal_cross_attention and attention_layout != "interleaved":
            raise ValueError("temporal_cross_attention=False concerns the temporal blocks of the 'interleaved' layout.")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"Unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}.")
        if hidden_size % num_heads or hidden_size % 4:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by 4 and by num_heads ({num_heads}).")
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.gradient_checkpointing = False
        kernel = (temporal_patch_size, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(in_channels, hidden_size, kernel_size=kernel, stride=kernel)
        self.timestep_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        text = conditioning == "text"
        if text:  # T5 features -> model width (PixArt-α's caption projection)
            self.caption_projection = nn.Sequential(
                nn.Linear(text_embed_dim, hidden_size), nn.GELU(approximate="tanh"), nn.Linear(hidden_size, hidden_size)
            )
            if pooled_text_conditioning:  # the caption's mean token joins the timestep in adaLN (as in SD3)
                self.pooled_text_embedder = nn.Sequential(
                    nn.Linear(text_embed_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
                )
        else:
            self.class_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.blocks = nn.ModuleList(
            VideoDiTBlock(
                hidden_size,
                num_heads,
                mlp_ratio,
                mixing,
                mlp_norm_eps=mlp_norm_eps,
                cross_attention=text and (temporal_cross_attention or mixing is not Mixing.TIME),
            )
            for _ in range(depth)
            for mixing in LAYOUT_MIXINGS[attention_layout]
        )
        self.final_layer = FinalLayer(hidden_size, temporal_patch_size * patch_size**2 * self.out_channels)
        self.initialize_weights()

    @property
    def has_null_class(self) -> bool:
        """Classifier-free guidance is possible: text models guide with an empty prompt, class models need the
        null class."""
        return self.config.conditioning == "text" or self.class_embedder.has_null_class

    def initialize_weights(self) -> None:
        """The image DiT's initialisation (`initialize_dit_weights`); the cross-attention outputs start at zero too
        (as in PixArt-α), and so does the pooled-text embedder's output, so that `from_image_dit` still holds."""
        text = self.config.conditioning == "text"
        first = (
            [self.caption_projection[0], self.caption_projection[2]] if text else [self.class_embedder.embedding_table]
        )
        zero = [self.final_layer.modulation, self.final_layer.linear]
        if self.config.pooled_text_conditioning and text:
            zero.append(self.pooled_text_embedder[2])
        for block in self.blocks:
            zero.append(block.modulation)
            if block.temporal_modulation is not None:
                zero.append(block.temporal_modulation)
            if block.cross_attn is not None:
                zero.append(block.cross_attn.proj)
        mlp = self.timestep_embedder.mlp
        initialize_dit_weights(self, self.patch_embed, normal=[*first, mlp[0], mlp[2]], zero=zero)

    @classmethod
    def from_image_dit(
        cls, dit: DiTModel, attention_layout: str = "factorized", conditioning: str = "class", **config
    ) -> "VideoDiTModel":
        """A video DiT whose spatial layers are copies of a trained `DiTModel`'s and whose temporal layers (and
        cross-attention) start as the identity, so that at first it predicts each frame as the image model does:
        for the same class with `conditioning="class"`, and as for the null class with `conditioning="text"` (its
        embedding is folded into the timestep embedder's output bias). `config` sets the rest (`sample_frames`,
        `text_embed_dim`, ...)."""
        if attention_layout == "full":
            raise ValueError("attention_layout='full' mixes frames in every block: it cannot start as the image model.")
        c = dit.config
        if c.decoder_depth:
            raise ValueError("A video DiT has no MaskDiT decoder to start from: the image DiT has decoder_depth > 0.")
        if conditioning == "text" and not dit.has_null_class:
            raise ValueError("A text-conditioned video DiT starts from the image DiT's null class, which it lacks.")
        video = cls(
            sample_size=c.sample_size,
            patch_size=c.patch_size,
            temporal_patch_size=1,
            in_channels=c.in_channels,
            hidden_size=c.hidden_size,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            attention_layout=attention_layout,
            conditioning=conditioning,
            num_classes=c.num_classes,
            class_dropout_prob=c.class_dropout_prob,
            learn_sigma=c.learn_sigma,
            timestep_freq_shift=c.timestep_freq_shift,
            mlp_norm_eps=c.mlp_norm_eps,
            **config,
        )
        with torch.no_grad():
            video.patch_embed.weight.copy_(dit.patch_embed.weight[:, :, None])
            video.patch_embed.bias.copy_(dit.patch_embed.bias)
            video.timestep_embedder.load_state_dict(dit.timestep_embedder.state_dict())
            video.final_layer.load_state_dict(dit.final_layer.state_dict())
            if conditioning == "class":
                video.class_embedder.load_state_dict(dit.class_embedder.state_dict())
            else:
                video.timestep_embedder.mlp[2].bias += dit.class_embedder.embedding_table.weight[c.num_classes]
            for target, source in zip(video.spatial_blocks(), dit.blocks):  # temporal layers and modulations stay zero
                for name in ("attn", "mlp", "modulation"):
                    getattr(target, name).load_state_dict(getattr(source, name).state_dict())
        return video

    def spatial_blocks(self) -> List[VideoDiTBlock]:
        """The blocks whose first attention is over space (all but the interleaved layout's temporal blocks): what
        an image DiT's blocks map to, one for one."""
        return [block for block in self.blocks if block.mixing is not Mixing.TIME]

    def attention_identifiers(self) -> dict:
        """Which attention modules mix within frames or the whole clip (spatial), across frames (temporal: the
        interleaved layout's time blocks, the factorized blocks' `temporal_attn`) or attend to the text (cross),
        for PyramidAttentionBroadcast and FasterCache (`DiTCacheMixin`)."""
        kinds = {"spatial": [], "temporal": [], "cross": []}
        for i, block in enumerate(self.blocks):
            kinds["temporal" if block.mixing is Mixing.TIME else "spatial"].append(rf"^blocks\.{i}\.attn$")
            if block.temporal_attn is not None:
                kinds["temporal"].append(rf"^blocks\.{i}\.temporal_attn$")
            if block.cross_attn is not None:
                kinds["cross"].append(rf"^blocks\.{i}\.cross_attn$")
        return kinds

    def image_layers(self) -> List[nn.Module]:
        """The layers `from_image_dit` copies from an image DiT (patch embedding, timestep and class embedders, the
        spatial blocks' attention, MLP and modulation, the final layer): what `freeze_image_layers` freezes."""
        layers = [self.patch_embed, self.timestep_embedder, self.final_layer]
        layers += [self.class_embedder] if self.config.conditioning == "class" else []
        return layers + [m for b in self.spatial_blocks() for m in (b.attn, b.mlp, b.modulation)]

    def freeze_image_layers(self) -> None:
        """Train only what an image DiT lacks (as diffusers' `UNetMotionModel.freeze_unet2d_params`): the
        `image_layers()` get `requires_grad_(False)`; temporal blocks and attentions with their own modulations, the
        cross-attention, the caption projection and the pooled-text embedder stay trainable. A frozen parameter is
        then left out of the optimizer, so neither its gradient nor weight decay can move it."""
        if self.config.attention_layout == "full":
            raise ValueError("attention_layout='full' has no image layers: every block attends over space and time.")
        self.requires_grad_(True)
        for layer in self.image_layers():
            layer.requires_grad_(False)

    def _fix_state_dict_keys_on_load(self, state_dict) -> None:
        """diffusers' hook on loading a saved model: blocks saved before the temporal modulation had a layer of its
        own are converted (`split_temporal_modulation`)."""
        super()._fix_state_dict_keys_on_load(state_dict)
        for index, block in enumerate(self.blocks):
            if block.temporal_modulation is not None:
                split_temporal_modulation(state_dict, f"blocks.{index}.", self.config.hidden_size)

    @property
    def _cp_plan(self):
        """The context-parallel plan diffusers' `enable_parallelism` applies: the full layout's. The factorized
        layouts attend within a frame and within a location in turn; splitting the tokens one way breaks the other
        attention, and a plan cannot re-split between them, so they are refused."""
        if self.config.attention_layout != "full":
            raise ValueError(
                f"Context parallelism needs attention_layout='full'; this model is {self.config.attention_layout!r}, "
                "whose spatial and temporal attentions would need the tokens split two different ways."
            )
        return FULL_LAYOUT_CP_PLAN

    def enable_parallelism(self, *, config, cp_plan=None):
        """diffusers' `enable_parallelism`, with the layout checked first: diffusers sets the parallel config up in
        every attention before it reads the plan, so a refused layout would be left half set up."""
        if cp_plan is None:
            self._cp_plan  # noqa: B018 (a ValueError for the factorized layouts)
        return super().enable_parallelism(config=config, cp_plan=cp_plan)

    def temporal_positions(self, frames: int) -> torch.Tensor:
        """(frames, D) sin-cos features of the token frame indices, squeezed into [0, sample_frames' - 1] for
        longer clips when `interpolate_temporal_positions` (sample_frames' = trained token frames)."""
        trained = max(self.config.sample_frames // self.config.temporal_patch_size, 1)
        positions = torch.arange(frames, dtype=torch.float64)
        if self.config.interpolate_temporal_positions and frames > trained:
            positions = positions * (trained - 1) / (frames - 1)
        return sincos_1d(self.config.hidden_size, positions).float()

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        feature_cache: Optional[FeatureCache] = None,
    ):
        """Predict from a noisy latent video `hidden_states` (B, C, F, H, W) at `timestep`, given T5 embeddings
        `encoder_hidden_states` (B, L, text_embed_dim) with `encoder_attention_mask` (B, L; 1 = token, 0 = padding),
        or `class_labels` (B,). Returns (B, C_out, F, H, W) in a `Transformer2DModelOutput`. `feature_cache` (one per
        sampling run) lets the blocks reuse their outputs of an earlier call (FORA); without it every call is exact."""
        sample = hidden_states
        b, _, frames, height, width = sample.shape
        p, pt = self.config.patch_size, self.config.temporal_patch_size
        if height % p or width % p or frames % pt:
            raise ValueError(
                f"Frames x height x width ({frames}x{height}x{width}) must be divisible by the tubelet {pt}x{p}x{p}."
            )
        if self.config.conditioning == "text" and encoder_hidden_states is None:
            raise ValueError("This model is text-conditioned: pass encoder_hidden_states (and its attention mask).")
        if encoder_hidden_states is not None and encoder_hidden_states.shape[-1] != self.config.text_embed_dim:
            raise ValueError(
                f"encoder_hidden_states are {encoder_hidden_states.shape[-1]} wide; this model takes "
                f"text_embed_dim={self.config.text_embed_dim}."
            )
        if self.config.conditioning == "class" and class_labels is None:
            raise ValueError("This model is class-conditioned: pass class_labels.")
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)

        x = self.patch_embed(sample)  # (B, D, F', H', W')
        grid_f, grid_h, grid_w = x.shape[2:]
        x = rearrange(x, "b d f h w -> b f (h w) d")
        x = (x + sincos_2d(self.config.hidden_size, grid_h, grid_w).to(x.device, x.dtype)).flatten(1, 2)  # (B, T, D)
        temporal_pos = self.temporal_positions(grid_f).to(x.device, x.dtype)[None, :, None]  # (1, F', 1, D)
        if self.config.attention_layout == "full":  # one row per token: (1, F'·S, D)
            temporal_pos = temporal_pos.expand(1, grid_f, grid_h * grid_w, -1).flatten(1, 2)
        t_emb = self.timestep_embedder(timestep)
        if self.config.conditioning == "text":
            if self.config.pooled_text_conditioning:
                t_emb = t_emb + self.pooled_text_embedder(pooled_text(encoder_hidden_states, encoder_attention_mask))
            condition = F.silu(t_emb).to(x.dtype)
            context = self.caption_projection(encoder_hidden_states.to(x.dtype))
        else:
            condition = F.silu(t_emb + self.class_embedder(class_labels)).to(x.dtype)
            context = None
        cache = cache_for_forward(feature_cache)
        cache.start_call(tuple(sample.shape))
        for index, block in enumerate(self.blocks):
            args = (x, condition, grid_f, temporal_pos, context, encoder_attention_mask)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, *args)
            else:
                x = block(*args, cache, index)
        x = self.final_layer(x, condition)  # (B, F'·S, pt*p*p*C_out)
        output = rearrange(
            x,
            "b (f h w) (pt p q c) -> b c (f pt) (h p) (w q)",
            f=grid_f,
            h=grid_h,
            pt=pt,
            p=p,
            q=p,
            c=self.out_channels,
        )
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)
