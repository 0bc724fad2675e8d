import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from dit_pipelines import DiTDDPMScheduler
from dit_pipelines.schedulers.losses import discretized_gaussian_log_likelihood, normal_kl


def test_normal_kl_matches_the_closed_form_in_float64():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    s1, s2 = np.exp(0.5 * lv1.numpy()), np.exp(0.5 * lv2.numpy())
    # KL(N1 || N2) = log(s2 / s1) + (s1² + (m1 - m2)²) / (2 s2²) - 1/2
    expected = np.log(s2 / s1) + (s1**2 + (m1.numpy() - m2.numpy()) ** 2) / (2 * s2**2) - 0.5
    np.testing.assert_allclose(normal_kl(m1, lv1, m2, lv2).numpy(), expected, rtol=1e-12)
    assert torch.all(normal_kl(m1.float(), lv1.float(), m2.float(), lv2.float()) >= 0)
    torch.testing.assert_close(normal_kl(m1, lv1, m1, lv1), torch.zeros(50, dtype=torch.float64))


def test_discretized_gaussian_likelihood_is_the_mass_of_the_pixel_bin():
    x = torch.tensor([-1.0, -1.0 + 2 / 255, -0.3, 0.0, 0.5, 1.0 - 2 / 255, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, -0.95, -0.25, 0.1, 0.45, 0.9, 0.7], dtype=torch.float64)
    log_scale = torch.log(torch.tensor([0.1, 0.05, 0.2, 0.02, 0.3, 0.1, 0.4], dtype=torch.float64))
    got = discretized_gaussian_log_likelihood(x, mean, log_scale).numpy()
    for i in range(len(x)):
        dist = NormalDist(float(mean[i]), float(log_scale[i].exp()))
        lo, hi = float(x[i]) - 1 / 255, float(x[i]) + 1 / 255
        mass = dist.cdf(hi) if x[i] < -0.999 else 1 - dist.cdf(lo) if x[i] > 0.999 else dist.cdf(hi) - dist.cdf(lo)
        assert got[i] == pytest.approx(math.log(mass), rel=1e-9), i
    # the 256 bins of a distribution sum to one
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    total = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, 0.2), torch.full_like(levels, -1.0))
    assert total.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def reference_vlb(betas, x0, x_t, eps_pred, v, t):
    """L_t in bits/dim from the betas alone, float64 numpy (DDPM eqs. 5-7, 13, 15; Improved DDPM eq. 15)."""
    a_bar = np.cumprod(1 - betas)
    a_prev = np.concatenate([[1.0], a_bar[:-1]])
    beta_tilde = betas * (1 - a_prev) / (1 - a_bar)
    log_beta_tilde = np.log(np.concatenate([[beta_tilde[1]], beta_tilde[1:]]))

    def posterior_mean(x_start):
        return (np.sqrt(a_prev[t]) * betas[t] * x_start + np.sqrt(1 - betas[t]) * (1 - a_prev[t]) * x_t) / (
            1 - a_bar[t]
        )

    pred_x0 = (x_t - np.sqrt(1 - a_bar[t]) * eps_pred) / np.sqrt(a_bar[t])
    model_mean = posterior_mean(pred_x0)
    frac = (v + 1) / 2
    log_var = frac * np.log(betas[t]) + (1 - frac) * log_beta_tilde[t]
    if t == 0:
        nll = []
        for xi, mi, lv in zip(x0.ravel(), model_mean.ravel(), log_var.ravel()):
            d = NormalDist(mi, math.exp(0.5 * lv))
            mass = (
                d.cdf(xi + 1 / 255)
                if xi < -0.999
                else 1 - d.cdf(xi - 1 / 255)
                if xi > 0.999
                else d.cdf(xi + 1 / 255) - d.cdf(xi - 1 / 255)
            )
            nll.append(-math.log(mass))
        return np.mean(nll) / math.log(2)
    true_mean, true_log_var = posterior_mean(x0), log_beta_tilde[t]
    s1, s2 = np.exp(0.5 * true_log_var), np.exp(0.5 * log_var)
    kl = np.log(s2 / s1) + (s1**2 + (true_mean - model_mean) ** 2) / (2 * s2**2) - 0.5
    return kl.mean() / math.log(2)


@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_hybrid_loss_matches_a_float64_recomputation(t):
    scheduler = DiTDDPMScheduler()  # learned_range, epsilon, linear betas, T = 1000
    g = torch.Generator().manual_seed(t)
    x0 = torch.randint(0, 256, (1, 2, 3, 3), generator=g).double() / 127.5 - 1
    noise = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    eps_pred = noise + 0.1 * torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    v = torch.rand(1, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    timesteps = torch.tensor([t])
    losses = scheduler.training_loss(torch.cat([eps_pred, v], 1), x0, noise, timesteps)
    x_t = scheduler.add_noise(x0, noise, timesteps)
    betas = scheduler.train_diffusion.betas.numpy()
    expected_vlb = reference_vlb(betas, x0.numpy(), x_t.numpy(), eps_pred.numpy(), v.numpy(), t)
    assert losses.vlb.item() == pytest.approx(expected_vlb, rel=1e-7)
    expected_mse = ((eps_pred - noise) ** 2).mean().item()
    assert losses.mse.item() == pytest.approx(expected_mse, rel=1e-12)
    # lambda = 0.001 and T = 1000: L_simple + L_t, DiT's weighting
    assert losses.loss.item() == pytest.approx(expected_mse + expected_vlb, rel=1e-7)


def test_vlb_of_a_mixed_batch_equals_each_sample_alone():
    """L_0 (the decoder NLL) is computed only for the samples at t = 0; each row must still be its own L_t, and the
    variance of a t = 0 row must get the decoder's gradient."""
    scheduler = DiTDDPMScheduler()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 256, (5, 2, 3, 3), generator=g).double() / 127.5 - 1
    noise = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    out = torch.cat([noise + 0.1 * torch.randn_like(noise), torch.rand_like(noise) * 2 - 1], 1).requires_grad_()
    timesteps = torch.tensor([0, 5, 0, 999, 1])
    batch = scheduler.training_loss(out, x0, noise, timesteps).vlb
    alone = [
        scheduler.training_loss(out[i : i + 1], x0[i : i + 1], noise[i : i + 1], timesteps[i : i + 1]).vlb
        for i in range(5)
    ]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-12, atol=0)
    (gradient,) = torch.autograd.grad(batch[0] + batch[2], out)
    assert gradient[[0, 2], 2:].abs().sum() > 0 and gradient[[1, 3, 4]].abs().sum() == 0


def test_vlb_trains_the_variance_but_not_the_mean():
    scheduler = DiTDDPMScheduler()
    x0, noise = torch.rand(4, 3, 4, 4) * 2 - 1, torch.randn(4, 3, 4, 4)
    prediction = torch.randn(4, 3, 4, 4, requires_grad=True)
    variance = torch.zeros(4, 3, 4, 4, requires_grad=True)
    losses = scheduler.training_loss(torch.cat([prediction, variance], 1), x0, noise, torch.tensor([3, 100, 400, 900]))
    (vlb_grad_prediction,) = torch.autograd.grad(losses.vlb.sum(), prediction, retain_graph=True, allow_unused=True)
    assert vlb_grad_prediction is None or torch.count_nonzero(vlb_grad_prediction) == 0
    assert torch.autograd.grad(losses.vlb.sum(), variance, retain_graph=True)[0].abs().sum() > 0
    (mse_grad,) = torch.autograd.grad(losses.loss.sum(), prediction)
    torch.testing.assert_close(mse_grad, 2 * (prediction - noise).detach() / prediction[0].numel())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_simple_loss_targets_and_fixed_variance(prediction_type):
    scheduler = DiTDDPMScheduler(variance_type="fixed_small", prediction_type=prediction_type)
    x0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 700])
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[prediction_type]
    losses = scheduler.training_loss(target, x0, noise, t)
    assert losses.vlb is None
    torch.testing.assert_close(losses.loss, torch.zeros(2))
    losses = scheduler.training_loss(target + 1.0, x0, noise, t)
    torch.testing.assert_close(losses.loss, torch.ones(2))


def test_vlb_weight_scales_with_the_number_of_training_steps():
    x0, noise, t = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4), torch.tensor([5, 50])
    out = torch.cat([noise * 0.9, torch.zeros_like(noise)], 1)
    losses = DiTDDPMScheduler(num_train_timesteps=100).training_loss(out, x0, noise, t, vlb_weight=0.01)
    torch.testing.assert_close(losses.loss, losses.mse + 0.01 * 100 * losses.vlb)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hybrid_loss_in_half_precision(dtype):
    scheduler = DiTDDPMScheduler()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(3, 2, 4, 4, generator=g) * 2 - 1, torch.randn(3, 2, 4, 4, generator=g)
    out = torch.cat([noise + 0.1 * torch.randn(3, 2, 4, 4, generator=g), torch.zeros(3, 2, 4, 4)], 1)
    t = torch.tensor([0, 20, 600])
    full = scheduler.training_loss(out, x0, noise, t)
    half = scheduler.training_loss(out.to(dtype), x0.to(dtype), noise.to(dtype), t)
    assert half.loss.dtype == dtype and torch.isfinite(half.loss).all()
    torch.testing.assert_close(half.loss.float(), full.loss, rtol=0.05, atol=0.05)
