"""PPO (agents/ppo.py): config and variants, the math, CBP inside PPO, resuming, and that it learns."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import gymnasium as gym
import torch
from gymnasium import spaces

from plasticity_gym_agents.ppo import (
    PPO_VARIANTS,
    EpisodicAgent,
    PPOAgent,
    PPOConfig,
    gae,
    gaussian_log_prob,
    make_ppo_agent,
    ppo_config,
    train,
)

OBS = spaces.Box(-np.inf, np.inf, (3,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _small(name: str = "ppo", **overrides) -> PPOAgent:
    base = {"hidden": [8, 8], "rollout_steps": 16, "epochs": 1, "minibatches": 1,
            "optimizer": {"lr": 1e-3}}
    return make_ppo_agent(name, OBS, ACT, overrides={**base, **overrides}, seed=3)


def _feed(agent: PPOAgent, steps: int, seed: int) -> list[dict]:
    """Drive ``agent`` with synthetic observations/rewards (no env); some episodes end, some by a
    time limit (with ``final_obs`` as a SAME_STEP vector env gives it). Returns update stats."""
    rng = np.random.default_rng(seed)
    n = agent.num_envs
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    out = []
    for _ in range(steps):
        agent.act(obs, {})
        nxt = rng.normal(size=(n, 3)).astype(np.float32)
        term = rng.random(n) < 0.05
        trunc = ~term & (rng.random(n) < 0.05)
        final = np.empty(n, dtype=object)
        for i in np.flatnonzero(term | trunc):
            final[i] = rng.normal(size=3).astype(np.float32)
        stats = agent.observe(nxt, rng.normal(size=n), term, trunc, {"final_obs": final})
        if stats is not None:
            out.append(stats)
        obs = nxt
    return out


# -- config and variants ------------------------------------------------------------------------
def test_variants_have_the_papers_settings():
    assert set(PPO_VARIANTS) == {"ppo", "ppo-tuned", "ppo-l2", "ppo-cbp", "ppo-redo"}
    std = ppo_config("ppo")
    assert (std.hidden, std.rollout_steps, std.epochs, std.minibatches) == ((256, 256), 2048, 10, 16)
    assert (std.gamma, std.gae_lambda, std.clip, std.normalize_advantages) == (0.99, 0.95, 0.2, True)
    assert (std.optimizer.name, std.optimizer.lr, std.optimizer.betas) == ("adam", 1e-4, (0.9, 0.999))
    assert std.cbp is None and std.redo is None and std.optimizer.weight_decay == 0.0
    assert ppo_config("ppo-tuned").optimizer.betas == (0.99, 0.99)
    assert ppo_config("ppo-l2").optimizer.weight_decay == 1e-3
    cbp = ppo_config("ppo-cbp")
    assert (cbp.optimizer.betas, cbp.optimizer.weight_decay) == ((0.99, 0.99), 1e-4)
    assert (cbp.cbp.replacement_rate, cbp.cbp.maturity, cbp.cbp.decay) == (1e-4, 10_000, 0.99)
    redo = ppo_config("ppo-redo")
    assert (redo.optimizer.weight_decay, redo.redo.threshold, redo.redo.period) == (1e-4, 0.1, 100)


@pytest.mark.parametrize("bad, message", [
    ({"epoch": 3}, "unknown key 'epoch'"),
    ({"clip": 0.0}, "clip"),
    ({"num_envs": 3}, "multiple of num_envs"),
    ({"optimizer": {"betas": [0.9]}}, "betas"),
    ({"cbp": {"maturity": 5}, "redo": {"period": 3}}, "configure one"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        ppo_config("ppo", bad)
    with pytest.raises(ValueError, match="unknown PPO variant"):
        ppo_config("ppo-cpb")


def test_direct_construction_is_validated_and_builds_sections():
    assert PPOConfig(optimizer={"name": "adam", "lr": 3e-4}).optimizer.lr == 3e-4
    with pytest.raises(ValueError, match="rollout_steps"):
        PPOConfig(rollout_steps=0)


# -- the math -----------------------------------------------------------------------------------
def test_log_prob_is_the_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mean, a = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    log_std = torch.tensor([-0.5, 0.0, 0.7])
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(mean, log_std, a), expected)


def test_gae_by_hand():
    # Two envs, three steps. Env 0 ends its episode at step 1 (so step 1 does not see V after
    # it); env 1 runs through and bootstraps from next_value.
    r = torch.tensor([[1.0, 0.5], [2.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.3, 0.1], [0.2, 0.4], [0.6, 0.2]])
    d = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    nv = torch.tensor([0.5, 0.9])
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, d, nv, g, lam)
    # env 0: δ2 = 0 + .9·.5 − .6 = −.15; δ1 = 2 − .2 = 1.8 (episode ends); δ0 = 1 + .9·.2 − .3 = .88
    a2, a1 = -0.15, 1.8
    a0 = 0.88 + g * lam * a1
    # env 1: δ2 = 1 + .9·.9 − .2 = 1.61; δ1 = 0 + .9·.2 − .4 = −.22; δ0 = .5 + .9·.4 − .1 = .76
    b2 = 1.61
    b1 = -0.22 + g * lam * b2
    b0 = 0.76 + g * lam * b1
    expected = torch.tensor([[a0, b0], [a1, b1], [a2, b2]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v)


# -- the interface ------------------------------------------------------------------------------
def test_the_episodic_protocol_lives_with_the_agent_protocol():
    import plasticity_gym_agents.ppo
    from plasticity_gym_agents import protocol

    # One protocol, in agents/protocol.py, which the harness reads; plasticity_gym_agents.ppo re-exports it.
    assert plasticity_gym_agents.ppo.EpisodicAgent is protocol.EpisodicAgent
    assert isinstance(_small(), protocol.EpisodicAgent)
    assert not isinstance(object(), protocol.EpisodicAgent)


def test_agent_drives_several_env_copies_and_learns_once_per_rollout():
    agent = _small(num_envs=4, rollout_steps=16)
    assert isinstance(agent, EpisodicAgent)
    action = agent.act(np.zeros((4, 3), np.float32))
    assert action.shape == (4, 2)
    with pytest.raises(RuntimeError, match="twice"):
        agent.act(np.zeros((4, 3), np.float32))
    agent.observe(np.zeros((4, 3)), np.zeros(4), np.zeros(4, bool), np.zeros(4, bool), {})
    stats = _feed(agent, 3, seed=0) + _feed(agent, 8, seed=1)
    assert [s["update"] for s in stats] == [1, 2, 3] and agent.steps == 48  # 4 vector steps a rollout
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        agent.act(np.zeros((2, 3), np.float32))


class _ActionRecorder(gym.Env):
    """A 1-step env whose action space is [-1, 1]²; it keeps every action it is given."""

    observation_space = OBS
    action_space = ACT
    seen: list[np.ndarray] = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        type(self).seen.append(np.array(action))
        return np.zeros(3, np.float32), 0.0, True, False, {}


@pytest.mark.parametrize("clip_actions", [None, True])
def test_the_env_receives_the_raw_sample_unless_clipping_is_asked(clip_actions):
    # The authors' code sends the raw Gaussian sample (Ant's control cost is computed on it);
    # clip_actions=True is the option. log-std 1: most samples fall outside [-1, 1].
    gym.register("test/ActionRecorder-v0", entry_point=_ActionRecorder)
    try:
        _ActionRecorder.seen = []
        overrides = {"hidden": [4], "rollout_steps": 8, "epochs": 1, "minibatches": 1, "log_std_init": 1.0}
        if clip_actions is not None:
            overrides["clip_actions"] = clip_actions
        config = ppo_config("ppo", overrides)
        assert config.clip_actions is bool(clip_actions)
        train("test/ActionRecorder-v0", config, 64, seed=0)
    finally:
        del gym.registry["test/ActionRecorder-v0"]
    seen = np.stack(_ActionRecorder.seen)
    assert seen.shape == (64, 2)
    if clip_actions:
        assert np.all(np.abs(seen) <= 1.0) and np.any(np.abs(seen) == 1.0)
    else:
        assert np.mean(np.abs(seen) > 1.0) > 0.3


@pytest.mark.parametrize("scale", ["smoke", "cpu", "paper"])
@pytest.mark.parametrize("name", ["ppo", "ppo-tuned", "ppo-l2", "ppo-cbp", "ppo-redo"])
def test_every_scales_agent_sends_the_raw_sample(name, scale):
    from plasticity_gym.harness.resolve import resolve_agent

    spec = resolve_agent(name, env_id="AntFriction-v0", scale=scale, kind="episodic")
    assert spec.build(OBS, ACT, 0, "cpu").config.clip_actions is False


def test_truncation_needs_the_final_observation():
    agent = _small()
    agent.act(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="SAME_STEP"):
        agent.observe(np.zeros((1, 3)), np.zeros(1), np.array([False]), np.array([True]), {})


def test_a_time_limit_bootstraps_from_the_final_observation(monkeypatch):
    from plasticity_gym_agents import ppo

    seen = {}
    real_gae = ppo.gae

    def spy(rewards, values, dones, next_value, gamma, lam):
        seen.update(rewards=rewards.clone(), dones=dones.clone())
        return real_gae(rewards, values, dones, next_value, gamma, lam)

    monkeypatch.setattr(ppo, "gae", spy)
    agent = _small(rollout_steps=4)
    final = np.array([[0.5, -1.0, 2.0]], np.float32)
    flags = [(False, False), (False, True), (True, False), (False, False)]  # truncated at 1, terminated at 2
    with torch.no_grad():  # the value network as it is during collection (the update comes after)
        v_final = float(agent.value(torch.as_tensor(final)))
    for t, (term, trunc) in enumerate(flags):
        agent.act(np.full((1, 3), t, np.float32))
        info = {"final_obs": np.array([final[0] if trunc else None], dtype=object)}
        agent.observe(np.full((1, 3), t + 1, np.float32), np.array([1.0]), np.array([term]), np.array([trunc]), info)
    expected = torch.tensor([[1.0], [1.0 + agent.config.gamma * v_final], [1.0], [1.0]])
    torch.testing.assert_close(seen["rewards"], expected)
    torch.testing.assert_close(seen["dones"], torch.tensor([[0.0], [1.0], [1.0], [0.0]]))


def test_train_on_a_vector_env_records_episodes():
    # Pendulum-v1 only ever truncates (200 steps): the SAME_STEP vector env must hand over final_obs.
    config = ppo_config("ppo", {"hidden": [16, 16], "num_envs": 2, "rollout_steps": 400, "epochs": 1,
                                "minibatches": 2})
    result = train("Pendulum-v1", config, 800, seed=0)
    assert result.steps == 800 and len(result.updates) == 2
    assert [step for step, _ in result.episodes] == [400, 400, 800, 800]
    assert all(-2000 < r < 0 for _, r in result.episodes)


def test_diagnostics_are_the_rl_metrics_of_the_policy():
    agent = _small()
    with pytest.raises(RuntimeError, match="no rollout"):
        agent.diagnostics()
    stats = _feed(agent, 32, seed=0)
    d = agent.diagnostics()
    assert 0.0 <= d["dormant_pct"] <= 100.0 and 1 <= d["stable_rank"] <= 8
    weights = [p.detach() for p in agent.probe_model().parameters() if p.dim() == 2]
    assert d["avg_weight_magnitude"] == pytest.approx(
        float(sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)))
    assert len(stats) == 2 and min(s["weight_change"] for s in stats) > 0
    assert d["max_weight_change"] == max(s["weight_change"] for s in stats)
    assert math.isnan(agent.diagnostics()["max_weight_change"])  # reset by reading
    assert agent.diagnostics(np.zeros((5, 3)))["dormant_pct"] >= 0.0


def test_resume_from_state_dict_or_pickle_continues_identically():
    agent = _small("ppo-cbp", cbp={"replacement_rate": 0.05, "maturity": 2}, epochs=2, minibatches=4,
                   num_envs=2, rollout_steps=16)
    _feed(agent, 21, seed=0)  # mid-rollout, after two updates with replacements
    assert agent.replacements > 0
    resumed = _small("ppo-cbp", cbp={"replacement_rate": 0.05, "maturity": 2}, epochs=2, minibatches=4,
                     num_envs=2, rollout_steps=16)
    resumed.load_state_dict(copy.deepcopy(agent.state_dict()))
    unpickled = pickle.loads(pickle.dumps(agent))
    runs = [_feed(a, 30, seed=1) for a in (agent, resumed, unpickled)]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 4
    for other in (resumed, unpickled):
        for p, q in zip(agent.policy.parameters(), other.policy.parameters()):
            assert torch.equal(p, q)
    with pytest.raises(ValueError, match="another config"):
        _small().load_state_dict(agent.state_dict())


# -- CBP inside PPO -----------------------------------------------------------------------------
def test_cbp_replacement_zero_contribution_and_adam_restart_by_hand():
    # One mini-batch per update and ρ·units = 1: each update ends with exactly one replacement in
    # each of the four groups (policy and value, two hidden layers each).
    agent = _small("ppo-cbp", cbp={"replacement_rate": 0.125, "maturity": 0})
    (stats,) = _feed(agent, 16, seed=0)
    assert {k: len(v) for k, v in stats["replaced_units"].items()} == {
        "policy.layers.0": 1, "policy.layers.1": 1, "value.layers.0": 1, "value.layers.1": 1}
    opt, (b1, b2) = agent.optimizer, agent.config.optimizer.betas
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    touched: dict[torch.Tensor, torch.Tensor] = {}  # param -> bool mask of touched elements
    for net_name, net in (("policy", agent.policy), ("value", agent.value)):
        consumers = [net.layers[1], net.head]
        for layer in range(2):
            (i,) = stats["replaced_units"][f"{net_name}.layers.{layer}"]
            producer = net.layers[layer]
            bound = math.sqrt(3.0 / producer.in_features)  # the LeCun-uniform init
            assert producer.weight[i].abs().max() <= bound and producer.bias[i] == 0
            # Its outgoing weights are zero, except towards a unit of the next layer replaced in the
            # same step (that unit's fresh incoming row; its own outgoing weights are zero).
            rows = torch.ones(consumers[layer].weight.shape[0], dtype=torch.bool)
            if layer == 0:
                rows[stats["replaced_units"][f"{net_name}.layers.1"]] = False
            assert torch.all(consumers[layer].weight[rows, i] == 0)
            # The new unit contributes nothing: any incoming weights give the same outputs.
            probe = copy.deepcopy(net)
            with torch.no_grad():
                probe.layers[layer].weight[i] = 10.0
                probe.layers[layer].bias[i] = 10.0
            torch.testing.assert_close(probe(x), net(x), rtol=0, atol=0)
            for p, index in ((producer.weight, (i,)), (producer.bias, (i,)),
                             (consumers[layer].weight, (slice(None), i))):
                touched.setdefault(p, torch.zeros_like(p, dtype=torch.bool))[index] = True
    # Right after the replacement: the touched slices' moments and step counts are zero, every
    # other element has had exactly one step (bias correction 1 − β).
    for p, mask in touched.items():
        s = opt.state[p]
        for key in ("exp_avg", "exp_avg_sq", "bias_correction1", "bias_correction2"):
            assert torch.all(s[key][mask] == 0), key
        torch.testing.assert_close(s["bias_correction1"][~mask], torch.full_like(s["bias_correction1"][~mask], 1 - b1))
    # The next Adam step, by hand: touched elements restart at count 1 (a step of ≈ lr), the
    # others continue at count 2.
    lr, eps, wd = agent.config.optimizer.lr, agent.config.optimizer.eps, agent.config.optimizer.weight_decay
    before = {p: (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in touched}
    opt.zero_grad()
    (agent.policy(x).square().sum() + agent.value(x).square().sum()).backward()
    opt.step()
    restarted = 0
    for p, mask in touched.items():
        w, s = before[p]
        g = p.grad + wd * w
        m, v = b1 * s["exp_avg"] + (1 - b1) * g, b2 * s["exp_avg_sq"] + (1 - b2) * g * g
        c1, c2 = b1 * s["bias_correction1"] + 1 - b1, b2 * s["bias_correction2"] + 1 - b2
        torch.testing.assert_close(p.detach(), w - lr * (m / c1) / (torch.sqrt(v / c2) + eps))
        # (A fresh unit's incoming weights get only the weight-decay gradient: zero outgoing weights.)
        big = mask & (g.abs() > 1e-5)
        torch.testing.assert_close((p.detach() - w)[big].abs(), torch.full_like(w[big], lr), rtol=2e-3, atol=0)
        restarted += int(big.sum())
    assert restarted > 20


def test_cbp_replacements_over_n_updates_are_rho_n_eligible():
    rho, n_units, rollouts, per_rollout = 0.05, 8, 5, 8
    agent = _small("ppo-cbp", cbp={"replacement_rate": rho, "maturity": 0}, epochs=2, minibatches=4)
    _feed(agent, 16 * rollouts, seed=0)
    n = rollouts * per_rollout
    assert agent.minibatch_updates == n
    # Maturity 0: every unit is eligible at every step (a fresh unit is one update old at the next).
    for group, count in agent.cbp.replacements.items():
        assert abs(count - rho * n * n_units) <= 1, group
    gated = _small("ppo-cbp", cbp={"replacement_rate": rho, "maturity": 24}, epochs=2, minibatches=4)
    _feed(gated, 16 * 3, seed=0)  # 24 updates: no unit is older than the maturity yet
    assert gated.replacements == 0


def test_redo_runs_on_both_networks_every_period():
    agent = _small("ppo-redo", redo={"threshold": 0.1, "period": 3}, epochs=2, minibatches=4)
    _feed(agent, 32, seed=0)
    assert agent.minibatch_updates == 16 and agent.redo.count == 16 % 3
    assert set(agent.redo.replacements) == {"policy.layers.0", "policy.layers.1", "value.layers.0",
                                            "value.layers.1"}


# -- it learns ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_learns_inverted_pendulum():
    # A broken PPO stays near a random policy's ≈ 5–10 (measured: advantages with the wrong sign
    # or a log-prob with the wrong sign end at ≈ 2); this one reaches several hundred (up to 1,000).
    torch.set_num_threads(1)
    config = ppo_config("ppo", {"hidden": [64, 64], "rollout_steps": 1024, "optimizer": {"lr": 3e-4}})
    result = train("InvertedPendulum-v5", config, 16_384, seed=0)
    late = [r for step, r in result.episodes if step > result.steps - 4096]
    early = [r for step, r in result.episodes if step <= 2048]
    assert np.mean(early) < 30
    assert np.mean(late) > 150, f"mean return over the last 4,096 steps: {np.mean(late):.1f}"


def test_make_agent_builds_each_ppo_variant_with_its_scale():
    import gymnasium as gym

    from plasticity_gym_agents import RL_AGENT_NAMES, PPOAgent, make_agent

    env = gym.make("InvertedPendulum-v5")
    for name in RL_AGENT_NAMES:
        agent = make_agent(name, env.observation_space, env.action_space, scale="smoke", device="cpu")
        assert isinstance(agent, PPOAgent) and agent.config.rollout_steps == 512
        assert (agent.config.cbp is not None) == (name == "ppo-cbp")
    paper = make_agent("ppo-cbp", env.observation_space, env.action_space, scale="paper", device="cpu")
    assert paper.config.rollout_steps == 2048 and paper.config.cbp.maturity == 10_000
    env.close()
