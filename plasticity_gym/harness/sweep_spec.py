"""Sweep files: a small TOML file naming the env, scale, agent, the hyperparameter grid, the seeds
and the selection rule, parsed into a validated :class:`SweepSpec`.

Every error names the file and the line of the key at fault, and says what would be accepted::

    [sweep.toml line 9] grid.agent.cbp.replacement_rate: expected a non-empty list of values, got 0.001

The format (see ``docs/sweeps.md`` and ``examples/*.toml``)::

    name = "slow-regression-cbp-rate"   # optional (default: the file's stem)
    env = "SlowRegression-v0"
    scale = "cpu"                        # optional (default cpu)
    agent = "cbp"                        # a reference name or module:factory

    [grid]                               # every combination of these values is one setting
    agent.cbp.replacement_rate = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
    env.threshold_rule = ["code", "text"]

    [set]                                # fixed for every setting (optional)
    agent.optimizer.lr = 0.01

    [seeds]
    search = 10                          # seeds 0..9 (or a list of seeds)
    final = 20                           # then 20 more (10..29) for the selected setting (optional)

    [select]                             # optional
    metric = "error_last10"              # default: the board's primary metric
    top = 1                              # how many settings get the final seeds
    require_all = true                   # select only once every search run has finished

    [run]                                # optional
    lockstep = "auto"                    # auto | on | off
    seeds_per_task = 0                   # seeds per lockstep task (0: all of a stage's seeds)
    device = "auto"
    checkpoint_every = 100000
    probe_every = 10                     # default: the run command's default
    probe_size = 2000
    bin_examples = 40000                 # default: the run command's default
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 with the tomli backport
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

__all__ = ["SweepError", "SweepSpec", "Setting", "load_sweep", "parse_sweep", "format_value"]


class SweepError(ValueError):
    """A sweep file that cannot be run: the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Setting:
    """One point of the grid: its swept values, and the agent overrides and env kwargs they give."""

    values: tuple[tuple[str, Any], ...]  # (swept key as written, e.g. "agent.cbp.replacement_rate", value)
    overrides: Mapping[str, Any]  # nested agent overrides ([set] and the swept agent.* keys)
    env_kwargs: Mapping[str, Any]  # flat env kwargs ([set] and the swept env.* keys)

    @property
    def label(self) -> str:
        """``cbp.replacement_rate=1e-06`` (the swept values, ``agent.``/``env.`` dropped where clear)."""
        return ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in self.values) or "(no swept values)"


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    path: Path
    name: str
    env_id: str
    scale: str
    agent: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...]  # swept keys in file order, with their values
    settings: tuple[Setting, ...]
    search_seeds: tuple[int, ...]
    final_seeds: tuple[int, ...]
    metric: str | None
    top: int
    require_all: bool
    lockstep: str
    seeds_per_task: int
    device: str
    checkpoint_every: int
    probe_every: int | None
    probe_size: int
    bin_examples: int | None
    text: str = field(repr=False, default="")

    @property
    def swept(self) -> list[str]:
        return [k for k, _ in self.grid]

    def where(self, *path: str) -> str:
        """``[file line N]`` of the key at ``path`` (or just ``[file]``)."""
        return where(self.path, self.text, path)


# --------------------------------------------------------------------------- helpers
def format_value(v: Any) -> str:
    """A swept value as shown in labels and tables: ``1e-06``, ``0.01``, ``code``, ``[0.9, 0.99]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(", ", ": "))


def short_key(key: str) -> str:
    """``agent.cbp.replacement_rate`` → ``cbp.replacement_rate``; ``env.beta`` stays."""
    return key[len("agent."):] if key.startswith("agent.") else key


def _split_key(key: str) -> list[str]:
    """A TOML key as written (``a."b.c".d``) → its parts."""
    parts, cur, quote = [], "", None
    for ch in key.strip():
        if quote:
            if ch == quote:
                quote = None
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'))*)\s*=""")


def line_of(text: str, path: Sequence[str]) -> int | None:
    """The 1-based line where the key (or table) at ``path`` is written, or None. Dotted and
    quoted keys are compared after splitting, so ``a.b = 1`` under ``[t]`` is ``("t", "a", "b")``;
    a quoted key with dots (``"cbp.rate" = ...``) matches the same path as ``cbp.rate``."""
    want = [p for part in path for p in str(part).split(".")]
    table: list[str] = []
    best = None
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            table = [p for part in _split_key(m.group(1)) for p in part.split(".")]
            if table == want:
                return n
            if best is None and table[:len(want)] == want:
                best = n
            continue
        m = _KEY.match(line)
        if m:
            full = table + [p for part in _split_key(m.group(1)) for p in part.split(".")]
            if full == want:
                return n
            if best is None and (full[:len(want)] == want or want[:len(full)] == full):
                best = n
    return best


def where(path: Path, text: str, key: Sequence[str]) -> str:
    n = line_of(text, key) if key else None
    return f"[{path} line {n}]" if n else f"[{path}]"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables → ``{"a.b.c": leaf}`` (a leaf is anything but a table)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"cbp.replacement_rate": 1e-4}`` → ``{"cbp": {"replacement_rate": 1e-4}}``."""
    out: dict[str, Any] = {}
    for key, v in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


# --------------------------------------------------------------------------- parsing
_TOP = {"name", "env", "scale", "agent", "grid", "set", "seeds", "select", "run"}
_SEEDS = {"search", "final"}
_SELECT = {"metric", "top", "require_all"}
_RUN = {"lockstep", "seeds_per_task", "device", "checkpoint_every", "probe_every", "probe_size", "bin_examples"}


class _Checker:
    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    def fail(self, key: Sequence[str], message: str) -> SweepError:
        dotted = ".".join(key)
        return SweepError(f"{where(self.path, self.text, key)} {dotted + ': ' if dotted else ''}{message}")

    def table(self, doc: Mapping[str, Any], name: str, allowed: set[str] | None) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise self.fail([name], f"expected a table ([{name}]), got {format_value(value)}")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    raise self.fail([name, k], f"unknown key; [{name}] accepts {', '.join(sorted(allowed))}")
        return value

    def string(self, d: Mapping[str, Any], key: Sequence[str], default: str | None = None,
               choices: Sequence[str] | None = None) -> str:
        v = d.get(key[-1], default)
        if not isinstance(v, str) or not v:
            what = "is required" if v is None else f"expected a non-empty string, got {format_value(v)}"
            raise self.fail(key, what)
        if choices is not None and v not in choices:
            raise self.fail(key, f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def integer(self, d: Mapping[str, Any], key: Sequence[str], default: int | None, minimum: int) -> int | None:
        v = d.get(key[-1], default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {format_value(v)}")
        return v

    def boolean(self, d: Mapping[str, Any], key: Sequence[str], default: bool) -> bool:
        v = d.get(key[-1], default)
        if not isinstance(v, bool):
            raise self.fail(key, f"expected true or false, got {format_value(v)}")
        return v

    def seeds(self, d: Mapping[str, Any], key: Sequence[str], start: int) -> tuple[int, ...]:
        """An int N (N seeds counting from ``start``) or a list of distinct seeds >= 0."""
        v = d.get(key[-1])
        if v is None:
            return ()
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise self.fail(key, f"a seed count must be >= 1, got {v}")
            return tuple(range(start, start + v))
        if (not isinstance(v, list) or not v or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in v)
                or len(set(v)) != len(v)):
            raise self.fail(key, f"expected a seed count (e.g. 10) or a list of distinct seeds >= 0, got "
                                 f"{format_value(v)}")
        return tuple(v)

    def keyed(self, table: Mapping[str, Any], section: str) -> dict[str, Any]:
        """[grid] / [set] → ``{"agent.x.y": value, "env.k": value}``; other prefixes are errors."""
        flat = _flatten(table)
        for key in flat:
            head, dot, rest = key.partition(".")
            if head not in ("agent", "env") or not dot or not rest:
                raise self.fail([section, *key.split(".")],
                                "keys must start with agent. (an agent config override, e.g. agent.cbp.replacement_rate) "
                                "or env. (an env kwarg, e.g. env.threshold_rule)")
            if head == "env" and "." in rest:
                raise self.fail([section, *key.split(".")], "env kwargs are not nested: write env.NAME = value")
            if head == "env" and rest == "scale":
                raise self.fail([section, *key.split(".")], "the scale is the top-level scale key, not an env kwarg")
        return flat


def parse_sweep(text: str, path: str | Path = "<sweep>") -> SweepSpec:
    """Parse and validate the text of a sweep file (errors: :class:`SweepError`)."""
    path = Path(path)
    c = _Checker(path, text)
    if tomllib is None:
        raise SweepError("reading sweep files needs Python >= 3.11 (tomllib) or `pip install tomli`")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"[{path}] not valid TOML: {exc}") from None
    for k in doc:
        if k not in _TOP:
            raise c.fail([k], f"unknown key; a sweep file accepts {', '.join(sorted(_TOP))}")
    name = c.string(doc, ["name"], default=re.sub(r"[^A-Za-z0-9_.\-]+", "-", path.stem).strip("-") or "sweep")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise c.fail(["name"], f"use letters, digits, '.', '_' and '-' only (it names the output folder), got {name!r}")
    env_id = c.string(doc, ["env"])
    scale = c.string(doc, ["scale"], default="cpu")
    agent = c.string(doc, ["agent"])

    grid_t = c.table(doc, "grid", None)
    if not grid_t:
        raise c.fail(["grid"], "is required: at least one key with a list of values, e.g. "
                               "agent.cbp.replacement_rate = [1e-5, 1e-4]")
    grid = c.keyed(grid_t, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise c.fail(["grid", *key.split(".")], f"expected a non-empty list of values, got {format_value(values)}")
        shown = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(shown)) != len(shown):
            raise c.fail(["grid", *key.split(".")], f"lists a value twice: {format_value(values)}")
    fixed = c.keyed(c.table(doc, "set", None), "set")
    for key in fixed:
        if key in grid:
            raise c.fail(["set", *key.split(".")], "is also swept in [grid]; keep it in one of the two")
        clash = [g for g in grid if g.startswith(key + ".") or key.startswith(g + ".")]
        if clash:
            raise c.fail(["set", *key.split(".")], f"overlaps the swept key {clash[0]}")

    seeds_t = c.table(doc, "seeds", _SEEDS)
    search = c.seeds(seeds_t, ["seeds", "search"], 0)
    if not search:
        raise c.fail(["seeds"], "search is required: a seed count (search = 10) or a list of seeds")
    final = c.seeds(seeds_t, ["seeds", "final"], max(search) + 1)
    both = sorted(set(search) & set(final))
    if both:
        raise c.fail(["seeds", "final"], f"repeats search seeds {both}; the final seeds must be new ones")

    select = c.table(doc, "select", _SELECT)
    metric = select.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise c.fail(["select", "metric"], f"expected the name of a summary metric, e.g. error_last10, got "
                                           f"{format_value(metric)}")
    top = c.integer(select, ["select", "top"], 1, 1)
    n_settings = math.prod(len(v) for v in grid.values())
    if top > n_settings:
        raise c.fail(["select", "top"], f"is {top}, but the grid has only {n_settings} setting(s)")
    require_all = c.boolean(select, ["select", "require_all"], True)

    run = c.table(doc, "run", _RUN)
    lockstep = c.string(run, ["run", "lockstep"], default="auto", choices=("auto", "on", "off"))
    device = c.string(run, ["run", "device"], default="auto")
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise c.fail(["run", "device"], f"expected auto, cpu or cuda[:N], got {device!r}")

    values = list(grid.items())
    settings = []
    for combo in itertools.product(*(v for _, v in values)):
        chosen = dict(zip((k for k, _ in values), combo))
        merged = {**fixed, **chosen}
        settings.append(Setting(
            values=tuple(chosen.items()),
            overrides=nest({k[len("agent."):]: v for k, v in merged.items() if k.startswith("agent.")}),
            env_kwargs={k[len("env."):]: v for k, v in merged.items() if k.startswith("env.")},
        ))
    return SweepSpec(
        path=path, name=name, env_id=env_id, scale=scale, agent=agent,
        grid=tuple((k, tuple(v)) for k, v in values), settings=tuple(settings),
        search_seeds=search, final_seeds=final, metric=metric, top=top, require_all=require_all,
        lockstep=lockstep, seeds_per_task=c.integer(run, ["run", "seeds_per_task"], 0, 0) or 0,
        device=device, checkpoint_every=c.integer(run, ["run", "checkpoint_every"], 100_000, 1) or 100_000,
        probe_every=c.integer(run, ["run", "probe_every"], None, 0),
        probe_size=c.integer(run, ["run", "probe_size"], 2000, 1) or 2000,
        bin_examples=c.integer(run, ["run", "bin_examples"], None, 1), text=text,
    )


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"cannot read sweep file {p}: {exc.strerror or exc}") from None
    return parse_sweep(text, p)
