"""The optimizer updates — SGD (momentum, L2) and Adam — once, over an optional replica axis.

:func:`sgd_update` and :func:`adam_update` act on lists of parameters, gradients and state
tensors; a hyperparameter is a float (every replica alike) or a ``(R,)`` tensor (one value per
replica, the parameters' leading axis). The learner core calls them on its stacked weights;
:class:`ReferenceOptimizer` wraps them as a ``torch.optim.Optimizer`` for autograd networks.

Adam keeps a step count per element as its bias corrections ``1 − β^count`` (``bias_correction1``/
``2``, zero at count 0), updated in place as ``c ← β·c + (1 − β)``. Unit surgery zeroes them with
the moments, so a fresh slice restarts its bias correction (the authors' corrected AdamGnT);
without surgery the update is torch.optim.Adam's (to float rounding).

The methods proposed since the paper that act on the update live here too, once, over the same
replica axis: L2 Init's pull toward the initial parameters (:func:`l2_init_gradient`), weight
clipping (:func:`clip_weights_`, bounds from :func:`clip_bound`) and UPGD (:func:`upgd_update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from plasticity_gym_agents.config import L2InitConfig, OptimizerConfig, ShrinkPerturbConfig, UPGDConfig, WeightClipConfig
from plasticity_gym_agents.units import InitSpec, get_init

__all__ = ["ReferenceOptimizer", "Scalar", "adam_update", "clip_bound", "clip_weights_", "draw_noise",
           "l2_init_gradient", "module_clip_bounds", "replica_scalar", "sgd_update", "shrink_perturb", "shrink_perturb_decays", "upgd_update"]

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
def draw_noise(noise: torch.Tensor, generators: Sequence[torch.Generator | None]) -> None:
    """Replica ``r``'s standard normal noise for all its parameters, drawn as one block from
    ``generators[r]`` into row ``r`` of ``noise`` (``(R, total size)``); ``None`` leaves the row as
    it is (zero)."""
    for r, gen in enumerate(generators):
        if gen is not None:
            torch.randn(noise.shape[1], generator=gen, out=noise[r])


def shrink_perturb_decays(optimizer: OptimizerConfig, sp: ShrinkPerturbConfig | None) -> tuple[float, float]:
    """Where Shrink and Perturb's shrink λ (``sp.weight_decay``) enters the update, as
    ``(coupled, after_step)``: the optimizer's coupled weight decay, and the λ of the shrink
    ``w ← (1 − lr·λ)·w`` after each step. With SGD momentum λ joins SGD's coupled weight decay,
    inside the momentum buffer, as in the authors' ``SGD(weight_decay=λ, momentum=μ)`` (a
    steady-state shrink of lr·λ/(1 − μ) per step: ten times lr·λ at μ 0.9); otherwise the weights
    shrink after the step (for plain SGD the same update as coupled weight decay)."""
    if sp is None:
        return optimizer.weight_decay, 0.0
    if optimizer.name == "sgd" and optimizer.momentum > 0.0:
        return optimizer.weight_decay + sp.weight_decay, 0.0
    return optimizer.weight_decay, sp.weight_decay


@torch.no_grad()
def shrink_perturb(params: list[torch.Tensor], *, shrink: Scalar, noise_std: Scalar,
                   noise: torch.Tensor | None) -> None:
    """Shrink and Perturb after an update: w ← shrink·w + σ·ε, with ε the rows of ``noise`` (from
    :func:`draw_noise`; ``None``: no noise) split in parameter order. No random draw happens here,
    so the learner core runs it inside its compiled update step."""
    if not isinstance(shrink, float):
        torch._foreach_mul_(params, [along(shrink, p) for p in params])
    elif shrink != 1.0:
        torch._foreach_mul_(params, shrink)
    if noise is None:
        return
    start = 0
    for p in params:
        size = p[0].numel()
        # (one parameter that spans the noise, a flat layout's, takes it as is: a view costs as much as the add)
        _scaled_add_(p, noise if p.shape == noise.shape else noise[:, start:start + size].view(p.shape), noise_std)
        start += size


def _per(h: Scalar, params: list[torch.Tensor]) -> Any:
    """A float, or the per-replica values shaped for each parameter (``torch._foreach`` style)."""
    return h if isinstance(h, float) else [along(h, p) for p in params]


@torch.no_grad()
def l2_init_gradient(grads: list[torch.Tensor], params: list[torch.Tensor], initial: list[torch.Tensor], *,
                     strength: Scalar) -> list[torch.Tensor]:
    """L2 Init (Kumar et al. 2024): new gradients ``g + λ·(θ − θ₀)``, θ₀ = ``initial`` (shaped like
    the params). The optimizer then steps on them as on any gradient (coupled, as L2 is here)."""
    pull = torch._foreach_sub(params, initial)
    torch._foreach_mul_(pull, _per(strength, params))
    return torch._foreach_add(grads, pull)


def clip_bound(spec: InitSpec) -> float:
    """Weight clipping's ``b`` for a layer drawn from ``spec``: a uniform init's bound; for a
    normal init (std σ) σ·√3, the bound of the uniform distribution with the same variance."""
    return spec.bound if spec.kind == "uniform" else spec.bound * math.sqrt(3.0)


def module_clip_bounds(module: torch.nn.Module) -> dict[torch.Tensor, float]:
    """``{parameter: b}`` for every weight and bias of the layers of ``module``: a layer tagged with
    its initial distribution (:func:`plasticity_gym_agents.units.set_init`) gets :func:`clip_bound`
    of it; an untagged ``nn.Linear``/``nn.Conv*`` torch's default init bound 1/√fan_in (as in
    Elsayed et al.'s code). Other parameters (normalisation scales and shifts) are absent: not clipped."""
    bounds: dict[torch.Tensor, float] = {}
    for m in module.modules():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        try:
            b = clip_bound(get_init(m))
        except ValueError:
            if not isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                continue
            b = 1.0 / math.sqrt(weight[0].numel())
        for p in (weight, getattr(m, "bias", None)):
            if isinstance(p, torch.Tensor):
                bounds[p] = b
    return bounds


@torch.no_grad()
def clip_weights_(params: list[torch.Tensor], bounds: Sequence[float], *, kappa: Scalar) -> None:
    """Weight clipping (Elsayed et al. 2024): clamp each ``params[i]`` to ``±kappa·bounds[i]`` in
    place (``kappa`` a float or one per replica)."""
    for p, b in zip(params, bounds):
        if isinstance(kappa, float):
            p.clamp_(-kappa * b, kappa * b)
        else:
            limit = along(kappa * b, p)
            torch.minimum(p, limit, out=p)
            torch.maximum(p, -limit, out=p)


# η below this counts as "no positive utility": every weight's gate stays open.
_UPGD_MIN_SCALE = float(torch.finfo(torch.float32).tiny)


@torch.no_grad()
def upgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], utilities: list[torch.Tensor],
                corrections: list[torch.Tensor], *, lr: Scalar, beta: Scalar, noise_std: Scalar,
                weight_decay: Scalar, generators: Sequence[torch.Generator | None],
                noise: torch.Tensor) -> None:
    """UPGD (Elsayed and Mahmood 2024; the authors' first-order global UPGD), on ``(R, ...)``
    parameters: per weight, utility ``u ← β·u + (1 − β)·(−g·w)``; per replica η = the largest
    ``u`` over all its parameters (uncorrected, as in the authors' code; floored at the smallest
    positive float, so a network without a positive utility gates nothing instead of dividing by
    zero); then ``w ← (1 − lr·wd)·w − lr·(g + σ·ε)·(1 − sigmoid(û/η))``, ``û = u / c`` the
    bias-corrected utility. ``c`` (``corrections``) is ``1 − β^count`` per element, kept like
    Adam's (:func:`adam_update`), so unit surgery that zeroes a slice restarts its correction.
    ε as in :func:`shrink_perturb`: replica ``r`` draws one block from ``generators[r]`` (``None``:
    no noise) into row ``r`` of ``noise`` (``(R, total size)``), split in parameter order."""
    b = _per(beta, params)
    torch._foreach_mul_(utilities, b)
    torch._foreach_add_(utilities, torch._foreach_mul(torch._foreach_mul(grads, params), _per(beta - 1.0, params)))
    torch._foreach_mul_(corrections, b)  # 1 − β^(count+1) = β·(1 − β^count) + (1 − β)
    torch._foreach_add_(corrections, _per(1.0 - beta, params))
    eta = torch.stack([u.flatten(1).amax(1) for u in utilities]).amax(0).clamp_(min=_UPGD_MIN_SCALE)
    noisy = any(gen is not None for gen in generators)
    for r, gen in enumerate(generators):
        if gen is not None:
            torch.randn(noise.shape[1], generator=gen, out=noise[r])
    decay = not (isinstance(weight_decay, float) and weight_decay == 0.0)
    start = 0
    for p, g, u, c in zip(params, grads, utilities, corrections):
        size = p[0].numel()
        gate = torch.sigmoid_(u / c / along(eta, p)).neg_().add_(1.0)  # 1 − scaled utility
        if noisy:
            g = g.clone()
            _scaled_add_(g, noise[:, start:start + size].view(p.shape), noise_std)
        start += size
        if decay:
            p.mul_(along(1.0 - lr * weight_decay, p))
        _scaled_add_(p, g.mul_(gate) if noisy else g * gate, -lr)


class ReferenceOptimizer(torch.optim.Optimizer):
    """SGD, Adam or UPGD for networks trained by autograd: :func:`sgd_update` / :func:`adam_update` /
    :func:`upgd_update` on the ``.grad``, as :class:`~plasticity_gym_agents.config.OptimizerConfig`
    (and ``upgd``) says; with ``l2_init`` the gradients first gain L2 Init's pull toward the
    parameters as they were at construction, with ``weight_clip`` every parameter in
    ``clip_bounds`` (:func:`module_clip_bounds` of the network) is clamped after each step.
    Per-parameter state, shaped like the parameter: ``momentum_buffer``, or ``exp_avg``,
    ``exp_avg_sq``, ``bias_correction1``/``2``, or UPGD's ``utility``/``utility_correction``.
    θ₀ (``initial_params`` in the state dict) is kept apart from that state, so unit surgery, which
    zeroes a slice of every per-element state, leaves it alone. UPGD's noise needs ``generator``."""

    def __init__(self, params: Iterable[torch.Tensor], config: OptimizerConfig, *,
                 l2_init: L2InitConfig | None = None, weight_clip: WeightClipConfig | None = None,
                 clip_bounds: dict[torch.Tensor, float] | None = None, upgd: UPGDConfig | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(params, {"lr": config.lr, "momentum": config.momentum, "betas": tuple(config.betas),
                                  "eps": config.eps, "weight_decay": config.weight_decay})
        if upgd is not None and (config.name != "sgd" or config.momentum != 0.0 or config.weight_decay != 0.0):
            raise ValueError("UPGD replaces the SGD step and has its own weight decay: pass an sgd "
                             "OptimizerConfig with momentum 0 and weight_decay 0")
        if upgd is not None and upgd.noise_std > 0 and generator is None:
            raise ValueError("UPGD's noise needs a seeded generator: pass generator=torch.Generator(device)")
        if weight_clip is not None and clip_bounds is None:
            raise ValueError("weight_clip needs clip_bounds: pass module_clip_bounds(network)")
        self.kind = "upgd" if upgd is not None else config.name
        self.upgd, self.weight_clip, self.l2_init, self.generator = upgd, weight_clip, l2_init, generator
        every = [p for group in self.param_groups for p in group["params"]]
        self._initial = {p: p.detach().clone() for p in every} if l2_init is not None else None
        self._clip = [(p, clip_bounds[p]) for p in every if p in clip_bounds] if weight_clip is not None else []

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201  (torch.optim.Optimizer's signature)
        loss = None if closure is None else closure()
        if self.kind == "upgd" and len(self.param_groups) > 1:
            raise ValueError("UPGD scales utilities over the whole network: use one parameter group")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            if self._initial is not None:
                grads = l2_init_gradient(grads, params, [self._initial[p] for p in params],
                                         strength=self.l2_init.strength)
            if self.kind == "sgd":
                bufs = [self._state(p, "momentum_buffer") for p in params] if group["momentum"] > 0 else None
                sgd_update(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                           weight_decay=group["weight_decay"])
            elif self.kind == "adam":
                states = ([self._state(p, k) for p in params]
                          for k in ("exp_avg", "exp_avg_sq", "bias_correction1", "bias_correction2"))
                adam_update(params, grads, *states, lr=group["lr"], beta1=group["betas"][0],
                            beta2=group["betas"][1], eps=group["eps"], weight_decay=group["weight_decay"])
            elif params:  # UPGD over a replica axis of one
                u = self.upgd
                one = [p.unsqueeze(0) for p in params]
                upgd_update(one, [g.unsqueeze(0) for g in grads],
                            [self._state(p, "utility").unsqueeze(0) for p in params],
                            [self._state(p, "utility_correction").unsqueeze(0) for p in params],
                            lr=group["lr"], beta=u.beta_utility, noise_std=u.noise_std, weight_decay=u.weight_decay,
                            generators=[self.generator if u.noise_std > 0 else None],
                            noise=torch.empty(1, sum(p.numel() for p in params), device=params[0].device)
                            if u.noise_std > 0 else torch.empty(1, 0))
        if self._clip:
            clip_weights_([p for p, _ in self._clip], [b for _, b in self._clip], kappa=self.weight_clip.kappa)
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._initial is not None:
            state["initial_params"] = [t.clone() for t in self._initial.values()]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        initial = state_dict.pop("initial_params", None)
        super().load_state_dict(state_dict)
        if self._initial is not None:
            if initial is None or len(initial) != len(self._initial):
                raise ValueError("optimizer state has no matching initial_params (L2 Init's θ₀)")
            for dst, src in zip(self._initial.values(), initial):
                dst.copy_(src)

    def _state(self, p: torch.Tensor, key: str) -> torch.Tensor:
        state = self.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[key]
