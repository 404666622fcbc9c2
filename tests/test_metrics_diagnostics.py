"""The diagnostics since the paper (active units, feature norm, gradient norm, weight change, the
plasticity score) against networks and representations with known values, and in the probe
records of real small runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from plasticity_gym.harness.probes import GRADIENT_PROBE_EVERY, ProbeSchedule, ProbeValues, gradient_probe_tasks
from plasticity_gym.harness.records import PlasticityLog
from plasticity_gym.metrics import (
    PlasticityProbe,
    active_fraction,
    feature_norm,
    gradient_norm,
    gradient_norms,
    measure,
    measure_replicas,
    plasticity_score,
    plasticity_scores,
    replica_state,
    weight_change,
    weight_changes,
    weights_of,
)


# --------------------------------------------------------------------------- representations
def test_active_fraction_counts_example_unit_pairs():
    acts = torch.zeros(4, 5)
    acts[0, :] = 1.0  # example 0: all five fire
    acts[1, :2] = 0.5  # example 1: two
    acts[2, 0] = -1.0  # negative is not active
    assert active_fraction(acts) == pytest.approx(7 / 20)
    assert active_fraction(torch.zeros(3, 3)) == 0.0


def test_feature_norm_is_the_mean_row_norm():
    phi = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [1.0, 0.0]])  # norms 5, 0, 10, 1
    assert feature_norm(phi) == pytest.approx(4.0)


def test_measure_reports_active_pct_and_feature_norm_per_layer_and_network():
    # layer "1" (3 units): unit 0 copies x0 (>0 on every example), unit 1 is -x1 (never), unit 2
    # copies x2 - 0.5 (active on the examples with x2 > 0.5). Layer "3" (2 units): both copy unit 0.
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -0.5]))
        net[2].weight.copy_(torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
        net[2].bias.zero_()
    x = torch.tensor([[0.5, 0.2, 0.9], [1.0, 0.3, 0.1], [0.25, 0.7, 0.8], [2.0, 0.1, 0.0]])
    r = measure(net, x)
    # layer 1: unit 0 on 4 examples, unit 1 on 0, unit 2 on 2 (x2 = 0.9, 0.8): 6 of 12 pairs
    assert r["layers"]["1"]["active_pct"] == pytest.approx(50.0)
    # layer 3: both units on every example: 8 of 8
    assert r["layers"]["3"]["active_pct"] == pytest.approx(100.0)
    assert r["active_pct"] == pytest.approx(100 * (0.5 * 3 + 1.0 * 2) / 5)
    # layer 3's rows are (x0, x0): norm √2·x0, mean √2·(0.5 + 1 + 0.25 + 2)/4
    want = math.sqrt(2) * 3.75 / 4
    assert r["layers"]["3"]["feature_norm"] == pytest.approx(want, rel=1e-6)
    assert r["feature_norm"] == pytest.approx(want, rel=1e-6)  # the last hidden layer's
    rows = torch.stack([x[:, 0], torch.zeros(4), (x[:, 2] - 0.5).clamp_min(0)], 1)
    assert r["layers"]["1"]["feature_norm"] == pytest.approx(float(rows.norm(dim=1).mean()), rel=1e-6)


def test_measure_replicas_gives_each_network_its_own_active_pct_and_feature_norm():
    h = torch.zeros(2, 4, 2)
    h[0] = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])  # 4 of 8 active, norms 1
    h[1] = torch.tensor([[3.0, 4.0], [0, 0], [0, 0], [0, 0]])  # 2 of 8 active, norms 5, 0, 0, 0
    w = [torch.ones(2, 2, 3), torch.ones(2, 1, 2)]
    a, b = measure_replicas([h], w)
    assert (a["active_pct"], b["active_pct"]) == (pytest.approx(50.0), pytest.approx(25.0))
    assert (a["feature_norm"], b["feature_norm"]) == (pytest.approx(1.0), pytest.approx(1.25))


# --------------------------------------------------------------------------- weight change
def test_weight_change_is_the_l2_norm_of_the_difference_over_weights_only():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    before = [w.clone() for w in weights_of(net)]
    with torch.no_grad():
        net[0].weight[0, 0] += 3.0
        net[2].weight[0, 1] -= 4.0
        net[0].bias += 100.0  # a bias: not a weight
    assert len(before) == 2
    assert weight_change(before, weights_of(net)) == pytest.approx(5.0)
    stacked_before = [torch.zeros(2, 1, 2), torch.zeros(2, 3)]
    stacked_now = [torch.tensor([[[3.0, 0.0]], [[0.0, 0.0]]]), torch.tensor([[0.0, 4.0, 0.0], [1.0, 0.0, 0.0]])]
    assert weight_changes(stacked_before, stacked_now) == [pytest.approx(5.0), pytest.approx(1.0)]
    with pytest.raises(ValueError, match="differ in number or shape"):
        weight_change(before, before[:1])


def test_the_log_records_the_change_since_the_previous_probe():
    log = PlasticityLog()
    w0 = [torch.zeros(2, 2)]
    log.add(0, ProbeValues({"dead_pct": 0.0}, w0))
    log.add(1, ProbeValues({"dead_pct": 0.0}, [torch.full((2, 2), 1.0)]))  # ‖1‖ over 4 entries = 2
    log.add(2, ProbeValues({"dead_pct": 0.0}, [torch.full((2, 2), 1.0)]))
    log.add(3, {"dead_pct": 0.0})  # a probe without weights leaves the reference as it was
    assert log.as_dict()["metrics"]["weight_change"] == [None, pytest.approx(2.0), 0.0, None]


# --------------------------------------------------------------------------- gradient norm
def test_gradient_norm_of_a_linear_regression_by_hand():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.bias.fill_(0.5)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    y = torch.tensor([1.0, 0.0, 3.0])
    r = x @ torch.tensor([1.0, -2.0]) + 0.5 - y  # residuals 0.5, -1.5, -2.5
    gw = 2 * (r[:, None] * x).mean(0)  # d/dw mean r²
    gb = 2 * r.mean()
    want = math.sqrt(float(gw.square().sum() + gb ** 2))
    assert gradient_norm(net, x, y) == pytest.approx(want, rel=1e-6)
    assert gradient_norm(net, x, y, batch_size=2) == pytest.approx(want, rel=1e-6)  # chunks sum up


def test_gradient_norm_of_cross_entropy_by_hand():
    net = nn.Linear(3, 4)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
    x = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([2, 0])
    # zero logits: p = 1/4 everywhere; dL/dlogits = (p - onehot) / n
    delta = torch.full((2, 4), 0.25)
    delta[0, 2] -= 1.0
    delta[1, 0] -= 1.0
    delta /= 2
    want = math.sqrt(float((delta.T @ x).square().sum() + delta.sum(0).square().sum()))
    assert gradient_norm(net, x, y) == pytest.approx(want, rel=1e-6)


def test_differentiating_metrics_leave_the_module_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    rng_state = torch.get_rng_state()
    g1, p1 = gradient_norm(net, x, y), plasticity_score(net, x)
    g2, p2 = gradient_norm(net, x, y), plasticity_score(net, x)
    assert (g1, p1) == (g2, p2)  # deterministic (eval mode: no dropout draws, running statistics)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is not touched
    assert net.training
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


# --------------------------------------------------------------------------- plasticity score
def _targets_by_definition(x: torch.Tensor, outputs: int, seed: int) -> torch.Tensor:
    """z of the documented definition (docs/metrics.md), written out independently."""
    a = torch.randn(x.shape[1], outputs, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = (x.double() - x.double().mean(0)) @ a
    z = z - z.mean(0)
    return (z / z.square().mean(0).sqrt()).float()


def test_plasticity_score_of_one_step_on_a_linear_model_by_hand():
    torch.manual_seed(1)
    net = nn.Linear(3, 2)
    x = torch.randn(6, 3)
    lr = 0.1
    z = _targets_by_definition(x, 2, seed=7)
    w, b = net.weight.detach(), net.bias.detach()
    # loss L = mean over 6 examples x 2 outputs of (f - y)²; at the start the residual is -z
    r = -z
    gw = 2 * r.T @ x / 12
    gb = 2 * r.sum(0) / 12
    after = ((x @ (w - lr * gw).T + (b - lr * gb)) - (x @ w.T + b + z)).square().mean()
    before = z.square().mean()
    assert float(before) == pytest.approx(1.0, rel=1e-5)  # L_before = σ²
    want = 1 - float(after / before)
    got = plasticity_score(net, x, PlasticityProbe(steps=1, lr=lr, n_examples=6, seed=7))
    assert got == pytest.approx(want, rel=1e-5)
    assert 0 < got < 1


def test_plasticity_score_uses_only_the_first_n_examples_and_the_target_scale():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(40, 5)
    probe = PlasticityProbe(steps=3, lr=0.05, n_examples=10)
    assert plasticity_score(net, x, probe) == plasticity_score(net, torch.cat([x[:10], -x[10:]]), probe)
    assert plasticity_score(net, x, probe) != plasticity_score(net, x, PlasticityProbe(steps=3, lr=0.05, n_examples=20))


def test_a_network_of_dead_units_scores_zero():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every hidden unit is off on these inputs: only the head bias learns
    x = torch.rand(50, 4)
    assert measure(net, x)["dead_pct"] == 100.0
    # z has zero mean per output, so the bias gradient is 0 and the copy cannot move at all
    assert plasticity_score(net, x, PlasticityProbe(n_examples=50)) == pytest.approx(0.0, abs=1e-6)


def test_a_diverging_probe_scores_below_zero_and_the_settings_are_validated():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    x = 3 * torch.randn(64, 8)
    assert 0 < plasticity_score(net, x, PlasticityProbe(steps=5, lr=0.1)) < 1
    assert plasticity_score(net, x, PlasticityProbe(steps=3, lr=0.5)) < -1  # steps too large: diverges
    for bad in ({"steps": 0}, {"lr": -1.0}, {"n_examples": 0}, {"target_std": 0.0}, {"lr": math.inf}):
        with pytest.raises(ValueError, match="PlasticityProbe"):
            PlasticityProbe(**bad)


def test_batched_diagnostics_equal_one_network_at_a_time():
    torch.manual_seed(4)
    nets = [nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)) for _ in range(3)]
    xs = torch.randn(3, 50, 6)
    ys = torch.randint(0, 3, (3, 50))
    state = replica_state(nets)
    probe = PlasticityProbe(steps=4, lr=0.05, n_examples=30)
    batched_g = gradient_norms(nets[0], state, xs, ys, batch_size=20)
    batched_p = plasticity_scores(nets[0], state, xs, probe)
    for i, net in enumerate(nets):
        assert batched_g[i] == pytest.approx(gradient_norm(net, xs[i], ys[i]), rel=1e-5)
        assert batched_p[i] == pytest.approx(plasticity_score(net, xs[i], probe), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="replica axis first"):
        gradient_norms(nets[0], state, xs[:2], ys[:2])


def test_regression_targets_must_match_the_outputs():
    net = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="do not match the targets"):
        gradient_norm(net, torch.zeros(4, 2), torch.zeros(4))


# --------------------------------------------------------------------------- in the runs
def test_the_schedule_differentiates_every_kth_probe():
    s = ProbeSchedule(every=2, size=100)
    tasks = s.tasks(30)
    assert [t for t in tasks if s.differentiates(t)] == gradient_probe_tasks(tasks) == tasks[::GRADIENT_PROBE_EVERY]
    assert gradient_probe_tasks(tasks)[:2] == [0, 2 * GRADIENT_PROBE_EVERY]
    assert not ProbeSchedule(every=0, size=100).differentiates(0)


_NEW = ("active_pct", "feature_norm", "weight_change", "grad_norm", "plasticity_score")


def _check_run_records(result, n_tasks: int) -> None:
    result.validate()
    proto = result.data["protocol"]
    assert proto["probe_tasks"] == list(range(n_tasks))
    assert proto["gradient_probe_tasks"] == list(range(0, n_tasks, GRADIENT_PROBE_EVERY))
    assert proto["plasticity_probe"] == {"steps": 10, "lr": 0.003, "n_examples": 256, "target_std": 1.0, "seed": 0}
    for run in result.data["runs"]:
        m = run["plasticity"]["metrics"]
        assert run["plasticity"]["task"] == list(range(n_tasks))
        assert set(_NEW) <= set(m)
        assert all(0 <= v <= 100 for v in m["active_pct"]) and all(v > 0 for v in m["feature_norm"])
        assert m["weight_change"][0] is None and all(v > 0 for v in m["weight_change"][1:])
        for key in ("grad_norm", "plasticity_score"):
            measured = [t for t, v in zip(run["plasticity"]["task"], m[key]) if v is not None]
            assert measured == proto["gradient_probe_tasks"], key
        assert m["grad_norm"][0] > 0 and -1 < m["plasticity_score"][0] < 1
        assert any(k.startswith("layers.") and k.endswith(".active_pct") for k in m)
        assert any(k.startswith("layers.") and k.endswith(".feature_norm") for k in m)


def test_probe_records_of_a_lockstep_run_hold_the_new_diagnostics():
    from plasticity_gym.harness import evaluate

    result = evaluate("PermutedMNIST-v0", "backprop", scale="smoke", seeds=[0, 1], probe_every=1,
                      env_kwargs={"n_tasks": 6, "examples_per_task": 100}, lockstep="on")
    assert result.data["protocol"]["execution"] == "lockstep"
    _check_run_records(result, 6)
    # the seeds are their own networks
    a, b = (r["plasticity"]["metrics"]["grad_norm"][0] for r in result.data["runs"])
    assert a != b


def test_lockstep_and_sequential_probes_agree():
    from plasticity_gym.harness import evaluate

    kw = dict(scale="smoke", seeds=[0, 1], probe_every=1, env_kwargs={"n_tasks": 2, "examples_per_task": 50})
    lock = evaluate("PermutedMNIST-v0", "backprop", lockstep="on", **kw)
    seq = evaluate("PermutedMNIST-v0", "backprop", lockstep="off", **kw)
    for r_lock, r_seq in zip(lock.data["runs"], seq.data["runs"]):
        for key in _NEW:
            for u, v in zip(r_lock["plasticity"]["metrics"][key], r_seq["plasticity"]["metrics"][key]):
                assert (u is None) == (v is None), key
                if u is not None:
                    assert u == pytest.approx(v, rel=1e-3, abs=1e-5), key


def test_probe_records_of_a_regression_run_hold_the_new_diagnostics():
    from plasticity_gym.harness import evaluate

    result = evaluate("SlowRegression-v0", "backprop", scale="smoke", seeds=[0], probe_every=1,
                      env_kwargs={"n_examples": 1200, "flip_interval": 200})
    _check_run_records(result, 6)


def test_a_network_that_does_not_fit_the_probe_loss_is_probed_without_its_gradient():
    from plasticity_gym.harness.probes import probe_agent

    class Env:
        def probe_batch(self, n):
            return np.random.default_rng(0).random((n, 4), dtype=np.float32), np.arange(n) % 10

    class Agent:  # three outputs for ten classes: cross-entropy cannot be taken
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

        def probe_model(self):
            return self.net

    with pytest.warns(RuntimeWarning, match="grad_norm not measured"):
        values = probe_agent(Env(), Agent(), 20)
    assert "grad_norm" not in values and "plasticity_score" in values and "active_pct" in values
    assert len(values.weights) == 2
