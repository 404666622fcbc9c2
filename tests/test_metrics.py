"""Plasticity metrics against matrices and networks with known answers (SPEC §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from plasticity_gym.metrics import (
    average_weight_magnitude,
    dead_fraction,
    dormant_fraction,
    effective_rank,
    measure,
    stable_rank,
)


def test_identity_has_full_effective_and_stable_rank():
    assert effective_rank(torch.eye(10)) == pytest.approx(10.0)
    assert stable_rank(torch.eye(10)) == 10
    assert effective_rank(3.0 * torch.eye(7, 4)) == pytest.approx(4.0)


def test_rank_one_matrix():
    u, v = torch.randn(50, 1), torch.randn(1, 8)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-5)
    assert stable_rank(u @ v) == 1


def test_known_spectrum():
    phi = torch.diag(torch.tensor([3.0, 1.0]))
    p = torch.tensor([0.75, 0.25])
    assert effective_rank(phi) == pytest.approx(math.exp(float(-(p * p.log()).sum())))
    # σ = (100, 1, 0.5): shares 100/101.5 = 0.985, then 101/101.5 = 0.995 > 0.99 → k = 2.
    assert stable_rank(torch.diag(torch.tensor([100.0, 1.0, 0.5]))) == 2
    assert stable_rank(torch.zeros(3, 3)) == 0 and effective_rank(torch.zeros(3, 3)) == 0.0


def test_dead_and_dormant_columns():
    acts = torch.rand(200, 5) + 0.1
    acts[:, 1] = 0.0  # dead
    acts[:, 3] = 0.0
    acts[:2, 3] = 1.0  # active on 1% of the probe: dormant at threshold 1%, not dead
    acts[:, 4] = -1.0  # negative (e.g. tanh): never fires
    assert dead_fraction(acts) == pytest.approx(2 / 5)
    assert dormant_fraction(acts, 0.01) == pytest.approx(3 / 5)
    assert dormant_fraction(acts, 0.005) == pytest.approx(2 / 5)


def test_average_weight_magnitude_counts_weights_only():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.fill_(-2.0)
        net[2].weight.fill_(1.0)
        net[0].bias.fill_(100.0)
    assert average_weight_magnitude(net) == pytest.approx((6 * 2 + 2 * 1) / 8)


def test_measure_on_a_network_with_a_dead_unit():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.0, -10.0]))  # unit 2 never fires on [0, 1) inputs
        net[2].weight.copy_(torch.eye(3))
        net[2].bias.zero_()
    net.train()
    x = np.random.default_rng(0).random((300, 4), dtype=np.float32)
    r = measure(net, x, dormant_threshold=0.01)
    assert net.training  # mode restored
    assert set(r["layers"]) == {"1", "3"}
    for name in ("1", "3"):
        layer = r["layers"][name]
        assert layer["units"] == 3
        assert layer["dead_pct"] == pytest.approx(100 / 3)
        assert layer["stable_rank"] == 2
        assert 1.0 < layer["effective_rank"] < 2.0
    assert r["layers"]["1"]["producer"] == "0" and r["layers"]["3"]["producer"] == "2"
    assert r["dead_pct"] == pytest.approx(100 / 3)
    assert r["stable_rank"] == 2 and r["n_units"] == 6
    assert r["avg_weight_magnitude"] == pytest.approx(average_weight_magnitude(net))


def test_measure_conv_channels_and_chunking():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with torch.no_grad():
        # |conv(x)| ≤ 9 · (1/3) on inputs in [0, 1]: channel 2 is dead, the others always fire.
        net[0].bias.copy_(torch.tensor([5.0, 5.0, -100.0, 5.0]))
    x = torch.rand(50, 1, 8, 8)
    a = measure(net, x, batch_size=7)
    b = measure(net, x, batch_size=500)
    assert a["layers"]["1"]["units"] == 4
    assert a["layers"]["1"]["dead_pct"] == pytest.approx(25.0)
    assert a["layers"]["1"]["effective_rank"] == pytest.approx(b["layers"]["1"]["effective_rank"], rel=1e-5)


def test_measure_works_on_reference_agents_networks():
    from plasticity_gym_agents.networks import MLP

    net = MLP(10, [20, 20], 3)
    r = measure(net, torch.rand(100, 10))
    assert r["n_layers"] == 2 and r["n_units"] == 40
    assert r["layers"]["acts.0"]["producer"] == "layers.0"


def test_metrics_module_does_not_import_agents():
    import ast
    import pathlib

    import plasticity_gym.metrics as m

    tree = ast.parse(pathlib.Path(m.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith(("agents", "plasticity_gym_agents"))
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith(("agents", "plasticity_gym_agents")) for a in node.names)


def _mlps(n: int, seed: int = 0) -> list[nn.Module]:
    g = torch.Generator().manual_seed(seed)
    nets = []
    for _ in range(n):
        net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            net[0].bias[:4] = -50.0  # dead units, so the dead/dormant counts are not all zero
        nets.append(net)
    return nets


def test_measure_replicas_equals_measure_of_each_network():
    """The batched measure (one SVD over the replica axis) gives each network's measure()."""
    from plasticity_gym.metrics import measure_replicas, representation_layers

    nets = _mlps(4)
    x = torch.randn(4, 300, 6)  # each network its own probe batch
    hidden, weights = [], []
    with torch.no_grad():
        h = x
        for i in (0, 2):
            h = torch.relu(torch.stack([torch.nn.functional.linear(hh, net[i].weight, net[i].bias)
                                        for hh, net in zip(h, nets)]))
            hidden.append(h)
    for i in (0, 2, 4):
        weights.append(torch.stack([net[i].weight.detach() for net in nets]))
    layers = representation_layers(nets[0], x[0])
    assert layers == [("1", "0"), ("3", "2")]
    got = measure_replicas(hidden, weights, layers=layers)
    assert len(got) == 4
    for net, xi, g in zip(nets, x, got):
        want = measure(net, xi)
        assert want["dead_pct"] > 0
        assert g.keys() == want.keys() and g["layers"].keys() == want["layers"].keys()
        for k in ("dead_pct", "dormant_pct", "avg_weight_magnitude", "effective_rank", "stable_rank", "n_units"):
            assert g[k] == pytest.approx(want[k], rel=1e-6), k
        for name, layer in want["layers"].items():
            for k, v in layer.items():
                assert g["layers"][name][k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), (name, k)


def test_measure_replicas_checks_its_arguments():
    from plasticity_gym.metrics import measure_replicas

    with pytest.raises(ValueError, match="one name per hidden layer"):
        measure_replicas([torch.rand(2, 5, 3)], [torch.rand(2, 3, 4)], layers=[("a", "b"), ("c", "d")])
    default = measure_replicas([torch.rand(2, 5, 3)], [torch.rand(2, 3, 4), torch.rand(2, 1, 3)])
    assert list(default[0]["layers"]) == ["0"] and default[0]["layers"]["0"]["producer"] == "0"


def test_a_diverged_network_measures_nan_and_leaves_the_others_alone():
    """A network whose weights hold a NaN (a diverged run) gets NaN representation metrics, not
    an eigensolver error, and the other replicas of the same batched probe are unaffected."""
    from plasticity_gym.metrics import measure_replicas, representation_layers

    nets = _mlps(3)
    with torch.no_grad():
        nets[1][2].weight[0, 0] = float("nan")  # replica 1's second hidden layer is all NaN
    x = torch.randn(300, 6)
    healthy = measure(nets[0], x)
    diverged = measure(nets[1], x)
    assert math.isfinite(diverged["layers"]["1"]["effective_rank"])  # the first layer is fine
    for k in ("dead_pct", "dormant_pct", "active_pct", "feature_norm", "effective_rank", "stable_rank"):
        assert math.isnan(diverged["layers"]["3"][k]), k
    assert math.isnan(diverged["dead_pct"]) and math.isnan(diverged["stable_rank"])
    with torch.no_grad():
        h1 = torch.relu(torch.stack([net[0](x) for net in nets]))
        h2 = torch.relu(torch.stack([net[2](h) for net, h in zip(nets, h1)]))
    weights = [torch.stack([net[i].weight.detach() for net in nets]) for i in (0, 2, 4)]
    got = measure_replicas([h1, h2], weights, layers=representation_layers(nets[0], x))
    assert got[0]["effective_rank"] == pytest.approx(healthy["effective_rank"], rel=1e-6)
    assert got[0]["stable_rank"] == healthy["stable_rank"]
    assert math.isnan(got[1]["layers"]["3"]["effective_rank"])
