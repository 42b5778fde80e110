"""The noise scheduler's steps against closed forms, and against diffusers' schedulers.

Closed forms: DDIM, Song et al. 2021 (arXiv:2010.02502) eq. 12; DDPM's posterior,
Ho et al. 2020 (arXiv:2006.11239) eqs. 6-7; the cosine schedule, Nichol & Dhariwal 2021
(arXiv:2102.09672) eq. 17. The oracle is diffusers' `DDIMScheduler` / `DDPMScheduler`
(https://github.com/huggingface/diffusers, src/diffusers/schedulers/).
"""

import math

import pytest
import torch

from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.backbone.preview import ddim_sample


def _cosine_abar(t: int) -> float:
    """Cumulative alpha of the cosine schedule (s = 0.008, betas clipped at 0.999) at step t."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return math.prod(1 - min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(t + 1))


def _abar(t: int) -> float:
    """abar_t as the scheduler stores it (float32, as checkpoints do); 1 at t = -1. The
    closed forms below take it from there, since near t = 0 the steps magnify float32's
    rounding of abar (1 - abar_t / abar_prev is 1e-5) far beyond any useful tolerance."""
    return 1.0 if t < 0 else float(NoiseScheduler().alphas_cumprod[t])


@pytest.mark.parametrize("t", [0, 1, 333, 666, 999])
def test_the_stored_schedule_is_the_cosine_schedule(t):
    assert _abar(t) == pytest.approx(_cosine_abar(t), rel=1e-7)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1, 3, 4, 4)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("t", [999, 666, 333, 0])
def test_ddim_step_is_the_closed_form(t):
    scheduler = NoiseScheduler()
    assert scheduler.set_timesteps(4).tolist() == [999, 666, 333, 0]
    x, eps, _ = _inputs()
    a, ap = _abar(t), _abar(scheduler.previous_timestep(t))
    x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    out = scheduler.step(eps, t, x)
    torch.testing.assert_close(out.pred_original_sample, x0)
    torch.testing.assert_close(out.prev_sample, math.sqrt(ap) * x0 + math.sqrt(1 - ap) * eps)


@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_is_the_posterior_mean_plus_its_deviation(t):
    scheduler = NoiseScheduler()
    scheduler.set_timesteps(1000)  # every timestep: prev = t - 1
    x, eps, z = _inputs(1)
    a, ap = _abar(t), _abar(t - 1)
    beta = 1 - a / ap
    x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
    mean = math.sqrt(ap) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - ap) / (1 - a) * x
    expected = mean + math.sqrt((1 - ap) / (1 - a) * beta) * z
    out = scheduler.step(eps, t, x, eta=1.0, use_clipped_model_output=True, variance_noise=z)
    torch.testing.assert_close(out.prev_sample, expected)


def test_add_noise_and_undo_step_are_the_forward_process():
    scheduler = NoiseScheduler()
    scheduler.set_timesteps(4)
    x0, noise, _ = _inputs(2)
    t = torch.tensor([666, 333])
    expected = torch.stack([math.sqrt(_abar(k)) * x0[i] + math.sqrt(1 - _abar(k)) * noise[i] for i, k in enumerate(t.tolist())])
    torch.testing.assert_close(scheduler.add_noise(x0, noise, t), expected)
    torch.testing.assert_close(scheduler.add_noise(x0.float(), noise.float(), t), expected.float())
    # from 333 back to 666: the clean part's coefficient becomes sqrt(abar_666)
    undone = scheduler.undo_step(math.sqrt(_abar(333)) * x0, 666, torch.zeros_like(x0))
    torch.testing.assert_close(undone, math.sqrt(_abar(666)) * x0)


def test_step_needs_noise_for_eta_and_a_set_timestep():
    scheduler = NoiseScheduler()
    scheduler.set_timesteps(4)
    x, eps, _ = _inputs()
    with pytest.raises(ValueError, match="variance_noise"):
        scheduler.step(eps, 999, x, eta=1.0)
    with pytest.raises(ValueError, match="not one of"):
        scheduler.step(eps, 500, x)


class _Zero(torch.nn.Module):
    """A model predicting no noise: DDIM then sends every voxel to the sign of its start."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_ddim_sampling_with_a_zero_model_ends_at_the_sign_of_its_start_noise():
    start = torch.randn((2, 1, 2, 3, 3), generator=torch.Generator().manual_seed(4))
    calls = []
    x = ddim_sample(_Zero(), NoiseScheduler(), (2, 1, 2, 3, 3), 5, torch.Generator().manual_seed(4), lambda: calls.append(1))
    torch.testing.assert_close(x, torch.sign(start))
    assert len(calls) == 5


ORACLE_TOL = 1e-4  # diffusers accumulates abar in float32, we in float64 (then store float32)


def _diffusers():
    return pytest.importorskip("diffusers", reason="diffusers (the `test` extra) is the oracle of these tests")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_match_diffusers(eta):
    oracle = _diffusers().DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                        set_alpha_to_one=True, prediction_type="epsilon")
    oracle.set_timesteps(3)  # leading spacing: 666, 333, 0, each stepping 333 down
    scheduler = NoiseScheduler()
    scheduler.set_timesteps(4)  # 999, 666, 333, 0
    x, eps, z = _inputs(3)
    for t in oracle.timesteps.tolist():
        ours = scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=bool(eta), variance_noise=z).prev_sample
        theirs = oracle.step(eps, t, x, eta=eta, use_clipped_model_output=bool(eta), variance_noise=z).prev_sample
        torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=ORACLE_TOL, atol=ORACLE_TOL)


@pytest.mark.parametrize("t", [999, 500, 1])
def test_ddpm_steps_match_diffusers(t):
    oracle = _diffusers().DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                        variance_type="fixed_small", prediction_type="epsilon")
    scheduler = NoiseScheduler()
    x, eps, _ = _inputs(4)
    theirs = oracle.step(eps, t, x, generator=torch.Generator().manual_seed(9)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)  # the oracle's draw
    ours = scheduler.step(eps, t, x, eta=1.0, use_clipped_model_output=True, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=ORACLE_TOL, atol=ORACLE_TOL)
    torch.testing.assert_close(scheduler.alphas_cumprod, oracle.alphas_cumprod, rtol=1e-5, atol=1e-6)
