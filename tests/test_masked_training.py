"""Masked training (MaskDiT): the decoder that restores the sequence, the ratio-0 identity, the loss on visible and
masked patches against a direct recomputation, `train_dit.py --mask_ratio` end to end, and its errors."""

import pytest
import torch
from diffusers import DiffusionPipeline

from dit_pipelines import DiTDDPMScheduler, VideoDiTModel
from dit_pipelines.conversion import dit_to_diffusers, dit_to_original_state_dict
from dit_pipelines.hub import model_card
from dit_pipelines.models import BLOCK_TYPES
from dit_pipelines.models.embeddings import sincos_2d
from dit_pipelines.models.flops import measured_flops
from dit_pipelines.training.masking import (
    MAE_WEIGHT,
    masked_diffusion_loss,
    random_token_split,
    visible_tokens,
)
from training import train_dit
from training.train_dit import main, parse_args

from .conftest import hybrid_losses
from .launching import finish, launch
from .test_training import SCRIPT, bars, fresh_accelerate_state, tiny_args  # noqa: F401 (fixtures)


def inputs(n: int = 3):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, 8, 8, generator=generator)
    return x, torch.tensor([10, 500, 900][:n]), torch.tensor([3, 7, 1][:n])


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("decoder_hidden_size", [None, 16])
def test_the_decoder_restores_the_sequence_and_keeping_every_token_changes_nothing(
    tiny_dit, block_type, decoder_hidden_size
):
    model = tiny_dit(block_type=block_type, decoder_depth=1, decoder_hidden_size=decoder_hidden_size)
    x, t, y = inputs()
    keep, dropped = random_token_split(3, 16, 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.mask_token.normal_()
        full = model(x, t, y).sample
        # every token kept through the masked path: bit for bit the plain forward
        identity = model(x, t, y, keep_indices=torch.arange(16).expand(3, -1)).sample
        masked = model(x, t, y, keep_indices=keep).sample
        encoded = model.blocks[0](torch.randn(3, 8, 32), model.condition(t, y)) if block_type != "in_context" else None
        tokens, condition = torch.randn(3, 8, 32), model.condition(t, y)
        restored, _ = model.restore_tokens(tokens, condition, keep, 4, 4)
        bridged = model.decoder_embed(tokens, condition if model.final_layer.adaptive else None)
    assert torch.equal(identity, full)
    assert masked.shape == full.shape == (3, 8, 8, 8) and not torch.equal(masked, full)
    assert restored.shape == (3, 16, decoder_hidden_size or 32)  # 8 kept tokens back to the 4x4 grid
    positions = sincos_2d(decoder_hidden_size or 32, 4, 4)  # the decoder's own, at its width
    for sample in range(3):  # each kept token at its place, the mask token at the dropped ones, plus positions
        kept, lost = keep[sample], dropped[sample]
        torch.testing.assert_close(restored[sample, kept], bridged[sample] + positions[kept])
        torch.testing.assert_close(restored[sample, lost], model.mask_token[0].expand(8, -1) + positions[lost])
    assert encoded is None or encoded.shape == (3, 8, 32)
    # the decoder is counted as torch counts it
    assert model.gflops() * 1e9 == measured_flops(model, x[:1], t[:1], y[:1])


def test_the_encoder_never_sees_the_dropped_patches(tiny_dit):
    model = tiny_dit(decoder_depth=1)
    x, t, y = inputs()
    keep, dropped = random_token_split(3, 16, 0.5, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    for sample in range(3):  # new pixels in every dropped 2x2 patch
        for token in dropped[sample].tolist():
            row, column = divmod(token, 4)
            changed[sample, :, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2] = 7.0
    with torch.no_grad():
        assert torch.equal(model(changed, t, y, keep_indices=keep).sample, model(x, t, y, keep_indices=keep).sample)
        assert not torch.equal(model(changed, t, y).sample, model(x, t, y).sample)


def test_an_adaln_zero_model_with_a_decoder_starts_at_zero(tiny_dit):
    model = tiny_dit(random=False, decoder_depth=2, decoder_hidden_size=16)
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.count_nonzero(model(x, t, y).sample) == 0
        tokens = torch.randn(3, 16, 16)
        condition = model.decoder_condition(model.condition(t, y))
        assert torch.equal(model.decoder_blocks[0](tokens, condition), tokens)


def test_the_split_keeps_the_same_count_per_sample_and_partitions_the_tokens():
    keep, dropped = random_token_split(5, 49, 0.5, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (5, 24) and dropped.shape == (5, 25)  # MAE: int(49 * 0.5) kept
    for sample in range(5):
        assert sorted(keep[sample].tolist() + dropped[sample].tolist()) == list(range(49))
    assert not torch.equal(keep[0], keep[1])  # each sample its own draw
    assert random_token_split(5, 49, 0.0) is None


def test_ratio_zero_is_the_plain_objective_exactly(tiny_dit):
    model = tiny_dit(decoder_depth=1)
    scheduler = DiTDDPMScheduler(variance_type="learned_range")
    x0, t, y = inputs()
    noise = torch.randn_like(x0)
    plain = scheduler.training_loss(model(scheduler.add_noise(x0, noise, t), t, y).sample, x0, noise, t)
    masked = masked_diffusion_loss(model, scheduler, x0, noise, t, y, mask_ratio=0.0)
    assert torch.equal(masked.loss, plain.loss) and masked.mae is None


def test_the_masked_loss_is_the_diffusion_loss_on_visible_pixels_plus_the_mae_term(tiny_dit):
    """Recomputed here pixel by pixel: the hybrid loss's terms averaged over the visible patches' pixels, and the
    reconstruction of the per-patch normalised x_t at the dropped patches."""
    model = tiny_dit(decoder_depth=1)
    scheduler = DiTDDPMScheduler(variance_type="learned_range")
    x0, _, y = inputs()
    t = torch.tensor([0, 500, 900])  # t = 0: the decoder NLL, the VLB's other branch
    noise = torch.randn_like(x0)
    losses = masked_diffusion_loss(model, scheduler, x0, noise, t, y, 0.5, generator=torch.Generator().manual_seed(3))
    keep, dropped = random_token_split(3, 16, 0.5, generator=torch.Generator().manual_seed(3))
    x_t = scheduler.add_noise(x0, noise, t)
    output = model(x_t, t, y, keep_indices=keep).sample
    full = scheduler.training_loss(output, x0, noise, t)  # per-pixel terms are elementwise: recompute, then select
    for sample in range(3):
        visible = torch.zeros(8, 8, dtype=torch.bool)
        for token in keep[sample].tolist():
            row, column = divmod(token, 4)
            visible[2 * row : 2 * row + 2, 2 * column : 2 * column + 2] = True
        mse = ((output[sample, :4] - noise[sample]) ** 2)[:, visible].mean()
        torch.testing.assert_close(losses.mse[sample], mse)
        vlb = []  # each visible patch as an image of its own: the VLB's mean over the visible pixels
        for token in keep[sample].tolist():
            row, column = divmod(token, 4)
            rows, columns = slice(2 * row, 2 * row + 2), slice(2 * column, 2 * column + 2)
            patch = [z[sample : sample + 1, :, rows, columns] for z in (output, x0, noise)]
            vlb.append(scheduler.training_loss(*patch, t[sample : sample + 1]).vlb)
        torch.testing.assert_close(losses.vlb[sample], torch.cat(vlb).mean())
        errors = []
        for token in dropped[sample].tolist():
            row, column = divmod(token, 4)
            patch = x_t[sample, :, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2]
            target = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
            errors.append(
                ((output[sample, :4, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2] - target) ** 2).mean()
            )
        torch.testing.assert_close(losses.mae[sample], torch.stack(errors).mean())
    torch.testing.assert_close(losses.loss, losses.mse + losses.vlb + MAE_WEIGHT * losses.mae)  # λ T = 1: DiT's
    assert not torch.allclose(losses.vlb, full.vlb)  # the VLB of the visible patches, not of the image


def test_masked_steps_lower_the_loss(tiny_dit):
    model = tiny_dit(in_channels=1, decoder_depth=1, random=False)
    scheduler = DiTDDPMScheduler()
    x0 = torch.zeros(8, 1, 8, 8)
    x0[:4, :, :4] = 1.0
    x0[4:, :, 4:] = 1.0
    labels, generator = torch.tensor([0] * 4 + [1] * 4), torch.Generator().manual_seed(0)
    noise, t = torch.randn(x0.shape, generator=generator), torch.randint(0, 1000, (8,), generator=generator)

    def loss():
        split = torch.Generator().manual_seed(1)  # the same tokens each step
        return masked_diffusion_loss(model, scheduler, x0, noise, t, labels, 0.5, generator=split).loss.mean()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.8 * first
    before, after = hybrid_losses(model)  # the unmasked objective still trains the same model
    assert after < before


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_a_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
        visible_tokens(16, ratio)


def test_a_ratio_that_leaves_no_visible_token_is_refused(tiny_dit):
    with pytest.raises(ValueError, match="leaves no visible token"):
        visible_tokens(1, 0.5)
    with pytest.raises(ValueError, match="needs a model with a decoder"):
        model = tiny_dit()
        model(*inputs(), keep_indices=torch.zeros(3, 1, dtype=torch.long))


def test_train_dit_trains_masked_then_unmasked_and_saves_the_decoder(bars, tmp_path, capsys):  # noqa: F811
    options = "--max_train_steps 4 --mask_ratio 0.5 --unmask_finetune_steps 2 --checkpointing_steps 4"
    out = main(parse_args(tiny_args(bars, tmp_path / "masked", *options.split())))
    pipe = DiffusionPipeline.from_pretrained(out)
    model = pipe.transformer
    # MaskDiT's proportions by default: a quarter of the depth (at least 1), half the width
    assert (model.config.decoder_depth, model.config.decoder_hidden_size) == (1, 16)
    assert "Gflops per image" in capsys.readouterr().out
    card = model_card(out, "tester/masked").content  # the decoder is part of the model the card describes
    assert "| decoder_depth | 1 |" in card and "| decoder_hidden_size | 16 |" in card
    images = pipe(["h", "v"], output_type="np", generator=torch.manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1)


def test_conversions_refuse_a_model_with_a_decoder(tiny_dit):
    """The original DiT, diffusers' DiTTransformer2DModel and the video DiT have no place for the decoder."""
    model = tiny_dit(decoder_depth=1)
    with pytest.raises(ValueError, match="original DiT has no MaskDiT decoder"):
        dit_to_original_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="DiTTransformer2DModel has no MaskDiT decoder"):
        dit_to_diffusers(model)
    with pytest.raises(ValueError, match="video DiT has no MaskDiT decoder"):
        VideoDiTModel.from_image_dit(model, sample_frames=2)


def test_a_masked_run_masks_every_step_until_its_unmasked_fine_tuning(bars, tmp_path, monkeypatch):  # noqa: F811
    ratios = []

    def recording(*args, **kwargs):  # train_dit's loss: (model, scheduler, x0, noise, t, labels, ratio, ...)
        ratios.append(args[6])
        return masked_diffusion_loss(*args, **kwargs)

    monkeypatch.setattr(train_dit, "masked_diffusion_loss", recording)
    out = tmp_path / "switch"
    options = "--max_train_steps 4 --mask_ratio 0.5 --unmask_finetune_steps 2 --checkpointing_steps 3".split()
    main(parse_args(tiny_args(bars, out, *options)))
    assert ratios == [0.5, 0.5, 0.0, 0.0]
    ratios.clear()  # resumed after the switch: the step, not the count of steps this process ran, decides
    main(parse_args(tiny_args(bars, out, *options, "--resume_from_checkpoint", str(out / "checkpoint-3"))))
    assert ratios == [0.0]
    ratios.clear()  # an epoch-long run without fine-tuning masks every step
    main(parse_args(tiny_args(bars, tmp_path / "epoch", "--mask_ratio", "0.5")))
    assert len(ratios) > 1 and set(ratios) == {0.5}


def test_two_process_masked_run_passes_the_unmasked_steps(bars, tmp_path):  # noqa: F811
    """Under DDP the mask token gets no gradient in the unmasked fine-tuning steps; the run must not stop there."""
    options = "--max_train_steps 4 --mask_ratio 0.5 --unmask_finetune_steps 2 --checkpointing_steps 4".split()
    log = finish(launch(SCRIPT, tiny_args(bars, tmp_path / "ddp", *options)), timeout=300)
    assert log.count("Saved the pipeline") == 1
    assert DiffusionPipeline.from_pretrained(tmp_path / "ddp").transformer.config.decoder_depth == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ("--mask_ratio 1.0", r"must be in \[0, 1\)"),
        ("--mask_ratio 0.5 --architecture unet", "U-Net baseline has none"),
        ("--mask_ratio 0.8 --patch_size 8", "leaves no visible token"),  # 8x8 images: one token
        ("--mask_ratio 0.5 --patch_size 1", "have a single value"),  # 1 channel, 1x1 patches: MAE cannot normalise
        ("--unmask_finetune_steps 2", "ends a masked run"),
        ("--mask_ratio 0.5 --unmask_finetune_steps 9 --max_train_steps 4", "at most that many"),
    ],
)
def test_train_dit_refuses_masked_runs_that_cannot_work(bars, tmp_path, options, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        main(parse_args(tiny_args(bars, tmp_path / "bad", *options.split())))
