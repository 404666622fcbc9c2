"""PPO for continuous actions, with and without continual backprop (Dohare et al. 2024, the RL half).

One file for the algorithm, in the spirit of CleanRL: every hyperparameter is a field of
:class:`PPOConfig` (frozen, validated, unknown keys rejected), and the update reads top to bottom.

The paper's defaults (Methods, "Details and further analysis in reinforcement learning"; the
authors' ``lop/rl`` code and its ``cfg/ant/*.yml``):

* separate policy and value networks, each 2×256 ReLU, LeCun-uniform init
  (U(±√(3/fan_in)), every layer, biases zero); a state-independent log-std, initially 0;
* one Adam over both networks, step size 1e-4, no gradient clipping;
* rollouts of 2,048 steps; 10 epochs of 16 mini-batches; γ 0.99, GAE λ 0.95, clip 0.2;
  advantages normalized over the whole rollout; loss = policy loss + value loss (weight 1,
  no entropy bonus); no observation or reward normalization.

Named variants (:data:`PPO_VARIANTS`): ``ppo`` (Adam β 0.9/0.999), ``ppo-tuned`` (β1 = β2 = 0.99),
``ppo-l2`` (tuned, weight decay 1e-3), ``ppo-cbp`` (tuned, weight decay 1e-4, CBP ρ 1e-4,
maturity 10,000 on both networks' hidden layers), ``ppo-redo`` (tuned, weight decay 1e-4, ReDo
threshold 0.1 every 100 updates). CBP and ReDo run after every mini-batch update through the
project's one implementation (:class:`plasticity_gym_agents.cbp.ContinualBackprop`, :class:`plasticity_gym_agents.redo.ReDo`) on
the networks' declared unit groups; the optimizer is :class:`plasticity_gym_agents.optim.ReferenceOptimizer`,
whose Adam keeps a step count per element.

As the authors' code, the env receives the raw Gaussian sample (Ant's control cost is computed on
it; MuJoCo clamps the control itself); ``clip_actions=True`` sends it clipped to the action space
instead (the stored action and its log-prob stay the unclipped sample either way).

Differences from the authors' code, all deliberate and documented in docs/ppo.md:

* a time-limit truncation is bootstrapped with the value of the final observation; the authors'
  old-gym loop treated it as a termination, a known bug (Pardo et al. 2018, "Time limits in
  reinforcement learning"), which this project fixes;
* the authors' PPO used torch's Adam, so their PPO+CBP reset no Adam state when it replaced a
  unit. Here a replaced unit's Adam moments and per-element step counts are reset, so its slices
  restart their bias correction: this project's correction, not the authors' behaviour;
* old log-probs and values are computed for the whole rollout in one batched forward at update
  time (the networks do not change during collection, so these are the same numbers, faster).

The agent runs over a Gymnasium vector env of ``config.num_envs`` copies in ``SAME_STEP``
autoreset mode (:func:`make_vector_env`); see :class:`plasticity_gym_agents.protocol.EpisodicAgent` for the
interface a run loop drives, and :func:`train` for a plain training loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from plasticity_gym_agents.arrays import ACTIVATIONS
from plasticity_gym_agents.cbp import ContinualBackprop
from plasticity_gym_agents.config import CBPConfig, ConfigBase, OptimizerConfig, ReDoConfig, deep_merge
from plasticity_gym_agents.networks import MLP, resolve_device
from plasticity_gym_agents.optim import ReferenceOptimizer
from plasticity_gym_agents.protocol import EpisodicAgent
from plasticity_gym_agents.redo import ReDo
from plasticity_gym_agents.units import InitSpec, UnitGroup, set_init
from plasticity_gym.metrics import measure

__all__ = [
    "PPO_VARIANTS",
    "EpisodicAgent",
    "PPOAgent",
    "PPOConfig",
    "TrainResult",
    "gae",
    "gaussian_log_prob",
    "make_ppo_agent",
    "make_vector_env",
    "ppo_config",
    "train",
]


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open, hi_open)}


def _paper_adam() -> OptimizerConfig:
    return OptimizerConfig(name="adam", lr=1e-4, betas=(0.9, 0.999), eps=1e-8)


@dataclass(frozen=True)
class PPOConfig(ConfigBase):
    """Every hyperparameter of :class:`PPOAgent` (defaults: the paper's standard PPO).

    ``rollout_steps`` counts env steps of all ``num_envs`` copies together (each copy runs
    ``rollout_steps / num_envs`` steps per rollout). ``minibatches`` splits each epoch's shuffled
    rollout into that many mini-batches (sizes differ by at most one when it does not divide).
    ``max_grad_norm``: clip the global gradient norm (``None``: no clipping, as the paper).
    ``cbp`` / ``redo``: ``None`` = off; each runs after every mini-batch update on both networks.
    """

    hidden: tuple[int, ...] = field(default=(256, 256), metadata=_range(1))
    activation: str = field(default="relu", metadata={"choices": ACTIVATIONS})
    init: str = field(default="lecun", metadata={"choices": ("lecun", "kaiming")})
    log_std_init: float = 0.0
    num_envs: int = field(default=1, metadata=_range(1))
    rollout_steps: int = field(default=2048, metadata=_range(1))
    epochs: int = field(default=10, metadata=_range(1))
    minibatches: int = field(default=16, metadata=_range(1))
    gamma: float = field(default=0.99, metadata=_range(0.0, 1.0))
    gae_lambda: float = field(default=0.95, metadata=_range(0.0, 1.0))
    clip: float = field(default=0.2, metadata=_range(0.0, lo_open=True))
    normalize_advantages: bool = True
    value_coef: float = field(default=1.0, metadata=_range(0.0))
    entropy_coef: float = field(default=0.0, metadata=_range(0.0))
    max_grad_norm: float | None = field(default=None, metadata=_range(0.0, lo_open=True))
    clip_actions: bool = False  # the authors' code: the env gets the raw sample
    optimizer: OptimizerConfig = field(default_factory=_paper_adam)
    cbp: CBPConfig | None = None
    redo: ReDoConfig | None = None

    def __post_init__(self) -> None:
        if not _VALIDATING:  # from_dict checks keys, types and ranges, and builds sections from dicts
            _VALIDATING.append(True)
            try:
                checked = type(self).from_dict(self.to_dict())
            finally:
                _VALIDATING.clear()
            for name in self.__dataclass_fields__:
                object.__setattr__(self, name, getattr(checked, name))
        if self.rollout_steps % self.num_envs:
            raise ValueError(f"PPOConfig.rollout_steps: {self.rollout_steps} is not a multiple of "
                             f"num_envs {self.num_envs}; each env copy must run the same number of steps")
        if self.rollout_steps < self.minibatches:
            raise ValueError(f"PPOConfig.minibatches: {self.minibatches} mini-batches need at least as "
                             f"many rollout steps, got rollout_steps {self.rollout_steps}")
        if self.cbp is not None and self.redo is not None:
            raise ValueError("PPOConfig: cbp and redo both re-initialise hidden units; configure one "
                             "of them (set the other section to None)")


_VALIDATING: list[bool] = []  # non-empty while __post_init__ validates through from_dict


_TUNED = {"optimizer": {"betas": [0.99, 0.99]}}
PPO_VARIANTS: dict[str, dict[str, Any]] = {
    "ppo": {},
    "ppo-tuned": _TUNED,
    "ppo-l2": deep_merge(_TUNED, {"optimizer": {"weight_decay": 1e-3}}),
    "ppo-cbp": deep_merge(_TUNED, {"optimizer": {"weight_decay": 1e-4},
                                   "cbp": {"replacement_rate": 1e-4, "maturity": 10_000, "decay": 0.99,
                                           "utility": "contribution"}}),
    "ppo-redo": deep_merge(_TUNED, {"optimizer": {"weight_decay": 1e-4},
                                    "redo": {"threshold": 0.1, "period": 100}}),
}
"""The paper's PPO variants, as overrides of :class:`PPOConfig`'s defaults."""


def ppo_config(name: str, overrides: dict[str, Any] | None = None) -> PPOConfig:
    """The validated config of variant ``name`` (one of :data:`PPO_VARIANTS`), ``overrides`` on top
    (a nested dict, e.g. ``{"optimizer": {"lr": 3e-4}, "num_envs": 4}``)."""
    if name not in PPO_VARIANTS:
        raise ValueError(f"unknown PPO variant {name!r}; valid: {', '.join(PPO_VARIANTS)}")
    return PPOConfig.from_dict(deep_merge(deep_merge(PPOConfig().to_dict(), PPO_VARIANTS[name]), overrides))


# -- the math -----------------------------------------------------------------------------------
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, exp(log_std)²) of a diagonal Gaussian, summed over the action dims."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, next_value: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and value targets of a rollout.

    ``rewards``, ``values``, ``dones``: ``(T, N)``; ``dones[t]`` is 1 when step ``t`` ended its
    episode (then nothing after it is bootstrapped: a truncated step's reward must already include
    γ·V(final observation)). ``next_value``: ``(N,)``, V of the observation after the last step.
    Returns ``(advantages, returns)``, returns = advantages + values.
    """
    # A Python loop over time on numpy rows: a tenth of the per-call cost of torch's.
    r, v, d = (x.detach().cpu().numpy() for x in (rewards, values, dones))
    adv = np.zeros_like(r)
    last = np.zeros_like(r[0])
    next_v = next_value.detach().cpu().numpy()
    for t in reversed(range(r.shape[0])):
        live = 1.0 - d[t]
        delta = r[t] + gamma * next_v * live - v[t]
        last = delta + gamma * lam * live * last
        adv[t] = last
        next_v = v[t]
    advantages = torch.as_tensor(adv, device=rewards.device)
    return advantages, advantages + values


# -- the agent ----------------------------------------------------------------------------------
def _mlp(n_in: int, n_out: int, config: PPOConfig, generator: torch.Generator) -> MLP:
    net = MLP(n_in, config.hidden, n_out, activation=config.activation, generator=generator)
    if config.init == "lecun":  # the authors' code: U(±√(3/fan_in)) on every layer, head included
        for layer in [*net.layers, net.head]:
            set_init(layer, InitSpec.kaiming_uniform(layer.in_features, 1.0), generator)
    return net


def _named_groups(prefix: str, net: MLP) -> list[UnitGroup]:
    return [UnitGroup(f"{prefix}.{g.name}", g.producer, g.activation, g.consumers) for g in net.cbp_groups()]


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [p for p in net.parameters() if p.dim() >= 2]


class PPOAgent:
    """PPO with a Gaussian policy for a continuous (``Box``) action space; implements
    :class:`EpisodicAgent`.

    ``observation_space`` and ``action_space`` are a single env's (a vector env's
    ``single_observation_space``/``single_action_space``). Attributes: ``policy`` (the mean
    network, an :class:`plasticity_gym_agents.networks.MLP`), ``log_std``, ``value``, ``optimizer`` (one Adam over
    both networks and the log-std), ``cbp`` / ``redo`` (or ``None``), ``steps`` (env steps seen,
    all copies), ``updates`` (rollouts learned from), ``minibatch_updates``.
    """

    uses_task_boundaries = False

    def __init__(self, name: str, config: PPOConfig, observation_space: gym.Space, action_space: gym.Space,
                 *, seed: int = 0, device: str = "cpu") -> None:
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"PPOAgent needs a 1-D Box action space (continuous control), got {action_space}")
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"PPOAgent needs a 1-D Box observation space, got {observation_space}; "
                             "flatten other observations with gymnasium.wrappers.FlattenObservation")
        self.name = name
        self.config = config
        self.seed = int(seed)
        self.observation_space = observation_space
        self.action_space = action_space
        self._requested_device = str(device)
        self.device = resolve_device(device)
        self.num_envs = config.num_envs
        self.obs_dim = int(observation_space.shape[0])
        self.act_dim = int(action_space.shape[0])
        self._low = np.asarray(action_space.low, dtype=np.float32)
        self._high = np.asarray(action_space.high, dtype=np.float32)

        # Independent streams: network init, action noise, mini-batch order, unit re-inits.
        init_seed, action_seed, shuffle_seed, reinit_seed = np.random.SeedSequence(self.seed).generate_state(4)
        init_gen = torch.Generator().manual_seed(int(init_seed))
        self.policy = _mlp(self.obs_dim, self.act_dim, config, init_gen).to(self.device)
        self.value = _mlp(self.obs_dim, 1, config, init_gen).to(self.device)
        self.log_std = nn.Parameter(torch.full((self.act_dim,), config.log_std_init, device=self.device))
        self.action_gen = torch.Generator(self.device).manual_seed(int(action_seed))
        self.shuffle_gen = torch.Generator(self.device).manual_seed(int(shuffle_seed))
        self.reinit_gen = torch.Generator(self.device).manual_seed(int(reinit_seed))
        params = [*self.policy.parameters(), self.log_std, *self.value.parameters()]
        self.optimizer = ReferenceOptimizer(params, config.optimizer)
        groups = _named_groups("policy", self.policy) + _named_groups("value", self.value)
        self.cbp = None if config.cbp is None else ContinualBackprop(
            groups, config.cbp, optimizer=self.optimizer, generator=self.reinit_gen)
        self.redo = None if config.redo is None else ReDo(
            groups, config.redo, optimizer=self.optimizer, generator=self.reinit_gen)

        self.steps = 0
        self.updates = 0
        self.minibatch_updates = 0
        self.replacements = 0
        self.last_weight_change = math.nan
        self._max_weight_change = math.nan  # since the last diagnostics() call
        self._horizon = config.rollout_steps // config.num_envs
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._probe_obs: torch.Tensor | None = None
        self._clear_rollout()

    # -- acting and storing -------------------------------------------------------------------
    def _clear_rollout(self) -> None:
        t, n, dev = self._horizon, self.num_envs, self.device
        self._obs = torch.zeros(t, n, self.obs_dim, device=dev)
        self._actions = torch.zeros(t, n, self.act_dim, device=dev)
        self._rewards = torch.zeros(t, n, device=dev)
        self._dones = torch.zeros(t, n, device=dev)
        self._final: list[tuple[int, int, np.ndarray]] = []  # (t, env, final obs) of truncated steps
        self._t = 0

    def _batch(self, observation: np.ndarray, what: str) -> torch.Tensor:
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32), device=self.device)
        if obs.shape != (self.num_envs, self.obs_dim):
            raise ValueError(f"{what}: expected observations of shape ({self.num_envs}, {self.obs_dim}) "
                             f"(num_envs copies of the env), got {tuple(obs.shape)}")
        return obs

    @torch.no_grad()
    def act(self, observation: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        """Sample an action for every env copy: ``(num_envs, act_dim)``, the raw Gaussian sample
        (clipped to the action space when ``clip_actions`` is on; learning uses the raw sample)."""
        if self._pending is not None:
            raise RuntimeError("act() was called twice without observe(); pass each step's outcome "
                               "to observe() before asking for the next action")
        obs = self._batch(observation, "act")
        mean = self.policy(obs)
        noise = torch.randn(mean.shape, generator=self.action_gen, device=self.device)
        action = mean + torch.exp(self.log_std) * noise
        self._pending = (obs, action)
        out = action.cpu().numpy()
        return np.clip(out, self._low, self._high) if self.config.clip_actions else out

    def observe(self, observation: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray, info: dict[str, Any]) -> dict[str, Any] | None:
        """Store the outcome of the last :meth:`act` (the vector env's step outputs, unchanged); at
        the end of a rollout, learn from it and return the update's statistics, else ``None``:
        ``policy_loss``, ``value_loss``, ``approx_kl``, ``clip_fraction`` (means over the
        mini-batches), ``weight_change`` (Σ|Δw| of the policy's weight matrices over the update),
        ``replacements`` and ``replaced_units`` ({group: unit indices}, CBP or ReDo), ``std`` (mean
        action standard deviation), ``update`` and ``steps`` (counts so far)."""
        if self._pending is None:
            raise RuntimeError("observe() without a preceding act(); call act() for each step first")
        obs, action = self._pending
        self._pending = None
        terminated = np.asarray(terminated, dtype=bool).reshape(self.num_envs)
        truncated = np.asarray(truncated, dtype=bool).reshape(self.num_envs)
        t = self._t
        self._obs[t] = obs
        self._actions[t] = action
        self._rewards[t] = torch.as_tensor(np.asarray(reward, dtype=np.float32).reshape(self.num_envs),
                                           device=self.device)
        self._dones[t] = torch.as_tensor(terminated | truncated, device=self.device)
        cut = truncated & ~terminated  # a time limit: bootstrap from the final observation
        if cut.any():
            final = info.get("final_obs") if isinstance(info, dict) else None
            if final is None:
                raise ValueError("observe: an episode was truncated but info has no 'final_obs'; run the "
                                 "agent on a vector env in SAME_STEP autoreset mode (plasticity_gym_agents.ppo.make_vector_env)")
            for i in np.flatnonzero(cut):
                self._final.append((t, int(i), np.asarray(final[i], dtype=np.float32)))
        self._t += 1
        self.steps += self.num_envs
        if self._t < self._horizon:
            return None
        stats = self._learn(self._batch(observation, "observe"))
        self._clear_rollout()
        return stats

    # -- learning -----------------------------------------------------------------------------
    def _learn(self, next_obs: torch.Tensor) -> dict[str, Any]:
        cfg = self.config
        t, n = self._horizon, self.num_envs
        obs = self._obs.reshape(t * n, self.obs_dim)
        actions = self._actions.reshape(t * n, self.act_dim)
        with torch.no_grad():
            # The networks have not changed since these actions were sampled: one batched forward
            # gives the same log-probs and values as storing them step by step.
            old_logp = gaussian_log_prob(self.policy(obs), self.log_std, actions)
            values = self.value(obs).reshape(t, n)
            next_value = self.value(next_obs).reshape(n)
            rewards = self._rewards.clone()
            if self._final:
                final = torch.as_tensor(np.stack([f for _, _, f in self._final]), device=self.device)
                v_final = self.value(final).reshape(-1)
                for k, (step, env, _) in enumerate(self._final):
                    rewards[step, env] += cfg.gamma * v_final[k]
            advantages, returns = gae(rewards, values, self._dones, next_value, cfg.gamma, cfg.gae_lambda)
            advantages, returns = advantages.reshape(-1), returns.reshape(-1)
            if cfg.normalize_advantages:  # over the whole rollout, as the authors' code
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            before = [w.detach().clone() for w in _weights(self.policy)]

        replaced: dict[str, list[int]] = {}
        # Each mini-batch's statistics, read once after the update (not one host sync per value).
        stat_rows: list[torch.Tensor] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(t * n, generator=self.shuffle_gen, device=self.device)
            for idx in torch.tensor_split(order, cfg.minibatches):
                mb_obs = obs[idx]
                logp = gaussian_log_prob(self.policy(mb_obs), self.log_std, actions[idx])
                log_ratio = logp - old_logp[idx]
                ratio = torch.exp(log_ratio)
                adv = advantages[idx]
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip)).mean()
                value_loss = (self.value(mb_obs).squeeze(-1) - returns[idx]).square().mean()
                loss = policy_loss + cfg.value_coef * value_loss
                if cfg.entropy_coef:  # a Gaussian's entropy depends only on its log-std
                    loss = loss - cfg.entropy_coef * (self.log_std + 0.5 + _LOG_SQRT_2PI).sum()
                self.optimizer.zero_grad()
                loss.backward()
                if cfg.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], cfg.max_grad_norm)
                self.optimizer.step()
                self.minibatch_updates += 1
                # Unit surgery after each mini-batch update, on this mini-batch's activations
                # (captured by the groups' forward hooks during the two forwards above).
                for method in (self.cbp, self.redo):
                    if method is not None:
                        for group, units in method.step().items():
                            replaced.setdefault(group, []).extend(units)
                with torch.no_grad():
                    stat_rows.append(torch.stack((policy_loss.detach(), value_loss.detach(),
                                                  ((ratio - 1.0) - log_ratio).mean(),
                                                  ((ratio - 1.0).abs() > cfg.clip).float().mean())))

        with torch.no_grad():
            change = sum(float((w - b).abs().sum()) for w, b in zip(_weights(self.policy), before))
        self.updates += 1
        n_replaced = sum(len(v) for v in replaced.values())
        self.replacements += n_replaced
        self.last_weight_change = change
        self._max_weight_change = change if math.isnan(self._max_weight_change) else max(
            self._max_weight_change, change)
        self._probe_obs = obs.detach().clone()
        columns = zip(*torch.stack(stat_rows).tolist())  # summed in float64, in mini-batch order
        stats = {k: sum(column) / len(stat_rows)
                 for k, column in zip(("policy_loss", "value_loss", "approx_kl", "clip_fraction"), columns)}
        stats.update(update=self.updates, steps=self.steps, weight_change=change, replacements=n_replaced,
                     replaced_units=replaced,
                     std=float(torch.exp(self.log_std.detach()).mean()))
        return stats

    # -- diagnostics --------------------------------------------------------------------------
    def probe_model(self) -> nn.Module:
        """The policy network (observation → action mean), for plasticity probes."""
        return self.policy

    def diagnostics(self, probe_observations: np.ndarray | None = None) -> dict[str, Any]:
        """The RL metrics of the policy (the metrics definitions (docs/metrics.md), Extended Data Fig. 5c), on ``probe_observations``
        (default: the observations of the last rollout learned from):

        ``dormant_pct`` (% of the policy's hidden units active on ≤ 1% of the probe),
        ``stable_rank`` (of its last hidden layer), ``avg_weight_magnitude`` (mean |w| over its
        weight matrices), ``max_weight_change`` (the largest Σ|Δw| over the policy's weight matrices
        in one update — one rollout's epochs — since the previous call; NaN if none), plus
        ``steps``, ``updates`` and ``replacements`` (units re-initialised so far by CBP or ReDo).
        """
        if probe_observations is None:
            if self._probe_obs is None:
                raise RuntimeError("diagnostics: no rollout learned from yet; pass probe_observations")
            probe = self._probe_obs
        else:
            probe = torch.as_tensor(np.asarray(probe_observations, dtype=np.float32), device=self.device)
        m = measure(self.policy, probe)
        out = {"dormant_pct": m["dormant_pct"], "stable_rank": m["stable_rank"],
               "avg_weight_magnitude": m["avg_weight_magnitude"], "max_weight_change": self._max_weight_change,
               "steps": self.steps, "updates": self.updates, "replacements": self.replacements}
        self._max_weight_change = math.nan
        return out

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: networks, optimizer, CBP/ReDo statistics, random
        streams, the partly filled rollout and the counters."""
        if self._pending is not None:
            raise RuntimeError("state_dict: an action is waiting for observe(); save between steps")
        t = self._t
        return {
            "name": self.name, "config": self.config.to_dict(), "seed": self.seed,
            "policy": self.policy.state_dict(), "value": self.value.state_dict(),
            "log_std": self.log_std.detach().clone(), "optimizer": self.optimizer.state_dict(),
            "cbp": None if self.cbp is None else self.cbp.state_dict(),
            "redo": None if self.redo is None else self.redo.state_dict(),
            "generators": {k: getattr(self, k).get_state() for k in ("action_gen", "shuffle_gen", "reinit_gen")},
            "rollout": {"t": t, "obs": self._obs[:t].clone(), "actions": self._actions[:t].clone(),
                        "rewards": self._rewards[:t].clone(), "dones": self._dones[:t].clone(),
                        "final": list(self._final)},
            "counters": {"steps": self.steps, "updates": self.updates,
                         "minibatch_updates": self.minibatch_updates, "replacements": self.replacements,
                         "last_weight_change": self.last_weight_change,
                         "max_weight_change": self._max_weight_change},
            "probe_obs": None if self._probe_obs is None else self._probe_obs.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if PPOConfig.from_dict(state["config"]) != self.config:
            raise ValueError("load_state_dict: the checkpoint was made with another config; build the "
                             "agent with the checkpoint's config (state['config'])")
        with torch.no_grad():
            self.policy.load_state_dict(state["policy"])
            self.value.load_state_dict(state["value"])
            self.log_std.copy_(state["log_std"])
        self.optimizer.load_state_dict(state["optimizer"])
        for method, key in ((self.cbp, "cbp"), (self.redo, "redo")):
            if method is not None:
                method.load_state_dict(state[key])
        for k, s in state["generators"].items():
            getattr(self, k).set_state(s)
        self._clear_rollout()
        r = state["rollout"]
        t = int(r["t"])
        self._obs[:t], self._actions[:t] = r["obs"], r["actions"]
        self._rewards[:t], self._dones[:t] = r["rewards"], r["dones"]
        self._final = list(r["final"])
        self._t = t
        c = state["counters"]
        self.steps, self.updates = int(c["steps"]), int(c["updates"])
        self.minibatch_updates, self.replacements = int(c["minibatch_updates"]), int(c["replacements"])
        self.last_weight_change, self._max_weight_change = c["last_weight_change"], c["max_weight_change"]
        p = state["probe_obs"]
        self._probe_obs = None if p is None else p.to(self.device)
        self._pending = None

    def __getstate__(self) -> dict[str, Any]:
        # Rebuilt from its config and state: the CBP/ReDo forward hooks are closures.
        return {"name": self.name, "config": self.config, "observation_space": self.observation_space,
                "action_space": self.action_space, "seed": self.seed, "device": self._requested_device,
                "state": self.state_dict()}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__init__(d["name"], d["config"], d["observation_space"], d["action_space"], seed=d["seed"],
                      device=d["device"])
        self.load_state_dict(d["state"])


def make_ppo_agent(name: str, observation_space: gym.Space, action_space: gym.Space, *,
                   overrides: dict[str, Any] | None = None, seed: int = 0, device: str = "cpu") -> PPOAgent:
    """Build PPO variant ``name`` (one of :data:`PPO_VARIANTS`) for a single env's spaces."""
    return PPOAgent(name, ppo_config(name, overrides), observation_space, action_space, seed=seed, device=device)


# -- running it ---------------------------------------------------------------------------------
def make_vector_env(env_id: str, num_envs: int, **env_kwargs: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``gym.make(env_id, **env_kwargs)`` stepped in this process, in the
    ``SAME_STEP`` autoreset mode :class:`EpisodicAgent` expects (a finished copy returns its next
    episode's first observation at once, the final one in ``info["final_obs"]``): the env's own
    vector env (``gym.make_vec``'s ``vector_entry_point``) where it has one in that mode, else a
    ``SyncVectorEnv``."""
    spec = gym.spec(env_id)
    if spec.vector_entry_point is not None:
        venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs)
        if venv.metadata.get("autoreset_mode") == gym.vector.AutoresetMode.SAME_STEP:
            return venv
        venv.close()
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **env_kwargs)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


@dataclass
class TrainResult:
    """What :func:`train` returns. ``episodes``: ``(lifetime step, return)`` of every finished
    episode, in order (the step is the env-step count, all copies, when it ended).
    ``updates``: each update's statistics. ``seconds``: wall time of the whole loop
    (collection and updates); ``update_seconds``: the part spent in updates."""

    agent: PPOAgent
    episodes: list[tuple[int, float]]
    updates: list[dict[str, Any]]
    steps: int
    seconds: float
    update_seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else math.nan

    def mean_return(self, last: int) -> float:
        """Mean return of the last ``last`` finished episodes (NaN if none)."""
        tail = [r for _, r in self.episodes[-last:]]
        return float(np.mean(tail)) if tail else math.nan


def train(env_id: str, config: PPOConfig, total_steps: int, seed: int = 0, *, name: str = "ppo",
          env_kwargs: dict[str, Any] | None = None, device: str = "cpu",
          on_update: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train a fresh :class:`PPOAgent` on ``config.num_envs`` copies of ``env_id`` for
    ``total_steps`` env steps (all copies together; rounded up to whole vector steps).
    Copy ``i`` is reset with seed ``seed + i``. ``on_update`` is called with each update's stats."""
    venv = make_vector_env(env_id, config.num_envs, **(env_kwargs or {}))
    agent = PPOAgent(name, config, venv.single_observation_space, venv.single_action_space,
                     seed=seed, device=device)
    episodes: list[tuple[int, float]] = []
    updates: list[dict[str, Any]] = []
    running = np.zeros(config.num_envs)
    update_seconds = 0.0
    start = time.perf_counter()
    obs, info = venv.reset(seed=seed)
    try:
        while agent.steps < total_steps:
            action = agent.act(obs, info)
            obs, reward, terminated, truncated, info = venv.step(action)
            running += reward
            for i in np.flatnonzero(terminated | truncated):
                episodes.append((agent.steps + config.num_envs, float(running[i])))
                running[i] = 0.0
            t0 = time.perf_counter()
            stats = agent.observe(obs, reward, terminated, truncated, info)
            if stats is not None:
                update_seconds += time.perf_counter() - t0
                updates.append(stats)
                if on_update is not None:
                    on_update(stats)
    finally:
        venv.close()
    return TrainResult(agent, episodes, updates, agent.steps, time.perf_counter() - start, update_seconds)
