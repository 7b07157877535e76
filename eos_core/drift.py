"""The conditional Lyapunov drift D(theta) = E_B[L(theta - eta g_B)] - L(theta) (science.md).

Exact by enumeration whenever the distinct batches number at most the sampling budget
(B = 1 up to n, B = n, small C(n, B) or multisets). Otherwise Monte Carlo, built so that
its stated error is honest where L(theta - eta g_b) is heavy-tailed:

- Importance sampling where the tail comes from. Each batch has one member drawn in
  proportion to its per-example score ||dl_i/dz|| ||x_i|| (the examples that move the
  parameters most: the hard ones), mixed half and half with the uniform draw, and its
  other members as the sampler draws them. The weight p(b)/Q(b) is then at most 2, and
  the batches holding hard examples, which dominate the mean at large steps, are drawn
  often instead of being missed.
- A control variate with known mean, Y_b = -eta <grad L, g_b>, E[Y_b] = -eta <grad L, grad L_train>.
- A jackknife error for the regression estimator, with floors it cannot fall below: one
  more draw as extreme as the most extreme one seen (the batches not yet drawn), the gap
  a near-perfect fit with a non-Taylor slope extrapolates over, and the floating-point
  rounding of the loss difference (it does not average out).
- Batches are drawn, doubling, until the sign is decided at a level that accounts for the
  sequential looks (Bonferroni: each at 1 - (1 - confidence) / looks) and the residuals are
  not too skewed for a normal interval, or the budget is spent; then the verdict is
  undecided, not a sign.

The constants below were chosen on bench/drift_calibration.py's bank of exact answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import norm

from .objective import Objective
from .sampling import BatchSampler
from .spec import MAX_EXACT_BATCHES
from .verdict import OUTSIDE_S, UNDECIDED, verdict

# Share of the importance proposal that is uniform: bounds every weight by 1 / DEFENSIVE.
DEFENSIVE = 0.5
# Weight of the "one more extreme draw" floor (bench/drift_calibration.py chose it).
EXTREME_SHARE = 1.0
# Fits with R^2 above this start to count as extrapolating (see unseen_error).
DEGENERATE_R2 = 0.5
# Keep drawing while the residuals' skewness says the normal interval is not yet trustworthy:
# the mean of K draws is near normal once K >= SKEW_DRAWS * skewness^2.
SKEW_DRAWS = 4.0


@dataclass
class DriftEstimate:
    drift: float
    se: float
    samples: int
    stable_p: float
    exact: bool
    # The batch gradients used and their weights: E_B[f(g_B)] ~ mean(weights * f(batch_grads)).
    batch_grads: torch.Tensor
    batch_weights: torch.Tensor
    raw_variance: float  # variance of the weighted L(theta - eta g_b) - L(theta) across batches
    cv_variance: float  # the same after the control variate
    evaluations: int = 0  # losses on the evaluation set spent (the K steps and L(theta))
    verdict: float = math.nan  # IN_S, UNDECIDED or OUTSIDE_S (eos_core.verdict), at the sequential level
    # E_B[-eta <grad L, g_B>] = -eta <grad L_eval, grad L_train>: the control variate's mean,
    # and the first-order term of the second-order prediction quad_drift.
    first_order: float = math.nan


def _regression(y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Centred float64 Y and C on the CPU and the slope beta = cov(Y, C) / var(C) (0 if C is constant)."""
    y64, c64 = y.double().cpu(), c.double().cpu()
    yc, cc = y64 - y64.mean(), c64 - c64.mean()  # centred: the regression is shift invariant
    s_cc = float((cc * cc).sum())
    beta = float((yc * cc).sum()) / s_cc if s_cc > 0 else 0.0
    return yc, cc, beta


def control_variate_mean(y: torch.Tensor, c: torch.Tensor, c_mean: float) -> tuple[float, float, float, float]:
    """Mean of Y with control C of known mean, its jackknife standard error, and both variances.

    The coefficient is the regression slope cov(Y, C) / var(C), estimated from the sample.
    The residual Y - beta C is skewed (it is the curvature term, mostly positive), so the
    plain residual standard error is too small at small K; the leave-one-out (jackknife)
    error re-estimates beta each time and is better calibrated.
    """
    k = y.numel()
    y_bar, c_bar = float(y.double().mean()), float(c.double().mean())
    if k < 3:
        return y_bar, float("inf"), float("nan"), float("nan")
    yc, cc, beta = _regression(y, c)
    shift = c_mean - c_bar
    estimate = y_bar - beta * (-shift)  # mean(Y) - beta (mean(C) - E[C])
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


def unseen_error(y: torch.Tensor, c: torch.Tensor, c_mean: float, eps: float = 2.0**-52) -> float:
    """An error floor for the batches not yet drawn, which the jackknife cannot see.

    Two terms: what one more draw as far out as the farthest residual seen would move the
    mean by, and the gap between the regression estimate and the plain beta = 1 one
    (Y - C is the Taylor remainder of the step). On a piecewise-linear stretch of the loss
    the drawn points can lie exactly on a line, the jackknife error is 0, and the fitted
    slope extrapolates to a mean far from the truth; the gap measures that extrapolation.
    When every residual is at the rounding level (`eps`, the loss's dtype), no draw crossed a
    kink of the saturated loss at all, and the farthest raw deviation stands in for the residual.
    """
    yc, cc, beta = _regression(y, c)
    residual = yc - beta * cc
    farthest = float(residual.abs().max())
    if farthest <= 64 * eps * float(yc.abs().max()):
        farthest = float(yc.abs().max())
    extreme = EXTREME_SHARE * farthest / (y.numel() + 1)
    # Counted for a good fit (weight rising over R^2 from DEGENERATE_R2 to 1) whose slope is not the Taylor one.
    r2 = 1.0 - float((residual * residual).sum()) / max(float((yc * yc).sum()), 1e-300)
    fit = min(1.0, max(0.0, (r2 - DEGENERATE_R2) / (1.0 - DEGENERATE_R2)))
    degenerate = fit * min(1.0, abs(1.0 - beta) / 0.1)
    extrapolation = degenerate * abs((1.0 - beta) * (float(c.double().mean()) - c_mean))
    return math.hypot(extreme, extrapolation)


class DriftEstimator:
    def __init__(
        self,
        objective: Objective,
        sampler: BatchSampler,
        generator: torch.Generator,
        samples: int | str,
        max_samples: int,
        confidence: float,
        *,
        importance: bool = True,
        enumerate_when_few: bool = True,
    ) -> None:
        self.objective, self.sampler, self.generator = objective, sampler, generator
        self.confidence = confidence
        self.samples = int(samples) if isinstance(samples, int) else 0
        self.max_samples = max(max_samples, self.samples)
        # The sign is checked after every doubling: with L looks, each at the one-sided level
        # 1 - (1 - confidence) / L, a verdict is wrong with probability at most 1 - confidence
        # (Bonferroni), where one look at `confidence` each would be wrong up to L times as often.
        self.looks = _looks(max(self.samples, 1), self.max_samples)
        self.level = 1.0 - (1.0 - confidence) / self.looks
        self.z = float(norm.ppf(self.level))
        self.importance = importance
        count = sampler.distinct_count()
        # Enumerate when asked, or whenever it costs no more than the sampling budget.
        few = count is not None and count <= min(self.max_samples, MAX_EXACT_BATCHES)
        self.exact = samples == "exact" or (enumerate_when_few and few)
        self._all = sampler.enumerate_all() if self.exact else None

    def _evaluate(
        self, theta: torch.Tensor, batches: torch.Tensor, grad_l: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        device = theta.device
        g = self.objective.batch_grads(batches.to(device))(theta)  # (K, P)
        lr = self.objective.lr
        # L(theta) is evaluated again in the same batched call as the K losses after a step: the
        # same kernels round the same way, so at tiny losses (1e-9 in float32) their difference
        # is the drift and not the rounding gap between two differently computed losses.
        losses = self.objective.eval_losses(torch.cat([theta.unsqueeze(0), theta.unsqueeze(0) - lr * g]))
        y = losses[1:].double() - losses[0].double()
        c = -lr * (g.double() @ grad_l.double())  # float64: the products underflow at tiny losses
        return y, c, g, losses.double()

    def _control_mean(self, theta: torch.Tensor, grad_l: torch.Tensor) -> float:
        """E_B[-eta <grad L, g_B>] = -eta <grad L_eval, grad L_train> (the same when eval is train)."""
        grad_train = grad_l if self.objective.eval_is_train else self.objective.train_grad(theta)
        return -self.objective.lr * float(torch.dot(grad_l.double(), grad_train.double()))

    def _proposal(self, theta: torch.Tensor) -> torch.Tensor:
        n = self.sampler.n
        uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
        if not self.importance:
            return uniform
        scores = self.objective.train_scores(theta).cpu()
        total = float(scores.sum())
        if not math.isfinite(total) or total <= 0:
            return uniform
        return DEFENSIVE * uniform + (1 - DEFENSIVE) * scores / total

    def __call__(self, theta: torch.Tensor, grad_l: torch.Tensor) -> DriftEstimate:
        """D(theta) given the evaluation gradient grad_l at theta (the control variate's direction)."""
        if self._all is not None:
            return self._enumerate(theta, grad_l)
        c_mean = self._control_mean(theta, grad_l)
        proposal = self._proposal(theta)
        logit_scale = float(self.objective.model.logits(theta, self.objective.x_eval).abs().max())
        ys, cs, gs, ws, after = [], [], [], [], []
        start = math.nan
        drawn, chunk = 0, max(self.samples, 1)
        while True:
            batches, weights = self.sampler.draw_weighted(chunk, proposal, self.generator)
            y, c, g, losses = self._evaluate(theta, batches, grad_l)
            if not bool(torch.isfinite(y).all()):
                return _overflowed(y, g, c_mean)  # a step so large the loss after it overflows
            ys.append(weights * y.cpu())  # the weights live on the CPU, the losses on theta's device
            cs.append(weights * c.cpu())
            gs.append(g)
            ws.append(weights)
            start = float(losses[0])
            after.append(losses[1:].cpu())
            drawn += chunk
            wy, wc = torch.cat(ys), torch.cat(cs)
            d, se, raw_var, cv_var = control_variate_mean(wy, wc, c_mean)
            rounding = _rounding_error(start, torch.cat(after), theta.dtype, logit_scale)
            floors = (unseen_error(wy, wc, c_mean, torch.finfo(theta.dtype).eps), rounding)
            se = math.hypot(se, *floors)  # hypot: squares of errors at losses near 1e-160 underflow
            trusted = drawn >= SKEW_DRAWS * _skewness(wy, wc) ** 2
            if (abs(d) > self.z * se and trusted) or drawn >= self.max_samples:
                break
            if start == 0.0 and not bool(wy.any()):
                break  # every loss has underflowed to 0: more batches cannot resolve the sign
            chunk = min(drawn, self.max_samples - drawn)  # double the sample
        stable_p = _probability_nonpositive(d, se)
        # A budget spent while the residuals were still too skewed for a normal interval decides nothing.
        decided = verdict(stable_p, self.level) if trusted else UNDECIDED
        return DriftEstimate(
            d,
            se,
            drawn,
            stable_p,
            False,
            torch.cat(gs),
            torch.cat(ws),
            raw_var,
            cv_var,
            drawn + len(ys),
            decided,
            c_mean,
        )

    def _enumerate(self, theta: torch.Tensor, grad_l: torch.Tensor) -> DriftEstimate:
        assert self._all is not None
        batches, weights = self._all
        y, _, g, _ = self._evaluate(theta, batches, grad_l)
        c_mean = self._control_mean(theta, grad_l)
        if not bool(torch.isfinite(y).all()):
            return _overflowed(y, g, c_mean)
        wy = weights * y.cpu()
        d = float(wy.mean())
        var = float(wy.var()) if wy.numel() > 1 else 0.0
        p = 1.0 if d <= 0 else 0.0
        count = len(batches)
        return DriftEstimate(d, 0.0, count, p, True, g, weights, var, 0.0, count + 1, verdict(p, 0.5), c_mean)


def _looks(first: int, budget: int) -> int:
    """How many times the sign is checked when the sample doubles from `first` up to `budget`."""
    drawn, looks = first, 1
    while drawn < budget:
        drawn += min(drawn, budget - drawn)
        looks += 1
    return looks


def _skewness(y: torch.Tensor, c: torch.Tensor) -> float:
    """Sample skewness of the regression residuals Y - beta C."""
    yc, cc, beta = _regression(y, c)
    residual = yc - beta * cc
    m2 = float((residual * residual).mean())
    return float((residual**3).mean()) / m2**1.5 if m2 > 0 else 0.0


def _rounding_error(start: float, after: torch.Tensor, dtype: torch.dtype, logit_scale: float) -> float:
    """Standard error of the loss differences from the dtype's rounding (it does not average out).

    L(theta) = `start` and the L(theta - eta g_b) = `after` are means of per-example losses.
    A logit difference of size |z| carries an absolute rounding error of about eps |z|, and
    a small loss l = log1p(exp(z_j - z_y)) the same relative error: so the loss's relative
    error grows with the logit scale. The constants are fitted on float32 enumeration
    against float64 (bench/drift_calibration.py); `tiny`, the smallest normal number, is
    the floor below which the dtype resolves no loss at all.
    """
    info = torch.finfo(dtype)
    relative = info.eps * (0.5 + 0.15 * logit_scale)
    return relative * (abs(start) + float(after.abs().mean())) + info.tiny


def _overflowed(y: torch.Tensor, grads: torch.Tensor, first_order: float) -> DriftEstimate:
    # The loss after some step overflowed (inf, or NaN where the logits themselves broke).
    weights = torch.ones(len(grads), dtype=torch.float64)
    return DriftEstimate(
        math.inf, 0.0, y.numel(), 0.0, False, grads, weights, math.nan, math.nan, y.numel() + 1, OUTSIDE_S, first_order
    )


def _probability_nonpositive(mean: float, se: float) -> float:
    if not math.isfinite(mean):
        return 0.0 if mean > 0 or math.isnan(mean) else 1.0
    if not math.isfinite(se):
        return 0.5  # too few batches to estimate an error: undecided, not a confident sign
    if se <= 0:
        return 1.0 if mean <= 0 else 0.0
    return 0.5 * math.erfc(mean / (se * math.sqrt(2.0)))  # Phi(-mean / se)
