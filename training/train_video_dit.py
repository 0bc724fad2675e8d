"""Train a text-to-video DiT (`VideoDiTModel`) with Accelerate on your own captioned video files, with the image
script's machinery (hybrid loss, EMA, checkpoints and exact resume, mixed precision, accumulation, DDP or FSDP) and a
saved `DiTTextToVideoPipeline` at the end.

    accelerate launch training/train_video_dit.py --train_data_dir my_videos --pretrained_text_encoder \
        google/t5-v1_1-base --vae stabilityai/sd-vae-ft-ema --num_frames 16 --resolution 256 \
        --precompute_latents --precompute_text_embeddings --output_dir outputs/t2v

`--train_data_dir` is a `datasets` videofolder: video files (mp4, webm, ...) with a `metadata.jsonl` whose rows name
a `file_name` and a caption (`--caption_column`); `--dataset_name` takes any `datasets` dataset (a name, a repo id or
a `save_to_disk` folder) with a video column and a caption column. Videos are decoded with PyAV in the DataLoader's
workers (`--dataloader_num_workers`); clips of `--num_frames` frames every `--frame_stride` (or at `--fps`) start at
random each epoch (`--clip_start`) and are resized and centre-cropped to `--resolution` or `--height` x `--width`.

`--pretrained_text_encoder` is a T5 (a folder or repo id, plain like google/t5-v1_1-xxl or with tokenizer/ and
text_encoder/ sub-folders); it stays frozen and encodes each batch's captions, or every caption once into an on-disk
cache with `--precompute_text_embeddings`. `--precompute_latents` encodes every clip once into an on-disk cache of VAE
posteriors; both caches are sharded, written by all processes, resumable after a kill, and reused only by runs with
the same data, encoder and sizes. Captions are dropped (replaced by the empty prompt, the pipeline's negative prompt)
with `--caption_dropout_prob`, for classifier-free guidance. Optional columns: `caption_parts` (shorter captions that
each carry part of the caption's meaning, trained alone with `--caption_part_dropout_prob`) and `image_caption`
(what a single frame shows, for joint image-video training with `--image_batch_size`).
"""

import argparse
import os

import torch
from diffusers.utils import export_to_gif, make_image_grid

from dit_pipelines import DiTModel, DiTTextToVideoPipeline, VideoDiTModel
from dit_pipelines.data.video_files import load_captioned_videos
from dit_pipelines.pipelines.saved_layout import transformer_folder
from dit_pipelines.training import (
    AdapterConfig,
    CaptionEncoder,
    LatentConfig,
    TextEmbeddingCache,
    TrainingConfig,
    VideoDataConfig,
    add_arguments,
    add_lora_adapter,
    add_training_arguments,
    build_training_clips,
    every_caption,
    from_arguments,
    load_text_encoder,
    load_vae,
    make_accelerator,
    noise_scheduler_for,
    resolve_resume_path,
    sampling_scheduler_for,
    train,
    training_captions,
)
from dit_pipelines.training.latent_cache import cache_root

WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # the frozen T5 runs in the mixed-precision dtype


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, VideoDataConfig, LatentConfig)
    p.add_argument(
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
    model.add_argument("--init_from", default=None, help="start from a VideoDiTModel or DiTTextToVideoPipeline folder")
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
    text = p.add_argument_group("text")
    text.add_argument(
        "--pretrained_text_encoder", "--text_encoder", required=True, help="a T5 folder or repo id (see above)"
    )
    text.add_argument("--max_sequence_length", type=int, default=120, help="caption tokens (longer ones are cut)")
    text.add_argument(
        "--precompute_text_embeddings", action="store_true", help="encode every caption once into an on-disk cache"
    )
    text.add_argument("--caption_dropout_prob", type=float, default=0.1)
    text.add_argument(
        "--caption_part_dropout_prob",
        type=float,
        default=0.0,
        help="train on one of a caption's parts (the `caption_parts` column) this often",
    )
    add_arguments(p, AdapterConfig)
    add_training_arguments(p)
    p.add_argument("--validation_prompts", nargs="*", default=None, help="default: the dataset's first 4 captions")
    args = p.parse_args(argv)
    if args.train_temporal_only and not args.init_from_image_dit:
        p.error("--train_temporal_only freezes the layers copied from --init_from_image_dit; pass that too")
    if (args.train_data_dir is None) == (args.dataset_name is None):
        p.error("pass one of --train_data_dir (a videofolder) and --dataset_name")
    return args


def build_model(args, clips, text_dim) -> VideoDiTModel:
    in_channels, sample_size, sample_frames = clips.channels, clips.height, clips.num_frames
    if args.init_from:
        model = VideoDiTModel.from_pretrained(transformer_folder(args.init_from))
        c = model.config
        if c.text_embed_dim != text_dim:
            raise ValueError(
                f"The text encoder gives {text_dim}-wide embeddings, but the model at {args.init_from} takes "
                f"text_embed_dim={c.text_embed_dim} in its cross-attention: use the T5 it was trained with."
            )
        if c.in_channels != in_channels:
            raise ValueError(
                f"The model at {args.init_from} takes {c.in_channels} channels, the data has {in_channels}."
            )
        return model
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


def patch_size_of(args) -> int:
    for folder, kind in ((args.init_from, VideoDiTModel), (args.init_from_image_dit, DiTModel)):
        if folder:
            return kind.load_config(transformer_folder(folder))["patch_size"]
    return args.patch_size


def main(args) -> str:
    config = TrainingConfig.from_arguments(args)
    adapter = from_arguments(AdapterConfig, args)
    objective, run = config.objective, config.run
    data_config, latent_config = from_arguments(VideoDataConfig, args), from_arguments(LatentConfig, args)
    accelerator = make_accelerator(config)
    adapter.check(args.init_from, accelerator)  # before any work
    resolve_resume_path(run.output_dir, run.resume_from_checkpoint)
    device = accelerator.device
    data = load_captioned_videos(
        args.train_data_dir, args.dataset_name, args.dataset_config, args.split, args.video_column, args.caption_column
    )
    if args.max_train_samples:
        data = data.select(range(min(args.max_train_samples, len(data))))
    tokenizer, text_encoder = load_text_encoder(args.pretrained_text_encoder)
    tokenizer.model_max_length = args.max_sequence_length  # the saved pipeline pads prompts as training did
    weight_dtype = WEIGHT_DTYPES.get(config.optimization.mixed_precision, torch.float32)
    text = CaptionEncoder(tokenizer, text_encoder, args.max_sequence_length, device, weight_dtype)
    vae = load_vae(latent_config, device)
    workers = config.optimization.dataloader_num_workers
    seed = config.optimization.seed
    clips = build_training_clips(
        data, data_config, latent_config, vae, patch_size_of(args), seed, run.output_dir, accelerator, workers
    )
    if args.precompute_text_embeddings:
        captions = every_caption(data, args.caption_column)
        text = TextEmbeddingCache(
            text, captions, cache_root(latent_config, run.output_dir), accelerator, data._fingerprint
        )
        text_encoder.to("cpu")  # from now on only validation prompts need it: off the accelerator
    model = build_model(args, clips, text_encoder.config.d_model)
    if adapter.enabled:  # LoRA: the pretrained model frozen, adapters trained
        add_lora_adapter(model, adapter)
    noise_scheduler = noise_scheduler_for(objective, run, model.config.learn_sigma)

    def diffusion_loss(model, x0, captions, parts):
        u = torch.rand(len(captions), device=device).cpu()
        chosen = training_captions(u, captions, parts, args.caption_dropout_prob, args.caption_part_dropout_prob)
        states, mask = text.embed(chosen, device)
        noise = torch.randn_like(x0)
        t = torch.randint(0, objective.num_train_timesteps, (len(x0),), device=device)
        output = model(
            noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=states, encoder_attention_mask=mask
        ).sample
        return noise_scheduler.training_loss(output.float(), x0, noise, t, vlb_weight=objective.vlb_weight)

    def loss_fn(model, batch, step):
        x0 = clips.to_model_input(batch, device)
        captions = batch["caption"]
        losses = diffusion_loss(model, x0, captions, batch.get("caption_parts") or [[] for _ in captions])
        if args.image_batch_size:  # single frames of random clips of the batch, with their image captions
            pick = torch.randint(0, len(x0), (args.image_batch_size,), device=device)
            frame = torch.randint(0, x0.shape[2], (args.image_batch_size,), device=device)
            images = x0[pick, :, frame][:, :, None]  # (N, C, 1, h, w)
            image_captions = [batch.get("image_caption", captions)[i] for i in pick.tolist()]
            image_losses = diffusion_loss(model, images, image_captions, [[] for _ in image_captions])
            for name in ("loss", "mse", "vlb"):
                if getattr(losses, name) is not None:
                    setattr(losses, name, torch.cat([getattr(losses, name), getattr(image_losses, name)]))
        return losses

    def pipeline(model):
        scheduler = sampling_scheduler_for(run, noise_scheduler)
        return DiTTextToVideoPipeline(tokenizer, text_encoder, model, scheduler, vae=vae)

    def final_pipeline(model):  # the T5 saved as loaded, in float32, whatever precision training ran it in
        text_encoder.to(torch.float32)
        return pipeline(model)

    first_captions = data.select(range(min(len(data), 256)))[args.caption_column]
    prompts = args.validation_prompts or list(dict.fromkeys(first_captions))[:4]

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
    train(
        accelerator, config, model, clips.dataset, loss_fn, validate, final_pipeline, "train_video_dit", hyperparameters
    )
    return run.output_dir


if __name__ == "__main__":
    main(parse_args())
