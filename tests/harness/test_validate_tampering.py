"""`validate` checks the numbers: each hand edit of a stored entry is rejected, naming the field.

The entries are the committed smoke entries of a supervised board (SlowRegression-v0, cbp) and
an episodic one (AntFriction-v0, ppo); every check recomputes from the file alone (no re-run).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import pytest

from plasticity_gym.harness._io import sha256_of
from plasticity_gym.harness.result import resummarize
from plasticity_gym.harness.verify import check_entry

REPO = Path(__file__).resolve().parents[2]
SUPERVISED = REPO / "leaderboards" / "SlowRegression-v0" / "smoke" / "cbp.json"
EPISODIC = REPO / "leaderboards" / "AntFriction-v0" / "smoke" / "ppo.json"


@pytest.fixture(scope="module")
def stored() -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in (SUPERVISED, EPISODIC)}


def _key(part: str) -> str | int:
    return int(part) if part.lstrip("-").isdigit() else part


def _set(path: str, value) -> Callable[[dict], None]:
    """Set the field at ``path`` (``a.b[2].c``) to ``value``, or to ``value(old)`` if callable."""
    def edit(d: dict) -> None:
        *parents, leaf = map(_key, path.replace("]", "").replace("[", ".").split("."))
        node = d
        for p in parents:
            node = node[p]
        node[leaf] = value(node[leaf]) if callable(value) else value
    return edit


def _rehashed_kwargs(key: str, value) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["env"]["kwargs"][key] = value
        d["env"]["kwargs_hash"] = sha256_of(d["env"]["kwargs"])  # a consistent-looking hash
    return edit


SUPERVISED_CASES = {
    "summary value (the issue's 0.1)": (_set("summary.metrics.error_last10.value", 0.1), "summary.metrics.error_last10.value"),
    "per-seed value": (_set("summary.metrics.error_last10.per_seed[1]", 0.01), "summary.metrics.error_last10.per_seed[1]"),
    "CI low bound": (_set("summary.metrics.error_last10.ci_low", 0.5), "summary.metrics.error_last10.ci_low"),
    "CI high bound": (_set("summary.metrics.error_first10.ci_high", 0.9), "summary.metrics.error_first10.ci_high"),
    "series value": (_set("runs[2].series.binned.value[9]", lambda v: v / 10), "summary.metrics.error_last10.per_seed[2]"),
    "series NaN": (_set("runs[0].series.binned.value[3]", float("nan")), "runs[0].series.binned.value[3]"),
    "series inf": (_set("runs[1].series.online.value[0]", float("inf")), "runs[1].series.online.value[0]"),
    "summary -inf": (_set("summary.metrics.error_auc.value", float("-inf")), "summary.metrics.error_auc.value"),
    "env.id": (_set("env.id", "PermutedMNIST-v0"), "env.id"),
    "env.id unknown": (_set("env.id", "Nope-v0"), "env.id"),
    "env.scale": (_set("env.scale", "cpu"), "env.scale"),
    "env kwargs (rehashed)": (_rehashed_kwargs("flip_interval", 1000), "env.kwargs.flip_interval"),
    "data sha256": (_set("env.data.sha256", "0" * 64), "env.data.sha256"),
    "data name": (_set("env.data.name", "mnist"), "env.data.name"),
    "budget": (_set("env.budget.n_tasks", 20), "env.budget.n_tasks"),
    "agent name": (_set("agent.name", "backprop"), "agent.name"),
    "agent declaration": (_set("agent.uses_task_boundaries", True), "agent.uses_task_boundaries"),
    "higher_is_better": (_set("summary.metrics.error_last10.higher_is_better", True), "summary.metrics.error_last10.higher_is_better"),
    "primary metric": (_set("summary.primary", "error_first10"), "summary.primary"),
    "protocol metric": (_set("protocol.metric", "accuracy"), "protocol.metric"),
    "interval method": (_set("summary.ci.level", 0.5), "summary.ci"),
}
EPISODIC_CASES = {
    "summary value": (_set("summary.metrics.return_last10.value", 1000.0), "summary.metrics.return_last10.value"),
    "per-seed value": (_set("summary.metrics.return_first10.per_seed[0]", 0.0), "summary.metrics.return_first10.per_seed[0]"),
    "CI bound": (_set("summary.metrics.return_last10.ci_high", 0.0), "summary.metrics.return_last10.ci_high"),
    "episode return": (_set("runs[1].episodes.return[-1]", lambda v: v + 500.0), "summary.metrics.return_last10.per_seed[1]"),
    "episode NaN": (_set("runs[0].episodes.return[0]", float("nan")), "runs[0].episodes.return[0]"),
    "env.id": (_set("env.id", "Hopper-v5"), "env.id"),
    "data sha256": (_set("env.data.sha256", "f" * 64), "env.data.sha256"),
    "agent name": (_set("agent.name", "ppo-cbp"), "agent.name"),
    "higher_is_better": (_set("summary.metrics.return_last10.higher_is_better", False), "summary.metrics.return_last10.higher_is_better"),
    "primary metric": (_set("summary.primary", "return_auc"), "summary.primary"),
}


@pytest.mark.parametrize("path", [SUPERVISED, EPISODIC], ids=["supervised", "episodic"])
def test_stored_entries_pass(stored, path):
    assert check_entry(stored[path]) == ([], [])


def _rejected(entry: dict, edit: Callable[[dict], None], field: str) -> list[str]:
    bad = copy.deepcopy(entry)
    edit(bad)
    errors, _ = check_entry(json.loads(json.dumps(bad)))  # as a file would read back (NaN included)
    assert errors, "the edit was accepted"
    assert any(e.startswith(field) or e.split(":")[0].split(", ").count(field) for e in errors), errors
    return errors


@pytest.mark.parametrize("case", list(SUPERVISED_CASES))
def test_supervised_tampering_is_rejected_naming_the_field(stored, case):
    edit, field = SUPERVISED_CASES[case]
    _rejected(stored[SUPERVISED], edit, field)


@pytest.mark.parametrize("case", list(EPISODIC_CASES))
def test_episodic_tampering_is_rejected_naming_the_field(stored, case):
    edit, field = EPISODIC_CASES[case]
    _rejected(stored[EPISODIC], edit, field)


def test_an_older_interval_is_rejected_until_resummarized(stored):
    old = copy.deepcopy(stored[SUPERVISED])
    old["summary"]["ci"] = {"method": "percentile bootstrap over seeds", "level": 0.95, "n_resamples": 10000, "rng_seed": 0}
    errors, _ = check_entry(old)
    assert len(errors) == 1 and errors[0].startswith("summary.ci.method") and "resummarize" in errors[0]
    fixed = resummarize(old)
    assert check_entry(fixed) == ([], []) and fixed["runs"] == old["runs"]


def test_the_issues_edit_is_refused_by_validate_leaderboard_and_submit(stored, tmp_path, cli):
    bad = copy.deepcopy(stored[SUPERVISED])
    bad["summary"]["metrics"]["error_last10"]["value"] = 0.1
    f = tmp_path / "edited.json"
    f.write_text(json.dumps(bad))
    code, out, _ = cli("validate", f)
    assert code == 1 and "INVALID" in out and "summary.metrics.error_last10.value: recorded 0.1" in out
    code, out, err = cli("leaderboard", "SlowRegression-v0", "--scale", "smoke", "--include", f)
    assert code == 1 and "summary.metrics.error_last10.value" in err and "0.100" not in out
    code, out, _ = cli("submit", f, "--dir", tmp_path / "boards")
    assert code == 1 and "not filed" in out and not (tmp_path / "boards").exists()
    code, out, _ = cli("validate", SUPERVISED)
    assert code == 0 and out.strip().endswith("ok")


def test_resummarize_cli_rewrites_only_the_summary(stored, tmp_path, cli):
    old = copy.deepcopy(stored[SUPERVISED])
    old["summary"]["ci"] = {"method": "percentile bootstrap over seeds", "level": 0.95, "n_resamples": 10000, "rng_seed": 0}
    old["summary"]["metrics"]["error_last10"]["ci_low"] = 0.3426579583340332  # the old bootstrap bound
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old, indent=1) + "\n")
    assert cli("validate", f)[0] == 1
    code, out, _ = cli("resummarize", f)
    assert code == 0 and "summary recomputed" in out
    new = json.loads(f.read_text())
    assert {k: v for k, v in new.items() if k != "summary"} == {k: v for k, v in old.items() if k != "summary"}
    assert new["summary"] == stored[SUPERVISED]["summary"]
    assert cli("validate", f)[0] == 0
    assert "summary unchanged" in cli("resummarize", f)[1]
