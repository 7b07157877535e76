"""The conditional Lyapunov drift D(theta) = E_B[L(theta - eta g_B)] - L(theta) (science.md).

Monte Carlo over batches drawn from the sampler's distribution with a control variate
Y_b = -eta <grad L, g_b>, whose mean -eta ||grad L||^2 is known; batches are drawn
sequentially until the confidence interval excludes 0 or the budget is spent. When
the distinct batches are few (B = 1, or B = n without replacement) the expectation is
computed exactly by enumeration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import norm

from .objective import Objective
from .sampling import BatchSampler


@dataclass
class DriftEstimate:
    drift: float
    se: float
    samples: int
    stable_p: float
    exact: bool
    # Kept for the second-order prediction at the same step: the batch gradients used.
    batch_grads: torch.Tensor
    raw_variance: float  # variance of L(theta - eta g_b) - L(theta) across batches
    cv_variance: float  # variance after the control variate


def control_variate_mean(y: torch.Tensor, c: torch.Tensor, c_mean: float) -> tuple[float, float, float, float]:
    """Mean of Y with control C of known mean, its jackknife standard error, and both variances.

    The coefficient is the regression slope cov(Y, C) / var(C), estimated from the sample.
    The residual Y - beta C is skewed (it is the curvature term, mostly positive), so the
    plain residual standard error is too small at small K; the leave-one-out (jackknife)
    error re-estimates beta each time and is better calibrated.
    """
    k = y.numel()
    y64, c64 = y.double().cpu(), c.double().cpu()
    if k < 3:
        return float(y64.mean()), float("inf"), float("nan"), float("nan")
    y_bar, c_bar = y64.mean(), c64.mean()
    yc, cc = y64 - y_bar, c64 - c_bar  # centred: the regression is shift invariant
    shift = c_mean - float(c_bar)
    s_cc = float((cc * cc).sum())
    beta = float((yc * cc).sum()) / s_cc if s_cc > 0 else 0.0
    estimate = float(y_bar) - beta * (-shift)  # mean(Y) - beta (mean(C) - E[C])
    raw_var = float(yc.var(unbiased=True))
    cv_var = float((yc - beta * cc).var(unbiased=True))
    # Leave-one-out estimates from the sums, all at once.
    n1 = k - 1
    my, mc = -yc / n1, -cc / n1  # means without point i (of the centred values)
    sxy = (yc * cc).sum() - yc * cc - n1 * my * mc
    sxx = (cc * cc).sum() - cc * cc - n1 * mc * mc
    beta_i = torch.where(sxx > 0, sxy / sxx.clamp_min(1e-300), torch.zeros_like(sxx))
    loo = my - beta_i * (mc - shift)
    se = math.sqrt(n1 / k * float(((loo - loo.mean()) ** 2).sum()))
    return estimate, se, raw_var, cv_var


class DriftEstimator:
    def __init__(
        self,
        objective: Objective,
        sampler: BatchSampler,
        generator: torch.Generator,
        samples: int | str,
        max_samples: int,
        confidence: float,
    ) -> None:
        self.objective, self.sampler, self.generator = objective, sampler, generator
        self.confidence = confidence
        self.z = float(norm.ppf(0.5 + confidence / 2))  # two-sided interval
        count = sampler.distinct_count()
        # Enumerate when asked, or when it is no dearer than the sampling asked for.
        self.exact = samples == "exact" or (count is not None and isinstance(samples, int) and count <= samples)
        self.samples = int(samples) if isinstance(samples, int) else 0
        self.max_samples = max(max_samples, self.samples)
        self._all_batches = sampler.enumerate_all() if self.exact else None

    def _evaluate(
        self, theta: torch.Tensor, batches: torch.Tensor, grad_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = theta.device
        g = self.objective.batch_grads(batches.to(device))(theta)  # (K, P)
        lr = self.objective.lr
        # L(theta) is evaluated again in the same batched call as the K losses after a step: the
        # same kernels round the same way, so at tiny losses (1e-9 in float32) their difference
        # is the drift and not the rounding gap between two differently computed losses.
        losses = self.objective.eval_losses(torch.cat([theta.unsqueeze(0), theta.unsqueeze(0) - lr * g]))
        y = losses[1:].double() - losses[0].double()
        c = -lr * (g.double() @ grad_l.double())  # float64: the products underflow at tiny losses
        return y, c, g

    def __call__(self, theta: torch.Tensor, grad_l: torch.Tensor) -> DriftEstimate:
        """D(theta) given the full gradient grad_l at theta (the control variate's direction)."""
        lr = self.objective.lr
        grad64 = grad_l.double()  # like the control variate itself: no underflow at tiny losses
        c_mean = -lr * float(torch.dot(grad64, grad64))
        if self._all_batches is not None:
            y, c, g = self._evaluate(theta, self._all_batches, grad_l)
            if not bool(torch.isfinite(y).all()):
                return _overflowed(y, g)
            d = float(y.double().mean())
            var = float(y.double().var()) if y.numel() > 1 else 0.0
            return DriftEstimate(d, 0.0, y.numel(), 1.0 if d <= 0 else 0.0, True, g, var, 0.0)
        ys, cs, gs = [], [], []
        drawn, chunk = 0, self.samples
        while True:
            batches = self.sampler.draw(chunk, self.generator)
            y, c, g = self._evaluate(theta, batches, grad_l)
            if not bool(torch.isfinite(y).all()):
                return _overflowed(y, g)  # a step so large the loss after it overflows
            ys.append(y)
            cs.append(c)
            gs.append(g)
            drawn += chunk
            d, se, raw_var, cv_var = control_variate_mean(torch.cat(ys), torch.cat(cs), c_mean)
            if abs(d) > self.z * se or drawn >= self.max_samples:
                break
            chunk = min(drawn, self.max_samples - drawn)  # double the sample
        stable_p = _probability_nonpositive(d, se)
        return DriftEstimate(d, se, drawn, stable_p, False, torch.cat(gs), raw_var, cv_var)


def _overflowed(y: torch.Tensor, grads: torch.Tensor) -> DriftEstimate:
    # The loss after some step overflowed (inf, or NaN where the logits themselves broke).
    drift = math.inf
    return DriftEstimate(drift, 0.0, y.numel(), 0.0, False, grads, math.nan, math.nan)


def _probability_nonpositive(mean: float, se: float) -> float:
    if not math.isfinite(mean):
        return 0.0 if mean > 0 or math.isnan(mean) else 1.0
    if not math.isfinite(se):
        return 0.5  # too few batches to estimate an error: undecided, not a confident sign
    if se <= 0:
        return 1.0 if mean <= 0 else 0.0
    return 0.5 * math.erfc(mean / (se * math.sqrt(2.0)))  # Phi(-mean / se)
