"""AntFriction-v0: MuJoCo Ant whose friction changes over its lifetime ("Slippery Ant").

Dohare et al. 2024, Methods, "Details and further analysis in reinforcement learning".
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.utils import seeding
from gymnasium.envs.mujoco import MujocoEnv
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from plasticity_gym.envs.stream import DEFAULT_SCALE, resolve_scale_config

# Ant's default sliding friction (ant.xml: friction="1 0.5 0.5" on every geom, floor included).
ANT_DEFAULT_FRICTION = 1.0
PAPER_FRICTION_RANGE: tuple[float, float] = (0.02, 2.0)
PAPER_CHANGE_EVERY = 2_000_000
EPISODE_STEPS = 1000  # the registered TimeLimit, as for Ant-v5
# The largest |action| component step() accepts. Finite actions beyond the action space's bounds
# ([-1, 1]) are accepted: MuJoCo clamps the controls itself and the control cost is taken on what
# the env receives (a policy's raw Gaussian sample, as the paper's PPO sends). Beyond this, or NaN
# or inf, an action is a bug of the agent, and is refused as the streams refuse theirs.
MAX_ACTION_MAGNITUDE = 1e3

# Spawn key of the friction draws: SeedSequence(seed, spawn_key=(ROLE_FRICTION, k)) gives
# friction k, independent of Ant's own reset noise (which uses SeedSequence(seed) itself).
ROLE_FRICTION = 0


def _signature_defaults(function: Any, exclude: set[str]) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {
        p.name: p.default
        for p in parameters
        if p.name not in exclude and p.kind is p.POSITIONAL_OR_KEYWORD
    }


# Ant-v5's own kwargs (and the MuJoCo base's rendering kwargs it forwards), with Gymnasium's
# defaults: read from the installed signatures so that they never drift from Ant-v5.
ANT_KWARGS: dict[str, Any] = {
    **_signature_defaults(AntEnv.__init__, {"self"}),
    **_signature_defaults(
        MujocoEnv.__init__,
        {"self", "model_path", "frame_skip", "observation_space", "render_mode", "default_camera_config"},
    ),
}
ANT_KWARGS["default_camera_config"] = dict(ANT_KWARGS["default_camera_config"])


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_friction(name: str, value: Any) -> float:
    if not _is_real(value) or not (0.0 < float(value) < math.inf):
        raise ValueError(f"{name} must be a finite number > 0 (a sliding friction coefficient), got {value!r}")
    return float(value)


class AntFrictionEnv(AntEnv):
    """Gymnasium's MuJoCo Ant (v5) whose sliding friction μ changes over the agent's lifetime.

    ## Description
    The Ant-v5 task (run forward on a plane; observation, action, reward, termination and
    ``info`` exactly as Ant-v5's) with the sliding friction of **every** geom set to μ. MuJoCo
    uses the larger friction of the two geoms in contact, so setting only the floor would
    change nothing when μ is below the ant's own friction.

    μ follows a schedule μ_0, μ_1, ... that belongs to the *lifetime*, not to an episode:

    * By default each μ_k is drawn log-uniformly from ``friction_range`` = [0.02, 2.0]
      (``10**U(log10 low, log10 high)``), independently, from the seed.
    * The lifetime step counter counts every ``step`` and survives episode resets. At an
      episode's end (the next ``reset()``) μ moves to the next value of the schedule when at
      least ``change_every`` steps have passed since the last change. With 1,000-step episodes
      and ``change_every=2_000_000`` (the paper) μ changes every 2,000 episodes; an episode
      cut short by a fall ends early, so the change comes at the first episode end past the
      mark. ``change_every=0`` changes μ at every episode end. μ never changes inside an
      episode.
    * ``reset(seed=s)`` starts a new lifetime: counter 0, schedule drawn afresh from ``s``
      (the same ``s`` always gives the same schedule). ``reset()`` without a seed continues
      the lifetime (a first ``reset()`` without any seed draws one from the OS).
    * ``friction=μ`` fixes μ for the whole lifetime; ``friction_schedule=[μ_0, μ_1, ...]``
      gives the values explicitly (they change by the same rule and repeat from μ_0 after the
      last). With ``friction=1.0`` (Ant's own) the env is step for step Ant-v5.

    Ant's reset noise still comes from ``np_random`` seeded by ``reset(seed=s)`` exactly as in
    Ant-v5; the schedule uses an independent random stream derived from the same seed.

    ## Action
    Ant-v5's ``Box(-1, 1, (8,))``. ``step`` accepts any finite action with every component of
    magnitude at most ``MAX_ACTION_MAGNITUDE`` (1,000): MuJoCo clamps the controls to their range,
    and the control cost is computed on the action as given. NaN, ±inf or a larger magnitude raise
    ``ValueError``.

    ## Info
    Ant-v5's keys plus ``friction`` (μ of this step or of the episode ``reset`` begins, float),
    ``friction_index`` (k, int) and ``lifetime_step`` (steps taken in this lifetime so far,
    this step included, int).

    ## Arguments
    ``friction`` (float > 0 or None), ``friction_schedule`` (sequence of floats > 0 or None),
    ``friction_range`` ((low, high), 0 < low <= high), ``change_every`` (int >= 0), and every
    Ant-v5 kwarg (``ctrl_cost_weight``, ``reset_noise_scale``, ``xml_file``, ``width``, ...),
    passed through unchanged. ``render_mode`` as in Ant-v5. Episodes are 1,000 steps: the
    registered ``TimeLimit`` (``max_episode_steps`` of ``gym.make``).

    ## Scales
    A scale sets ``change_every`` and names the length of a run (``run_steps``: the env steps per
    seed that ``plasticity-gym run AntFriction-v0`` takes at that scale; the env itself never ends
    a lifetime).

    ============  ============  ===========  ================================================
    scale         change_every  run_steps    purpose
    ============  ============  ===========  ================================================
    ``smoke``     2,000         6,144        tests: a change every 2 full episodes
    ``cpu``       50,000        150,000      3 frictions in a run; PPO on this 2-core machine
                                             runs ~650–1,000 env steps/s, so ``ppo`` and
                                             ``ppo-cbp`` × 3 seeds take about 25 min (default)
    ``paper``     2,000,000     20,000,000   the paper's schedule; 10 frictions
    ============  ============  ===========  ================================================

    ## Attributes
    ``config`` (resolved kwargs), ``scale``, ``friction``, ``friction_index``,
    ``lifetime_step`` and ``scheduled_frictions(n)``.
    """

    default_config: ClassVar[dict[str, Any]] = {
        "friction": None,
        "friction_schedule": None,
        "friction_range": PAPER_FRICTION_RANGE,
        "change_every": PAPER_CHANGE_EVERY,
        **ANT_KWARGS,
    }
    scales: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"change_every": 2_000},
        "cpu": {"change_every": 50_000},
        "paper": {"change_every": PAPER_CHANGE_EVERY},
    }
    # Env steps per seed of a run at each scale (read by the harness; not an env kwarg).
    run_steps: ClassVar[dict[str, int]] = {"smoke": 6_144, "cpu": 150_000, "paper": 10 * PAPER_CHANGE_EVERY}

    def __init__(self, scale: str = DEFAULT_SCALE, render_mode: str | None = None, **kwargs: Any):
        config = self.resolve_config(scale, **kwargs)
        schedule = self._configure(config)
        ant_kwargs = {name: config[name] for name in ANT_KWARGS}
        super().__init__(render_mode=render_mode, **ant_kwargs)
        # Pickling rebuilds the env from these arguments, then restores the lifetime state.
        utils.EzPickle.__init__(self, scale=scale, render_mode=render_mode, **kwargs)
        self.scale: str = scale
        self.config: dict[str, Any] = {**config, "friction_schedule": schedule}
        self._lifetime_key: int | None = None  # None: no lifetime yet (reset() starts one)
        self._lifetime_step = 0
        self._last_change_step = 0
        self._friction_index = 0
        self._friction = math.nan

    # ------------------------------------------------------------------ configuration

    @classmethod
    def resolve_config(cls, scale: str = DEFAULT_SCALE, **overrides: Any) -> dict[str, Any]:
        """The kwargs that ``scale`` and ``overrides`` give (unknown names are an error)."""
        return resolve_scale_config(cls.__name__, cls.default_config, cls.scales, scale, overrides)

    def _configure(self, config: dict[str, Any]) -> list[float] | None:
        """Validate the friction kwargs; set the schedule fields. Returns the explicit schedule."""
        fixed, schedule = config["friction"], config["friction_schedule"]
        if fixed is not None and schedule is not None:
            raise ValueError("give either friction (a fixed μ) or friction_schedule, not both")
        self._fixed_friction = None if fixed is None else _check_friction("friction", fixed)
        self._schedule: list[float] | None = None
        if schedule is not None:
            if isinstance(schedule, (str, bytes, dict)) or not isinstance(schedule, (Sequence, np.ndarray)):
                raise ValueError(
                    f"friction_schedule must be a sequence of numbers > 0, e.g. [0.02, 2.0], got {schedule!r}"
                )
            if len(schedule) == 0:
                raise ValueError("friction_schedule is empty; give at least one friction value")
            self._schedule = [_check_friction(f"friction_schedule[{i}]", v) for i, v in enumerate(schedule)]
        low_high = config["friction_range"]
        is_pair = isinstance(low_high, (Sequence, np.ndarray)) and not isinstance(low_high, (str, bytes))
        if not is_pair or len(low_high) != 2:
            raise ValueError(f"friction_range must be a pair (low, high), got {low_high!r}")
        low = _check_friction("friction_range low", low_high[0])
        high = _check_friction("friction_range high", low_high[1])
        if low > high:
            raise ValueError(f"friction_range must have low <= high, got {low_high!r}")
        self._log_range = (math.log10(low), math.log10(high))
        config["friction_range"] = (low, high)
        every = config["change_every"]
        if isinstance(every, (bool, np.bool_)) or not isinstance(every, (int, np.integer)) or every < 0:
            raise ValueError(
                f"change_every must be an int >= 0 (lifetime steps between friction changes), got {every!r}"
            )
        config["change_every"] = self._change_every = int(every)
        if fixed is not None:
            config["friction"] = self._fixed_friction
        return self._schedule

    # ------------------------------------------------------------------ the schedule

    def _friction_at(self, index: int) -> float:
        if self._fixed_friction is not None:
            return self._fixed_friction
        if self._schedule is not None:
            return self._schedule[index % len(self._schedule)]
        sequence = np.random.SeedSequence(self._lifetime_key, spawn_key=(ROLE_FRICTION, index))
        low, high = self._log_range
        return float(10.0 ** np.random.Generator(np.random.PCG64(sequence)).uniform(low, high))

    def scheduled_frictions(self, n: int) -> np.ndarray:
        """μ_0 ... μ_{n-1} of the current lifetime (float64, shape ``(n,)``)."""
        if self._lifetime_key is None:
            raise RuntimeError("AntFrictionEnv: call reset() first; the schedule belongs to a lifetime")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        return np.array([self._friction_at(k) for k in range(n)], dtype=np.float64)

    def _set_friction(self, index: int) -> None:
        self._friction_index = index
        self._friction = self._friction_at(index)
        # Sliding friction only: Ant's contacts are condim 3, so the other two columns are unused.
        self.model.geom_friction[:, 0] = self._friction

    @property
    def friction(self) -> float:
        """The current sliding friction μ (NaN before the first reset)."""
        return self._friction

    @property
    def friction_index(self) -> int:
        """Index k of the current μ in the lifetime's schedule."""
        return self._friction_index

    @property
    def lifetime_step(self) -> int:
        """Steps taken since the lifetime began (``reset(seed=...)`` or the first reset)."""
        return self._lifetime_step

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """``reset(seed=s)`` starts a new lifetime from ``s``; ``reset()`` starts the next episode.

        The friction is set before the episode starts: at most one change per reset. ``seed`` is
        checked as Gymnasium checks it (an int >= 0); ``options`` are not taken.
        """
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {sorted(options)[:5]}")
        if seed is not None:
            seeding.np_random(seed)  # Gymnasium's own error for a seed that is not an int >= 0
        if seed is not None or self._lifetime_key is None:
            entropy = np.random.SeedSequence(seed).entropy
            self._lifetime_key = int(entropy)  # type: ignore[arg-type]
            self._lifetime_step = 0
            self._last_change_step = 0
            self._set_friction(0)
        elif self._lifetime_step - self._last_change_step >= self._change_every and self._fixed_friction is None:
            self._last_change_step = self._lifetime_step
            self._set_friction(self._friction_index + 1)
        obs, info = super().reset(seed=seed, options=options)
        info["friction"] = self._friction
        info["friction_index"] = self._friction_index
        info["lifetime_step"] = self._lifetime_step
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._lifetime_key is None:
            raise RuntimeError("AntFrictionEnv: call reset() before step(); the friction is set by reset")
        magnitude = np.abs(np.asarray(action, dtype=np.float64))
        if not (magnitude <= MAX_ACTION_MAGNITUDE).all():  # NaN and inf fail the comparison too
            shown = np.asarray(action).tolist() if magnitude.size <= 8 else f"<array of shape {magnitude.shape}>"
            raise ValueError(f"{type(self).__name__}: bad action {shown}: NaN, inf or a magnitude over "
                             f"{MAX_ACTION_MAGNITUDE:g}; expected finite controls (MuJoCo clamps them to [-1, 1])")
        obs, reward, terminated, truncated, info = super().step(action)
        self._lifetime_step += 1
        info["friction"] = self._friction
        info["friction_index"] = self._friction_index
        info["lifetime_step"] = self._lifetime_step
        return obs, reward, terminated, truncated, info

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        # The constructor arguments (EzPickle) plus everything a run has changed since: the
        # lifetime, the random generator and the whole MuJoCo state (MjData pickles itself).
        state = utils.EzPickle.__getstate__(self)
        state["lifetime"] = {
            "key": self._lifetime_key,
            "step": self._lifetime_step,
            "last_change_step": self._last_change_step,
            "friction_index": self._friction_index,
            "np_random": self._np_random,
            "np_random_seed": self._np_random_seed,
            "data": self.data,
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        lifetime = state["lifetime"]
        utils.EzPickle.__setstate__(self, state)
        self._np_random, self._np_random_seed = lifetime["np_random"], lifetime["np_random_seed"]
        mujoco.mj_copyData(self.data, self.model, lifetime["data"])
        self._lifetime_key = lifetime["key"]
        self._lifetime_step = lifetime["step"]
        self._last_change_step = lifetime["last_change_step"]
        if self._lifetime_key is not None:
            self._set_friction(lifetime["friction_index"])
