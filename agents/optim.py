"""The optimizer updates — SGD (momentum, L2) and Adam — once, over an optional replica axis.

:func:`sgd_update` and :func:`adam_update` act on lists of parameters, gradients and state
tensors; a hyperparameter is a float (every replica alike) or a ``(R,)`` tensor (one value per
replica, the parameters' leading axis). The learner core calls them on its stacked weights;
:class:`ReferenceOptimizer` wraps them as a ``torch.optim.Optimizer`` for autograd networks.

Adam keeps a step count per element as its bias corrections ``1 − β^count`` (``bias_correction1``/
``2``, zero at count 0), updated in place as ``c ← β·c + (1 − β)``. Unit surgery zeroes them with
the moments, so a fresh slice restarts its bias correction (the authors' corrected AdamGnT);
without surgery the update is torch.optim.Adam's (to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from plasticity_gym_agents.config import OptimizerConfig

__all__ = ["ReferenceOptimizer", "Scalar", "adam_update", "replica_scalar", "sgd_update", "shrink_perturb"]

Scalar = float | torch.Tensor  # one value, or one per replica: shape (R,)


def replica_scalar(values: Sequence[float], device: torch.device | str = "cpu") -> Scalar:
    """A float when every replica has the same value (the fast, exact path), else ``(R,)``."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)


def along(h: Scalar, like: torch.Tensor) -> Scalar:
    """``h`` shaped to broadcast over a ``(R, ...)`` tensor: ``(R, 1, ..., 1)``."""
    if isinstance(h, float):
        return h
    return h.view(-1, *([1] * (like.dim() - 1)))


def _scaled_add_(p: torch.Tensor, t: torch.Tensor, alpha: Scalar) -> None:
    """p += alpha · t."""
    if isinstance(alpha, float):
        p.add_(t, alpha=alpha)
    else:
        p.addcmul_(t, along(alpha, p))


@torch.no_grad()
def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], momentum_buffers: list[torch.Tensor] | None,
               *, lr: Scalar, momentum: Scalar = 0.0, weight_decay: Scalar = 0.0) -> None:
    """torch.optim.SGD's step: g += λ·w; buf = μ·buf + g (zero-initialised buffers make the first
    step buf = g, as torch's); w -= lr·buf."""
    decay = not (isinstance(weight_decay, float) and weight_decay == 0.0)
    for i, (p, g) in enumerate(zip(params, grads)):
        if decay:
            g = g.add(p, alpha=weight_decay) if isinstance(weight_decay, float) else \
                torch.addcmul(g, p, along(weight_decay, p))
        if momentum_buffers is not None:
            g = momentum_buffers[i].mul_(along(momentum, p)).add_(g)
        _scaled_add_(p, g, -lr)


@torch.no_grad()
def adam_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], corrections1: list[torch.Tensor],
                corrections2: list[torch.Tensor], *, lr: Scalar, beta1: Scalar, beta2: Scalar,
                eps: Scalar, weight_decay: Scalar = 0.0, scratch: list[torch.Tensor] | None = None) -> None:
    """torch.optim.Adam's step with a step count per element, kept as its bias corrections
    ``1 − β^count`` (``corrections1``/``corrections2``, shaped like the params; zero = count 0).
    ``scratch``: one work tensor per parameter, to spare fresh temporaries every step. (Each line
    is one ``torch._foreach`` call over all parameters: small networks are bound by per-call
    overhead.)"""
    def per(h: Scalar) -> Any:  # a float, or the per-replica values shaped for each parameter
        return h if isinstance(h, float) else [along(h, p) for p in params]

    if not (isinstance(weight_decay, float) and weight_decay == 0.0):
        grads = torch._foreach_add(grads, torch._foreach_mul(params, per(weight_decay)))
    torch._foreach_lerp_(exp_avgs, grads, per(1.0 - beta1))
    torch._foreach_mul_(exp_avg_sqs, per(beta2))
    torch._foreach_addcmul_(exp_avg_sqs, grads, torch._foreach_mul(grads, per(1.0 - beta2)))
    for c, beta in ((corrections1, beta1), (corrections2, beta2)):
        torch._foreach_mul_(c, per(beta))  # 1 − β^(count+1) = β·(1 − β^count) + (1 − β)
        torch._foreach_add_(c, per(1.0 - beta))
    if scratch is None:
        step = torch._foreach_div(exp_avg_sqs, corrections2)
    else:
        step = scratch
        torch._foreach_copy_(step, exp_avg_sqs)
        torch._foreach_div_(step, corrections2)
    torch._foreach_sqrt_(step)
    torch._foreach_add_(step, per(eps))
    torch._foreach_reciprocal_(step)
    torch._foreach_mul_(step, exp_avgs)
    torch._foreach_div_(step, corrections1)  # (m / c1) / (√(v / c2) + eps)
    torch._foreach_mul_(step, per(-lr))
    torch._foreach_add_(params, step)


@torch.no_grad()
def shrink_perturb(params: list[torch.Tensor], *, shrink: Scalar, noise_std: Scalar,
                   generators: Sequence[torch.Generator | None], noise: torch.Tensor) -> None:
    """Shrink and Perturb after an update: w ← shrink·w + σ·ε, ε ~ N(0, 1). Replica ``r`` draws
    ε for all its parameters as one block from ``generators[r]`` (``None``: no noise) into row
    ``r`` of ``noise`` (``(R, total size)``, zero rows stay zero), split in parameter order."""
    if not isinstance(shrink, float):
        torch._foreach_mul_(params, [along(shrink, p) for p in params])
    elif shrink != 1.0:
        torch._foreach_mul_(params, shrink)
    if all(g is None for g in generators):
        return
    for r, gen in enumerate(generators):
        if gen is not None:
            torch.randn(noise.shape[1], generator=gen, out=noise[r])
    start = 0
    for p in params:
        size = p[0].numel()
        _scaled_add_(p, noise[:, start:start + size].view(p.shape), noise_std)
        start += size


class ReferenceOptimizer(torch.optim.Optimizer):
    """SGD or Adam as :class:`~plasticity_gym_agents.config.OptimizerConfig` says, for networks trained by autograd
    (:func:`sgd_update` / :func:`adam_update` on the ``.grad``). Per-parameter state, shaped like the
    parameter: ``momentum_buffer``, or ``exp_avg``, ``exp_avg_sq``, ``bias_correction1``/``2``."""

    def __init__(self, params: Iterable[torch.Tensor], config: OptimizerConfig) -> None:
        super().__init__(params, {"lr": config.lr, "momentum": config.momentum, "betas": tuple(config.betas),
                                  "eps": config.eps, "weight_decay": config.weight_decay})
        self.kind = config.name

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201  (torch.optim.Optimizer's signature)
        loss = None if closure is None else closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if self.kind == "sgd":
                bufs = [self._state(p, "momentum_buffer") for p in params] if group["momentum"] > 0 else None
                sgd_update(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                           weight_decay=group["weight_decay"])
            else:
                states = ([self._state(p, k) for p in params]
                          for k in ("exp_avg", "exp_avg_sq", "bias_correction1", "bias_correction2"))
                adam_update(params, grads, *states, lr=group["lr"], beta1=group["betas"][0],
                            beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"])
        return loss

    def _state(self, p: torch.Tensor, key: str) -> torch.Tensor:
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[key]
