"""Oracle tests: every KL of bayescomp.kl against an independent estimate, in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import Gamma, InverseGamma, LogNormal

from bayescomp import kl

T = torch.float64
CASES = [(0.3, 0.5), (-2.0, 0.1), (1.0, 2.0), (-11.0, 0.3)]  # (mu, sigma^2) of the log-normal


def _mc(q, p, n=400_000):
    torch.manual_seed(0)
    x = q.sample((n,))
    return float((q.log_prob(x) - p.log_prob(x)).mean())


def _quad(logq, logp, lo, hi):
    """KL by quadrature in log-space u = log x (the log-normal's natural variable)."""
    f = lambda u: math.exp(logq(u)) * (logq(u) - logp(u))  # noqa: E731  densities of u
    return integrate.quad(f, lo, hi, limit=400)[0]


@pytest.mark.parametrize("mu, var", CASES)
@pytest.mark.parametrize("shape, scale", [(0.5, 1.0), (0.5, 3.0), (2.0, 0.7), (0.5, 1e-4)])
def test_lognormal_gamma_matches_quadrature(mu, var, shape, scale):
    sd = math.sqrt(var)
    logq = lambda u: stats.norm.logpdf(u, mu, sd)  # noqa: E731
    logp = lambda u: stats.gamma.logpdf(math.exp(u), shape, scale=scale) + u  # noqa: E731  (Jacobian)
    want = _quad(logq, logp, mu - 12 * sd, mu + 12 * sd)
    got = kl.kl_lognormal_gamma(torch.tensor(mu, dtype=T), torch.tensor(math.log(var), dtype=T), shape, scale)
    assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("mu, var", CASES)
@pytest.mark.parametrize("shape, scale", [(0.5, 1.0), (0.5, 2.0), (1.5, 0.3)])
def test_lognormal_invgamma_matches_quadrature(mu, var, shape, scale):
    sd = math.sqrt(var)
    logq = lambda u: stats.norm.logpdf(u, mu, sd)  # noqa: E731
    logp = lambda u: stats.invgamma.logpdf(math.exp(u), shape, scale=scale) + u  # noqa: E731
    want = _quad(logq, logp, mu - 12 * sd, mu + 12 * sd)
    got = kl.kl_lognormal_invgamma(torch.tensor(mu, dtype=T), torch.tensor(math.log(var), dtype=T), shape, scale)
    assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_lognormal_kls_match_torch_monte_carlo():
    mu, var = torch.tensor(0.3, dtype=T), torch.tensor(0.5, dtype=T)
    q = LogNormal(mu, var.sqrt())
    got_g = float(kl.kl_lognormal_gamma(mu, var.log(), 0.5, 2.0))
    got_ig = float(kl.kl_lognormal_invgamma(mu, var.log(), 0.5, 1.0))
    # torch's Gamma takes a *rate*: shape-scale Gamma(½, θ=2) is Gamma(0.5, rate=0.5)
    assert got_g == pytest.approx(_mc(q, Gamma(torch.tensor(0.5, dtype=T), torch.tensor(0.5, dtype=T))), abs=0.01)
    assert got_ig == pytest.approx(_mc(q, InverseGamma(torch.tensor(0.5, dtype=T), torch.tensor(1.0, dtype=T))),
                                   abs=0.01)


def test_kls_sum_over_elements():
    mu = torch.tensor([0.1, -1.0], dtype=T)
    lv = torch.tensor([-1.0, 0.5], dtype=T)
    assert float(kl.kl_lognormal_gamma(mu, lv, 0.5, 1.0)) == pytest.approx(
        sum(float(kl.kl_lognormal_gamma(mu[i], lv[i], 0.5, 1.0)) for i in range(2)))


@pytest.mark.parametrize("mu, logvar", [(0.0, 0.0), (0.5, -2.0), (-1.2, 1.0)])
def test_gaussian_kl_matches_torch(mu, logvar):
    q = torch.distributions.Normal(torch.tensor(mu, dtype=T), torch.tensor(math.exp(logvar / 2), dtype=T))
    p = torch.distributions.Normal(torch.tensor(0.0, dtype=T), torch.tensor(1.0, dtype=T))
    want = float(torch.distributions.kl_divergence(q, p))
    assert float(kl.kl_gaussian_std_normal(torch.tensor(mu, dtype=T), torch.tensor(logvar, dtype=T))) == pytest.approx(want)


@pytest.mark.parametrize("log_alpha", [-4.0, -2.0, 0.0, 1.0, 3.0])
def test_normal_jeffreys_approximation_matches_numerical_integral(log_alpha):
    # -KL(N(θ, αθ²) || log-uniform) = ½ log α − E_{ε~N(1,α)} log|ε| + C  [MAV17] Eq. 13-14; C such that
    # -KL -> 0 as α -> ∞, i.e. C = E_{N(0,1)} log|ε| = −(γ + log 2)/2.
    alpha = math.exp(log_alpha)
    sd = math.sqrt(alpha)
    e_log = integrate.quad(lambda e: stats.norm.pdf(e, 1.0, sd) * math.log(abs(e)), -np.inf, 0, limit=400)[0] \
        + integrate.quad(lambda e: stats.norm.pdf(e, 1.0, sd) * math.log(abs(e)), 0, np.inf, limit=400)[0]
    c = -(np.euler_gamma + math.log(2)) / 2
    exact_kl = -(0.5 * log_alpha - e_log + c)
    got = float(kl.kl_normal_jeffreys(torch.tensor(log_alpha, dtype=T)))
    assert got == pytest.approx(exact_kl, abs=0.01)  # [MAV17]: the approximation's error is below 0.01


def test_appendix_form_is_the_exact_kl_to_scale_tau0_shifted():
    # HORSESHOE.md §3: the transcribed eq. 34 = exact KL to Gamma(½, scale τ0) − 1.5 log τ0
    tau0 = 1e-5
    for mu, var in CASES:
        m, lv = torch.tensor(mu, dtype=T), torch.tensor(math.log(var), dtype=T)
        diff = float(kl.kl_lognormal_gamma_appendix(m, lv, tau0) - kl.kl_lognormal_gamma(m, lv, 0.5, tau0))
        assert diff == pytest.approx(-1.5 * math.log(tau0))


def test_gaussian_kl_gradient_is_analytic_and_survives_a_second_backward():
    mu = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    out = kl.kl_gaussian_std_normal(mu, logvar)
    for _ in range(2):  # retain_graph: the second backward gives the same gradient again
        mu.grad = logvar.grad = None
        (3.0 * out).backward(retain_graph=True)
        torch.testing.assert_close(mu.grad, 3.0 * mu.detach())
        torch.testing.assert_close(logvar.grad, 1.5 * (logvar.detach().exp() - 1))


# The plain autograd expressions the fused KL functions replace (their float32 bits are the recorded runs').
def _plain_lognormal_gamma(mu, logvar, shape, scale):
    return (shape * math.log(scale) + math.lgamma(shape) - shape * mu
            + torch.exp(mu + 0.5 * logvar.exp()) / scale - 0.5 * logvar - kl._HALF_LOG_2PI_E).sum()


def _plain_lognormal_invgamma(mu, logvar, shape, scale):
    return (-shape * math.log(scale) + math.lgamma(shape) + shape * mu
            + scale * torch.exp(0.5 * logvar.exp() - mu) - 0.5 * logvar - kl._HALF_LOG_2PI_E).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (5,), (300,)])
@pytest.mark.parametrize("fused, plain, args", [
    (kl.kl_lognormal_gamma, _plain_lognormal_gamma, (0.5, 1e-10)),
    (kl.kl_lognormal_gamma, _plain_lognormal_gamma, (1.5, 2.0)),
    (kl.kl_lognormal_invgamma, _plain_lognormal_invgamma, (0.5, 1.0)),
    (kl.kl_lognormal_invgamma, _plain_lognormal_invgamma, (1.5, 0.3)),
], ids=["gamma-tau0", "gamma", "invgamma", "invgamma-other"])
def test_fused_kls_equal_the_plain_expressions_and_their_gradients(fused, plain, args, shape, dtype):
    """To the last bit in float32 (the same operations in the same order), so that seeded runs are
    unchanged; close in float64."""
    g = torch.Generator().manual_seed(len(shape))
    mu0 = torch.randn(shape, generator=g, dtype=dtype) * 3
    lv0 = torch.randn(shape, generator=g, dtype=dtype) * 3 - 4
    upstream = torch.tensor(1 / 60000, dtype=dtype)  # the trainer's 1/N, not a power of two
    got, want = [], []
    for f, out in ((fused, got), (plain, want)):
        mu, lv = mu0.clone().requires_grad_(), lv0.clone().requires_grad_()
        value = f(mu, lv, *args)
        (value * upstream).backward()
        out += [value.detach(), mu.grad, lv.grad]
    for a, b in zip(got, want):
        if dtype == torch.float32:
            assert torch.equal(a, b), f"max difference {(a - b).abs().max().item():.3g}"
        else:
            torch.testing.assert_close(a, b)
