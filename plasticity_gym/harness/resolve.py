"""Resolving agents: a reference name, ``"module:factory"`` or a callable → how to build it.

The harness talks to an agent only through the Agent protocol (``act``, ``observe``,
``uses_task_boundaries``; optionally ``probe_model``, ``state_dict``/``load_state_dict``,
``name``, ``config``), so a user's agent is built and run exactly like a reference one. Reference
MLP agents can also be built as one lockstep learner for many seeds (``AgentSpec.build_lockstep``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

AgentFactory = Callable[..., Any]
"""``factory(observation_space, action_space, *, seed: int, device: str) -> Agent``."""


class AgentProtocolError(TypeError):
    """The object a factory returned does not follow the Agent protocol."""


@dataclass(frozen=True)
class AgentSpec:
    """How to build the agent of every seed, and how the result names where it came from."""

    build: Callable[..., Any]  # (observation_space, action_space, seed, device) -> agent
    source: str  # "reference" or "custom"
    ident: str  # reference name, or "module:qualname"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Reference MLP agents can run many seeds as one computation:
    # lockstep_reason(obs_space, act_space) -> None when they can, else why not;
    # build_lockstep(obs_space, act_space, seeds, device) -> one learner for every seed.
    lockstep_reason: Callable[..., str | None] | None = None
    build_lockstep: Callable[..., Any] | None = None
    # Reference supervised agents: config(obs_space, act_space) -> the validated LearnerConfig
    # (a sweep builds one lockstep learner from several settings' configs).
    config: Callable[..., Any] | None = None
    # A user's factory: its keyword options' defaults (recorded as the agent's config when the
    # agent gives none of its own).
    factory_defaults: Mapping[str, Any] = field(default_factory=dict)


class UserCodeError(Exception):
    """A user's module (a ``module:factory`` agent, a ``module:EnvId`` env) raised while being
    imported. The original exception is ``__cause__``: its traceback is the user's to read."""


def import_user_module(module_name: str, what: str) -> Any:
    """Import a user's ``module_name`` for ``what`` (e.g. ``agent 'mine:make'``).

    A module that is not there is a ``ValueError`` saying where it is looked for; a module that
    is there but fails while importing (its own bug, a missing dependency of its own) raises
    :class:`UserCodeError` from its own exception, so that the user sees their error, not ours.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ValueError(
                f"no module named {exc.name!r} (for {what}); run from the folder that holds it, or add "
                "that folder to PYTHONPATH") from None
        raise UserCodeError(f"importing {module_name!r} (for {what}) failed; its own error:") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the user's module raised is theirs to see
        raise UserCodeError(f"importing {module_name!r} (for {what}) failed; its own error:") from exc


def load_factory(spec: str) -> AgentFactory:
    """Import ``module:attr`` (``attr`` may be dotted) and return it; errors say what failed
    (see :func:`import_user_module`)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"agent factory must be given as module:factory, got {spec!r}")
    obj: Any = import_user_module(module_name, f"agent {spec!r}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (agent {spec!r})") from None
    if not callable(obj):
        raise ValueError(f"agent factory {spec!r} is not callable")
    return obj


def reference_agent_names(kind: str) -> tuple[str, ...]:
    """The installed reference agents for a ``"supervised"`` stream or an ``"episodic"`` RL env."""
    import plasticity_gym_agents as reference  # lazy: the harness needs the agents package only for names

    return tuple(getattr(reference, "AGENT_NAMES" if kind == "supervised" else "RL_AGENT_NAMES", ()))


def resolve_agent(
    agent: str | AgentFactory,
    *,
    env_id: str,
    scale: str,
    overrides: Mapping[str, Any] | None = None,
    kind: str = "supervised",
) -> AgentSpec:
    """A reference agent name, a ``"module:factory"`` string or a factory callable → spec.

    Reference agents are built by ``plasticity_gym_agents.make_agent`` with their (env, scale) defaults and
    ``overrides`` on top (an env without named defaults gets defaults inferred from its spaces);
    a user's factory gets ``overrides`` as keyword arguments. ``kind`` is the env's: a
    ``"supervised"`` stream takes the supervised learners (``agents.AGENT_NAMES``), an
    ``"episodic"`` RL env the PPO variants (``agents.RL_AGENT_NAMES``); a name of the other kind
    is an error that says which names fit.
    """
    if kind not in ("supervised", "episodic"):
        raise ValueError(f"kind must be 'supervised' or 'episodic', got {kind!r}")
    from plasticity_gym.registration import EPISODIC_ENV_IDS

    if kind == "supervised" and env_id in EPISODIC_ENV_IDS:
        raise ValueError(f"{env_id} is an episodic RL env: run it with `plasticity-gym run` or "
                         "plasticity_gym.harness.episodic.evaluate_episodic (this path runs supervised streams)")
    overrides = dict(overrides or {})
    if callable(agent):
        ident = f"{getattr(agent, '__module__', '?')}:{getattr(agent, '__qualname__', repr(agent))}"
        return _custom_spec(agent, ident, overrides)
    if not isinstance(agent, str) or not agent:
        raise TypeError(f"agent must be a reference name, 'module:factory' or a callable, got {agent!r}")
    if ":" in agent:
        return _custom_spec(load_factory(agent), agent, overrides)

    import plasticity_gym_agents as reference  # lazy: the harness needs the agents package only for names

    supervised, episodic = reference_agent_names("supervised"), reference_agent_names("episodic")
    names, other = (supervised, episodic) if kind == "supervised" else (episodic, supervised)
    if agent in other:
        what, env_kind = (
            ("a PPO agent for episodic continuous-control envs (AntFriction-v0, Hopper-v5, ...)",
             "runs here as a supervised stream") if kind == "supervised" else
            ("a supervised-stream learner", "is an episodic RL env"))
        raise ValueError(f"{agent!r} is {what}, but {env_id} {env_kind}; its reference agents are "
                         f"{', '.join(names)} (or your own as module:factory)")
    if agent not in names:
        raise ValueError(
            f"unknown agent {agent!r}{did_you_mean(agent, names)}; reference agents for {env_id}: "
            f"{', '.join(names) or '(none installed)'}; or give your own as module:factory"
        )
    if kind == "episodic":
        def build_rl(observation_space, action_space, seed, device):
            return reference.make_agent(agent, observation_space, action_space, scale=scale,
                                        overrides=overrides or None, seed=seed, device=device)

        return AgentSpec(build_rl, "reference", agent, overrides)
    # Only ids with named defaults are passed on: any other env (a user's, a test's) gets the
    # defaults the agents infer from its spaces.
    defaults_id = env_id if env_id in getattr(reference, "ENV_IDS", (env_id,)) else None

    def build(observation_space, action_space, seed, device):
        return reference.make_agent(
            agent, observation_space, action_space, env_id=defaults_id, scale=scale,
            overrides=overrides or None, seed=seed, device=device,
        )

    def config(observation_space, action_space):
        return reference.resolve_config(agent, observation_space, action_space, env_id=defaults_id,
                                        scale=scale, overrides=overrides or None)

    def lockstep_reason(observation_space, action_space):
        from plasticity_gym_agents import lockstep_support

        return lockstep_support(config(observation_space, action_space))

    def build_lockstep(observation_space, action_space, seeds, device):
        from plasticity_gym_agents import LockstepLearner

        return LockstepLearner(agent, config(observation_space, action_space), observation_space,
                               action_space, seeds=seeds, device=device)

    return AgentSpec(build, "reference", agent, overrides, lockstep_reason, build_lockstep, config)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# The arguments the harness gives every factory; the rest of its keyword parameters are options.
_HARNESS_ARGS = ("seed", "device")


def factory_options(factory: AgentFactory) -> tuple[dict[str, Any], bool] | None:
    """A user's factory's options: ``({name: default or None}, takes **kwargs)``, or None when
    its signature cannot be read. The first two positional parameters (the spaces) and ``seed``
    and ``device`` are the harness's, not options."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    spaces = [p.name for p in named if p.kind is p.POSITIONAL_OR_KEYWORD][:2]
    options = {p.name: (None if p.default is p.empty else p.default) for p in named
               if p.name not in spaces and p.name not in _HARNESS_ARGS}
    return options, any(p.kind is p.VAR_KEYWORD for p in params)


class AgentOptionError(ValueError):
    """A user's factory does not take an option it was given (``--set``)."""


def _custom_spec(factory: AgentFactory, ident: str, overrides: dict[str, Any]) -> AgentSpec:
    """The spec of a user's factory: its options checked against ``overrides`` before any work,
    their defaults kept for the record."""
    found = factory_options(factory)
    defaults: dict[str, Any] = {}
    if found is not None:
        options, open_ended = found
        defaults = {k: v for k, v in options.items() if _plain(v)}
        for key in overrides:
            if key not in options and not open_ended:
                raise AgentOptionError(
                    f"agent factory {ident!r} takes no option {key!r}{did_you_mean(key, list(options))} (given as "
                    f"--set {key}=...); its options: {', '.join(options) or 'none'}")
    return AgentSpec(custom_builder(factory, overrides, ident), "custom", ident, overrides, factory_defaults=defaults)


def _plain(value: Any) -> bool:
    """A default that a result file can record as it is (JSON-like)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA) from ``seed``:
    the harness does this before it calls a user's factory, so that an agent drawing from the
    global generators is the same on every run of the same seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    torch.manual_seed(seed)  # also seeds every CUDA device


def custom_builder(factory: AgentFactory, overrides: Mapping[str, Any], ident: str = "") -> Callable[..., Any]:
    """``build(observation_space, action_space, seed, device)`` calling a user's factory, with
    the global generators seeded from ``seed`` first (:func:`seed_everything`)."""
    def build(observation_space, action_space, seed, device):
        seed_everything(int(seed))
        try:
            return factory(observation_space, action_space, seed=seed, device=device, **overrides)
        except TypeError as exc:
            bad = [k for k in overrides if f"'{k}'" in str(exc)]
            if bad and "keyword argument" in str(exc):  # the factory rejected an option it was given
                raise AgentOptionError(f"agent factory {ident or factory!r} rejected the option {bad[0]!r} (given as "
                                       f"--set {bad[0]}=...): {exc}") from None
            raise

    return build


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def check_agent(agent: Any, ident: str) -> None:
    """Raise :class:`AgentProtocolError` naming what ``agent`` lacks of the Agent protocol."""
    missing = [a for a in ("act", "observe") if not callable(getattr(agent, a, None))]
    if not hasattr(agent, "uses_task_boundaries"):
        missing.append("uses_task_boundaries")
    if missing:
        raise AgentProtocolError(
            f"agent {ident!r} does not follow the Agent protocol (agents/protocol.py): "
            f"missing {', '.join(missing)}"
        )


def has_vector_env(env_id: str) -> bool:
    """True when ``env_id`` registers a native ``vector_entry_point``."""
    try:
        return gym.spec(env_id).vector_entry_point is not None
    except gym.error.Error:
        return False


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: an int ``n`` means seeds ``0..n-1`` (as the CLI's ``--seeds N``)."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be an int or a list of distinct integers, got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1 when given as a count, got {seeds}")
        return list(range(int(seeds)))
    out = [int(s) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {out}")
    return out
