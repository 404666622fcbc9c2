"""Configs: validation, unknown keys, hashing, defaults."""

from __future__ import annotations

import pytest

from plasticity_gym_agents import AGENT_NAMES, defaults_table, resolve_config
from plasticity_gym_agents.config import CBPConfig, LearnerConfig, NetworkConfig, OptimizerConfig

from agent_helpers import cls_spaces, reg_spaces


def test_unknown_key_is_rejected_naming_it_and_listing_valid_ones():
    with pytest.raises(ValueError) as e:
        CBPConfig.from_dict({"replacment_rate": 1e-4})
    msg = str(e.value)
    assert "'replacment_rate'" in msg and "replacement_rate" in msg and "maturity" in msg


def test_unknown_nested_key_names_its_section():
    with pytest.raises(ValueError, match=r"LearnerConfig\.cbp: unknown key 'maturty'"):
        LearnerConfig.from_dict({"cbp": {"maturty": 10}})


@pytest.mark.parametrize("bad", [
    {"maturity": "100"}, {"maturity": 1.5}, {"maturity": True}, {"decay": "0.99"},
    {"running_average": 1}, {"utility": "nope"}, {"replacement_rate": -1e-4}, {"decay": 1.0},
])
def test_wrong_type_or_range_is_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        CBPConfig.from_dict(bad)


def test_nested_types_and_tuples():
    c = LearnerConfig.from_dict({"network": {"hidden": [5]}, "optimizer": {"betas": [0.99, 0.99]}})
    assert c.network.hidden == (5,) and c.optimizer.betas == (0.99, 0.99)
    with pytest.raises(ValueError, match="hidden"):
        NetworkConfig.from_dict({"hidden": [5, 0]})
    with pytest.raises(ValueError, match="betas"):
        OptimizerConfig.from_dict({"betas": [0.9]})
    with pytest.raises(ValueError, match="momentum"):
        OptimizerConfig(name="adam", momentum=0.9)


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match="maturity"):
        CBPConfig(maturity=-1)


def test_to_dict_roundtrip_and_hash():
    c = LearnerConfig.from_dict({"cbp": {"replacement_rate": 1e-5}, "network": {"hidden": [7, 7]}})
    d = c.to_dict()
    assert LearnerConfig.from_dict(d) == c
    assert c.config_hash() == LearnerConfig.from_dict(d).config_hash()
    assert c.config_hash() != c.replace(cbp={"replacement_rate": 1e-6}).config_hash()
    assert len(c.config_hash()) == 64


def test_paper_and_calibrated_defaults():
    obs, act = cls_spaces(1, (784,), 10)
    c = resolve_config("backprop", obs, act, env_id="PermutedMNIST-v0", scale="cpu")
    assert c.network.hidden == (100, 100, 100) and c.optimizer.lr == 0.01 and c.cbp is None
    c = resolve_config("cbp", obs, act, env_id="PermutedMNIST-v0", scale="smoke")
    assert (c.cbp.replacement_rate, c.cbp.maturity, c.cbp.decay) == (1e-4, 100, 0.99)
    c = resolve_config("cbp", obs, act, env_id="PermutedMNIST-v0", scale="paper")
    assert c.optimizer.lr == 0.003 and c.network.hidden == (2000,) * 3
    assert c.cbp.utility == "adaptable_contribution"
    robs, ract = reg_spaces(1, 21)
    c = resolve_config("cbp", robs, ract, env_id="SlowRegression-v0", scale="cpu")
    assert c.network.hidden == (5,) and c.network.activation == "relu" and c.optimizer.lr == 0.01
    assert (c.cbp.replacement_rate, c.cbp.maturity, c.cbp.decay) == (1e-4, 100, 0.99)


def test_overrides_are_validated():
    obs, act = cls_spaces()
    c = resolve_config("cbp", obs, act, overrides={"cbp": {"maturity": 7}})
    assert c.cbp.maturity == 7
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        resolve_config("backprop", obs, act, overrides={"optimizer": {"lrr": 0.1}})


def test_unknown_agent_and_scale():
    obs, act = cls_spaces()
    with pytest.raises(ValueError, match="valid: backprop"):
        resolve_config("sgd", obs, act)
    with pytest.raises(ValueError, match="smoke, cpu, paper"):
        resolve_config("backprop", obs, act, scale="huge")


def test_defaults_table_is_complete_and_valid():
    table = defaults_table()
    assert ("ContinualImageNet-v0", "paper") in table
    inet = table[("ContinualImageNet-v0", "paper")]
    assert inet["backprop"]["head_reset"] == "zero" and inet["backprop"]["optimizer"]["momentum"] == 0.9
    assert inet["cbp"]["cbp"]["replacement_rate"] == 3e-4
    cifar = table[("ClassIncCIFAR100-v0", "paper")]
    assert cifar["cbp"]["cbp"]["maturity"] == 1000 and cifar["cbp"]["cbp"]["replacement_rate"] == 1e-5
    assert cifar["backprop"]["network"]["width"] == 64 and "dropout" not in cifar
    assert set(table[("PermutedMNIST-v0", "cpu")]) == set(AGENT_NAMES)


def test_cbp_and_redo_on_one_network_are_rejected():
    with pytest.raises(ValueError, match="cbp and redo"):
        LearnerConfig.from_dict({"cbp": {}, "redo": {}})


def test_next_layer_bias_correction_is_off_by_default_and_validated():
    assert CBPConfig().next_layer_bias_correction is False
    with pytest.raises(ValueError, match="next_layer_bias_correction"):
        CBPConfig.from_dict({"next_layer_bias_correction": "yes"})
