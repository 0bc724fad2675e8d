"""The speed of masked training (MaskDiT, `--mask_ratio`): one training step (hybrid loss, backward, AdamW) of the
MNIST demo's DiT (width 64, 6 blocks, 4x4 patches of 28x28 digits: 49 tokens, batch 64) at mask ratio 0.5, against
the same step unmasked, interleaved (round-robin over the variants, `--rounds` times) so that drift in the machine's
speed hits all alike; medians per step.

    python benchmarks/masked_training.py --output benchmarks/results/masked_training.json

Variants: `dit` (the demo DiT, no decoder, the ordinary loss: what one trains otherwise), `maskdit-0` (the same
encoder with the decoder `train_dit.py --mask_ratio` builds, at ratio 0: its unmasked fine-tuning steps) and
`maskdit-0.5` (that model at ratio 0.5). Ratios > 1 mean masked training is faster.
"""

import argparse
import platform
import statistics
import time

import torch

from dit_pipelines import DiTDDPMScheduler, DiTModel
from dit_pipelines.atomic_files import write_json
from dit_pipelines.training.masking import masked_diffusion_loss

DEMO = dict(sample_size=28, patch_size=4, in_channels=1, hidden_size=64, depth=6, num_heads=2, num_classes=10)
DECODER = dict(decoder_depth=1, decoder_hidden_size=32)  # train_dit.py's default for the demo: depth // 4, width / 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--mask_ratio", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--steps", type=int, default=3, help="steps timed per variant and round")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--output", default=None)
    return p.parse_args(argv)


def step_function(model, ratio: float, batch_size: int, sample_size: int = 28):
    """One optimisation step of `model` at mask `ratio` on random 1-channel `sample_size`² data in 10 classes, with
    the training loop's optimizer (AdamW, fused on the CPU). `benchmarks/scaling.py` times its runs with it too."""
    scheduler = DiTDDPMScheduler(variance_type="learned_range")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch_size, 1, sample_size, sample_size, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)

    def step():
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch_size,))
        if ratio:
            loss = masked_diffusion_loss(model, scheduler, x0, noise, t, labels, ratio).loss.mean()
        else:  # what train_dit.py does unmasked (any denoiser: a DiT, the U-Net baseline)
            output = model(scheduler.add_noise(x0, noise, t), t, labels).sample
            loss = scheduler.training_loss(output, x0, noise, t).loss.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = {
        "dit": step_function(DiTModel(**DEMO), 0.0, args.batch_size),
        "maskdit-0": step_function(DiTModel(**DEMO, **DECODER), 0.0, args.batch_size),
        f"maskdit-{args.mask_ratio}": step_function(DiTModel(**DEMO, **DECODER), args.mask_ratio, args.batch_size),
    }
    times = {name: [] for name in variants}
    for step in variants.values():  # warm-up
        step()
        step()
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    masked = medians[f"maskdit-{args.mask_ratio}"]
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "config": {**DEMO, **DECODER, "batch_size": args.batch_size, "mask_ratio": args.mask_ratio},
        "seconds_per_step": medians,
        "speedup_vs_dit": medians["dit"] / masked,
        "speedup_vs_maskdit_unmasked": medians["maskdit-0"] / masked,
        "gflops_per_image": {"dit": DiTModel(**DEMO).gflops(), "maskdit": DiTModel(**DEMO, **DECODER).gflops()},
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    for name, seconds in medians.items():
        print(f"{name:>12}: {seconds * 1000:7.1f} ms/step   ({medians['dit'] / seconds:.2f}x the DiT's speed)")
    print(
        f"masked at {args.mask_ratio}: {results['speedup_vs_dit']:.2f}x the unmasked DiT step, "
        f"{results['speedup_vs_maskdit_unmasked']:.2f}x the same model unmasked"
    )
    if args.output:
        write_json(args.output, results, indent=2)
    return results


if __name__ == "__main__":
    main(parse_args())
