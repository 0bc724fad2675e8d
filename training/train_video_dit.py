"""Train a text-to-video DiT (`VideoDiTModel`) with Accelerate, on the Moving-MNIST clips (generated offline from
the real digits) or a saved video dataset, with the image script's machinery (hybrid loss, EMA, checkpoints and
exact resume, mixed precision, accumulation) and a saved `DiTTextToVideoPipeline` at the end.

    python training/train_vae.py --output_dir outputs/vae
    accelerate launch training/train_video_dit.py --vae outputs/vae --precompute_latents --output_dir outputs/t2v

T5 prompts: `--text_encoder` (a folder with tokenizer/ and text_encoder/, e.g. a saved pipeline), else a T5
tokenizer is trained on the captions and a small T5 encoder built (no pretrained T5 can be downloaded here). The
frozen encoder's embeddings of every distinct caption are computed once. Captions are dropped (replaced by the
empty prompt, the pipeline's negative prompt) with `--caption_dropout_prob`, for classifier-free guidance. With
`--caption_part_dropout_prob`, a one-digit clip's caption is cut to its digit ("the digit 3") or to its motion ("a
digit moves up"), half the time each, so that each part of a caption has to carry its meaning alone: the model then
composes pairs it never saw ("the digit 9 moves right") from the parts.
"""

import argparse
import os
import sys

import torch
from diffusers import AutoencoderKL
from diffusers.utils import export_to_gif, make_image_grid
from einops import rearrange

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dit_pipelines import DiTModel, DiTTextToVideoPipeline, VideoDiTModel  # noqa: E402
from dit_pipelines.data.moving_mnist import caption, held_out_pairs  # noqa: E402
from dit_pipelines.pipelines.common import scale_latents, transformer_folder, vae_scale_factor  # noqa: E402
from dit_pipelines.text_encoders import encode_text, small_t5_encoder, train_t5_tokenizer  # noqa: E402
from training.common import resolve_resume_path  # noqa: E402
from training.loop import add_training_args, make_accelerator, noise_scheduler_for, sampling_scheduler_for, train  # noqa: E402
from training.video_data import add_video_data_args, frames_as_tensor, load_clips  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_data_args(p)
    p.add_argument(
        "--image_batch_size",
        type=int,
        default=0,
        help="joint image-video training: N single frames per step too, captioned 'the digit d'",
    )
    model = p.add_argument_group("model")
    model.add_argument("--hidden_size", type=int, default=64)
    model.add_argument("--depth", type=int, default=6)
    model.add_argument("--num_heads", type=int, default=2)
    model.add_argument("--patch_size", type=int, default=2)
    model.add_argument("--temporal_patch_size", type=int, default=1)
    model.add_argument("--attention_layout", default="factorized", choices=["interleaved", "factorized", "full"])
    model.add_argument("--learn_sigma", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument("--pooled_text_conditioning", action="store_true",
                       help="the caption's mean T5 token also conditions adaLN (with the timestep)")  # fmt: skip
    model.add_argument("--init_from_image_dit", default=None, help="a DiTModel (or DiTImagePipeline) folder")
    model.add_argument(
        "--train_temporal_only",
        action="store_true",
        help="train only what the image DiT lacks (temporal and cross-attention, captions)",
    )
    model.add_argument("--vae", default=None, help="AutoencoderKL folder or repo id (frames are encoded one by one)")
    model.add_argument("--precompute_latents", action="store_true", help="encode every frame once")
    text = p.add_argument_group("text")
    text.add_argument("--text_encoder", default=None, help="folder with tokenizer/ and text_encoder/ (T5)")
    text.add_argument("--t5_d_model", type=int, default=64, help="width of the T5 built when none is given")
    text.add_argument("--max_sequence_length", type=int, default=24)
    text.add_argument("--caption_dropout_prob", type=float, default=0.1)
    text.add_argument("--caption_part_dropout_prob", type=float, default=0.0,
                      help="one-digit clips: caption cut to its digit or its motion, half the time each")  # fmt: skip
    add_training_args(p)
    p.add_argument("--validation_prompts", nargs="*", default=None, help="default: the held-out prompts")
    return p.parse_args(argv)


def text_components(args, captions):
    if args.text_encoder:
        from transformers import AutoTokenizer, T5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.text_encoder, "tokenizer"))
        return tokenizer, T5EncoderModel.from_pretrained(os.path.join(args.text_encoder, "text_encoder")).eval()
    tokenizer = train_t5_tokenizer(sorted(set(captions)), vocab_size=256, model_max_length=args.max_sequence_length)
    return tokenizer, small_t5_encoder(len(tokenizer), d_model=args.t5_d_model, seed=args.seed)


def build_model(args, in_channels, sample_size, text_dim) -> VideoDiTModel:
    config = dict(sample_frames=args.num_frames, text_embed_dim=text_dim, conditioning="text",
                  pooled_text_conditioning=args.pooled_text_conditioning)  # fmt: skip
    if args.init_from_image_dit:
        image = DiTModel.from_pretrained(transformer_folder(args.init_from_image_dit))
        if image.config.in_channels != in_channels:
            raise ValueError(f"The image DiT takes {image.config.in_channels} channels, the data has {in_channels}.")
        model = VideoDiTModel.from_image_dit(image, attention_layout=args.attention_layout, **config)
        model.register_to_config(sample_size=sample_size)
        if args.train_temporal_only:
            freeze_spatial_layers(model)
        return model
    return VideoDiTModel(
        sample_size=sample_size, patch_size=args.patch_size, temporal_patch_size=args.temporal_patch_size,
        in_channels=in_channels, hidden_size=args.hidden_size, depth=args.depth, num_heads=args.num_heads,
        attention_layout=args.attention_layout, learn_sigma=args.learn_sigma, **config,
    )  # fmt: skip


def freeze_spatial_layers(model: VideoDiTModel) -> None:
    """Train only the layers an image DiT lacks (temporal attention and blocks, cross-attention, the caption
    projection, the temporal rows of the modulations); everything copied from the image model stays fixed."""
    model.requires_grad_(False)
    model.caption_projection.requires_grad_(True)
    for block in model.blocks:
        if block.mixing == "time":  # interleaved: a whole temporal block
            block.requires_grad_(True)
            continue
        block.cross_attn.requires_grad_(True)
        if block.mixing == "space+time":
            block.temporal_attn.requires_grad_(True)
            block.modulation.requires_grad_(True)
            spatial_rows = 6 * model.config.hidden_size

            def keep_temporal_rows(grad, rows=spatial_rows):
                grad = grad.clone()
                grad[:rows] = 0
                return grad

            block.modulation.weight.register_hook(keep_temporal_rows)
            block.modulation.bias.register_hook(keep_temporal_rows)


class Clips(torch.utils.data.Dataset):
    """Clips as model inputs (pixels in [-1, 1] (1, F, H, W), or cached latent posteriors) with caption ids: the
    whole caption, and (N, 2) ids of its digit-only and motion-only parts (the whole caption where there are none)."""

    def __init__(self, inputs: dict, caption_ids: torch.Tensor, part_ids: torch.Tensor, digits: torch.Tensor):
        self.inputs, self.caption_ids, self.part_ids, self.digits = inputs, caption_ids, part_ids, digits

    def __len__(self):
        return len(self.caption_ids)

    def __getitem__(self, i):
        ids = {"caption": self.caption_ids[i], "caption_parts": self.part_ids[i], "digit": self.digits[i]}
        return {**{k: v[i] for k, v in self.inputs.items()}, **ids}


def caption_parts(clips, captions):
    """Per clip, its caption cut to the digit ("the digit 3") and to the motion ("a digit moves up"); the whole
    caption for clips of two digits or without `digits`/`directions` columns."""
    if not {"digits", "directions"} <= set(clips.column_names):
        return [(c, c) for c in captions]
    return [(c, c) if len(d) != 1 else (digit_caption(d[0]), f"a digit moves {w[0]}")
            for c, d, w in zip(captions, clips["digits"], clips["directions"])]  # fmt: skip


def training_caption_ids(u, caption_ids, part_ids, empty: int, dropout_prob: float, part_dropout_prob: float):
    """The caption id each sample trains with, from one uniform draw `u` (N,) per sample: the empty caption when
    u < dropout_prob, the digit part (`part_ids[:, 0]`) or the motion part (`part_ids[:, 1]`) on the next
    `part_dropout_prob` (half each), else the whole caption (`caption_ids`)."""
    if part_dropout_prob:
        part = ((u - dropout_prob) / part_dropout_prob * 2).floor().long()
    else:
        part = torch.full(u.shape, 2, dtype=torch.long)  # never 0 or 1: no sample is cut
    cut = part_ids.gather(1, part.clamp(0, 1)[:, None])[:, 0]
    ids = torch.where((part == 0) | (part == 1), cut, caption_ids)
    return torch.where(u < dropout_prob, torch.full_like(caption_ids, empty), ids)


def digit_caption(digit: int) -> str:
    """ "the digit 3": the caption of a single frame (joint image batches) and of a clip's digit alone."""
    return caption([digit], [""])[: -len(" moves ")]


@torch.no_grad()
def encode_frames(vae, video: torch.Tensor, device, batch_size: int = 256):
    """Posterior mean and std (N, C, F, h, w) of every frame of uint8 clips (N, F, H, W)."""
    frames = rearrange(video, "n f h w -> (n f) 1 h w")
    means, stds = [], []
    for i in range(0, len(frames), batch_size):
        dist = vae.encode(frames[i : i + batch_size].to(device).float() / 127.5 - 1).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
    return {key: rearrange(torch.cat(v), "(n f) c h w -> n c f h w", n=len(video)) for key, v in
            (("mean", means), ("std", stds))}  # fmt: skip


def main(args) -> str:
    accelerator = make_accelerator(args)
    resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
    device = accelerator.device
    clips = load_clips(args)
    captions = list(clips["caption"])
    digits = [int(d[0]) for d in clips["digits"]] if "digits" in clips.column_names else [0] * len(captions)
    image_captions = [digit_caption(d) for d in range(10)]
    parts = caption_parts(clips, captions)
    vocabulary = sorted(set(captions) | {p for pair in parts for p in pair} | set(image_captions)) + [""]
    tokenizer, text_encoder = text_components(args, vocabulary)
    embeds, masks = encode_text(tokenizer, text_encoder, vocabulary, args.max_sequence_length, torch.device("cpu"))
    caption_index = {c: i for i, c in enumerate(vocabulary)}
    empty = caption_index[""]

    video = frames_as_tensor(clips)  # (N, F, H, W) uint8
    vae = AutoencoderKL.from_pretrained(args.vae).to(device).eval() if args.vae else None
    factor = vae_scale_factor(vae)
    if args.frame_size % (factor * args.patch_size):
        raise ValueError(f"--frame_size {args.frame_size} must be a multiple of {factor * args.patch_size}.")
    if vae is not None and args.precompute_latents:
        inputs = encode_frames(vae, video, device)
    else:
        inputs = {"video": video}
    channels = vae.config.latent_channels if vae else 1
    model = build_model(args, channels, args.frame_size // factor, text_encoder.config.d_model)
    noise_scheduler = noise_scheduler_for(args, model.config.learn_sigma)
    part_ids = torch.tensor([[caption_index[p] for p in pair] for pair in parts])
    dataset = Clips(inputs, torch.tensor([caption_index[c] for c in captions]), part_ids, torch.tensor(digits))

    def latents(batch):
        if "mean" in batch:
            mean = batch["mean"].to(device)
            sample = mean + batch["std"].to(device) * torch.randn_like(mean)
            return scale_latents(sample, vae.config)
        x = batch["video"].to(device).float().unsqueeze(1) / 127.5 - 1  # (B, 1, F, H, W)
        if vae is None:
            return x
        with torch.no_grad():
            z = vae.encode(rearrange(x, "b c f h w -> (b f) c h w")).latent_dist.sample()
        return rearrange(scale_latents(z, vae.config), "(b f) c h w -> b c f h w", b=x.shape[0])

    def diffusion_loss(model, x0, caption_ids, part_ids=None):
        u = torch.rand(len(caption_ids), device=device).cpu()
        parts = part_ids.cpu() if part_ids is not None else caption_ids.cpu()[:, None].expand(-1, 2)
        ids = training_caption_ids(u, caption_ids.cpu(), parts, empty, args.caption_dropout_prob,
                                   args.caption_part_dropout_prob)  # fmt: skip
        noise = torch.randn_like(x0)
        t = torch.randint(0, args.num_train_timesteps, (len(x0),), device=device)
        output = model(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=embeds[ids].to(device),
                       encoder_attention_mask=masks[ids].to(device)).sample  # fmt: skip
        return noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=args.vlb_weight)

    def loss_fn(model, batch):
        x0 = latents(batch)
        losses = diffusion_loss(model, x0, batch["caption"], batch["caption_parts"])
        if args.image_batch_size:  # single frames of random clips of the batch, captioned with their digit
            pick = torch.randint(0, len(x0), (args.image_batch_size,), device=device)
            frame = torch.randint(0, x0.shape[2], (args.image_batch_size,), device=device)
            images = x0[pick, :, frame][:, :, None]  # (N, C, 1, h, w)
            image_ids = torch.tensor([caption_index[image_captions[int(d)]] for d in batch["digit"][pick.cpu()]])
            image_losses = diffusion_loss(model, images, image_ids)
            for name in ("loss", "mse", "vlb"):
                if getattr(losses, name) is not None:
                    setattr(losses, name, torch.cat([getattr(losses, name), getattr(image_losses, name)]))
        return losses

    def pipeline(model):
        return DiTTextToVideoPipeline(
            tokenizer, text_encoder, model, sampling_scheduler_for(args, noise_scheduler), vae=vae
        )

    prompts = args.validation_prompts or [caption([d], [w]) for d, w in sorted(held_out_pairs())][:4]

    def validate(model, step):
        pipe = pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        frames = pipe(prompts, num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                      output_type="pil", generator=torch.Generator().manual_seed(args.seed)).frames  # fmt: skip
        folder = os.path.join(args.output_dir, "validation")
        os.makedirs(folder, exist_ok=True)
        strip = [make_image_grid([clip[f] for clip in frames], rows=1, cols=len(frames)) for f in range(len(frames[0]))]
        export_to_gif(strip, os.path.join(folder, f"step-{step}.gif"), fps=4)

    train(accelerator, args, model, dataset, loss_fn, validate,
          lambda m: pipeline(m).save_pretrained(args.output_dir), run_name="train_video_dit")  # fmt: skip
    return args.output_dir


if __name__ == "__main__":
    main(parse_args())
