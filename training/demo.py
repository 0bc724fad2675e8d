"""The main job, for now: build a small class-conditional DiT and write a grid of its samples to a PNG.

    python training/demo.py --output outputs/samples.png

The DiT is freshly initialised (the training script will replace it with a trained one), so the grid shows what an
untrained model samples; what runs is the real path: `DiTImagePipeline` with the learned-variance DDPM sampler.
"""

import argparse
import os

import torch
from diffusers.utils import make_image_grid

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/samples.png", help="where to write the PNG grid")
    parser.add_argument("--preset", default="DiT-S/4", help="DiT preset (see dit_pipelines.DIT_PRESETS)")
    parser.add_argument("--image_size", type=int, default=32, help="pixel size of the square images")
    parser.add_argument("--images_per_class", type=int, default=2, help="columns of the grid")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--guidance_scale", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the sampling noise")
    return parser.parse_args(argv)


def main(args) -> str:
    torch.manual_seed(args.seed)
    digits = {i: str(i) for i in range(10)}
    model = DiTModel.from_preset(args.preset, sample_size=args.image_size, in_channels=1, num_classes=len(digits))
    pipe = DiTImagePipeline(model, DiTDDPMScheduler(), id2label=digits)
    images = pipe(
        list(digits),
        num_images_per_prompt=args.images_per_class,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        generator=torch.Generator().manual_seed(args.seed),
    ).images
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    make_image_grid(images, rows=len(digits), cols=args.images_per_class).save(args.output)
    print(f"Wrote a {len(digits)}x{args.images_per_class} grid of samples to {os.path.abspath(args.output)}")
    return args.output


if __name__ == "__main__":
    main(parse_args())
