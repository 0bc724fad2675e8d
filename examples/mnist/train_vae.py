"""Train a small `AutoencoderKL` on the frames of the text-to-video data (Accelerate), for latent video diffusion.

    accelerate launch -m examples.mnist.train_vae --output_dir outputs/vae-moving-mnist --max_train_steps 1500

Loss: mean squared reconstruction error + `--kl_weight` x KL(q(z|x) || N(0, I)) (the latent-diffusion autoencoder
without its perceptual and adversarial terms, which need pretrained networks). At the end the latents' standard
deviation on held-out frames sets `scaling_factor` (latents / std ~ unit variance, as diffusion expects), the
held-out PSNR is printed, and the VAE is saved with `save_pretrained`.
"""

import argparse
import math

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from dit_pipelines.data import frames_as_tensor
from dit_pipelines.latents import uint8_to_signed
from dit_pipelines.training import frames_first

from .video_data import add_moving_mnist_args, make_clips


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_moving_mnist_args(p)
    p.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64], help="one entry per level")
    p.add_argument("--latent_channels", type=int, default=4)
    p.add_argument("--train_batch_size", type=int, default=64)
    p.add_argument("--max_train_steps", type=int, default=1500)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output_dir", default="outputs/vae")
    return p.parse_args(argv)


def make_vae(args, channels: int) -> AutoencoderKL:
    levels = len(args.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(args.block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=args.latent_channels,
        layers_per_block=1,
        norm_num_groups=min(32, args.block_out_channels[0]),
        sample_size=args.frame_size,
    )


def main(args) -> str:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed, device_specific=True)
    clips = make_clips(args)  # the clips the video demo writes as files, from the same options and seed
    frames = frames_first(frames_as_tensor(clips))  # (N*F, 1, H, W) uint8
    held_out, frames = frames[:512], frames[512:]
    torch.manual_seed(args.seed)
    vae = make_vae(args, channels=1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.learning_rate, total_steps=args.max_train_steps)
    vae, optimizer, schedule = accelerator.prepare(vae, optimizer, schedule)
    device = accelerator.device
    progress = tqdm(range(args.max_train_steps), desc="train_vae", disable=not accelerator.is_local_main_process)
    for _ in progress:
        index = torch.randint(0, len(frames), (args.train_batch_size,))
        x = uint8_to_signed(frames[index].to(device))
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(reconstruction, x)
        loss = mse + args.kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(psnr=f"{10 * math.log10(4 / mse.item()):.1f}")

    vae = accelerator.unwrap_model(vae).eval()
    if accelerator.is_main_process:
        with torch.no_grad():
            x = uint8_to_signed(held_out.to(device))
            latents = vae.encode(x).latent_dist.mode()
            mse = torch.nn.functional.mse_loss(vae.decode(latents).sample.clamp(-1, 1), x).item()
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        vae.save_pretrained(args.output_dir)
        print(
            f"Held-out PSNR {10 * math.log10(4 / mse):.2f} dB (pixels in [-1, 1]); scaling_factor "
            f"{vae.config.scaling_factor:.4f}; saved to {args.output_dir}"
        )
    accelerator.end_training()
    return args.output_dir


if __name__ == "__main__":
    main(parse_args())
