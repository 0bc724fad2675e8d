"""The DiT paper's experiments (Peebles & Xie, 2023) at small scale, on MNIST and a fixed CPU budget per run: model
size and patch size against quality (Fig. 2/6), quality against training compute (Fig. 9), the four block designs
over training (Fig. 5), the U-Net baseline at matched Gflops, and masked training (MaskDiT) at two budgets.

    python benchmarks/scaling.py                           # the whole study: about 75 min on 2 CPU cores
    python benchmarks/scaling.py --groups designs unet     # some groups
    python benchmarks/scaling.py --plots_only              # redraw the plots from the JSON

Every run is `training/train_dit.py` on the MNIST digits (28x28, pixel space) with the demo's recipe (AdamW 2e-3
with warm-up, EMA 0.9995 with warm-up, learned sigma, the hybrid loss) at batch 32, for more steps in the budget.
Its number of steps is what its model does in `--budget_minutes` (times the run's budget multiple): each model's
step is timed before its run
(`benchmarks/masked_training.step_function`, the training step on random data), so every run costs about the same
CPU time and bigger models take fewer steps. Runs evaluated at several points of their training are trained in
stages that resume from the previous stage's checkpoint (exact resume: the same weights as one run).

Each evaluation samples `--samples_per_class` digits of each class from the saved pipeline (EMA weights;
`--num_inference_steps` DDPM steps with the learned variance, guidance `--guidance_scale` 4 as the demo's grids:
the paper's Fig. 2 has none, but these short runs show their classes only with it) and measures: class accuracy
and the Fréchet distance in the features of an MNIST classifier (`examples/mnist/classifier.py`), and at the end
of each run the FID in Inception features against the 10,000 MNIST test digits (the features of `examples.mnist.
inception_fid`'s cache when it is there: 23 minutes to compute otherwise). FID from a few hundred samples is biased
upwards: compare the runs with one another, not with published figures.

Groups (names as in the JSON and plots; "S/4" is width 64, 6 blocks, 4x4 patches: the MNIST demo's model):
- `scale`: sizes S (width 64, 6 blocks) and M (96, 8) x patches 7, 4, 2 (16, 49, 196 tokens);
- `designs`: S/4 with each of the four block designs, evaluated at 4 points of training;
- `unet`: the U-Net baseline (`--architecture unet`, widths 16-32-32, 2 resnets a level) at S/2's Gflops;
- `masked`: S/4 with `--mask_ratio 0.5` (the default decoder, 5% unmasked fine-tuning) at 1x and 2x the budget,
  against S/4 unmasked at the same two budgets.
Results: `--output` (JSON, rewritten after every evaluation; a rerun skips what it holds) and PNG plots beside it.
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.masked_training import step_function  # noqa: E402
from examples.mnist.classifier import accuracy, features, load_classifier, mnist_tensors  # noqa: E402
from examples.mnist.mnist_data import mnist_folder  # noqa: E402
from examples.mnist.sample_quality import generate  # noqa: E402

SIZES = {"S": (64, 6, 2), "M": (96, 8, 3)}  # width, depth, heads (S: the MNIST demo's model)
PATCHES = (7, 4, 2)
RECIPE = (
    "--train_batch_size 32 --learning_rate 2e-3 --lr_scheduler constant_with_warmup --lr_warmup_steps 100 "
    "--ema_decay 0.9995 --ema_warmup --sampling_respacing 250 --checkpoints_total_limit 1"
).split()
UNET = "--architecture unet --unet_channels 16 32 32 --unet_layers_per_block 2".split()  # 0.0879 Gflops: S/2's
BATCH = int(RECIPE[RECIPE.index("--train_batch_size") + 1])
MASK_RATIO = 0.5
FINETUNE_SHARE = 0.05  # MaskDiT: the unmasked fine-tuning is a few percent of the steps


@dataclasses.dataclass
class Run:
    name: str
    group: str
    options: List[str]
    budget: float = 1.0  # multiples of --budget_minutes
    stages: int = 2  # evaluations, evenly spaced over the steps
    mask_ratio: float = 0.0


def dit(size: str, patch: int, *extra: str) -> List[str]:
    width, depth, heads = SIZES[size]
    return f"--hidden_size {width} --depth {depth} --num_heads {heads} --patch_size {patch}".split() + list(extra)


def study() -> List[Run]:
    runs = [Run(f"{s}/{p}", "scale", dit(s, p), stages=4 if (s, p) == ("S", 4) else 2) for s in SIZES for p in PATCHES]
    for design in ("adaln", "cross_attention", "in_context"):
        runs.append(Run(f"S/4 {design}", "designs", dit("S", 4, "--block_type", design), stages=4))
    runs.append(Run("U-Net", "unet", UNET))
    masked = dit("S", 4, "--mask_ratio", str(MASK_RATIO))
    runs.append(Run("S/4 masked", "masked", masked, stages=1, mask_ratio=MASK_RATIO))
    runs.append(Run("S/4 masked 2x", "masked", masked, budget=2.0, stages=1, mask_ratio=MASK_RATIO))
    runs.append(Run("S/4 2x", "masked", dit("S", 4), budget=2.0, stages=1))
    return runs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", nargs="+", default=["scale", "designs", "unet", "masked"])
    p.add_argument("--budget_minutes", type=float, default=3.0, help="training time of a run (before evaluation)")
    p.add_argument("--guidance_scale", type=float, default=4.0, help="of the evaluation samples")
    p.add_argument("--samples_per_class", type=int, default=25)
    p.add_argument("--num_inference_steps", type=int, default=25)
    p.add_argument("--work_dir", default=None, help="the runs' folders (default: <cache>/scaling)")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "scaling.json"))
    p.add_argument("--plots_only", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train_arguments(run: Run, output_dir: str, steps: int, stage_steps: int, seed: int) -> List[str]:
    extra = []
    if run.mask_ratio:
        extra += ["--unmask_finetune_steps", str(max(1, round(FINETUNE_SHARE * steps)))]
    return ["--dataset", mnist_folder(), "--output_dir", output_dir, "--seed", str(seed), *RECIPE, *run.options] + [
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        str(stage_steps),
        *extra,
    ]


def seconds_per_step(run: Run, rounds: int = 5, steps: int = 4) -> float:
    """The median time of a training step of `run`'s model (at the recipe's batch, random data)."""
    from training.train_dit import build_model
    from training.train_dit import parse_args as train_args

    args = train_args(["--dataset", "unused", *RECIPE, *run.options])
    torch.manual_seed(0)
    step = step_function(build_model(args, 1, 28, 10), run.mask_ratio, args.train_batch_size)
    step()
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


class Evaluator:
    """Samples from a saved pipeline and their class accuracy, classifier Fréchet distance and Inception FID."""

    def __init__(self, args):
        from dit_pipelines.evaluation.evaluator import batch_features
        from dit_pipelines.evaluation.inception import InceptionV3Features
        from dit_pipelines.evaluation.metrics import FeatureStatistics, frechet_distance
        from dit_pipelines.pypi_files import cache_dir
        from examples.mnist.inception_fid import reference_batch

        self.args, self.frechet_distance = args, frechet_distance
        self.classifier = load_classifier()
        self.test_features = features(self.classifier, mnist_tensors("test")[0])
        self.inception = InceptionV3Features.from_pretrained(download_logits=False)
        work = str(cache_dir() / "inception_fid")  # shared with examples/mnist/inception_fid.py
        os.makedirs(work, exist_ok=True)
        test = reference_batch("test", work)
        reference = batch_features(test, self.inception, 25, True, os.path.join(work, "features-test"))
        self.reference = FeatureStatistics.of(reference.pool)
        self.statistics = FeatureStatistics

    def __call__(self, pipeline_dir: str, fid: bool = True) -> Dict:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(pipeline_dir)
        pipe.set_progress_bar_config(disable=True)
        settings = SimpleNamespace(
            batch_size=125,
            guidance_scale=self.args.guidance_scale,
            guidance_interval=None,
            cache_interval=None,
            num_inference_steps=self.args.num_inference_steps,
            seed=self.args.seed,
        )
        start = time.perf_counter()
        samples, labels = generate(pipe, self.args.samples_per_class, settings)
        sampling = time.perf_counter() - start
        measures = {
            "class_accuracy": accuracy(self.classifier, samples, labels),
            "frechet_distance": self.frechet_distance(features(self.classifier, samples), self.test_features),
        }
        if fid:
            digits = (samples * 255).round().to(torch.uint8).permute(0, 2, 3, 1).repeat(1, 1, 1, 3)
            pool = self.inception.extract(digits.split(25)).pool
            measures["fid"] = self.statistics.of(pool).frechet_distance(self.reference)
        return {
            **measures,
            "num_samples": len(samples),
            "sampling_seconds": sampling,
            "evaluation_seconds": time.perf_counter() - start,
        }


def run_one(run: Run, args, evaluate: Evaluator, results: Dict) -> None:
    from accelerate.state import AcceleratorState

    from training.train_dit import main as train
    from training.train_dit import parse_args as train_args

    record = results["runs"].get(run.name)
    if record and len(record["evaluations"]) == run.stages:
        return
    output_dir = os.path.join(args.work_dir, run.name.replace("/", "-").replace(" ", "_"))
    shutil.rmtree(output_dir, ignore_errors=True)  # a run is redone whole: its steps were timed for it
    seconds = seconds_per_step(run)
    budget = args.budget_minutes * 60 * run.budget
    stage_steps = max(1, round(budget / seconds / run.stages))
    steps = stage_steps * run.stages
    record = results["runs"][run.name] = {
        "group": run.group,
        "options": run.options,
        "budget_minutes": budget / 60,
        "timed_seconds_per_step": seconds,
        "steps": steps,
        "evaluations": [],
    }
    # the unmasked fine-tuning belongs to the end of the whole run: a masked run trains in one stage
    assert not run.mask_ratio or run.stages == 1
    train_minutes = 0.0
    for stage in range(1, run.stages + 1):
        options = train_arguments(run, output_dir, stage_steps * stage, stage_steps, args.seed)
        if stage > 1:
            options += ["--resume_from_checkpoint", "latest"]
        start = time.perf_counter()
        train(train_args(options))
        AcceleratorState._reset_state(reset_partial_state=True)
        train_minutes += (time.perf_counter() - start) / 60
        final = stage == run.stages  # the FID (Inception: 40 s) at the end of a run, the classifier's at every stage
        evaluation = {"step": stage_steps * stage, "train_minutes": train_minutes, **evaluate(output_dir, final)}
        record["evaluations"].append(evaluation)
        if stage == 1:
            describe(record, output_dir, run.mask_ratio)
        print(f"{run.name} step {evaluation['step']}: " + json.dumps({k: round(v, 3) for k, v in evaluation.items()}))
        save(results, args.output)


def describe(record: Dict, output_dir: str, mask_ratio: float) -> None:
    """Parameters and Gflops of the saved model; the training compute per step (paper Fig. 9: 3 x forward Gflops x
    batch; a masked step's forward counted at its visible tokens)."""
    from diffusers import DiffusionPipeline

    from dit_pipelines.models.flops import measured_flops
    from dit_pipelines.training.masking import random_token_split

    model = DiffusionPipeline.from_pretrained(output_dir).transformer
    record["parameters"] = sum(p.numel() for p in model.parameters())
    record["gflops"] = model.gflops()
    forward = record["gflops"]
    if mask_ratio:
        tokens = (28 // model.config.patch_size) ** 2
        keep, _ = random_token_split(1, tokens, mask_ratio)
        x, t, y = torch.zeros(1, 1, 28, 28), torch.tensor([1]), torch.tensor([0])
        forward = measured_flops(model, x, t, y, True, None, keep) / 1e9
    record["train_gflops_per_step"] = 3 * forward * BATCH


def save(results: Dict, path: str) -> None:
    from dit_pipelines.atomic_files import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, results, indent=2)  # whole or not at all: the study rewrites it after every evaluation


def plot(results: Dict, output: str) -> List[str]:
    """The three figures, as PNGs beside the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    stem = os.path.splitext(output)[0]
    paths = []
    metrics = [("fid", "FID (Inception)"), ("frechet_distance", "Fréchet distance (classifier)")]
    metrics += [("class_accuracy", "class accuracy")]

    # Fig. 2/6: quality against forward Gflops, at the end of each run of the scale grid
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (key, label) in zip(axes, metrics):
        for size in SIZES:
            points = [
                (runs[f"{size}/{p}"]["gflops"], runs[f"{size}/{p}"]["evaluations"][-1][key])
                for p in PATCHES
                if f"{size}/{p}" in runs
            ]
            if points:
                axis.plot(*zip(*points), "o-", label=f"{size} (patch {', '.join(map(str, PATCHES))})")
        if "U-Net" in runs:
            axis.plot(runs["U-Net"]["gflops"], runs["U-Net"]["evaluations"][-1][key], "k*", ms=12, label="U-Net")
        axis.set(xscale="log", xlabel="Gflops per image (forward)", ylabel=label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"Quality against Gflops at a fixed CPU budget ({results['budget_minutes']} min a run)")
    paths.append(_save(figure, stem + "-gflops.png"))

    # Fig. 9: quality against training compute (every evaluation of every DiT run)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, (key, label) in zip(axes, metrics[1:]):  # at every evaluation (the FID: at the ends only)
        for name, record in runs.items():
            if record["group"] not in ("scale", "masked", "unet") or "gflops" not in record:
                continue
            compute = [e["step"] * record["train_gflops_per_step"] for e in record["evaluations"]]
            style = "s--" if "masked" in name else ("k*-" if name == "U-Net" else "o-")
            axis.plot(compute, [e[key] for e in record["evaluations"]], style, label=name)
        axis.set(xscale="log", xlabel="training compute (Gflops: 3 x forward x batch x steps)", ylabel=label)
        axis.set_yscale("log" if key == "frechet_distance" else "linear")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    paths.append(_save(figure, stem + "-compute.png"))

    # Fig. 5: the block designs over training
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    designs = {"adaln_zero": "S/4", **{d: f"S/4 {d}" for d in ("adaln", "cross_attention", "in_context")}}
    for axis, (key, label) in zip(axes, metrics[1:]):
        for design, name in designs.items():
            if name in runs:
                evaluations = runs[name]["evaluations"]
                axis.plot([e["step"] for e in evaluations], [e[key] for e in evaluations], "o-", label=design)
        axis.set(xlabel="training steps", ylabel=label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    paths.append(_save(figure, stem + "-designs.png"))
    return paths


def _save(figure, path: str) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    return path


def table(results: Dict) -> str:
    """The RESULTS.md table: one row per run, its final evaluation."""
    lines = [
        "| run | group | Gflops | params (M) | train min | steps | class acc. | classifier FD | FID |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        if "gflops" not in r:
            continue
        e = r["evaluations"][-1]
        lines.append(
            f"| {name} | {r['group']} | {r['gflops']:.4f} | {r['parameters'] / 1e6:.2f} | {e['train_minutes']:.1f} "
            f"| {r['steps']} | {e['class_accuracy']:.1%} | {e['frechet_distance']:.1f} | {e['fid']:.1f} |"
        )
    return "\n".join(lines)


def main(args) -> Dict:
    from dit_pipelines.atomic_files import read_json
    from dit_pipelines.pypi_files import cache_dir

    results = read_json(args.output) or {"runs": {}}
    if not args.plots_only:
        args.work_dir = args.work_dir or str(cache_dir() / "scaling")
        results.update(
            budget_minutes=args.budget_minutes,
            samples_per_class=args.samples_per_class,
            num_inference_steps=args.num_inference_steps,
            machine=f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        )
        evaluate = Evaluator(args)
        started = time.perf_counter()
        for run in study():
            if run.group in args.groups:
                run_one(run, args, evaluate, results)
        results["study_minutes"] = results.get("study_minutes", 0) + (time.perf_counter() - started) / 60
        save(results, args.output)
    for path in plot(results, args.output):
        print("wrote", path)
    print(table(results))
    return results


if __name__ == "__main__":
    main(parse_args())
