"""The released DiT in one line: a diffusers `DiTPipeline` folder (the layout of facebook/DiT-XL-2-256, built tiny
here) loads with `DiTImagePipeline.from_pretrained` or `dit-pipelines convert` with its VAE, class names and the
paper's sampler, and samples as diffusers' own pipeline does where both can run."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
)
from diffusers.schedulers import scheduling_ddpm
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTModel, timesteps_from_respacing
from dit_pipelines.cli import main as cli

from .conftest import randomize_
from .local_hub import LocalHub

# As in facebook/DiT-XL-2-256: ImageNet names, synonyms separated by commas, stored in model_index.json.
ID2LABEL = {
    "0": "tench, Tinca tinca",
    "1": "goldfish, Carassius auratus",
    "2": "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias",
}
LATENT = (4, 8, 8)  # 4 latent channels; the VAE doubles each side: 16x16 images


def tiny_diffusers_dit_pipeline() -> DiTPipeline:
    """A `DiTPipeline` shaped like the released one: 1000 classes (diffusers' pipeline hard-codes the null class
    1000), learned sigma, one embedder copied into every block (as in all weights converted from the original)."""
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    randomize_(transformer, std=0.05).eval()
    shared = transformer.transformer_blocks[0].norm1.emb.state_dict()
    for block in transformer.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=16,
    ).eval()
    scheduler = DPMSolverMultistepScheduler()  # linear betas 1e-4..0.02 over 1000 steps, as DiT trained
    return DiTPipeline(transformer, vae, scheduler)


def save_like_the_hub(pipe: DiTPipeline, folder) -> None:
    """`save_pretrained`, plus the `id2label` that the released model_index.json holds (diffusers does not save
    it)."""
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "id2label": ID2LABEL}, indent=2))


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusers") / "DiT-tiny-2-16"
    save_like_the_hub(tiny_diffusers_dit_pipeline(), folder)
    return folder


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def decoded_latents(pipe):
    """A list that receives the latents `pipe`'s VAE decodes (its input in the VAE's own scale)."""
    seen = []
    pipe.vae.post_quant_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    return seen


def fixed_variance_samples(ours: DiTImagePipeline, folder, labels, guidance_scale, steps, monkeypatch):
    """((images, latents) of ours, (images, latents) of diffusers'): `ours` with a fixed-variance DDPM on its betas,
    and diffusers' `DiTPipeline` from `folder` with the `DDPMScheduler` of the same betas and timesteps (linspace
    spacing, no clipping), from the same initial noise and the same step noise; np images, and the latents their
    VAEs decode. diffusers' pipeline draws its steps' noise without its generator (and for both halves of a guided
    batch): the patch gives it the noise that our scheduler draws from ours."""
    theirs = quiet(DiTPipeline.from_pretrained(folder))
    theirs.scheduler = DDPMScheduler.from_config(
        theirs.scheduler.config, variance_type="fixed_small", clip_sample=False, timestep_spacing="linspace"
    )
    ours.scheduler = DiTDDPMScheduler.from_config(ours.scheduler.config, variance_type="fixed_small")
    step_noise = torch.Generator().manual_seed(1)

    def noise_of_our_steps(shape, generator=None, device=None, dtype=None, **_):
        noise = randn_tensor((len(labels), *shape[1:]), generator=step_noise, device=device, dtype=dtype)
        return noise.repeat(shape[0] // len(labels), 1, 1, 1)  # both halves of a guided batch

    their_latents, our_latents = decoded_latents(theirs), decoded_latents(ours)
    with monkeypatch.context() as patch:
        patch.setattr(scheduling_ddpm, "randn_tensor", noise_of_our_steps)
        theirs_out = theirs(
            labels,
            guidance_scale,
            generator=torch.Generator().manual_seed(0),
            num_inference_steps=steps,
            output_type="np",
        ).images
    latents = randn_tensor((len(labels), *LATENT), generator=torch.Generator().manual_seed(0))  # DiTPipeline's start
    ours_out = ours(
        labels,
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
        latents=latents,
        generator=torch.Generator().manual_seed(1),  # our steps' noise
        output_type="np",
    ).images
    return (ours_out, our_latents[0]), (theirs_out, their_latents[0])


def assert_same_samples(ours, theirs, name):
    """Images within 1e-5, latents within 5e-5 of their largest value. diffusers' DDPMScheduler keeps float32
    constants (up to 8e-5 relative from our float64 ones); measured on this model over 25 steps: images 3.6e-7,
    latents 6.5e-7 relative (the README's test list)."""
    (images, latents), (expected_images, expected_latents) = ours, theirs
    assert expected_images.std() > 0.05 and ((expected_images > 0) & (expected_images < 1)).mean() > 0.9
    image_gap = np.abs(images - expected_images).max()
    latent_gap = ((latents - expected_latents).abs().max() / expected_latents.abs().max()).item()
    print(f"{name}: max |ours - diffusers| images {image_gap:.1e}, latents {latent_gap:.1e} relative")
    assert image_gap < 1e-5 and latent_gap < 5e-5


def test_one_line_load_carries_the_transformer_vae_class_names_and_papers_sampler(diffusers_folder):
    pipe = DiTImagePipeline.from_pretrained(diffusers_folder)
    saved = DiTPipeline.from_pretrained(diffusers_folder)
    assert isinstance(pipe, DiTImagePipeline) and isinstance(pipe.transformer, DiTModel)
    assert pipe.transformer.config.learn_sigma and not pipe.transformer.training
    x, t, y = torch.randn(3, *LATENT), torch.tensor([0, 500, 999]), torch.tensor([2, 7, 1000])
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(x, t, y).sample, saved.transformer(x, t, y).sample)

    assert isinstance(pipe.vae, AutoencoderKL)
    for name, tensor in saved.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name], tensor)
    assert pipe.id2label == {int(k): v for k, v in ID2LABEL.items()}
    assert pipe.get_label_ids("white shark") == [2]  # diffusers' get_label_ids splits a string into characters
    assert pipe.get_label_ids(["Goldfish", "tench"]) == [1, 0]

    scheduler = pipe.scheduler
    assert isinstance(scheduler, DiTDDPMScheduler)
    assert scheduler.config.variance_type == "learned_range" and scheduler.config.timestep_respacing == "250"
    assert scheduler.config.beta_schedule == "linear" and not scheduler.config.clip_sample
    scheduler.set_timesteps()
    assert scheduler.timesteps.tolist() == timesteps_from_respacing(1000, "250")[::-1]  # 999, 995, ..., 0


def test_an_older_repo_with_transformer2dmodel_and_other_betas_loads_too(diffusers_folder, tmp_path):
    """Repos made before diffusers 0.28 name the transformer `Transformer2DModel`, with its extra config keys."""
    folder = tmp_path / "old"
    shutil.copytree(diffusers_folder, folder)
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    legacy = dict(cross_attention_dim=None, num_vector_embeds=None, use_linear_projection=False, dropout=0.0)
    config_file.write_text(json.dumps({**config, **legacy, "_class_name": "Transformer2DModel"}))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "transformer": ["diffusers", "Transformer2DModel"]}))
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()), "beta_end": 0.03}))

    pipe = DiTImagePipeline.from_pretrained(folder)
    assert pipe.scheduler.config.beta_end == 0.03 and pipe.scheduler.config.variance_type == "learned_range"
    reference = DiTImagePipeline.from_pretrained(diffusers_folder).transformer.state_dict()
    for name, tensor in pipe.transformer.state_dict().items():
        assert torch.equal(tensor, reference[name])


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_samples_equal_diffusers_dit_pipeline_with_the_same_noise(diffusers_folder, guidance_scale, monkeypatch):
    """With a fixed variance: diffusers' DiTPipeline discards the variance channels."""
    pipe = quiet(DiTImagePipeline.from_pretrained(diffusers_folder))
    ours, theirs = fixed_variance_samples(pipe, diffusers_folder, [2, 0], guidance_scale, 25, monkeypatch)
    assert_same_samples(ours, theirs, f"guidance {guidance_scale}")


def test_papers_sampler_with_three_guided_channels_equals_a_recomputation(diffusers_folder):
    """The FID protocol of the original DiT: 250 linspace DDPM steps with the learned variance (diffusers'
    DDPMScheduler "learned_range" on linspace timesteps is the same sampler) and guidance on 3 of the 4 latent
    channels, recomputed here by hand with diffusers' transformer."""
    pipe = quiet(DiTImagePipeline.from_pretrained(diffusers_folder))
    transformer = DiTTransformer2DModel.from_pretrained(diffusers_folder, subfolder="transformer").eval()
    scheduler = DDPMScheduler(variance_type="learned_range", clip_sample=False, timestep_spacing="linspace")
    scheduler.set_timesteps(250)
    labels, scale = torch.tensor([2, 1]), 1.5
    generator = torch.Generator().manual_seed(0)
    latents = randn_tensor((2, *LATENT), generator=generator)
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = transformer(
                torch.cat([latents, latents]), t.expand(4), torch.cat([labels, torch.full_like(labels, 1000)])
            ).sample
            cond, uncond = out.chunk(2)
            guided = torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], dim=1)
            latents = scheduler.step(guided, t, latents, generator=generator).prev_sample

    def ours(**kwargs):
        return pipe(
            ["white shark", "goldfish"],
            guidance_scale=scale,
            generator=torch.Generator().manual_seed(0),  # the same initial and step noise: drawn in the same order
            output_type="latent",
            **kwargs,
        ).images

    three = ours(guidance_channels=3)
    gap = ((three - latents).abs().max() / latents.abs().max()).item()  # the chain reaches |x| ~ 700 here
    four = ((ours() - latents).abs().max() / latents.abs().max()).item()
    print(f"250 learned-range steps, 3 guided channels: max |ours - recomputed| {gap:.1e} relative; 4: {four:.1e}")
    assert gap < 5e-5  # diffusers' float32 constants, as in `assert_same_samples`
    assert four > 100 * gap  # guiding all 4 channels is another sampler


def test_convert_then_sample_from_the_command_line_gives_the_same(diffusers_folder, tmp_path, monkeypatch):
    out = tmp_path / "converted"
    assert cli(["convert", str(diffusers_folder), "--output", str(out)]) == 0  # no --vae, no --id2label
    png = tmp_path / "sharks.png"
    labels = ["white shark", "goldfish"]
    assert cli(["sample", str(out), "--labels", *labels, "--seed", "3", "--output", str(png)]) == 0

    loaded = quiet(DiffusionPipeline.from_pretrained(out))
    assert isinstance(loaded, DiTImagePipeline) and isinstance(loaded.vae, AutoencoderKL)
    assert loaded.id2label == {int(k): v for k, v in ID2LABEL.items()}
    assert loaded.scheduler.config.variance_type == "learned_range"
    assert loaded.scheduler.config.timestep_respacing == "250"
    assert isinstance(DiTImagePipeline.from_pretrained(out).transformer, DiTModel)  # our own layout: diffusers' loader
    one_line = quiet(DiTImagePipeline.from_pretrained(diffusers_folder))
    images = one_line(labels, generator=torch.Generator().manual_seed(3), output_type="np").images  # 250 steps
    grid = np.concatenate(list((images * 255).round().astype(np.uint8)), axis=1)
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), grid)

    ours, theirs = fixed_variance_samples(loaded, diffusers_folder, [1, 2], 4.0, 25, monkeypatch)
    assert_same_samples(ours, theirs, "converted")


def test_latents_without_a_vae_are_refused_as_pictures(tiny_dit, tmp_path, capsys):
    pipe = quiet(DiTImagePipeline(tiny_dit(in_channels=4), DiTDDPMScheduler(timestep_respacing="2")))
    for output_type in ("pil", "np"):
        with pytest.raises(ValueError, match="4-channel latents and the pipeline has no VAE"):
            pipe([1], output_type=output_type)
    assert pipe([1], output_type="latent").images.shape == (1, *LATENT)
    assert pipe([1], output_type="pt").images.shape == (1, *LATENT)

    pipe.save_pretrained(tmp_path / "no-vae")
    assert cli(["sample", str(tmp_path / "no-vae"), "--labels", "1", "--output", str(tmp_path / "x.png")]) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after diffusers' progress bar
    assert last_line.startswith("dit-pipelines sample: error: The transformer makes 4-channel latents")
    assert not (tmp_path / "x.png").exists()


BY_REPO_ID = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from huggingface_hub import HfApi
    from dit_pipelines import DiTImagePipeline
    from dit_pipelines.cli import main

    folder, repo_id, out = sys.argv[1:]
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=folder)
    pipe = DiTImagePipeline.from_pretrained(repo_id)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(["white shark"], num_inference_steps=5, generator=torch.manual_seed(0), output_type="latent")
    np.save(out + ".npy", latents.images.numpy())
    sys.exit(main(["convert", repo_id, "--output", out]))
""")


def test_a_diffusers_dit_pipeline_on_the_hub_loads_by_repo_id(diffusers_folder, tmp_path):
    """Through a loopback Hub (tests/local_hub.py), in a process of its own: the endpoint is read at import."""
    with LocalHub(user="tester") as hub:
        env = dict(
            os.environ,
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_TOKEN="hf_local_test",
            HF_HOME=str(tmp_path / "home"),
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        )
        env.pop("HF_HUB_OFFLINE", None)
        args = [sys.executable, "-c", BY_REPO_ID, str(diffusers_folder), "tester/DiT-tiny-2-16", str(tmp_path / "hub")]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:] + f"\nserver errors: {hub.errors}"
        assert not hub.errors
    local = quiet(DiTImagePipeline.from_pretrained(diffusers_folder))
    expected = local(["white shark"], num_inference_steps=5, generator=torch.manual_seed(0), output_type="latent")
    np.testing.assert_array_equal(np.load(tmp_path / "hub.npy"), expected.images.numpy())
    converted = DiffusionPipeline.from_pretrained(tmp_path / "hub")
    assert isinstance(converted.vae, AutoencoderKL) and converted.id2label == local.id2label


def test_sample_batch_takes_a_diffusers_dit_pipeline_folder_directly(diffusers_folder, tmp_path):
    """`dit-pipelines sample-batch` loads a diffusers DiTPipeline converted (diffusers' own class would be refused):
    its samples are those of the one-line load, decoded by its VAE."""
    from dit_pipelines.sample_batch import sample_generators

    output = tmp_path / "samples.npz"
    args = ["sample-batch", str(diffusers_folder), "--num_samples", "2", "--num_inference_steps", "2"]
    assert cli(args + ["--output", str(output), "--labels", "3", "7"]) == 0
    with np.load(output) as batch:
        images, labels = batch["arr_0"], batch["arr_1"]
    assert images.dtype == np.uint8 and images.shape[0] == 2 and images.shape[-1] == 3 and labels.tolist() == [3, 7]
    pipe = quiet(DiTImagePipeline.from_pretrained(str(diffusers_folder)))
    expected = pipe([3, 7], guidance_scale=1.5, num_inference_steps=2, generator=sample_generators(0, range(2)))
    expected = np.stack([np.asarray(image) for image in expected.images])
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
