"""Float64 math of Gaussian diffusion (Ho et al., 2020; Nichol & Dhariwal, 2021): beta schedules, respacing, and
the constants of q(x_t | x_0), q(x_{t-1} | x_t, x_0) and p(x_{t-1} | x_t) for one chain of timesteps."""

import math
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

Index = Union[int, torch.Tensor]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def make_betas(
    beta_schedule: str, num_train_timesteps: int, beta_start: float = 0.0001, beta_end: float = 0.02
) -> torch.Tensor:
    """The (T,) float64 betas of a named schedule.

    - "linear": DDPM's linspace(beta_start, beta_end) (DiT uses 1e-4 to 0.02 over 1000 steps);
    - "scaled_linear": linspace of sqrt(beta), squared (Stable Diffusion);
    - "squaredcos_cap_v2": the cosine schedule of Improved DDPM (eq. 17), alpha_bar(t) = cos²((t/T + s)/(1 + s) · π/2)
      with s = 0.008 and betas capped at 0.999.
    """
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"Unknown beta_schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}.")


def timesteps_from_respacing(num_timesteps: int, spec: str) -> List[int]:
    """The timesteps kept by an Improved-DDPM respacing `spec` (Nichol & Dhariwal, 2021, §4), sorted ascending.

    `spec` is "N" (N steps evenly spread over [0, T-1], first and last included: DiT's "250" ends at 999),
    "a,b,c" (the range split into equal sections, a/b/c steps evenly spread in each) or "ddimN" (a constant
    integer stride from 0, as in DDIM).

    >>> timesteps_from_respacing(1000, "250")[-3:]
    [991, 995, 999]
    >>> timesteps_from_respacing(100, "ddim5")
    [0, 20, 40, 60, 80]
    """
    spec = str(spec).strip()
    if spec.startswith("ddim"):
        count = _parse_count(spec[len("ddim") :], spec)
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == count:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"Respacing {spec!r}: no integer stride gives exactly {count} of {num_timesteps} steps.")
    counts = [_parse_count(part, spec) for part in spec.split(",")]
    size, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if count > section:
            raise ValueError(f"Respacing {spec!r}: cannot take {count} steps from a section of {section} steps.")
        stride = (section - 1) / (count - 1) if count > 1 else 1
        position = 0.0  # accumulated as in the reference code, so its rounding is reproduced exactly
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += section
    return sorted(set(kept))


def _parse_count(text: str, spec: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(
            f"Unknown respacing spec {spec!r}; use 'N' (e.g. '250'), comma-separated section counts "
            "(e.g. '10,15,20') or 'ddimN' (e.g. 'ddim50'), with positive integers."
        )
    return int(text)


def inference_timesteps(
    num_train_timesteps: int, num_inference_steps: int, timestep_spacing: str = "linspace", steps_offset: int = 0
) -> List[int]:
    """The timesteps `set_timesteps(num_inference_steps)` samples: `num_inference_steps` of `num_train_timesteps`
    chosen by diffusers' `timestep_spacing` (Lin et al., 2023, Table 2), sorted ascending. "linspace" is Improved
    DDPM's respacing `str(num_inference_steps)` up to how halves are rounded (the two agree for DiT's 250 steps)."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be between 1 and num_train_timesteps={num_train_timesteps}, "
            f"got {num_inference_steps}."
        )
    if timestep_spacing == "linspace":
        return [int(t) for t in np.linspace(0, num_train_timesteps - 1, num_inference_steps).round()]
    if timestep_spacing == "leading":
        ratio = num_train_timesteps // num_inference_steps
        return [i * ratio + steps_offset for i in range(num_inference_steps)]
    if timestep_spacing == "trailing":
        ratio = num_train_timesteps / num_inference_steps
        return sorted(int(t) - 1 for t in np.round(np.arange(num_train_timesteps, 0, -ratio)))
    raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}.")


class GaussianDiffusion:
    """The constants of one diffusion chain, in float64, indexed by position in the chain (0 = least noisy).

    A chain is either the training chain (every timestep 0..T-1) or a respaced one (`respaced`), whose betas are
    recomputed from the kept alpha_bar values so that it is itself a valid diffusion (Improved DDPM, §4).
    Index arguments are an int (one step for the whole batch) or a LongTensor of shape (N,).
    """

    def __init__(self, betas: torch.Tensor, timesteps: Optional[Sequence[int]] = None):
        betas = betas.to(torch.float64)
        self.timesteps = torch.as_tensor(timesteps if timesteps is not None else range(len(betas)), dtype=torch.long)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

        # q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)   (DDPM eq. 4)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_tilde_t I)   (DDPM eqs. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta_tilde_0 = 0: its log is clipped to the next value (Improved DDPM's convention).
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first.reshape(1), self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * (1.0 - betas).sqrt() / (1.0 - self.alphas_cumprod)
        )

        # Log-variances of the fixed choices of p(x_{t-1} | x_t) (DDPM §3.2): beta_tilde_t ("small") or beta_t
        # ("large", with beta_tilde_1 at t=0 as in Improved DDPM); learned_range interpolates between the two.
        self.log_betas = torch.log(betas)
        self.fixed_large_log_variance = torch.log(torch.cat([first.reshape(1), betas[1:]]))

    def __len__(self) -> int:
        return len(self.betas)

    def respaced(self, kept: Sequence[int]) -> "GaussianDiffusion":
        """The chain over positions `kept` of this one (for the training chain, the timesteps themselves), with
        betas beta'_i = 1 - alpha_bar(s_i) / alpha_bar(s_{i-1}) (Improved DDPM, §4)."""
        kept = torch.as_tensor(sorted(kept), dtype=torch.long)
        alphas_cumprod = self.alphas_cumprod[kept]
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        return GaussianDiffusion(1.0 - alphas_cumprod / previous, timesteps=self.timesteps[kept].tolist())

    # -- indexing -------------------------------------------------------------------------------------------------
    @staticmethod
    def at(table: torch.Tensor, index: Index, like: torch.Tensor):
        """`table[index]` ready to multiply `like` (N, ...): a Python float for an int index, else a tensor of
        shape (N, 1, ..., 1) in `like`'s dtype and device."""
        if isinstance(index, int):
            return float(table[index])
        device = like.device
        values = table.to(device, torch.float32 if device.type == "mps" else torch.float64)[index.to(device)]
        return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    # -- q: the forward process -----------------------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, noise: torch.Tensor, index: Index) -> torch.Tensor:
        """A sample of q(x_t | x_0) (DDPM eq. 4) with the given noise."""
        return (
            self.at(self.sqrt_alphas_cumprod, index, x_start) * x_start
            + self.at(self.sqrt_one_minus_alphas_cumprod, index, x_start) * noise
        )

    def velocity(self, x_start: torch.Tensor, noise: torch.Tensor, index: Index) -> torch.Tensor:
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho, 2022, §4)."""
        return (
            self.at(self.sqrt_alphas_cumprod, index, x_start) * noise
            - self.at(self.sqrt_one_minus_alphas_cumprod, index, x_start) * x_start
        )

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, index: Index):
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
        mean = (
            self.at(self.posterior_mean_coef1, index, x_t) * x_start
            + self.at(self.posterior_mean_coef2, index, x_t) * x_t
        )
        return mean, self.at(self.posterior_log_variance_clipped, index, x_t)

    # -- p: the model's reverse process ---------------------------------------------------------------------------
    def predict_start(self, prediction: torch.Tensor, x_t: torch.Tensor, index: Index, prediction_type: str):
        """x_0 implied by the model's `prediction` (noise eps, velocity v or x_0 itself) at x_t (DDPM eq. 15)."""
        a, s = self.at(self.sqrt_alphas_cumprod, index, x_t), self.at(self.sqrt_one_minus_alphas_cumprod, index, x_t)
        if prediction_type == "epsilon":
            return (x_t - s * prediction) / a
        if prediction_type == "v_prediction":
            return a * x_t - s * prediction
        if prediction_type == "sample":
            return prediction
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}.")

    def predict_noise(self, prediction: torch.Tensor, x_t: torch.Tensor, index: Index, prediction_type: str):
        """The noise eps implied by the model's `prediction` at x_t."""
        if prediction_type == "epsilon":
            return prediction
        a, s = self.at(self.sqrt_alphas_cumprod, index, x_t), self.at(self.sqrt_one_minus_alphas_cumprod, index, x_t)
        if prediction_type == "v_prediction":
            return s * x_t + a * prediction
        return self.noise_from_start(self.predict_start(prediction, x_t, index, prediction_type), x_t, index)

    def noise_from_start(self, x_start: torch.Tensor, x_t: torch.Tensor, index: Index) -> torch.Tensor:
        """eps = (x_t - sqrt(alpha_bar) x_0) / sqrt(1 - alpha_bar), inverting DDPM eq. 4."""
        a, s = self.at(self.sqrt_alphas_cumprod, index, x_t), self.at(self.sqrt_one_minus_alphas_cumprod, index, x_t)
        return (x_t - a * x_start) / s

    def p_log_variance(
        self, variance_type: str, index: Index, like: torch.Tensor, variance_values: Optional[torch.Tensor] = None
    ):
        """The log-variance of p(x_{t-1} | x_t), always a log-variance.

        - "fixed_small": log beta_tilde_t; "fixed_large": log beta_t;
        - "learned": the model outputs the log-variance itself;
        - "learned_range": the model outputs v in [-1, 1], interpolated in the log domain between the two
          (Improved DDPM eq. 15): log sigma² = ((v + 1)/2) log beta_t + (1 - (v + 1)/2) log beta_tilde_t.
        """
        if variance_type == "fixed_small":
            return self.at(self.posterior_log_variance_clipped, index, like)
        if variance_type == "fixed_large":
            return self.at(self.fixed_large_log_variance, index, like)
        if variance_type not in ("learned", "learned_range"):
            raise ValueError(f"Unknown variance_type {variance_type!r}; choose one of {', '.join(VARIANCE_TYPES)}.")
        if variance_values is None:
            raise ValueError(
                f"variance_type={variance_type!r} needs a model output with 2*C channels (prediction, then variance)."
            )
        if variance_type == "learned":
            return variance_values
        fraction = (variance_values + 1) / 2
        return fraction * self.at(self.log_betas, index, like) + (1 - fraction) * self.at(
            self.posterior_log_variance_clipped, index, like
        )
