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
  sequential looks (Bonferroni: each at 1 - (1 - confidence) / looks; the first look, with
  the fewest draws, at a stricter one) and the residuals are not too skewed for a normal
  interval, or the budget is spent; then the verdict is undecided, not a sign.
- A float32 run whose float32 rounding would weigh in its error goes over to float64 (its
  batch gradients, the losses after the steps, the control variate's mean): the drift can lie
  many orders of magnitude below the loss, where float32 rounding of the loss difference
  would otherwise dominate the error (see _Precision).

The constants below were chosen on bench/drift_calibration.py's bank of exact answers.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.stats import norm

from .objective import Objective
from .sampling import BatchSampler, draw_weighted_runs
from .spec import MAX_EXACT_BATCHES
from .stack import Stack
from .verdict import OUTSIDE_S, verdict

# Share of the importance proposal that is uniform: bounds every weight by 1 / DEFENSIVE.
DEFENSIVE = 0.5
# Weight of the "one more extreme draw" floor (bench/drift_calibration.py chose it).
EXTREME_SHARE = 1.0
# Fits with R^2 above this start to count as extrapolating (see unseen_error).
DEGENERATE_R2 = 0.5
# How far the fitted slope must lie from the Taylor slope 1 for its extrapolation to count in
# full; closer, it counts as (|1 - beta| / TAYLOR_GAP)^2. A slope near 1 is the smooth regime,
# where the jackknife is right and the gap is the control variate doing its work (on the bank,
# near-perfect fits with slopes 0.9-0.997 had gaps 10 to 10^7 times their actual error).
TAYLOR_GAP = 0.5
# The first look (the fewest draws, whose jackknife errors have the heaviest tails: at K = 32,
# 2% of the bank's points lie beyond 3 of them, against 0.8% at K = 64) decides only beyond
# this many standard errors; it spends less of the Bonferroni budget than the later looks.
FIRST_LOOK_Z = 3.0
# The relative rounding error of a mean loss is eps * (a + b * largest |logit|), per arithmetic
# (see _rounding_errors). float64: fitted on the bank with float64 evaluation (the largest errors
# seen: 12 eps at |z| 240, 30 eps at |z| 1400); other dtypes: float32 enumeration against float64.
ROUNDING = {torch.float64: (4.0, 0.01)}
ROUNDING_DEFAULT = (0.5, 0.15)
# A run in a narrower dtype is evaluated in float64 once its rounding floor exceeds this share
# of its statistical error (the jackknife and the unseen-batch floors), or of |D| when enumerated.
ROUNDING_SHARE = 0.2
# Regression residuals all within this many rounding errors of the loss difference are rounding
# noise: the fit is exact as far as the arithmetic can tell (see _taylor_errors).
ROUNDED_RESIDUALS = 16.0
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


def _regression(y: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred float64 Y and C (rows: runs, columns: draws) and each row's slope cov(Y, C) / var(C).

    The slope is 0 where C is constant."""
    y64, c64 = y.double().cpu(), c.double().cpu()
    yc, cc = y64 - y64.mean(dim=-1, keepdim=True), c64 - c64.mean(dim=-1, keepdim=True)  # shift invariant
    s_cc = (cc * cc).sum(dim=-1)
    beta = torch.where(s_cc > 0, (yc * cc).sum(dim=-1) / s_cc.clamp_min(1e-300), torch.zeros_like(s_cc))
    return yc, cc, beta


def control_variate_means(
    y: torch.Tensor, c: torch.Tensor, c_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row (a run's K draws): the mean of Y with control C of known mean, its jackknife
    standard error, and the variances before and after the control (all float64, shape (R,)).

    The coefficient is the regression slope cov(Y, C) / var(C), estimated from the sample.
    The residual Y - beta C is skewed (it is the curvature term, mostly positive), so the
    plain residual standard error is too small at small K; the leave-one-out (jackknife)
    error re-estimates beta each time and is better calibrated.
    """
    k = y.shape[-1]
    y_bar, c_bar = y.double().cpu().mean(dim=-1), c.double().cpu().mean(dim=-1)
    if k < 3:
        inf, nan = torch.full_like(y_bar, math.inf), torch.full_like(y_bar, math.nan)
        return y_bar, inf, nan, nan
    yc, cc, beta = _regression(y, c)
    shift = (c_mean.double().cpu() - c_bar).unsqueeze(-1)
    estimate = y_bar + beta * shift.squeeze(-1)  # mean(Y) - beta (mean(C) - E[C])
    raw_var = yc.var(dim=-1, unbiased=True)
    cv_var = (yc - beta.unsqueeze(-1) * cc).var(dim=-1, unbiased=True)
    # Leave-one-out estimates from the sums, all at once.
    n1 = k - 1
    my, mc = -yc / n1, -cc / n1  # means without point i (of the centred values)
    sxy = (yc * cc).sum(dim=-1, keepdim=True) - yc * cc - n1 * my * mc
    sxx = (cc * cc).sum(dim=-1, keepdim=True) - cc * cc - n1 * mc * mc
    beta_i = torch.where(sxx > 0, sxy / sxx.clamp_min(1e-300), torch.zeros_like(sxx))
    loo = my - beta_i * (mc - shift)
    se = torch.sqrt(n1 / k * ((loo - loo.mean(dim=-1, keepdim=True)) ** 2).sum(dim=-1))
    return estimate, se, raw_var, cv_var


def control_variate_mean(y: torch.Tensor, c: torch.Tensor, c_mean: float) -> tuple[float, float, float, float]:
    """control_variate_means for one run's draws (1-D tensors)."""
    parts = control_variate_means(y.unsqueeze(0), c.unsqueeze(0), torch.tensor([c_mean], dtype=torch.float64))
    return tuple(float(p[0]) for p in parts)  # type: ignore[return-value]


def unseen_errors(y: torch.Tensor, c: torch.Tensor, c_mean: torch.Tensor, eps: float = 2.0**-52) -> torch.Tensor:
    """Per row, an error floor for the batches not yet drawn, which the jackknife cannot see.

    Two terms: what one more draw as far out as the farthest residual seen would move the
    mean by, and the gap between the regression estimate and the plain beta = 1 one
    (Y - C is the Taylor remainder of the step). On a piecewise-linear stretch of the loss
    the drawn points can lie exactly on a line, the jackknife error is 0, and the fitted
    slope extrapolates to a mean far from the truth; the gap measures that extrapolation.
    When every residual is at the rounding level (`eps`, the loss's dtype), no draw crossed a
    kink of the saturated loss at all, and the farthest raw deviation stands in for the residual.
    """
    yc, cc, beta = _regression(y, c)
    residual = yc - beta.unsqueeze(-1) * cc
    farthest = residual.abs().amax(dim=-1)
    spread = yc.abs().amax(dim=-1)
    farthest = torch.where(farthest <= 64 * eps * spread, spread, farthest)
    extreme = EXTREME_SHARE * farthest / (y.shape[-1] + 1)
    # Counted for a good fit (weight rising over R^2 from DEGENERATE_R2 to 1) whose slope is not the Taylor one.
    r2 = 1.0 - (residual * residual).sum(dim=-1) / (yc * yc).sum(dim=-1).clamp_min(1e-300)
    fit = ((r2 - DEGENERATE_R2) / (1.0 - DEGENERATE_R2)).clamp(0.0, 1.0)
    degenerate = fit * ((1.0 - beta).abs() / TAYLOR_GAP).clamp_max(1.0) ** 2
    c_bar = c.double().cpu().mean(dim=-1)
    extrapolation = degenerate * ((1.0 - beta) * (c_bar - c_mean.double().cpu())).abs()
    return torch.hypot(extreme, extrapolation)


def unseen_error(y: torch.Tensor, c: torch.Tensor, c_mean: float, eps: float = 2.0**-52) -> float:
    """unseen_errors for one run's draws (1-D tensors)."""
    return float(unseen_errors(y.unsqueeze(0), c.unsqueeze(0), torch.tensor([c_mean], dtype=torch.float64), eps)[0])


@dataclass(frozen=True)
class DriftPlan:
    """How the runs of a slice estimate their drift: one sampler kind, budget and confidence."""

    samples: int  # K drawn first (0 for "exact")
    max_samples: int
    confidence: float
    looks: int
    level: float
    z: float
    importance: bool
    batches: torch.Tensor | None  # every distinct batch when enumerating, (count, B)
    weights: torch.Tensor | None  # their weights count * P(b), float64

    @property
    def exact(self) -> bool:
        return self.batches is not None

    @classmethod
    def make(
        cls,
        sampler: BatchSampler,
        samples: int | str,
        max_samples: int,
        confidence: float,
        *,
        importance: bool = True,
        enumerate_when_few: bool = True,
    ) -> DriftPlan:
        first = int(samples) if isinstance(samples, int) else 0
        budget = max(max_samples, first)
        # The sign is checked after every doubling: with L looks, each at the one-sided level
        # 1 - (1 - confidence) / L, a verdict is wrong with probability at most 1 - confidence
        # (Bonferroni), where one look at `confidence` each would be wrong up to L times as often.
        looks = _looks(max(first, 1), budget)
        level = 1.0 - (1.0 - confidence) / looks
        count = sampler.distinct_count()
        # Enumerate when asked, or whenever it costs no more than the sampling budget.
        few = count is not None and count <= min(budget, MAX_EXACT_BATCHES)
        batches = weights = None
        if samples == "exact" or (enumerate_when_few and few):
            batches, weights = sampler.enumerate_all()
        return cls(first, budget, confidence, looks, level, float(norm.ppf(level)), importance, batches, weights)


class DriftEstimator:
    """The drift of one run at a time (a slice of one; see estimate_drifts)."""

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
        self.plan = DriftPlan.make(
            sampler, samples, max_samples, confidence, importance=importance, enumerate_when_few=enumerate_when_few
        )
        self.exact, self.level, self.z = self.plan.exact, self.plan.level, self.plan.z
        self._stack: Stack | None = None

    def __call__(self, theta: torch.Tensor, grad_l: torch.Tensor) -> DriftEstimate:
        """D(theta) given the evaluation gradient grad_l at theta (the control variate's direction)."""
        if self._stack is None:
            self._stack = Stack([self.objective])
        obj = self.objective
        scale = obj.model.logits(theta, obj.x_eval).abs().max().reshape(1)
        rows = torch.zeros(1, dtype=torch.long)
        thetas, grads = theta.unsqueeze(0), grad_l.unsqueeze(0)
        return estimate_drifts(self._stack, rows, thetas, grads, scale, [self.sampler], [self.generator], self.plan)[0]


# The float64 twin of each narrower stack (its data in float64), made once per stack.
_WIDE: weakref.WeakKeyDictionary[Stack, Stack] = weakref.WeakKeyDictionary()


def _wide(stack: Stack) -> Stack:
    """The stack the drift is evaluated on: float64, the stack itself when it already is (or on MPS)."""
    if stack.x_train.dtype == torch.float64 or stack.x_train.device.type == "mps":
        return stack
    twin = _WIDE.get(stack)
    if twin is None:
        twin = Stack(
            [dataclasses.replace(o, x_train=o.x_train.double(), x_eval=o.x_eval.double()) for o in stack.objectives]
        )
        _WIDE[stack] = twin
    return twin


def _control_means(
    stack: Stack, rows: torch.Tensor, thetas: torch.Tensor, grads: torch.Tensor, recompute: bool = False
) -> torch.Tensor:
    """E_B[-eta <grad L, g_B>] = -eta <grad L_eval, grad L_train> per run (float64, on the CPU).

    `recompute`: the training gradient afresh on `stack`, even where the evaluation set is the
    training set (`grads` then came from a narrower dtype than the batch gradients: the control's
    mean must be that of the C_b computed here, or its rounding gap becomes a bias)."""
    train = grads if stack.eval_is_train and not recompute else stack.train_grads(thetas, rows)
    return -stack.lr64[rows] * (grads.double() * train.double()).sum(dim=-1).cpu()


def _proposals(stack: Stack, rows: torch.Tensor, thetas: torch.Tensor, importance: bool) -> torch.Tensor:
    """Each run's importance proposal over its n training examples (R', n), float64 on the CPU."""
    n = stack.x_train.shape[1]
    uniform = torch.full((len(rows), n), 1.0 / n, dtype=torch.float64)
    if not importance:
        return uniform
    scores = stack.train_scores(thetas, rows).cpu()
    total = scores.sum(dim=-1, keepdim=True)
    usable = torch.isfinite(total) & (total > 0)
    mixed = DEFENSIVE * uniform + (1 - DEFENSIVE) * scores / torch.where(usable, total, torch.ones_like(total))
    return torch.where(usable, mixed, uniform)


def _evaluate(
    stack: Stack, rows: torch.Tensor, thetas: torch.Tensor, grads: torch.Tensor, batches: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For K batches per run (R', K, B): Y = L(theta - eta g_b) - L(theta), C = -eta <grad L, g_b>
    (float64, on the CPU, (R', K)), the batch gradients (R', K, P) and the losses (R', 1 + K)."""
    r, k = batches.shape[:2]
    items = thetas.unsqueeze(1).expand(r, k, thetas.shape[-1]).reshape(r * k, -1)
    g, _ = stack.batch_grads(items, rows.repeat_interleave(k), batches.reshape(r * k, -1))
    g = g.view(r, k, -1)
    lr = stack.lr[rows.to(stack.lr.device)].view(r, 1, 1)
    # L(theta) is evaluated again in the same batched call as the K losses after a step: the
    # same kernels round the same way, so at tiny losses (1e-9 in float32) their difference
    # is the drift and not the rounding gap between two differently computed losses.
    losses = stack.eval_losses(torch.cat([thetas.unsqueeze(1), thetas.unsqueeze(1) - lr * g], dim=1), rows).double()
    losses = losses.cpu()
    y = losses[:, 1:] - losses[:, :1]
    # float64: the products underflow at tiny losses
    c = -stack.lr64[rows].unsqueeze(1) * (g.double() @ grads.double().unsqueeze(-1)).squeeze(-1).cpu()
    return y, c, g, losses


def estimate_drifts(
    stack: Stack,
    rows: torch.Tensor,
    thetas: torch.Tensor,
    grads: torch.Tensor,
    logit_scale: torch.Tensor,
    samplers: Sequence[BatchSampler],
    generators: Sequence[torch.Generator],
    plan: DriftPlan,
) -> list[DriftEstimate]:
    """D(theta) of each run `rows[i]` at thetas[i] (R', P), given its evaluation gradient grads[i].

    Every run draws its batches from its own generator and sampler, so its estimate is the one
    it gets alone; the evaluations of all runs at a look are one batched computation (two where
    some runs are evaluated in float64 and others in their own dtype).
    """
    scales = logit_scale.double().cpu()
    if plan.exact:
        return _enumerate(stack, rows, thetas, grads, scales, plan)
    proposal = _proposals(stack, rows, thetas, plan.importance)
    runs = _Precision(stack, rows, thetas, grads)
    results: list[DriftEstimate | None] = [None] * len(rows)
    active = list(range(len(rows)))
    drawn_batches: list[list[torch.Tensor]] = [[] for _ in rows]
    ws: list[list[torch.Tensor]] = [[] for _ in rows]
    ys: list[list[torch.Tensor]] = [[] for _ in rows]
    cs: list[list[torch.Tensor]] = [[] for _ in rows]
    gs: list[list[torch.Tensor]] = [[] for _ in rows]
    afters: list[list[torch.Tensor]] = [[] for _ in rows]
    starts = torch.zeros(len(rows), dtype=torch.float64)
    drawn, chunk, looks = 0, max(plan.samples, 1), 0
    while active:
        at = torch.tensor(active)
        drawn_now, weights_now = draw_weighted_runs(
            [samplers[i] for i in active], chunk, proposal[at], [generators[i] for i in active]
        )
        drawn += chunk
        looks += 1
        y, c, g, losses = runs.evaluate(active, drawn_now)
        finite = torch.isfinite(y).all(dim=-1).tolist()
        wy, wc = weights_now * y, weights_now * c
        starts[at] = losses[:, 0]
        for j, i in enumerate(active):
            drawn_batches[i].append(drawn_now[j])
            ws[i].append(weights_now[j])
            ys[i].append(wy[j])
            cs[i].append(wc[j])
            gs[i].append(g[j])
            afters[i].append(losses[j, 1:])
            if not finite[j]:  # a step so large the loss after it overflows
                results[i] = _overflowed(y[j], g[j], float(runs.c_mean[i]))
        active = [i for j, i in enumerate(active) if finite[j]]
        if not active:
            break
        look = _Look(runs, active, ys, cs, afters, starts, scales)
        # A run in a narrower dtype whose rounding would weigh in its error goes over to float64:
        # every batch it drew is evaluated again, and its estimate is made afresh from those.
        coarse = [i for j, i in enumerate(active) if runs.can_widen and not runs.precise[i] and bool(look.coarse[j])]
        if coarse:
            again = torch.stack([_joined(drawn_batches[i]) for i in coarse])
            y, c, g, losses = runs.widen(coarse, again)
            for j, i in enumerate(coarse):
                weights = _joined(ws[i])
                ys[i], cs[i], gs[i] = [weights * y[j]], [weights * c[j]], [g[j]]
                afters[i], starts[i] = [losses[j, 1:]], losses[j, 0]
            look = _Look(runs, active, ys, cs, afters, starts, scales)
        d, se = look.d, look.se
        trusted = drawn >= SKEW_DRAWS * _skewness(look.wy, look.wc) ** 2
        z = max(plan.z, FIRST_LOOK_Z) if looks == 1 else plan.z
        done = (d.abs() > z * se) & trusted
        if drawn >= plan.max_samples:
            done[:] = True
        # every loss has underflowed to 0: more batches cannot resolve the sign
        done |= (starts[active] == 0.0) & ~(look.wy != 0).any(dim=-1)
        # Python numbers once for all runs: a float() of a tensor element costs a microsecond or two.
        done_, trusted_, d_, se_ = done.tolist(), trusted.tolist(), d.tolist(), se.tolist()
        raw_var, cv_var, c_mean = look.raw_var.tolist(), look.cv_var.tolist(), runs.c_mean.tolist()
        for j, i in enumerate(active):
            if not done_[j]:
                continue
            mean, err = d_[j], se_[j]
            stable_p = _probability_nonpositive(mean, err)
            if not trusted_[j]:
                # A budget spent while the residuals were still too skewed for a normal interval decides
                # nothing: stable_p is held inside the undecided band, so that the verdict stays the
                # function of stable_p that eos_core.verdict states (its normal probability is not trusted).
                stable_p = min(max(stable_p, math.nextafter(1.0 - plan.level, 1.0)), math.nextafter(plan.level, 0.0))
            results[i] = DriftEstimate(
                mean,
                err,
                drawn,
                stable_p,
                False,
                _joined(gs[i]),
                _joined(ws[i]),
                raw_var[j],
                cv_var[j],
                drawn + looks,
                verdict(stable_p, plan.level),
                c_mean[i],
            )
        active = [i for j, i in enumerate(active) if not done_[j]]
        chunk = min(drawn, plan.max_samples - drawn)  # double the sample
    return [r for r in results if r is not None]


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """A run's tensors of its looks end to end (the one itself after a single look: no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


class _Precision:
    """Which runs of a call are evaluated in float64, and their evaluations.

    A run starts in its own dtype (float64 from the start when that is its dtype) and goes over
    to float64 when its rounding would weigh in its error (ROUNDING_SHARE): evaluating every
    step in float64 costs about twice as much (two-layer, CPU), and only where the drift lies
    near the loss's rounding level does it change the estimate (on the bank, 15% of the float32
    points, and the same figures as float64 everywhere).
    """

    def __init__(self, stack: Stack, rows: torch.Tensor, thetas: torch.Tensor, grads: torch.Tensor) -> None:
        self.stack, self.wide, self.rows = stack, _wide(stack), rows
        self.thetas, self.grads = thetas, grads
        self.narrow = thetas.dtype
        self.precise = [self.narrow == torch.float64] * len(rows)
        self.can_widen = self.wide is not stack  # not on MPS, which has no float64
        self.c_mean = _control_means(stack, rows, thetas, grads)

    def evaluate(
        self, runs: list[int], batches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """_evaluate for runs (positions) with batches (len(runs), K, B), each run in its precision."""
        out: list[torch.Tensor] = []
        for precise in (False, True):
            js = [j for j, i in enumerate(runs) if self.precise[i] == precise]
            if not js:
                continue
            at, pick = torch.tensor([runs[j] for j in js]), torch.tensor(js)
            stack, thetas, grads = self.stack, self.thetas[at], self.grads[at]
            if precise:
                stack, thetas, grads = self.wide, thetas.to(torch.float64), grads.to(torch.float64)
            parts = _evaluate(stack, self.rows[at], thetas, grads, batches[pick])
            parts = (*parts[:2], parts[2].to(self.narrow), parts[3])
            if not out:
                out = [torch.empty((len(runs), *p.shape[1:]), dtype=p.dtype, device=p.device) for p in parts]
            for whole, part in zip(out, parts, strict=True):
                whole[pick.to(whole.device)] = part
        return out[0], out[1], out[2], out[3]

    def widen(
        self, runs: list[int], batches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move runs to float64 and evaluate their batches (len(runs), K, B) there."""
        for i in runs:
            self.precise[i] = True
        at = torch.tensor(runs)
        thetas, grads = self.thetas[at].to(torch.float64), self.grads[at].to(torch.float64)
        # The control's mean must be that of the C_b computed in float64 (see _control_means).
        self.c_mean[at] = _control_means(self.wide, self.rows[at], thetas, grads, recompute=True)
        y, c, g, losses = _evaluate(self.wide, self.rows[at], thetas, grads, batches)
        return y, c, g.to(self.narrow), losses


class _Look:
    """The estimates of the active runs from their draws so far, and their stated errors."""

    def __init__(
        self,
        runs: _Precision,
        active: list[int],
        ys: list[list[torch.Tensor]],
        cs: list[list[torch.Tensor]],
        afters: list[list[torch.Tensor]],
        starts: torch.Tensor,
        scales: torch.Tensor,
    ) -> None:
        at = torch.tensor(active)
        self.wy = torch.stack([_joined(ys[i]) for i in active])
        self.wc = torch.stack([_joined(cs[i]) for i in active])
        after = torch.stack([_joined(afters[i]) for i in active])
        c_mean = runs.c_mean[at]
        self.d, jackknife, self.raw_var, self.cv_var = control_variate_means(self.wy, self.wc, c_mean)
        precise = torch.tensor([runs.precise[i] for i in active])
        narrow = runs.narrow
        # The floors at each run's own arithmetic: its rounding, and the rounding level of its residuals.
        dtypes = [torch.float64] if bool(precise.all()) else [narrow] if not bool(precise.any()) else []
        if dtypes:  # every run in one arithmetic (the usual case): each floor once
            rounding = _rounding_errors(starts[at], after, dtypes[0], scales[at])
            unseen = unseen_errors(self.wy, self.wc, c_mean, torch.finfo(dtypes[0]).eps)
        else:
            rounding = torch.where(
                precise,
                _rounding_errors(starts[at], after, torch.float64, scales[at]),
                _rounding_errors(starts[at], after, narrow, scales[at]),
            )
            unseen = torch.where(
                precise,
                unseen_errors(self.wy, self.wc, c_mean, torch.finfo(torch.float64).eps),
                unseen_errors(self.wy, self.wc, c_mean, torch.finfo(narrow).eps),
            )
        # hypot: squares of errors at losses near 1e-160 underflow
        statistical = torch.hypot(jackknife, unseen)
        self.se = torch.hypot(torch.hypot(statistical, rounding), _taylor_errors(self.wy, self.wc, rounding))
        self.coarse = rounding > ROUNDING_SHARE * statistical


def _enumerate(
    stack: Stack, rows: torch.Tensor, thetas: torch.Tensor, grads: torch.Tensor, scales: torch.Tensor, plan: DriftPlan
) -> list[DriftEstimate]:
    assert plan.batches is not None and plan.weights is not None
    batches, weights = plan.batches, plan.weights
    count = len(batches)
    every = batches.unsqueeze(0).expand(len(rows), *batches.shape)
    runs = _Precision(stack, rows, thetas, grads)
    y, _, g, losses = runs.evaluate(list(range(len(rows))), every)
    # An exact drift is only as exact as its arithmetic: where the narrow dtype's rounding is not
    # small against it (ROUNDING_SHARE), the run is enumerated again in float64.
    d = (weights * y).mean(dim=-1)
    rounding = _rounding_errors(losses[:, 0], losses[:, 1:], runs.narrow, scales)
    fine = rounding < ROUNDING_SHARE * d.abs()
    coarse = [j for j in range(len(rows)) if runs.can_widen and not runs.precise[j] and not bool(fine[j])]
    if coarse:
        y2, _, g2, _ = runs.widen(coarse, every[: len(coarse)])
        at = torch.tensor(coarse)
        y, g = y.clone(), g.clone()
        y[at], g[at] = y2, g2
    out = []
    for j in range(len(rows)):
        if not bool(torch.isfinite(y[j]).all()):
            out.append(_overflowed(y[j], g[j], float(runs.c_mean[j])))
            continue
        wy = weights * y[j]
        mean = float(wy.mean())
        var = float(wy.var()) if wy.numel() > 1 else 0.0
        p = 1.0 if mean <= 0 else 0.0
        out.append(
            DriftEstimate(
                mean, 0.0, count, p, True, g[j], weights, var, 0.0, count + 1, verdict(p, 0.5), float(runs.c_mean[j])
            )
        )
    return out


def _looks(first: int, budget: int) -> int:
    """How many times the sign is checked when the sample doubles from `first` up to `budget`."""
    drawn, looks = first, 1
    while drawn < budget:
        drawn += min(drawn, budget - drawn)
        looks += 1
    return looks


def _skewness(y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row, the sample skewness of the regression residuals Y - beta C."""
    yc, cc, beta = _regression(y, c)
    residual = yc - beta.unsqueeze(-1) * cc
    m2 = (residual * residual).mean(dim=-1)
    m3 = (residual**3).mean(dim=-1)
    return torch.where(m2 > 0, m3 / m2.clamp_min(1e-300) ** 1.5, torch.zeros_like(m2))


def _taylor_errors(y: torch.Tensor, c: torch.Tensor, rounding: torch.Tensor) -> torch.Tensor:
    """Per row, the plain error of the Taylor remainder's mean, sd(Y - C) / sqrt(K), where every
    regression residual is within ROUNDED_RESIDUALS rounding errors; 0 elsewhere.

    There the fit of Y on C is exact to the arithmetic's resolution: the jackknife sees rounding
    noise only, and the slope (near 1 in the smooth regime) extrapolates the remainder Y - C
    linearly in C, which the drawn batches cannot confirm. On the bank (a float32 two-layer
    point evaluated in float64, D = -1.8e-13 at L = 2e-8) that fit was off by 10^4 of its
    errors, and by 0.9 of this one.
    """
    yc, cc, beta = _regression(y, c)
    farthest = (yc - beta.unsqueeze(-1) * cc).abs().amax(dim=-1)
    remainder = (y.double().cpu() - c.double().cpu()).std(dim=-1) / math.sqrt(y.shape[-1])
    return torch.where(farthest <= ROUNDED_RESIDUALS * rounding, remainder, torch.zeros_like(remainder))


def _rounding_errors(
    start: torch.Tensor, after: torch.Tensor, dtype: torch.dtype, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Per run, the standard error of the loss differences from the dtype's rounding (it does not average out).

    L(theta) = `start` and the L(theta - eta g_b) = `after` are means of per-example losses.
    A logit difference of size |z| carries an absolute rounding error of about eps |z|, and
    a small loss l = log1p(exp(z_j - z_y)) the same relative error: so the loss's relative
    error grows with the logit scale. The loss before and after a step share most of that
    rounding (the same data, nearby parameters), so the difference's error is far below the
    eps |z| bound: the constants (ROUNDING) are fitted per arithmetic on bench/drift_calibration.py's
    bank; `tiny`, the smallest normal number, is the floor below which the dtype resolves no
    loss at all.
    """
    info = torch.finfo(dtype)
    a, b = ROUNDING.get(dtype, ROUNDING_DEFAULT)
    relative = info.eps * (a + b * logit_scale)
    return relative * (start.abs() + after.abs().mean(dim=-1)) + info.tiny


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
