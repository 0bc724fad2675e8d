"""`benchmarks/scaling.py` without its hour of training: the runs it plans (every group, the U-Net at the Gflops of
the DiT it stands beside, the arguments each stage passes to train_dit.py), and its plots and table from results."""

import pytest

from benchmarks.scaling import PATCHES, SIZES, Run, plot, study, table, train_arguments
from dit_pipelines import ClassConditionalUNet
from training.train_dit import build_model
from training.train_dit import parse_args as train_args


def model(run: Run):
    return build_model(train_args(["--dataset", "unused", *run.options]), 1, 28, 10)


def test_the_study_covers_every_group_the_issue_names():
    runs = {run.name: run for run in study()}
    assert {f"{s}/{p}" for s in SIZES for p in PATCHES} <= set(runs)  # sizes x patches 7, 4, 2
    designs = {model(run).config.block_type for run in runs.values() if run.group == "designs"}
    assert designs | {model(runs["S/4"]).config.block_type} == {"adaln_zero", "adaln", "cross_attention", "in_context"}
    assert runs["S/4"].stages == 4 and all(r.stages == 4 for r in runs.values() if r.group == "designs")
    masked = [r for r in runs.values() if r.group == "masked"]
    assert sorted((r.mask_ratio, r.budget) for r in masked) == [(0.0, 2.0), (0.5, 1.0), (0.5, 2.0)]  # + S/4 at 1x


def test_the_unet_stands_at_the_gflops_of_the_dit_it_is_compared_with():
    runs = {run.name: run for run in study()}
    unet = model(runs["U-Net"])
    assert isinstance(unet, ClassConditionalUNet)
    assert unet.gflops() == pytest.approx(model(runs["S/2"]).gflops(), rel=0.01)


def test_a_masked_run_fine_tunes_unmasked_for_the_last_five_percent_of_its_steps():
    masked = next(run for run in study() if run.mask_ratio)
    options = train_arguments(masked, "out", steps=400, stage_steps=400, seed=0)
    args = train_args(options)
    assert (args.mask_ratio, args.unmask_finetune_steps, args.max_train_steps) == (0.5, 20, 400)
    staged = train_args(train_arguments(study()[0], "out", steps=200, stage_steps=100, seed=0))
    assert (staged.max_train_steps, staged.checkpointing_steps, staged.unmask_finetune_steps) == (200, 100, 0)


def test_plots_and_table_from_results(tmp_path):
    pytest.importorskip("matplotlib")
    evaluation = {"class_accuracy": 0.5, "frechet_distance": 100.0, "fid": 80.0, "train_minutes": 1.5}
    runs = {}
    for index, run in enumerate(study()):
        stages = [{**evaluation, "step": 10 * (k + 1), "fid": 80.0 - k - index} for k in range(run.stages)]
        runs[run.name] = {"group": run.group, "options": run.options, "gflops": 0.01 * (index + 1)}
        runs[run.name].update(parameters=1e6, steps=10 * run.stages, train_gflops_per_step=1.0, evaluations=stages)
    results = {"runs": runs, "budget_minutes": 1.5}
    paths = plot(results, str(tmp_path / "scaling.json"))
    assert [p.rsplit("-", 1)[1] for p in paths] == ["gflops.png", "compute.png", "designs.png"]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = table(results).splitlines()
    assert len(rows) == 2 + len(runs) and rows[2].startswith("| S/7 | scale | 0.0100 | 1.00 | 1.5 | 20 | 50.0% |")
