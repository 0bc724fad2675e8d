import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dit_pipelines import DiTDDIMScheduler, DiTDDPMScheduler
from dit_pipelines.schedulers import GaussianDiffusion, make_betas, timesteps_from_respacing


def run_side_by_side(ours, theirs, num_steps, output_channels, seed=0, **step_kwargs):
    """Sample with both schedulers from the same x_T, model outputs and noise; return the largest relative gap
    (relative to 1 + |x|) over all steps."""
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 6, generator=g)
    gen_ours, gen_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    worst = 0.0
    for t in ours.timesteps:
        model_output = torch.randn(2, output_channels, 6, 6, generator=g).clamp(-1, 1)
        a = ours.step(model_output, t, x, generator=gen_ours, **step_kwargs).prev_sample
        b = theirs.step(model_output, t, x.clone(), generator=gen_theirs, **step_kwargs).prev_sample
        worst = max(worst, ((a - b).abs() / (1 + b.abs())).max().item())
        x = a
    return worst


# diffusers keeps its constants in float32, we in float64: they differ by up to ~1e-5 relative.
PARITY = 5e-5


def test_ddpm_fixed_small_matches_diffusers():
    ours = DiTDDPMScheduler(variance_type="fixed_small", timestep_spacing="leading")
    theirs = DDPMScheduler(variance_type="fixed_small", clip_sample=False, timestep_spacing="leading")
    assert run_side_by_side(ours, theirs, 50, output_channels=4) < PARITY


def test_ddpm_learned_range_matches_diffusers_on_dits_250_steps():
    ours = DiTDDPMScheduler(variance_type="learned_range")
    theirs = DDPMScheduler(variance_type="learned_range", clip_sample=False, timestep_spacing="linspace")
    assert run_side_by_side(ours, theirs, 250, output_channels=8) < PARITY


def test_ddpm_with_clipping_and_full_chain_matches_diffusers():
    ours = DiTDDPMScheduler(variance_type="fixed_small", clip_sample=True)
    theirs = DDPMScheduler(variance_type="fixed_small", clip_sample=True)
    assert run_side_by_side(ours, theirs, 1000, output_channels=4) < PARITY


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta):
    ours = DiTDDIMScheduler(timestep_spacing="leading")
    theirs = DDIMScheduler(clip_sample=False, timestep_spacing="leading", set_alpha_to_one=True)
    assert run_side_by_side(ours, theirs, 50, output_channels=4, eta=eta) < PARITY


def test_ddim_takes_learned_variance_outputs_and_ignores_the_variance():
    scheduler = DiTDDIMScheduler()
    scheduler.set_timesteps(10)
    x, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = scheduler.timesteps[3]
    with_variance = scheduler.step(torch.cat([eps, torch.rand(1, 4, 4, 4)], 1), t, x).prev_sample
    torch.testing.assert_close(with_variance, scheduler.step(eps, t, x).prev_sample)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_beta_schedules_are_float64_and_match_diffusers(schedule):
    betas = make_betas(
        schedule,
        1000,
        0.00085 if schedule == "scaled_linear" else 0.0001,
        0.012 if schedule == "scaled_linear" else 0.02,
    )
    assert betas.dtype == torch.float64
    theirs = DDPMScheduler(
        beta_schedule=schedule,
        beta_start=0.00085 if schedule == "scaled_linear" else 0.0001,
        beta_end=0.012 if schedule == "scaled_linear" else 0.02,
    ).betas
    torch.testing.assert_close(betas.float(), theirs, rtol=1e-5, atol=1e-7)


def test_dit_250_step_respacing_is_reproduced():
    kept = timesteps_from_respacing(1000, "250")
    # Improved DDPM: one section of 1000 steps, stride (1000 - 1) / (250 - 1), rounded; ends at 999.
    assert kept == [round(i * 999 / 249) for i in range(250)]
    assert kept[0] == 0 and kept[-1] == 999 and len(kept) == 250
    scheduler = DiTDDPMScheduler(timestep_respacing="250")
    scheduler.set_timesteps()
    assert scheduler.timesteps.tolist() == kept[::-1]
    scheduler.set_timesteps(250)  # the "linspace" spacing of diffusers is the same chain
    assert scheduler.timesteps.tolist() == kept[::-1]


@pytest.mark.parametrize("n", [10, 25, 50, 100, 250, 999])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_set_timesteps_spacings_match_diffusers(n, spacing):
    ours, theirs = DiTDDPMScheduler(timestep_spacing=spacing), DDPMScheduler(timestep_spacing=spacing)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


def test_section_and_ddim_respacing_specs():
    kept = timesteps_from_respacing(1000, "10,15,20")
    assert len(kept) == 45
    assert sum(t < 334 for t in kept) == 10 and sum(334 <= t < 667 for t in kept) == 15
    assert timesteps_from_respacing(1000, "ddim50") == list(range(0, 1000, 20))


def test_respacing_recomputes_the_betas_of_the_kept_steps():
    scheduler = DiTDDPMScheduler(timestep_respacing="ddim10")
    scheduler.set_timesteps()
    chain, full = scheduler.diffusion, scheduler.train_diffusion
    kept = chain.timesteps
    # The respaced chain has the same noise levels alpha_bar at the kept steps ...
    torch.testing.assert_close(chain.alphas_cumprod, full.alphas_cumprod[kept])
    # ... with beta'_i = 1 - alpha_bar(s_i) / alpha_bar(s_{i-1}), much larger than the original betas.
    alpha_bar = full.alphas_cumprod[kept].numpy()
    expected = 1 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]])
    np.testing.assert_allclose(chain.betas.numpy(), expected, rtol=1e-12)
    assert torch.all(chain.betas[1:] > 10 * full.betas[kept[1:]])


def test_learned_range_interpolates_between_the_two_fixed_variances():
    diffusion = GaussianDiffusion(make_betas("linear", 1000))
    x = torch.zeros(1, 1)
    t = torch.tensor([500])
    small = diffusion.p_log_variance("fixed_small", t, x)
    large = diffusion.p_log_variance("fixed_large", t, x)
    torch.testing.assert_close(diffusion.p_log_variance("learned_range", t, x, -torch.ones(1, 1)), small)
    torch.testing.assert_close(diffusion.p_log_variance("learned_range", t, x, torch.ones(1, 1)), large)
    middle = diffusion.p_log_variance("learned_range", t, x, torch.zeros(1, 1))
    torch.testing.assert_close(middle, (small + large) / 2)
    torch.testing.assert_close(diffusion.p_log_variance("learned", t, x, middle), middle)


def test_add_noise_and_velocity_match_diffusers():
    ours, theirs = DiTDDPMScheduler(), DDPMScheduler()
    x, noise, t = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t), rtol=1e-5, atol=1e-5)
    ours.set_timesteps(10)  # respacing the sampling chain does not change the forward process
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("scheduler_class", [DiTDDPMScheduler, DiTDDIMScheduler])
def test_a_perfect_prediction_recovers_x0(prediction_type, scheduler_class):
    scheduler = scheduler_class(prediction_type=prediction_type, variance_type="fixed_small")
    scheduler.set_timesteps(20)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = int(scheduler.timesteps[5])
    x_t = scheduler.add_noise(x0, noise, torch.tensor([t, t]))
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, torch.tensor([t, t])), "sample": x0}
    out = scheduler.step(target[prediction_type], t, x_t, generator=torch.manual_seed(0))
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-4, atol=1e-4)


def test_ddpm_step_is_the_posterior_with_the_learned_variance():
    scheduler = DiTDDPMScheduler(timestep_respacing="25")
    scheduler.set_timesteps()
    t = int(scheduler.timesteps[3])
    x_t, eps, v, z = (torch.randn(1, 2, 3, 3, dtype=torch.float64) for _ in range(4))
    out = scheduler.step(torch.cat([eps, v], 1), t, x_t, variance_noise=z)
    # float64 recomputation from the respaced chain's betas (DDPM eqs. 7 and 15, Improved DDPM eq. 15)
    chain = scheduler.diffusion
    i = scheduler.position(t)
    betas = chain.betas.numpy()
    a_bar = np.cumprod(1 - betas)
    a_bar_prev = a_bar[i - 1]
    x0 = (x_t.numpy() - np.sqrt(1 - a_bar[i]) * eps.numpy()) / np.sqrt(a_bar[i])
    mean = (np.sqrt(a_bar_prev) * betas[i] * x0 + np.sqrt(1 - betas[i]) * (1 - a_bar_prev) * x_t.numpy()) / (
        1 - a_bar[i]
    )
    beta_tilde = betas[i] * (1 - a_bar_prev) / (1 - a_bar[i])
    frac = (v.numpy() + 1) / 2
    log_var = frac * np.log(betas[i]) + (1 - frac) * np.log(beta_tilde)
    np.testing.assert_allclose(out.prev_sample.numpy(), mean + np.exp(0.5 * log_var) * z.numpy(), rtol=1e-10)


def test_last_step_adds_no_noise():
    scheduler = DiTDDPMScheduler(variance_type="fixed_large")
    scheduler.set_timesteps(5)
    x, eps = torch.randn(1, 1, 2, 2), torch.randn(1, 1, 2, 2)
    a = scheduler.step(eps, 0, x, generator=torch.manual_seed(0)).prev_sample
    b = scheduler.step(eps, 0, x, generator=torch.manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddpm_and_ddim_configs_convert_into_each_other(tmp_path):
    ddpm = DiTDDPMScheduler(
        beta_schedule="squaredcos_cap_v2", timestep_respacing="ddim25", prediction_type="v_prediction"
    )
    ddim = DiTDDIMScheduler.from_config(ddpm.config)
    assert dict(ddim.config) == dict(ddpm.config)
    ddim.save_pretrained(tmp_path)
    loaded = DiTDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.timestep_respacing == "ddim25" and loaded.config.prediction_type == "v_prediction"
    torch.testing.assert_close(loaded.train_diffusion.betas, ddpm.train_diffusion.betas, rtol=0, atol=0)


def test_custom_timesteps():
    scheduler = DiTDDPMScheduler()
    scheduler.set_timesteps(timesteps=[999, 600, 300, 0])
    assert scheduler.timesteps.tolist() == [999, 600, 300, 0]
    assert scheduler.previous_timestep(600) == 300 and scheduler.previous_timestep(0) == -1
    with pytest.raises(ValueError, match="not in the sampling chain"):
        scheduler.step(torch.zeros(1, 8, 2, 2), 500, torch.zeros(1, 4, 2, 2))


def test_scale_model_input_and_init_noise_sigma():
    scheduler = DiTDDIMScheduler()
    x = torch.randn(2, 3)
    assert scheduler.scale_model_input(x, 10) is x and scheduler.init_noise_sigma == 1.0


def test_diffusers_schedulers_made_from_our_config_keep_dits_settings():
    theirs = DDPMScheduler.from_config(DiTDDPMScheduler().config)
    assert theirs.config.variance_type == "learned_range" and theirs.config.clip_sample is False
    assert theirs.config.timestep_spacing == "linspace"


def test_schedule_constants_follow_the_sample_device():
    diffusion = GaussianDiffusion(make_betas("linear", 10))
    x = torch.empty(2, 3, device="meta")
    assert diffusion.q_sample(x, x, torch.tensor([1, 2])).device.type == "meta"
