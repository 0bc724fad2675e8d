"""The text-to-video job: train a small VAE and a small text-conditioned video DiT on Moving-MNIST clips (made offline
from the real MNIST digits) on the CPU, then generate clips for the held-out prompts, measure how well they follow
them and write a GIF.

    python -m examples.mnist.video_demo             # the full recipe: about 26 minutes on 2 CPU cores, all included
    python -m examples.mnist.video_demo --smoke     # a 1-minute smoke run of the same path

The clips are written as a videofolder (one RGB mp4 a clip plus metadata.jsonl) and the small T5 as tokenizer/ +
text_encoder/ folders, which `training/train_video_dit.py --train_data_dir ... --pretrained_text_encoder ...` then
trains on exactly as on a user's own video files and pretrained T5 (through its latent and text-embedding caches).

The held-out prompts ("the digit 0 moves up", "the digit 1 moves right", ...: one direction per
digit, `held_out_pairs()`) never occur in training; every other (digit, direction) pair does.

The recipe, latent video diffusion as in Latte and Open-Sora, scaled to the budget:
- `VAE_RECIPE`: an `AutoencoderKL` with f = 4 (channels 16/32/64, 4 latent channels) trained on the clips' frames
  for 1,500 steps (`examples/mnist/train_vae.py`): 8-frame 32x32 clips become 4x8x8x8 latents, and the decoder draws the
  strokes (33.7 dB PSNR on held-out frames; the classifier reads a VAE's reconstructions of the held-out prompts'
  real clips exactly as well as the clips themselves, 99%).
- `RECIPE`: a 6-block, width-64 video DiT with one attention over all space-time tokens ("full") on 1x1x2 latent
  tubelets (4 x 8 x 8 = 256 tokens a clip), v-prediction, learned sigma with the hybrid loss, T5 captions through
  cross-attention and, pooled, through adaLN, dropped 10% of the time for classifier-free guidance, EMA, 3,800
  steps of 32 clips; saved with a 50-step DDIM scheduler.

Measured on the way (the README has the figures): the same DiT on 4x4x2 pixel tubelets drew moving blobs, not
digits (27% after 4,000 steps); on the VAE's latents it draws digits (74-78% on the held-out prompts, 80-91% on
seen ones, in three runs). Full attention reads as well as factorized (STDiT) attention and takes 10% less time a
step. DDIM was chosen over 100-step DDPM on prompts seen in training (`examples/mnist/prompt_following.py
--prompts seen`), not on the held-out ones. v-prediction rather than epsilon: a small epsilon model's predictions
at high noise stay far from the identity they must approach there, and its samples were speckle.
"""

import argparse
import time

from dit_pipelines.data.video_files import load_captioned_videos
from training.train_video_dit import main as train
from training.train_video_dit import parse_args as train_args

from .text_encoder import save_small_t5
from .train_vae import main as train_vae
from .train_vae import parse_args as vae_args
from .video_data import add_moving_mnist_args, every_caption, save_clips

DATA = "--num_clips 10000 --num_frames 8 --frame_size 32 --digit_size 16 --speed 2".split()
VAE_RECIPE = DATA + "--block_out_channels 16 32 64 --latent_channels 4 --max_train_steps 1500".split()
RECIPE = (
    "--num_frames 8 --clip_start first --precompute_latents --precompute_text_embeddings "
    "--patch_size 1 --temporal_patch_size 2 --hidden_size 64 --depth 6 --num_heads 2 "
    "--attention_layout full --pooled_text_conditioning --prediction_type v_prediction --train_batch_size 32 "
    "--max_train_steps 3800 --learning_rate 2e-3 --lr_scheduler constant_with_warmup --lr_warmup_steps 200 "
    "--ema_decay 0.999 --ema_warmup --checkpointing_steps 1000 --checkpoints_total_limit 1 --validation_steps 0 "
    "--sampling_scheduler ddim --sampling_respacing 50"
).split()
SMOKE_DATA = ["--num_clips", "400"]
VAE_SMOKE = SMOKE_DATA + ["--max_train_steps", "5"]
SMOKE = ["--max_train_steps", "10", "--checkpointing_steps", "5", "--sampling_respacing", "5"]
T5_WIDTH = 64  # the small T5's d_model
MAX_TOKENS = 24  # caption tokens: the longest caption ("the digit 8 moves up and to the left ...") fits


def clip_args(argv):
    """The Moving-MNIST options of `argv` (the generator's, as `train_vae` reads them)."""
    parser = argparse.ArgumentParser()
    add_moving_mnist_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_known_args(argv)[0]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/t2v-moving-mnist", help="where the pipeline and GIF go")
    parser.add_argument("--vae_dir", default=None, help="where the VAE goes (default: <output_dir>-vae)")
    parser.add_argument("--smoke", action="store_true", help="a short run of the same path")
    parser.add_argument("--clips_per_prompt", type=int, default=10, help="clips per held-out prompt to evaluate")
    parser.add_argument("--guidance_scale", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(args) -> dict:
    from .prompt_following import main as benchmark
    from .prompt_following import parse_args as benchmark_args

    base = args.output_dir.rstrip("/")
    vae_dir = args.vae_dir or base + "-vae"
    seed = ["--seed", str(args.seed)]
    data = DATA + (SMOKE_DATA if args.smoke else []) + seed
    start = time.perf_counter()
    clips_dir = save_clips(clip_args(data), base + "-clips")
    captions = every_caption(load_captioned_videos(train_data_dir=clips_dir))
    t5_dir = save_small_t5(base + "-t5", captions, T5_WIDTH, MAX_TOKENS, args.seed)
    vae_run = ["--output_dir", vae_dir]  # the same clips, generated again from the same options and seed
    train_vae(vae_args(VAE_RECIPE + (VAE_SMOKE if args.smoke else []) + vae_run + seed))
    vae_minutes = (time.perf_counter() - start) / 60
    run = ["--train_data_dir", clips_dir, "--pretrained_text_encoder", t5_dir, "--vae", vae_dir]
    run += ["--output_dir", args.output_dir, "--max_sequence_length", str(MAX_TOKENS)]
    output_dir = train(train_args(RECIPE + (SMOKE if args.smoke else []) + run + seed))
    minutes = (time.perf_counter() - start) / 60
    print(f"Trained in {minutes:.1f} min (VAE {vae_minutes:.1f} min, video DiT {minutes - vae_minutes:.1f} min)")
    clips = str(1 if args.smoke else args.clips_per_prompt)
    evaluation = ["--pipeline", output_dir, "--clips_per_prompt", clips, "--guidance_scale", str(args.guidance_scale)]
    result = benchmark(benchmark_args(evaluation + seed))
    result.update(training_minutes=minutes, vae_training_minutes=vae_minutes)
    return result


if __name__ == "__main__":
    main(parse_args())
