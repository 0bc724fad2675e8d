"""Train a text-to-video DiT (`VideoDiTModel`) with Accelerate on your own captioned clips, with the image script's
machinery (hybrid loss, EMA, checkpoints and exact resume, mixed precision, accumulation) and a saved
`DiTTextToVideoPipeline` at the end.

    accelerate launch training/train_video_dit.py --dataset path/to/clips --text_encoder google/t5-v1_1-base \
        --vae path/to/vae --precompute_latents --output_dir outputs/t2v

`--dataset` is a folder saved with `datasets.save_to_disk` whose rows have a `video` (frames, height, width) uint8
array and a `caption`. `--text_encoder` is a T5 (a folder or Hub repo, plain or with tokenizer/ and text_encoder/
sub-folders); it stays frozen, and the embeddings of every distinct caption are computed once. Captions are dropped
(replaced by the empty prompt, the pipeline's negative prompt) with `--caption_dropout_prob`, for classifier-free
guidance. Optional columns: `caption_parts` (shorter captions that each carry part of the caption's meaning, trained
alone with `--caption_part_dropout_prob`, so that the model learns to compose them) and `image_caption` (what a
single frame shows, for joint image-video training with `--image_batch_size`).
"""

import argparse
import os

import torch
from diffusers import AutoencoderKL
from diffusers.utils import export_to_gif, make_image_grid

from dit_pipelines import DiTModel, DiTTextToVideoPipeline, VideoDiTModel
from dit_pipelines.data import frames_as_tensor, load_video_dataset
from dit_pipelines.latents import uint8_to_signed, vae_scale_factor
from dit_pipelines.pipelines.saved_layout import transformer_folder
from dit_pipelines.training import (
    CaptionTable,
    TrainingConfig,
    add_training_arguments,
    clips_first,
    encode_clip_posteriors,
    encode_latents,
    frames_first,
    load_text_encoder,
    make_accelerator,
    noise_scheduler_for,
    resolve_resume_path,
    sample_latents,
    sampling_scheduler_for,
    train,
    training_caption_ids,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="a save_to_disk folder with video and caption columns")
    data.add_argument("--split", default="train")
    data.add_argument("--max_train_samples", type=int, default=None, help="use the first N clips only")
    data.add_argument(
        "--image_batch_size",
        type=int,
        default=0,
        help="joint image-video training: N single frames per step too, captioned by the `image_caption` column "
        "(the clip's caption where the data has none)",
    )
    model = p.add_argument_group("model")
    model.add_argument("--hidden_size", type=int, default=64)
    model.add_argument("--depth", type=int, default=6)
    model.add_argument("--num_heads", type=int, default=2)
    model.add_argument("--patch_size", type=int, default=2)
    model.add_argument("--temporal_patch_size", type=int, default=1)
    model.add_argument("--attention_layout", default="factorized", choices=["interleaved", "factorized", "full"])
    model.add_argument("--learn_sigma", action=argparse.BooleanOptionalAction, default=True)
    model.add_argument(
        "--pooled_text_conditioning",
        action="store_true",
        help="the caption's mean T5 token also conditions adaLN (with the timestep)",
    )
    model.add_argument(
        "--init_from_image_dit",
        default=None,
        help="a DiTModel (or DiTImagePipeline) folder; its size and patch then replace the options above",
    )
    model.add_argument(
        "--train_temporal_only",
        action="store_true",
        help="train only what the image DiT lacks (VideoDiTModel.freeze_image_layers)",
    )
    model.add_argument("--vae", default=None, help="AutoencoderKL folder or repo id (frames are encoded one by one)")
    model.add_argument("--precompute_latents", action="store_true", help="encode every frame once")
    text = p.add_argument_group("text")
    text.add_argument("--text_encoder", required=True, help="a T5 folder or repo id (see above)")
    text.add_argument("--max_sequence_length", type=int, default=24)
    text.add_argument("--caption_dropout_prob", type=float, default=0.1)
    text.add_argument(
        "--caption_part_dropout_prob",
        type=float,
        default=0.0,
        help="train on one of a caption's parts (the `caption_parts` column) this often",
    )
    add_training_arguments(p)
    p.add_argument("--validation_prompts", nargs="*", default=None, help="default: the dataset's first 4 captions")
    args = p.parse_args(argv)
    if args.train_temporal_only and not args.init_from_image_dit:
        p.error("--train_temporal_only freezes the layers copied from --init_from_image_dit; pass that too")
    return args


def build_model(args, in_channels, sample_size, sample_frames, text_dim) -> VideoDiTModel:
    config = dict(
        sample_frames=sample_frames,
        text_embed_dim=text_dim,
        conditioning="text",
        pooled_text_conditioning=args.pooled_text_conditioning,
    )
    if args.init_from_image_dit:
        image = DiTModel.from_pretrained(transformer_folder(args.init_from_image_dit))
        if image.config.in_channels != in_channels:
            raise ValueError(f"The image DiT takes {image.config.in_channels} channels, the data has {in_channels}.")
        model = VideoDiTModel.from_image_dit(image, attention_layout=args.attention_layout, **config)
        model.register_to_config(sample_size=sample_size)
        if args.train_temporal_only:
            model.freeze_image_layers()
        return model
    return VideoDiTModel(
        sample_size=sample_size,
        patch_size=args.patch_size,
        temporal_patch_size=args.temporal_patch_size,
        in_channels=in_channels,
        hidden_size=args.hidden_size,
        depth=args.depth,
        num_heads=args.num_heads,
        attention_layout=args.attention_layout,
        learn_sigma=args.learn_sigma,
        **config,
    )


class Clips(torch.utils.data.Dataset):
    """Clips as model inputs (uint8 frames (F, H, W), or cached latent posteriors) with their caption ids: the
    whole caption, its parts (K,) and the caption of a single frame."""

    def __init__(self, inputs: dict, captions: torch.Tensor, parts: torch.Tensor, image_captions: torch.Tensor):
        self.inputs, self.captions, self.parts, self.image_captions = inputs, captions, parts, image_captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, i):
        ids = {"caption": self.captions[i], "caption_parts": self.parts[i], "image_caption": self.image_captions[i]}
        return {**{k: v[i] for k, v in self.inputs.items()}, **ids}


def main(args) -> str:
    config = TrainingConfig.from_arguments(args)
    objective, run = config.objective, config.run
    accelerator = make_accelerator(config)
    resolve_resume_path(run.output_dir, run.resume_from_checkpoint)
    device = accelerator.device
    clips = load_video_dataset(args.dataset, args.split)
    if args.max_train_samples:
        clips = clips.select(range(min(args.max_train_samples, len(clips))))
    captions = list(clips["caption"])
    parts = list(clips["caption_parts"]) if "caption_parts" in clips.column_names else None
    image_captions = list(clips["image_caption"]) if "image_caption" in clips.column_names else captions
    tokenizer, text_encoder = load_text_encoder(args.text_encoder)
    tokenizer.model_max_length = args.max_sequence_length  # the saved pipeline pads prompts as training did
    every_caption = captions + image_captions + [p for row in parts or [] for p in row]
    table = CaptionTable(tokenizer, text_encoder, every_caption, args.max_sequence_length)

    video = frames_as_tensor(clips)  # (N, C, F, H, W) uint8
    pixel_channels, num_frames, frame_size, frame_width = video.shape[1:]
    vae = AutoencoderKL.from_pretrained(args.vae).to(device).eval() if args.vae else None
    factor = vae_scale_factor(vae)
    patch = args.patch_size
    if args.init_from_image_dit:
        patch = DiTModel.load_config(transformer_folder(args.init_from_image_dit))["patch_size"]
    if frame_size % (factor * patch) or frame_width != frame_size:
        raise ValueError(
            f"Frames must be square with a side that is a multiple of {factor * patch} (VAE factor {factor} x patch "
            f"size {patch}), got {frame_size}x{frame_width}."
        )
    if vae is not None and vae.config.in_channels != pixel_channels:
        raise ValueError(f"The VAE takes {vae.config.in_channels}-channel frames; the clips have {pixel_channels}.")
    inputs = encode_clip_posteriors(vae, video, device) if vae and args.precompute_latents else {"video": video}
    channels = vae.config.latent_channels if vae else pixel_channels
    model = build_model(args, channels, frame_size // factor, num_frames, text_encoder.config.d_model)
    noise_scheduler = noise_scheduler_for(objective, run, model.config.learn_sigma)
    dataset = Clips(inputs, table.ids(captions), table.part_ids(captions, parts), table.ids(image_captions))

    def latents(batch):
        if "mean" in batch:
            return sample_latents(batch["mean"].to(device), batch["std"].to(device), vae.config)
        x = uint8_to_signed(batch["video"].to(device))  # (B, C, F, H, W)
        return x if vae is None else clips_first(encode_latents(vae, frames_first(x)), len(x))

    def diffusion_loss(model, x0, caption_ids, part_ids):
        u = torch.rand(len(caption_ids), device=device).cpu()
        ids = training_caption_ids(
            u, caption_ids.cpu(), part_ids.cpu(), table.empty, args.caption_dropout_prob, args.caption_part_dropout_prob
        )
        states, mask = table.lookup(ids, device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, objective.num_train_timesteps, (len(x0),), device=device)
        output = model(
            noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states, encoder_attention_mask=mask
        ).sample
        return noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=objective.vlb_weight)

    def loss_fn(model, batch):
        x0 = latents(batch)
        losses = diffusion_loss(model, x0, batch["caption"], batch["caption_parts"])
        if args.image_batch_size:  # single frames of random clips of the batch, with their image captions
            pick = torch.randint(0, len(x0), (args.image_batch_size,), device=device)
            frame = torch.randint(0, x0.shape[2], (args.image_batch_size,), device=device)
            images = x0[pick, :, frame][:, :, None]  # (N, C, 1, h, w)
            image_ids = batch["image_caption"][pick.cpu()]
            image_losses = diffusion_loss(model, images, image_ids, image_ids[:, None])
            for name in ("loss", "mse", "vlb"):
                if getattr(losses, name) is not None:
                    setattr(losses, name, torch.cat([getattr(losses, name), getattr(image_losses, name)]))
        return losses

    def pipeline(model):
        scheduler = sampling_scheduler_for(run, noise_scheduler)
        return DiTTextToVideoPipeline(tokenizer, text_encoder, model, scheduler, vae=vae)

    prompts = args.validation_prompts or list(dict.fromkeys(captions))[:4]

    def validate(model, step):
        pipe = pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        frames = pipe(
            prompts,
            num_inference_steps=run.num_inference_steps,
            guidance_scale=run.guidance_scale,
            output_type="pil",
            generator=torch.Generator().manual_seed(config.optimization.seed),
        ).frames
        folder = os.path.join(run.output_dir, "validation")
        os.makedirs(folder, exist_ok=True)
        strip = [make_image_grid([clip[f] for clip in frames], rows=1, cols=len(frames)) for f in range(len(frames[0]))]
        export_to_gif(strip, os.path.join(folder, f"step-{step}.gif"), fps=4)

    hyperparameters = {**vars(args), "validation_prompts": prompts}  # the card's usage example
    train(accelerator, config, model, dataset, loss_fn, validate, pipeline, "train_video_dit", hyperparameters)
    return run.output_dir


if __name__ == "__main__":
    main(parse_args())
