"""Linear probes for the probing evaluations (absorption, sparse probing): logistic regression,
mean-difference selection of k inputs, and the scores they are judged by.

Logistic regression, one binary probe per column c of the labels ``y [n, c]``, all fitted at once
(full batch, L-BFGS), on standardised inputs ``x̃_j = (x_j − μ_j) / σ_j`` (training-row mean and
standard deviation; a constant input is dropped):

    min_{w_c, b_c}  Σ_i ω_ic ℓ(y_ic, x̃_i·w_c + b_c)  +  ||w_c||² / (2 C n)

with ℓ the logistic loss and ω_ic class-balancing weights summing to 1 per column (positives and
negatives weigh the same in total: sklearn's ``class_weight="balanced"``, SAEBench's
``pos_weight``). With C = 1 this is sklearn's default ``LogisticRegression`` (SAEBench's probes)
after a ``StandardScaler``, divided by n. Standardising matters for residual-stream inputs, whose
few large shared directions otherwise leave the class differences ill-conditioned (the fit then
stops far from the optimum). The returned probe acts on raw inputs:
``weight_j = w_j / σ_j``, ``bias = b − Σ_j μ_j w_j / σ_j``; its ``directions`` (the unit weight
vectors in raw activation space) are what the absorption metric projects on.

k-sparse probes (Gurnee et al. 2023, "Finding Neurons in a Haystack"; SAEBench's sparse probing
and absorption): choose k input dimensions by the difference of class means on the training
rows, ``|mean(x_j | y = 1) − mean(x_j | y = 0)|`` (signed, largest first, when only inputs that
fire *for* the class are wanted), and fit a probe on those k alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


class LinearProbe(NamedTuple):
    """``scores = x @ weight.T + bias`` (one column per probe); > 0 predicts the class.
    ``features [c, k]`` names the input dimensions each probe reads (None: all of them)."""

    weight: Float[Tensor, "c k"]
    bias: Float[Tensor, "c"]
    features: Int[Tensor, "c k"] | None = None

    def scores(self, x: Float[Tensor, "n d"]) -> Float[Tensor, "n c"]:
        x = x.to(self.weight.dtype)
        if self.features is None:
            return x @ self.weight.T + self.bias
        return torch.einsum("nck,ck->nc", x[:, self.features], self.weight) + self.bias

    @property
    def directions(self) -> Float[Tensor, "c k"]:
        """Unit weight vectors (the probe's direction in its input space)."""
        return self.weight / self.weight.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run small tensor ops on one thread: a probe's matrices are a few hundred kB, and
    fork-join across threads then costs more than the arithmetic (20x on a busy 2-core host)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"probe inputs have {x.shape[0]} rows but labels have {y.shape[0]}")
    pos = y.sum(0)
    bad = ((pos == 0) | (pos == y.shape[0])).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"probe label column(s) {bad[:5]} have only one class in the {y.shape[0]} "
                         f"training rows: a probe needs positives and negatives")


def fit_logistic(x: Float[Tensor, "n d"], y: Bool[Tensor, "n c"], C: float = 1.0,
                 features: Int[Tensor, "c k"] | None = None, max_iter: int = 200) -> LinearProbe:
    """Balanced logistic-regression probes, one per column of ``y`` (see the module docstring);
    with ``features``, probe c reads only the inputs ``features[c]``."""
    _check(x, y)
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    x = x.double()
    if features is not None:
        x = x[:, features]  # [n, c, k]
    n, c = y.shape
    mu, sd = x.mean(0), x.std(0, correction=0)
    inv = torch.where(sd > 1e-12 * sd.max().clamp_min(1e-30), 1 / sd, torch.zeros_like(sd))
    xs = (x - mu) * inv
    yf = y.double()
    pos = yf.sum(0)
    w_row = torch.where(y, 0.5 / pos, 0.5 / (n - pos))  # each column's weights sum to 1
    k = xs.shape[-1]
    reg = 1.0 / (2 * C * n)

    def loss_grad(theta: Tensor) -> tuple[float, Tensor]:
        W, b = theta[: c * k].view(c, k), theta[c * k:]
        z = (xs @ W.T if features is None else torch.einsum("nck,ck->nc", xs, W)) + b
        # logistic loss  log(1 + e^z) − y z,  gradient  σ(z) − y
        loss = (w_row * (torch.nn.functional.softplus(z) - yf * z)).sum() + reg * W.pow(2).sum()
        r = w_row * (torch.sigmoid(z) - yf)  # [n, c]
        gW = r.T @ xs if features is None else torch.einsum("nc,nck->ck", r, xs)
        return float(loss), torch.cat([(gW + 2 * reg * W).flatten(), r.sum(0)])

    with one_thread():
        theta = lbfgs(loss_grad, torch.zeros(c * k + c, dtype=torch.float64), max_iter)
    W, b = theta[: c * k].view(c, k), theta[c * k:]
    inv = inv if features is not None else inv.expand(c, k)  # [c, k]
    mu = mu if features is not None else mu.expand(c, k)
    weight = W * inv
    return LinearProbe(weight.float(), (b - (mu * weight).sum(-1)).float(), features)


def lbfgs(loss_grad: Callable[[Tensor], tuple[float, Tensor]], theta: Tensor, max_iter: int = 200,
          history: int = 10, tol: float = 1e-6) -> Tensor:
    """Minimise a smooth function by L-BFGS (Nocedal & Wright 2006, algorithm 7.4: two-loop
    recursion) with a backtracking Armijo line search; stops when the largest gradient entry is
    below ``tol``. (``torch.optim.LBFGS`` imports TorchDynamo on its first step: seconds.)"""
    f, g = loss_grad(theta)
    S: list[Tensor] = []
    Y: list[Tensor] = []
    for _ in range(max_iter):
        if float(g.abs().max()) < tol:
            break
        q, alphas = g.clone(), []
        for s, y in zip(reversed(S), reversed(Y)):
            a = float(s @ q) / float(y @ s)
            q -= a * y
            alphas.append(a)
        if S:
            q *= float(S[-1] @ Y[-1]) / float(Y[-1] @ Y[-1])
        for (s, y), a in zip(zip(S, Y), reversed(alphas)):
            q += s * (a - float(y @ q) / float(y @ s))
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            S, Y, d, slope = [], [], -g, -float(g @ g)
        t = 1.0 if S else 1.0 / max(1.0, float(g.norm()))
        while True:
            f_new, g_new = loss_grad(theta + t * d)
            if f_new <= f + 1e-4 * t * slope or t < 1e-12:
                break
            t *= 0.5
        s, y = t * d, g_new - g
        if float(s @ y) > 1e-12:
            S, Y = (S + [s])[-history:], (Y + [y])[-history:]
        theta, f, g = theta + s, f_new, g_new
    return theta


def mean_diff_top_k(x: Float[Tensor, "n d"], y: Bool[Tensor, "n c"], k: int,
                    signed: bool = False) -> Int[Tensor, "c k"]:
    """Per column of ``y``, the ``k`` inputs with the largest class-mean difference (absolute,
    or signed: positive class minus negative class)."""
    _check(x, y)
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in 1..{x.shape[1]} (the number of inputs), got {k}")
    yf = y.to(x.dtype)
    mean_pos = (yf.T @ x) / yf.sum(0)[:, None]
    mean_neg = ((1 - yf).T @ x) / (1 - yf).sum(0)[:, None]
    diff = mean_pos - mean_neg
    return (diff if signed else diff.abs()).topk(k, dim=-1).indices


def accuracy(scores: Float[Tensor, "n c"], y: Bool[Tensor, "n c"]) -> Float[Tensor, "c"]:
    """Fraction of rows whose sign of the score matches the label, per column."""
    return ((scores > 0) == y).float().mean(0)


def f1_score(scores: Float[Tensor, "n c"], y: Bool[Tensor, "n c"]) -> Float[Tensor, "c"]:
    """F1 of the predictions ``scores > 0`` per column (0 where nothing is predicted or true)."""
    pred = scores > 0
    tp = (pred & y).sum(0).float()
    denom = pred.sum(0).float() + y.sum(0).float()
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
