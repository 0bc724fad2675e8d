"""The `dit-pipelines` command: sample from a pipeline, convert checkpoints, push to the Hub.

    dit-pipelines sample outputs/dit --labels 3 7 --output samples.png
    dit-pipelines sample my-user/t2v --prompt "a red ball bounces" --output clip.gif
    dit-pipelines sample-batch outputs/dit --num_samples 50000 --output samples.npz   # for FID (ADM's .npz)
    accelerate launch --num_processes 8 -m dit_pipelines.cli sample-batch outputs/dit --num_samples 50000 \\
        --output samples.npz
    dit-pipelines convert DiT-XL-2-256x256.pt --output dit-xl-2 --vae stabilityai/sd-vae-ft-ema
    dit-pipelines convert facebook/DiT-XL-2-256 --output dit-xl-2   # a diffusers DiTPipeline, with VAE and labels
    dit-pipelines push outputs/dit my-user/my-dit
    dit-pipelines evaluate samples.npz VIRTUAL_imagenet256_labeled.npz --json results.json   # ADM's five metrics

Errors in what is asked (a missing file, a label the pipeline does not know, a wrong output extension, latents with
no VAE to decode them into a picture) end with a one-line message and exit status 2.
"""

import argparse
import os
import sys
from typing import List, Optional

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".gif", ".mp4")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dit-pipelines", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser(
        "sample",
        help="generate images (PNG grid) or videos (GIF / MP4)",
        description="Generate with a saved or Hub pipeline (DiTImagePipeline or DiTTextToVideoPipeline).",
    )
    sample.add_argument("pipeline", help="a saved pipeline folder or a Hub repo id")
    sample.add_argument("--labels", nargs="+", default=None, help="image pipelines: class indices or names")
    sample.add_argument("--prompt", nargs="+", default=None, help="video pipelines: one or more prompts")
    sample.add_argument("--negative_prompt", default="")
    sample.add_argument("--num_inference_steps", type=int, default=None, help="default: the scheduler's respacing")
    sample.add_argument("--guidance_scale", type=float, default=4.0)
    sample.add_argument(
        "--cache_interval", type=int, default=None, help="feature caching: the blocks run every k steps (FORA)"
    )
    sample.add_argument("--num_frames", type=int, default=None, help="video: default the model's sample_frames")
    sample.add_argument("--fps", type=int, default=4, help="video output frame rate")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--output", required=True, help="image: .png/.jpg (a grid); video: .gif or .mp4")

    batch = commands.add_parser(
        "sample-batch",
        help="N samples as an ADM-format .npz for FID (resumable, any number of processes)",
        description="Sample N images (image pipelines: class-balanced labels) or N clips (video pipelines: every "
        "frame one image) into an .npz in the layout of ADM's evaluator. Runs unchanged under accelerate launch; "
        "a killed run resumes from its shards (see dit_pipelines.sample_batch).",
    )
    batch.add_argument("pipeline", help="a saved pipeline folder or a Hub repo id")
    batch.add_argument("--num_samples", type=int, required=True, help="images, or clips for a video pipeline")
    batch.add_argument("--output", required=True, help="the .npz batch (arr_0 images, arr_1 labels)")
    batch.add_argument("--batch_size", type=int, default=64, help="samples per pipeline call and per shard")
    batch.add_argument("--guidance_scale", type=float, default=1.5, help="default: the FID protocol's 1.5")
    batch.add_argument("--num_inference_steps", type=int, default=None, help="default: the scheduler's respacing")
    batch.add_argument(
        "--cache_interval", type=int, default=None, help="feature caching: the blocks run every k steps (FORA)"
    )
    batch.add_argument("--seed", type=int, default=0, help="with the sample index, seeds each sample's noise")
    batch.add_argument(
        "--guidance_channels", type=int, default=None, help="guide the first k channels (the original DiT's FID: 3)"
    )
    batch.add_argument("--labels", nargs="+", default=None, help="image pipelines: classes to balance (default all)")
    batch.add_argument("--prompts", default=None, help="video pipelines: a file of prompts, one per line, cycled")
    batch.add_argument("--num_frames", type=int, default=None, help="video: default the model's sample_frames")
    batch.add_argument(
        "--compile", action="store_true", help="torch.compile the transformer (faster; float rounding differs)"
    )

    convert = commands.add_parser(
        "convert",
        help="an original DiT .pt or a diffusers DiT folder / DiTPipeline repo -> a pipeline",
        description="Convert a checkpoint in the original DiT layout (.pt), a diffusers DiTPipeline (a folder or "
        "Hub repo id such as facebook/DiT-XL-2-256: its VAE and class names come along) or a diffusers "
        "DiTTransformer2DModel folder into a DiTImagePipeline folder, with the DiT paper's sampler (DDPM on "
        "--sampling_respacing steps, learned variance if the model has it).",
    )
    convert.add_argument(
        "checkpoint",
        help="an original DiT .pt file, a diffusers DiTPipeline folder or repo id, or a DiTTransformer2DModel folder",
    )
    convert.add_argument("--output", required=True, help="where the DiTImagePipeline is saved")
    convert.add_argument(
        "--vae", default=None, help="an AutoencoderKL folder or repo id (latent models; default: a DiTPipeline's own)"
    )
    convert.add_argument(
        "--id2label", default=None, help="a JSON file mapping class indices to names (default: a DiTPipeline's own)"
    )
    convert.add_argument("--sampling_respacing", default="250", help="the DDPM scheduler's timestep_respacing")
    convert.add_argument(
        "--learn_sigma",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override what is inferred from the checkpoint",
    )
    convert.add_argument(
        "--num_heads",
        type=int,
        default=None,
        help="original checkpoints of non-preset sizes: the attention heads (not in the weights)",
    )

    push = commands.add_parser(
        "push",
        help="upload a saved pipeline folder to the Hub with its model card",
        description="Write the model card and upload a saved pipeline in one commit (only what the pipeline "
        "needs: configs, safetensors weights, tokenizers, records). Uses HF_TOKEN / HF_ENDPOINT.",
    )
    push.add_argument("folder", help="a saved pipeline folder")
    push.add_argument("repo_id", help="user/name on the Hub")
    push.add_argument("--private", action="store_true")
    push.add_argument("--token", default=None, help="default: HF_TOKEN or the saved login")
    push.add_argument("--license", default="apache-2.0")
    push.add_argument("--commit_message", default="Upload pipeline")

    evaluate = commands.add_parser(
        "evaluate",
        help="FID, sFID, Inception Score, precision and recall of a sample batch against a reference batch",
        description="ADM's evaluator in PyTorch (dit_pipelines.evaluation): both batches are .npz files with "
        "arr_0 uint8 (N, H, W, 3); a reference's stored mu/sigma/mu_s/sigma_s are used when present.",
    )
    evaluate.add_argument("samples", help="the sample batch (.npz), e.g. from sample-batch")
    evaluate.add_argument("reference", help="the reference batch (.npz), e.g. ADM's VIRTUAL_imagenet256_labeled.npz")
    evaluate.add_argument("--json", default=None, help="also write the results to this JSON file")
    evaluate.add_argument("--pipeline", default=None, help="save an evaluation record in this pipeline folder")
    evaluate.add_argument("--batch_size", type=int, default=64, help="images per Inception forward")
    evaluate.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    evaluate.add_argument("--inception", default=None, help="the TorchScript network (default: the PyPI wheel)")
    evaluate.add_argument("--inception_logits", default=None, help="a state dict with fc.weight (for the IS)")
    evaluate.add_argument("--cache_dir", default=None, help="keep the features here: a killed evaluation resumes")
    return parser.parse_args(argv)


def sample(args) -> str:
    import torch

    from . import DiTImagePipeline, DiTTextToVideoPipeline
    from .pipelines.from_diffusers import load_pipeline

    suffix = os.path.splitext(args.output)[1].lower()
    pipe = load_pipeline(args.pipeline)  # a diffusers DiTPipeline comes converted
    generator = torch.Generator().manual_seed(args.seed)
    if isinstance(pipe, DiTImagePipeline):
        if suffix not in IMAGE_SUFFIXES or args.labels is None:
            raise ValueError(f"An image pipeline needs --labels and an --output ending in {'/'.join(IMAGE_SUFFIXES)}.")
        labels = [int(x) if x.isdigit() else x for x in args.labels]
        images = pipe(
            labels,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            cache_interval=args.cache_interval,
            generator=generator,
        ).images
        from diffusers.utils import make_image_grid

        make_image_grid(images, rows=1, cols=len(images)).save(args.output)
    elif isinstance(pipe, DiTTextToVideoPipeline):
        if suffix not in VIDEO_SUFFIXES or args.prompt is None:
            raise ValueError(f"A video pipeline needs --prompt and an --output ending in {'/'.join(VIDEO_SUFFIXES)}.")
        frames = pipe(
            args.prompt,
            negative_prompt=args.negative_prompt,
            num_frames=args.num_frames,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            cache_interval=args.cache_interval,
            generator=generator,
            output_type="pil",
        ).frames
        from diffusers.utils import export_to_gif, export_to_video, make_image_grid

        strip = [make_image_grid([clip[f] for clip in frames], rows=1, cols=len(frames)) for f in range(len(frames[0]))]
        if suffix == ".gif":
            export_to_gif(strip, args.output, fps=args.fps)
        else:
            export_to_video([frame.convert("RGB") for frame in strip], args.output, fps=args.fps)
    else:
        raise ValueError(f"{args.pipeline} holds a {type(pipe).__name__}, not a dit_pipelines pipeline.")
    return args.output


def sample_batch(args) -> str:
    from .sample_batch import BatchSettings, write_sample_batch

    return write_sample_batch(BatchSettings.from_arguments(args), args.output, compile=args.compile)


def convert(args) -> str:
    import json

    from .conversion import dit_from_diffusers, load_original_dit
    from .pipelines import DiTImagePipeline
    from .pipelines.from_diffusers import diffusers_dit_components, diffusers_dit_model_index, dit_sampler
    from .pipelines.saved_layout import transformer_folder

    given = {}  # what the options set, over what the checkpoint holds
    if args.vae:
        from diffusers import AutoencoderKL

        given["vae"] = AutoencoderKL.from_pretrained(args.vae)
    if args.id2label:
        with open(args.id2label) as f:
            given["id2label"] = json.load(f)
    overrides = {k: v for k, v in (("learn_sigma", args.learn_sigma), ("num_heads", args.num_heads)) if v is not None}
    is_file = os.path.isfile(args.checkpoint) or args.checkpoint.endswith((".pt", ".pth"))  # no Hub look-up
    model_index = None if is_file else diffusers_dit_model_index(args.checkpoint)
    if model_index is not None:  # a diffusers DiTPipeline, folder or repo id: VAE and class names come with it
        if overrides:
            raise ValueError(f"--{' --'.join(overrides)}: for original .pt checkpoints; a DiTPipeline's config says.")
        parts = diffusers_dit_components(args.checkpoint, model_index, args.sampling_respacing, **given)
    else:
        if os.path.isfile(args.checkpoint):
            model = load_original_dit(args.checkpoint, **overrides)
        elif os.path.isdir(args.checkpoint):
            from diffusers import DiTTransformer2DModel

            model = dit_from_diffusers(DiTTransformer2DModel.from_pretrained(transformer_folder(args.checkpoint)))
        else:
            raise ValueError(
                f"{args.checkpoint} is neither a checkpoint file nor a folder (nor a Hub repo of a diffusers "
                "DiTPipeline)."
            )
        parts = dict(transformer=model, scheduler=dit_sampler(model.config.learn_sigma, args.sampling_respacing))
        parts.update(given)
    DiTImagePipeline(**parts).save_pretrained(args.output)
    return args.output


def push(args) -> str:
    from .hub import push_pipeline

    return push_pipeline(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private or None,
        commit_message=args.commit_message,
        license=args.license,
    )


def evaluate(args) -> str:
    import json

    import torch

    from .evaluation.batches import batch_info
    from .evaluation.evaluator import evaluate_batches, evaluation_record, format_results
    from .evaluation.inception import InceptionV3Features

    batch_info(args.samples), batch_info(args.reference)  # a wrong file is named before any network is loaded
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    inception = InceptionV3Features.from_pretrained(args.inception, args.inception_logits, device=device)
    results = evaluate_batches(args.samples, args.reference, inception, args.batch_size, cache_dir=args.cache_dir)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.pipeline:  # the model card renders it
        evaluation_record(results, {"samples": results["samples"], "reference": results["reference"]}).save(
            args.pipeline
        )
    return format_results(results)


def user_errors() -> tuple:
    """What a bad request raises: wrong values, missing files, Hub answers (HfHubHTTPError is an OSError) and a
    connection that fails (the HTTP client's RequestError)."""
    import importlib
    import pickle

    errors = [ValueError, OSError, pickle.UnpicklingError]  # the last: a checkpoint refused by weights_only loading
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).RequestError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        commands = {
            "sample": sample,
            "sample-batch": sample_batch,
            "convert": convert,
            "push": push,
            "evaluate": evaluate,
        }
        result = commands[args.command](args)
    except user_errors() as error:
        print(f"dit-pipelines {args.command}: error: {error}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
