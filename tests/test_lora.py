"""LoRA through peft and diffusers' loaders: on both pipelines the adapted output changes, fused equals unfused
within 1e-5, unloading restores the base exactly, and saved adapters reload into a fresh pipeline with identical
samples; a `--lora_rank 4` training run changes only adapter weights and saves them in diffusers' LoRA format,
and its model card says it holds only an adapter and names the base model."""

import pytest
import torch
from diffusers import DiffusionPipeline
from peft import LoraConfig
from safetensors.torch import load_file

from dit_pipelines import DiTDDPMScheduler, DiTImagePipeline, DiTTextToVideoPipeline
from dit_pipelines.hub import model_card, pipeline_files
from dit_pipelines.training.adapters import DEFAULT_TARGETS, LORA_WEIGHTS, save_lora_adapter
from training.train_dit import main, parse_args

from .conftest import video_inputs
from .test_training import bars, tiny_args  # noqa: F401 (bars: fixture)
from .test_video_pipeline import components  # noqa: F401 (fixture)


@pytest.fixture(params=["image", "video"])
def pipe(request, tiny_dit, tiny_video_dit, components):  # noqa: F811
    scheduler = DiTDDPMScheduler(timestep_respacing="3")
    if request.param == "image":
        pipe = DiTImagePipeline(tiny_dit(in_channels=3), scheduler)
    else:
        parts = {k: components[k] for k in ("tokenizer", "text_encoder", "vae")}
        pipe = DiTTextToVideoPipeline(**parts, transformer=tiny_video_dit(depth=1), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe):
    image = isinstance(pipe, DiTImagePipeline)
    out = pipe([1, 2] if image else ["the digit 3 moves up"], generator=torch.manual_seed(0), output_type="latent")
    return out.images if image else out.frames


def forward(pipe):
    """The transformer's output on fixed inputs (the sampling chain would amplify float rounding)."""
    with torch.no_grad():
        if isinstance(pipe, DiTImagePipeline):
            x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
            return pipe.transformer(x, torch.tensor([3, 900]), class_labels=torch.tensor([1, 2])).sample
        args, kwargs = video_inputs()
        return pipe.transformer(*args, **kwargs).sample


def add_random_adapter(transformer):
    """A rank-4 adapter on the default targets, with both factors random (a fresh one is zero: B = 0)."""
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS)))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def test_fuse_unfuse_unload_and_a_saved_adapter_reloads(pipe, tmp_path):
    base, base_output = sample(pipe), forward(pipe)
    pipe.save_pretrained(tmp_path / "base")
    add_random_adapter(pipe.transformer)
    adapted, adapted_output = sample(pipe), forward(pipe)
    assert not torch.allclose(adapted, base, atol=1e-3)

    pipe.fuse_lora()
    torch.testing.assert_close(forward(pipe), adapted_output, rtol=0, atol=1e-5)
    pipe.unfuse_lora()
    torch.testing.assert_close(forward(pipe), adapted_output, rtol=0, atol=1e-5)

    (tmp_path / "lora").mkdir()
    save_lora_adapter(pipe, str(tmp_path / "lora"))  # with its rank, alpha and targets as metadata
    fresh = DiffusionPipeline.from_pretrained(tmp_path / "base")
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(sample(fresh), adapted, rtol=0, atol=0)

    fresh.unload_lora_weights()  # never fused: the base weights untouched
    assert not any("lora" in name for name, _ in fresh.transformer.named_parameters())
    torch.testing.assert_close(sample(fresh), base, rtol=0, atol=0)
    pipe.unload_lora_weights()  # fused, then unfused: W + BA - BA, the base up to rounding
    torch.testing.assert_close(forward(pipe), base_output, rtol=0, atol=1e-5)


def test_a_lora_training_run_changes_only_adapters_and_saves_them(bars, tmp_path):  # noqa: F811
    base = main(parse_args(tiny_args(bars, tmp_path / "base", "--max_train_steps", "2")))
    options = "--lora_rank 4 --max_train_steps 3 --checkpointing_steps 3 --ema_decay 0.5".split()
    out = main(parse_args(tiny_args(bars, tmp_path / "lora", "--init_from", str(base), *options)))

    saved = load_file(str(tmp_path / "lora" / LORA_WEIGHTS))
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert not (tmp_path / "lora" / "model_index.json").exists()  # an adapter, not a pipeline
    # the raw weights of the last step: the base weights exactly as loaded, the adapters trained away from zero
    raw = load_file(str(tmp_path / "lora" / "checkpoint-3" / "model.safetensors"))
    base_weights = load_file(str(tmp_path / "base" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for name, value in raw.items():
        if "lora_" in name:
            continue
        torch.testing.assert_close(value, base_weights[name.replace(".base_layer", "")], rtol=0, atol=0)
    assert any("lora_B" in name and value.abs().max() > 0 for name, value in raw.items())

    # a fresh base pipeline with the saved adapter samples as the base with the EMA adapters put in by hand
    pipe = DiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(out)
    expected = DiffusionPipeline.from_pretrained(base)
    expected.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(DEFAULT_TARGETS)))
    ema = load_file(str(tmp_path / "lora" / "checkpoint-3" / "ema.safetensors"))  # by parameter name
    adapters = {k: v for k, v in ema.items() if "lora_" in k}
    assert adapters and adapters.keys() == ema.keys()  # the EMA of the adapters alone
    missing, unexpected = expected.transformer.load_state_dict(adapters, strict=False)
    assert not unexpected and all("lora_" not in k for k in missing)
    for p in (pipe, expected):
        p.set_progress_bar_config(disable=True)
    images = [p([0, 2], output_type="np", generator=torch.manual_seed(0)).images for p in (pipe, expected)]
    assert (images[0] == images[1]).all()

    card = model_card(out, "me/bars-lora")
    assert card.data.base_model is None  # a local base folder is named in the text, not as Hub metadata
    assert "LoRA adapter" in card.text and "load_lora_weights" in card.text and "`fc1`" in card.text
    assert "**.../base**" in card.text and 'from_pretrained("path/to/base-pipeline")' in card.text
    assert pipeline_files(out) == [LORA_WEIGHTS, "training_args.json"]


def test_a_resumed_lora_run_ends_with_the_uninterrupted_runs_adapter(bars, tmp_path):  # noqa: F811
    base = main(parse_args(tiny_args(bars, tmp_path / "base", "--max_train_steps", "2")))
    options = ["--init_from", str(base), *"--lora_rank 4 --max_train_steps 5 --checkpointing_steps 2".split()]
    main(parse_args(tiny_args(bars, tmp_path / "full", *options)))
    (tmp_path / "resumed").mkdir()
    (tmp_path / "full" / "checkpoint-2").rename(tmp_path / "resumed" / "checkpoint-2")
    main(parse_args(tiny_args(bars, tmp_path / "resumed", *options, "--resume_from_checkpoint", "latest")))
    full, resumed = (load_file(str(tmp_path / run / LORA_WEIGHTS)) for run in ("full", "resumed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_lora_needs_a_pretrained_model(bars, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--init_from"):
        main(parse_args(tiny_args(bars, tmp_path / "x", "--lora_rank", "4", "--max_train_steps", "1")))
