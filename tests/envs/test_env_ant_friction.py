"""AntFriction-v0: Ant-v5 with a lifetime friction schedule (SPEC §2, issue 12)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.utils.env_match import check_environments_match

import plasticity_gym  # noqa: F401  (registers the ids)
from plasticity_gym.envs.ant_friction import AntFrictionEnv, AntFrictionVectorEnv

ENV_ID = "AntFriction-v0"


def make(**kwargs) -> gym.Env:
    return gym.make(ENV_ID, **{"scale": "smoke", **kwargs})


def run_lifetime(env: gym.Env, seed: int, n_steps: int, action_seed: int = 0) -> list[dict]:
    """Random actions for ``n_steps`` steps, resetting at every episode end. One record per call."""
    rng = np.random.default_rng(action_seed)
    _, info = env.reset(seed=seed)
    records = [{"kind": "reset", **info}]
    for _ in range(n_steps):
        action = rng.uniform(-1, 1, size=8).astype(np.float32)
        _, _, terminated, truncated, info = env.step(action)
        records.append({"kind": "step", "end": terminated or truncated, **info})
        if terminated or truncated:
            _, info = env.reset()
            records.append({"kind": "reset", **info, "model_friction": env.unwrapped.model.geom_friction.copy()})
    return records


# ---------------------------------------------------------------------------- Gymnasium API


# Ant-v5's observation space is unbounded, as Gymnasium defines it.
@pytest.mark.filterwarnings("ignore:.*(observation space (minimum|maximum) value is|different from the unwrapped).*")
def test_check_env_unwrapped_and_made():
    env = make()
    check_env(env.unwrapped, skip_render_check=True)
    check_env(env, skip_render_check=True)


GL_PROBE = "import mujoco; mujoco.GLContext(32, 32).make_current(); print('GL-OK')"
RENDER_SCRIPT = textwrap.dedent(
    """
    import warnings
    import numpy as np
    from gymnasium.utils.env_checker import check_env, data_equivalence
    from plasticity_gym.envs.ant_friction import AntFrictionEnv, AntFrictionVectorEnv
    warnings.filterwarnings("ignore", message=".*alternative render modes.*")
    env = AntFrictionEnv(scale="smoke", render_mode="rgb_array", width=64, height=48)
    check_env(env)  # the render check included (rgb_array only: the env has no spec)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8, (frame.shape, frame.dtype)
    assert frame.std() > 5, "a blank frame"
    print("RENDER-OK")
    """
)


def test_check_env_render_rgb_array_where_gl_is_present():
    backend = os.environ.get("MUJOCO_GL", "egl")
    environ = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", backend)}
    # Probe in its own process: a machine without offscreen GL may fail or crash there.
    probe = subprocess.run([sys.executable, "-c", GL_PROBE], env=environ, capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 or "GL-OK" not in probe.stdout:
        pytest.skip(f"no offscreen OpenGL with MUJOCO_GL={backend}: {probe.stderr.strip()[-200:]}")
    result = subprocess.run([sys.executable, "-c", RENDER_SCRIPT], env=environ, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "RENDER-OK" in result.stdout, result.stderr[-2000:]


def test_registered_with_1000_step_episodes():
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == 1000
    assert isinstance(env.unwrapped, AntFrictionEnv)
    assert env.unwrapped.scale == "cpu"


def test_matches_ant_v5_at_ants_default_friction():
    ant, ours = gym.make("Ant-v5"), gym.make(ENV_ID, friction=1.0)
    assert np.all(ant.unwrapped.model.geom_friction == ours.unwrapped.model.geom_friction)
    check_environments_match(ant, ours, num_steps=200, seed=3, info_comparison="superset")


def test_matches_ant_v5_across_episodes():
    """Reset noise continues from np_random across resets exactly as in Ant-v5."""
    ant = gym.make("Ant-v5", max_episode_steps=40)
    ours = gym.make(ENV_ID, friction=1.0, max_episode_steps=40, change_every=0)
    rng = np.random.default_rng(5)
    obs_a, _ = ant.reset(seed=11)
    obs_b, _ = ours.reset(seed=11)
    np.testing.assert_array_equal(obs_a, obs_b)
    episodes = 0
    for _ in range(130):
        action = rng.uniform(-1, 1, size=8).astype(np.float32)
        obs_a, r_a, te_a, tr_a, _ = ant.step(action)
        obs_b, r_b, te_b, tr_b, _ = ours.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert (r_a, te_a, tr_a) == (r_b, te_b, tr_b)
        if te_a or tr_a:
            episodes += 1
            np.testing.assert_array_equal(ant.reset()[0], ours.reset()[0])
    assert episodes == 3


# ---------------------------------------------------------------------------- the schedule


def test_schedule_is_log_uniform_in_range():
    env = make().unwrapped
    env.reset(seed=2024)
    values = env.scheduled_frictions(4000)
    assert values.min() >= 0.02 and values.max() <= 2.0
    assert len(np.unique(values)) == len(values)

    def ks_distance(u: np.ndarray) -> float:
        """Kolmogorov-Smirnov distance of a sample in [0, 1] from the uniform distribution."""
        u = np.sort(u)
        n = len(u)
        return float(max((np.arange(1, n + 1) / n - u).max(), (u - np.arange(n) / n).max()))

    critical = 1.95 / math.sqrt(len(values))  # alpha = 0.001
    log_position = (np.log10(values) - math.log10(0.02)) / 2.0  # log10(2.0 / 0.02) = 2
    assert ks_distance(log_position) < critical
    # The same test does reject a linearly uniform draw over the same range.
    linear = np.random.default_rng(0).uniform(0.02, 2.0, size=len(values))
    assert ks_distance((np.log10(linear) - math.log10(0.02)) / 2.0) > critical
    # Each decade of [0.02, 2] holds about half of the values.
    assert abs(np.mean(values < 0.2) - 0.5) < 0.03


def test_same_seed_same_schedule_and_reset_seed_restarts_it():
    a, b = make().unwrapped, make().unwrapped
    a.reset(seed=7)
    b.reset(seed=7)
    np.testing.assert_array_equal(a.scheduled_frictions(50), b.scheduled_frictions(50))
    b.reset(seed=8)
    assert not np.array_equal(a.scheduled_frictions(50), b.scheduled_frictions(50))
    # reset(seed=s) starts the lifetime afresh, reset() continues it
    records = run_lifetime(make(change_every=30, max_episode_steps=20), 7, 100)
    assert records[-1]["lifetime_step"] == 100 and records[-1]["friction_index"] > 0
    env = make(change_every=30, max_episode_steps=20)
    run_lifetime(env, 7, 100)
    _, info = env.reset(seed=7)
    assert info["lifetime_step"] == 0 and info["friction_index"] == 0
    assert info["friction"] == a.scheduled_frictions(1)[0]


def test_friction_changes_only_at_episode_ends_after_change_every_steps():
    change_every, episode = 70, 25
    env = make(change_every=change_every, max_episode_steps=episode)
    records = run_lifetime(env, 3, 600)
    schedule = env.unwrapped.scheduled_frictions(50)
    last_change, current = 0, records[0]
    assert current["friction"] == schedule[0] and current["friction_index"] == 0
    changes = 0
    for record in records[1:]:
        if record["kind"] == "step":
            # never inside an episode
            assert (record["friction"], record["friction_index"]) == (current["friction"], current["friction_index"])
            continue
        due = record["lifetime_step"] - last_change >= change_every
        expected_index = current["friction_index"] + int(due)
        assert record["friction_index"] == expected_index
        assert record["friction"] == schedule[expected_index]
        # every geom of the model holds the scheduled sliding friction
        geoms = env.unwrapped.model.ngeom
        np.testing.assert_array_equal(record["model_friction"][:, 0], np.full(geoms, schedule[expected_index]))
        if due:
            changes += 1
            last_change = record["lifetime_step"]
        current = record
    assert records[-1]["lifetime_step"] == 600
    # A period lasts at least change_every steps and less than change_every + one episode
    # (episodes end at 25 steps, or earlier when the ant falls).
    assert 600 // (change_every + episode) <= changes <= 600 // change_every


def test_change_every_zero_fixed_friction_and_explicit_schedule():
    every_episode = run_lifetime(make(change_every=0, max_episode_steps=10), 1, 50)
    assert [r["friction_index"] for r in every_episode if r["kind"] == "reset"] == [0, 1, 2, 3, 4, 5]
    fixed = run_lifetime(make(friction=0.3, change_every=0, max_episode_steps=10), 1, 50)
    assert {(r["friction"], r["friction_index"]) for r in fixed} == {(0.3, 0)}
    explicit = run_lifetime(make(friction_schedule=[0.5, 2.0, 0.05], change_every=0, max_episode_steps=10), 1, 50)
    resets = [r for r in explicit if r["kind"] == "reset"]
    assert [r["friction"] for r in resets] == [0.5, 2.0, 0.05, 0.5, 2.0, 0.05]  # repeats after the last
    assert [r["friction_index"] for r in resets] == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(resets[-1]["model_friction"][:, 0], 0.05)


def test_dynamics_change_with_friction():
    def final_position(mu: float) -> np.ndarray:
        env = make(friction=mu, terminate_when_unhealthy=False, reset_noise_scale=0.0).unwrapped
        env.reset(seed=0)
        actions = np.random.default_rng(1).uniform(-1, 1, size=(150, 8)).astype(np.float32)
        for action in actions:
            _, _, _, _, info = env.step(action)
        return np.array([info["x_position"], info["y_position"]])

    slippery, sticky = final_position(0.02), final_position(2.0)
    np.testing.assert_array_equal(final_position(0.02), slippery)  # deterministic given μ
    # about 1.6 m apart after 150 steps (7.5 s): half a metre is a wide margin
    assert np.linalg.norm(slippery - sticky) > 0.5


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"friction": 0.0}, "friction must be a finite number > 0"),
        ({"friction": -1.0}, "friction must be a finite number > 0"),
        ({"friction": math.inf}, "friction must be a finite number > 0"),
        ({"friction": math.nan}, "friction must be a finite number > 0"),
        ({"friction": "1.0"}, "friction must be a finite number > 0"),
        ({"friction": True}, "friction must be a finite number > 0"),
        ({"friction_schedule": []}, "friction_schedule is empty"),
        ({"friction_schedule": "0.1,0.2"}, "friction_schedule must be a sequence"),
        ({"friction_schedule": 0.5}, "friction_schedule must be a sequence"),
        ({"friction_schedule": [0.5, 0.0]}, r"friction_schedule\[1\] must be a finite number > 0"),
        ({"friction_schedule": [0.5, [1.0]]}, r"friction_schedule\[1\] must be"),
        ({"friction_schedule": [math.nan]}, r"friction_schedule\[0\] must be"),
        ({"friction": 1.0, "friction_schedule": [1.0]}, "either friction .* or friction_schedule"),
        ({"change_every": -1}, "change_every must be an int >= 0"),
        ({"change_every": 2.5}, "change_every must be an int >= 0"),
        ({"change_every": True}, "change_every must be an int >= 0"),
        ({"friction_range": (2.0, 0.02)}, "low <= high"),
        ({"friction_range": (0.0, 2.0)}, "friction_range low must be a finite number > 0"),
        ({"friction_range": (0.1,)}, "friction_range must be a pair"),
        ({"bogus": 1}, "unknown keyword.*valid ones.*change_every"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_unknown_scale_is_rejected():
    with pytest.raises(ValueError, match="unknown scale 'huge'.*cpu.*paper.*smoke"):
        gym.make(ENV_ID, scale="huge")


def test_scales_config_and_ant_kwargs_pass_through():
    for scale in ("smoke", "cpu", "paper"):
        config = AntFrictionEnv.resolve_config(scale)
        assert set(config) == set(AntFrictionEnv.default_config)
        assert config["change_every"] == AntFrictionEnv.scales[scale]["change_every"]
    assert AntFrictionEnv.resolve_config("paper")["change_every"] == 2_000_000
    assert AntFrictionEnv.resolve_config("cpu")["change_every"] < 2_000_000
    env = gym.make(ENV_ID, scale="paper", change_every=5, ctrl_cost_weight=0.1, friction=0.5)
    unwrapped = env.unwrapped
    assert unwrapped.scale == "paper"
    assert unwrapped.config["change_every"] == 5 and unwrapped.config["friction"] == 0.5
    assert unwrapped.config["ctrl_cost_weight"] == 0.1
    assert unwrapped.config["friction_range"] == (0.02, 2.0)
    json.dumps(unwrapped.config)
    # Ant-v5's kwargs reach Ant-v5: the same kwarg gives the same behaviour as in Ant-v5
    obs, _ = gym.make(ENV_ID, include_cfrc_ext_in_observation=False).reset(seed=0)
    assert obs.shape == (27,)
    action = np.full(8, 0.5, dtype=np.float32)
    costs = []
    for env in (gym.make(ENV_ID, friction=1.0, ctrl_cost_weight=0.1), gym.make("Ant-v5", ctrl_cost_weight=0.1),
                gym.make(ENV_ID, friction=1.0)):
        env.reset(seed=0)
        costs.append(env.step(action)[4]["reward_ctrl"])
    assert costs[0] == costs[1] == pytest.approx(-0.1 * 8 * 0.25) and costs[2] != costs[0]


def test_step_before_reset_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step"):
        make().unwrapped.step(np.zeros(8, dtype=np.float32))


# ---------------------------------------------------------------------------- vectors, pickles


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vec(mode):
    vec = gym.make_vec(ENV_ID, num_envs=2, vectorization_mode=mode, scale="smoke", change_every=0,
                       max_episode_steps=5)
    try:
        _, info = vec.reset(seed=[4, 9])
        single = make()
        for i, seed in enumerate((4, 9)):
            assert info["friction"][i] == single.reset(seed=seed)[1]["friction"]
        for _ in range(12):  # two episode ends; autoreset moves to the next friction
            _, rewards, terminated, truncated, info = vec.step(vec.action_space.sample())
        assert rewards.shape == (2,)
        assert list(info["friction_index"]) == [2, 2] and list(info["lifetime_step"]) == [10, 10]
    finally:
        vec.close()


def test_pickle_round_trip_continues_identically():
    env = make(change_every=30, max_episode_steps=20)
    run_lifetime(env, 6, 47)
    clone = pickle.loads(pickle.dumps(env))
    a = run_lifetime_continued(env, 80)
    b = run_lifetime_continued(clone, 80)
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])


def run_lifetime_continued(env: gym.Env, n_steps: int) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(3)
    trace, observations = [], []
    for _ in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, size=8).astype(np.float32))
        observations.append(obs)
        trace.append((reward, terminated, truncated, info["friction"], info["friction_index"], info["lifetime_step"]))
        if terminated or truncated:
            obs, info = env.reset()
            observations.append(obs)
            trace.append((info["friction"], info["friction_index"]))
    return trace, np.stack(observations)


# ---------------------------------------------------------------------------- the native vector env


def _sync(env_id: str, n: int, **kwargs) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id, **kwargs)] * n,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def _assert_same(a, b, where: str) -> None:
    assert data_equivalence(a, b, exact=True), f"{where}: the native vector env differs"


def test_native_vector_env_is_the_default_of_make_vec():
    vec = gym.make_vec(ENV_ID, num_envs=2, scale="smoke")
    assert isinstance(vec, AntFrictionVectorEnv)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert vec.max_episode_steps == 1000 and vec.config["change_every"] == 2_000
    assert vec.observation_space.shape == (2, 105) and vec.action_space.shape == (2, 8)


def test_native_vector_env_equals_sync_vector_env_step_for_step():
    # Three copies, short episodes, falls (large actions) and friction changes: every output
    # (observations, rewards, flags, infos with their masks, final_obs, final_info) bit for bit.
    kwargs = {"scale": "smoke", "change_every": 150, "max_episode_steps": 100}
    sync = _sync(ENV_ID, 3, **kwargs)
    native = gym.make_vec(ENV_ID, num_envs=3, **kwargs)
    _assert_same(sync.reset(seed=[5, 0, 12]), native.reset(seed=[5, 0, 12]), "reset")
    rng = np.random.default_rng(0)
    ends = terminations = 0
    for t in range(700):
        action = (rng.normal(size=(3, 8)) * 1.5).astype(np.float32)
        expected, got = sync.step(action), native.step(action)
        _assert_same(expected, got, f"step {t}")
        ends += int((expected[2] | expected[3]).sum())
        terminations += int(expected[2].sum())
        if t == 350:  # a pickled copy continues identically (checkpoints pickle the vector env)
            native = pickle.loads(pickle.dumps(native))
    assert ends >= 12 and terminations >= 1
    assert min(got[4]["friction_index"]) >= 2  # the friction changed twice in every copy
    _assert_same(sync.reset(seed=7), native.reset(seed=7), "reset with an int seed")
    _assert_same(sync.reset(), native.reset(), "reset without a seed continues the lifetimes")


def test_native_vector_env_equals_ant_v5_at_ants_default_friction():
    ant = _sync("Ant-v5", 2, max_episode_steps=60)
    native = gym.make_vec(ENV_ID, num_envs=2, friction=1.0, max_episode_steps=60)
    (obs_a, info_a), (obs_b, info_b) = ant.reset(seed=3), native.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    rng = np.random.default_rng(1)
    for t in range(150):
        action = rng.uniform(-1, 1, size=(2, 8)).astype(np.float32)
        a, b = ant.step(action), native.step(action)
        _assert_same(a[:4], b[:4], f"step {t}")
        common = {k: a[4][k] for k in a[4] if k not in ("final_info",)}
        _assert_same(common, {k: b[4][k] for k in common}, f"step {t} info")
    assert set(b[4]) - set(a[4]) == {"friction", "_friction", "friction_index", "_friction_index",
                                     "lifetime_step", "_lifetime_step"}


@pytest.mark.parametrize(
    "make_kwargs, call, message",
    [
        ({"num_envs": 0}, None, r"num_envs must be an int >= 1"),
        ({"num_envs": 2.0}, None, r"num_envs must be an int >= 1"),
        ({"num_envs": 2, "friction_schedule": [0.5, -1.0]}, None, r"friction_schedule\[1\] must be"),
        ({"num_envs": 2, "max_episode_steps": 0}, None, "max_episode_steps must be an int >= 1"),
        ({"num_envs": 2, "render_mode": "rgb_array"}, None, "does not render"),
        ({"num_envs": 2}, ("reset", {"seed": [1, 2, 3]}), r"one per copy \(num_envs=2\), got 3"),
        ({"num_envs": 2}, ("reset", {"seed": "0"}), "seed must be None, an int or a list of 2 ints"),
        ({"num_envs": 2}, ("step", np.zeros((2, 8), np.float32)), r"call reset\(\) before step"),
        ({"num_envs": 2}, ("reset_step", np.zeros((3, 8), np.float32)), r"shape \(2, 8\)"),
        ({"num_envs": 2}, ("reset_step", np.array([[0.0] * 8, [math.nan] + [0.0] * 7])), r"copies \[1\] are not finite"),
    ],
)
def test_native_vector_env_refuses_what_it_cannot_honour(make_kwargs, call, message):
    error = RuntimeError if "before step" in message else ValueError
    with pytest.raises(error, match=message):
        vec = gym.make_vec(ENV_ID, scale="smoke", **make_kwargs)
        if call is not None:
            what, arg = call
            if what == "reset":
                vec.reset(**arg)
            else:
                if what == "reset_step":
                    vec.reset(seed=0)
                vec.step(arg)
