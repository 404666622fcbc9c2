"""The result schema: a valid entry passes; each kind of defect is rejected, naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import plasticity_gym
from plasticity_gym.harness import ResultValidationError, evaluate, load_schema, result_errors, validate_result
from plasticity_gym.harness._io import sha256_of
from plasticity_gym.harness.schema import SCHEMA_FILENAME
from tests.harness import fakes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def entry() -> dict:
    return evaluate("FakeClassify-v0", fakes.make_agent, scale="smoke", seeds=(0, 1), progress=False).data


def test_published_schema_is_the_packaged_one():
    published = json.loads((REPO / "leaderboards" / SCHEMA_FILENAME).read_text())
    assert published == load_schema()
    assert load_schema()["properties"]["schema_version"] == {"const": 1}


def test_valid_entry_passes(entry):
    assert result_errors(entry) == []
    validate_result(entry)
    assert entry["env"]["package_version"] == plasticity_gym.__version__
    assert entry["env"]["kwargs_hash"] == sha256_of(entry["env"]["kwargs"])
    assert [r["seed"] for r in entry["runs"]] == [0, 1]
    assert entry["runs"][0]["plasticity"]["task"] == [0, 1, 2, 3]  # a probe at every task start


def test_provenance_records_the_code(entry):
    code = entry["provenance"]["code"]
    assert code["package_version"] == plasticity_gym.__version__
    assert len(code["source_sha256"]) == 64 and int(code["source_sha256"], 16) >= 0
    assert code["git_commit"] is None or len(code["git_commit"]) == 40  # a commit where there is git
    old = copy.deepcopy(entry)
    del old["provenance"]["code"]  # entries written before it existed stay valid
    assert result_errors(old) == []


def _required(schema: dict, node: dict, prefix: str = ""):
    """Every required field path of the schema (objects only, $refs followed for runs/summary)."""
    for name in node.get("required", []):
        path = f"{prefix}.{name}" if prefix else name
        yield path
        child = node["properties"][name]
        if "$ref" in child:
            child = schema["$defs"][child["$ref"].split("/")[-1]]
        if child.get("type") == "object" and "properties" in child:
            yield from _required(schema, child, path)


def _get_parent(entry: dict, path: str):
    parts = path.split(".")
    node = entry
    for p in parts[:-1]:
        node = node[p]
        if isinstance(node, list):
            node = node[0]
    return node, parts[-1]


REQUIRED = list(_required(load_schema(), load_schema()))


def test_required_list_covers_nested_fields():
    assert {"env.kwargs_hash", "env.data.sha256", "agent.config_hash", "provenance.versions.torch",
            "summary.ci.level", "env.budget.n_tasks"} <= set(REQUIRED)


@pytest.mark.parametrize("path", REQUIRED)
def test_missing_required_field_is_named(entry, path):
    bad = copy.deepcopy(entry)
    parent, leaf = _get_parent(bad, path)
    del parent[leaf]
    errors = result_errors(bad)
    assert errors, f"removing {path} was accepted"
    assert any(e.startswith(f"{path}: required field is missing") for e in errors), errors


@pytest.mark.parametrize(
    "path, value",
    [
        ("schema_version", 2),
        ("env.id", 3),
        ("env.kwargs", []),
        ("env.kwargs_hash", "abc"),
        ("env.budget.n_examples_total", "800"),
        ("agent.uses_task_boundaries", "no"),
        ("agent.source", "mine"),
        ("protocol.metric", "rmse"),
        ("seeds", [0, 0]),
        ("provenance.created", "yesterday"),
        ("provenance.wall_time_s", -1),
    ],
)
def test_wrong_type_or_value_is_named(entry, path, value):
    bad = copy.deepcopy(entry)
    parent, leaf = _get_parent(bad, path)
    parent[leaf] = value
    errors = result_errors(bad)
    assert any(e.startswith(path + ":") for e in errors), errors


def test_wrong_type_deep_in_a_run_is_named(entry):
    bad = copy.deepcopy(entry)
    bad["runs"][1]["series"]["online"]["value"][2] = "high"
    assert any(e.startswith("runs[1].series.online.value[2]:") for e in result_errors(bad))


@pytest.mark.parametrize("where", ["", "env", "env.data", "agent", "runs", "runs.series", "summary.ci", "provenance.hardware"])
def test_unknown_field_is_rejected_and_named(entry, where):
    bad = copy.deepcopy(entry)
    node = bad
    for p in filter(None, where.split(".")):
        node = node[p]
        if isinstance(node, list):
            node = node[0]
    node["surprise"] = 1
    errors = result_errors(bad)
    assert any("'surprise' was unexpected" in e for e in errors), errors


def test_mismatched_hashes_are_named(entry):
    bad = copy.deepcopy(entry)
    bad["env"]["kwargs"]["n_tasks"] = 999  # edited kwargs, stale hash
    assert any(e.startswith("env.kwargs_hash: does not match") for e in result_errors(bad))
    bad = copy.deepcopy(entry)
    bad["agent"]["config"]["lr"] = 1.0
    assert any(e.startswith("agent.config_hash: does not match") for e in result_errors(bad))


def test_inconsistent_seeds_are_named(entry):
    bad = copy.deepcopy(entry)
    bad["seeds"] = [0, 5]
    assert any(e.startswith("runs:") for e in result_errors(bad))
    bad = copy.deepcopy(entry)
    bad["summary"]["metrics"]["online_accuracy_auc"]["per_seed"].append(0.5)
    assert any(e.startswith("summary.metrics.online_accuracy_auc.per_seed:") for e in result_errors(bad))


def test_validate_raises_with_all_messages(entry):
    bad = copy.deepcopy(entry)
    del bad["agent"]
    bad["extra"] = True
    with pytest.raises(ResultValidationError) as exc:
        validate_result(bad, "x.json")
    assert "x.json" in str(exc.value) and "agent: required field is missing" in str(exc.value)
    assert len(exc.value.errors) == 2


def test_save_refuses_invalid_and_writes_atomically(entry, tmp_path):
    from plasticity_gym.harness import Result

    out = tmp_path / "r.json"
    Result(entry).save(out)
    before = out.read_bytes()
    bad = copy.deepcopy(entry)
    bad["env"]["kwargs_hash"] = "0" * 64
    with pytest.raises(ResultValidationError, match="env.kwargs_hash"):
        Result(bad).save(out)
    assert out.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_validate_cli_names_the_field(entry, tmp_path, cli):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(entry))
    broken = copy.deepcopy(entry)
    broken["agent"]["config_hash"] = "f" * 64
    bad.write_text(json.dumps(broken))
    code, out, _ = cli("validate", good)
    assert code == 0 and "good.json: ok" in out
    code, out, _ = cli("validate", good, bad)
    assert code == 1 and "bad.json: INVALID" in out and "agent.config_hash" in out
