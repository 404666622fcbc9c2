"""The web leaderboard: a static site built from the board files, viewable with no network.

``build_site(board_dir, out_dir)`` reads every result entry under ``board_dir`` (laid out as
``<env id>/<scale>/<name>.json``, each validated on load), groups them into boards as the
terminal leaderboard does, and writes:

- ``index.html``: every board, with its entry count, primary metric and leader;
- one page per board: the ranked table (click a header to sort), the board's figure
  (``<board_dir>/figures/<env id>-<scale>.png`` when present), and per entry the per-seed values
  behind every mean, the command that reproduces it, and its provenance;
- ``assets/`` (one stylesheet, one script, both copied: no CDN), ``figures/`` and ``entries/``
  (copies of the figures and of the entry files, so the site is self-contained).

Pages are built from what each entry's ``summary.metrics`` holds and the board's primary
metric, so a board of any metric (accuracy, squared error, episodic return) renders the same way.
"""

from __future__ import annotations

import glob
import hashlib
import html
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from plasticity_gym.harness import boards
from plasticity_gym.harness._io import usual_mode
from plasticity_gym.harness.result import Result

MARKER = ".plasticity-gym-site"  # lists the files of the last build, so a rebuild removes stale pages
ASSETS = ("site.css", "site.js")

Entry = tuple[Path, Result]


# --------------------------------------------------------------------------- public API
def build_site(board_dir: str | Path, out_dir: str | Path, *,
               skipped: Callable[[Path, list[str]], None] | None = None) -> list[Path]:
    """Build the static site of every board under ``board_dir`` into ``out_dir``.

    ``out_dir`` must be outside ``board_dir``, and new, empty (dotfiles such as ``.git`` aside)
    or a previous build, which is replaced. Returns the files written, ``index.html``
    first, then the board pages. Raises ``FileNotFoundError`` when ``board_dir`` holds no entry, ``ValueError`` for an
    ``out_dir`` that holds other files. A file that ``plasticity-gym validate`` rejects is left out
    and passed to ``skipped(path, errors)`` (without ``skipped``: its validation error is raised).
    """
    board_dir = Path(board_dir)
    if not board_dir.is_dir():
        raise FileNotFoundError(f"no board directory {board_dir}; pass --dir with the folder that holds "
                                "<env id>/<scale>/*.json")
    if board_dir.resolve() in (Path(out_dir).resolve(), *Path(out_dir).resolve().parents):
        raise ValueError(f"the site folder {out_dir} is inside the board folder {board_dir}, whose entries it "
                         "copies (a later build would read them back); put the site elsewhere")
    entries = boards.load_entries([board_dir], skipped=skipped)
    if not entries:
        raise FileNotFoundError(f"no result entries under {board_dir}; file some with `plasticity-gym submit`")
    return write_site(entries, out_dir, board_dir=board_dir)


def write_site(entries: Sequence[Entry], out_dir: str | Path, *, board_dir: str | Path | None = None) -> list[Path]:
    """Write the site of already-loaded ``entries`` (see :func:`build_site`).

    ``board_dir``: where the entries live, for their path on the pages and for the figures
    (``<board_dir>/figures``); ``None``: no figures, entries named by file name.
    """
    final = Path(out_dir)
    _check_out_dir(final)
    # Built in a folder beside out_dir, then renamed into place: a killed build never leaves a
    # half-built site where the last one was.
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-{os.getpid()}-", dir=final.parent))
    try:
        written = _write_into(entries, out, board_dir)
        os.chmod(out, usual_mode(0o777))
        _swap_into_place(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return [final / p.relative_to(out) for p in written]


def _write_into(entries: Sequence[Entry], out: Path, board_dir: str | Path | None) -> list[Path]:
    root = Path(board_dir) if board_dir is not None else None
    grouped = list(boards.group_boards(entries).values())
    slugs = _page_slugs(grouped)
    written: list[Path] = []

    def emit(rel: str, text: str | None = None, *, copy_from: Path | None = None) -> None:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if copy_from is not None:
            shutil.copyfile(copy_from, dest)
        else:
            dest.write_text(text or "", encoding="utf-8")
        written.append(dest)

    pages = []
    for board, slug in zip(grouped, slugs):
        ranked, preliminary = _ranked(board)
        entry_files = {str(p): _entry_rel(p, root) for p, _ in ranked}
        figure = _find_figure(ranked, root)
        fig_rel = f"figures/{figure.name}" if figure else None
        methods = figure.with_name(f"{figure.stem}-methods.png") if figure else None
        methods_rel = f"figures/{methods.name}" if methods is not None and methods.is_file() else None
        pages.append((slug, ranked, fig_rel))
        emit(f"{slug}.html", _board_page(ranked, fig_rel, entry_files, preliminary, methods_rel))
        for p, _ in ranked:
            emit(entry_files[str(p)], copy_from=p)
        for rel, src in ((fig_rel, figure), (methods_rel, methods)):
            if rel and src is not None and not (out / rel).exists():
                emit(rel, copy_from=src)
    emit("index.html", _index_page(pages))
    asset_dir = resources.files("plasticity_gym.harness").joinpath("site_assets")
    for name in ASSETS:
        emit(f"assets/{name}", asset_dir.joinpath(name).read_text(encoding="utf-8"))
    (out / MARKER).write_text("".join(f"{p.relative_to(out).as_posix()}\n" for p in written), encoding="utf-8")
    # index first, then the board pages, then everything they use
    order = {out / "index.html": 0, **{out / f"{s}.html": 1 for s in slugs}}
    return sorted(written, key=lambda p: order.get(p, 2))


# --------------------------------------------------------------------------- ranking
def _ranked(board: Sequence[Entry]) -> tuple[list[Entry], set[str]]:
    """The board's entries best first, as the terminal leaderboard ranks them, and the files of
    those it marks preliminary."""
    order = boards.rank_board(board)
    return order, {str(p) for p, r in order if boards.is_preliminary(r)}


# --------------------------------------------------------------------------- files and names
def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"the site folder {out} is a file; give a new or empty folder")
    if out.is_dir() and not (out / MARKER).is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"the site folder {out} holds files that are not a plasticity-gym site; "
                         "give a new or empty folder")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(final: Path) -> None:
    """Remove the half-built folders of killed builds of ``final`` (their process is gone)."""
    for d in final.parent.glob(f".{glob.escape(final.name)}.*-*-*"):
        kind, _, rest = d.name[len(final.name) + 2:].partition("-")
        pid = rest.partition("-")[0]
        if kind in ("building", "old") and pid.isdigit() and d.is_dir() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _swap_into_place(built: Path, final: Path) -> None:
    """Rename the finished build ``built`` to ``final``; a previous build there is moved aside and
    removed, keeping its dotfiles (``.git``, ...), which move into the new build."""
    if not final.exists():
        os.rename(built, final)
        return
    for p in final.iterdir():
        if p.name.startswith(".") and p.name != MARKER and not (built / p.name).exists():
            os.rename(p, built / p.name)
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
    os.rename(final, old / "site")
    os.rename(built, final)
    shutil.rmtree(old, ignore_errors=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "board"


def _page_slugs(grouped: Sequence[Sequence[Entry]]) -> list[str]:
    """``<env>-<scale>``, plus a short hash of the board key where boards share env and scale."""
    base = [_slug(f"{b[0][1].env_id.split(':')[-1]}-{b[0][1].scale}") for b in grouped]
    return [
        s if base.count(s) == 1 else f"{s}-{hashlib.sha256(repr(b[0][1].board_key()).encode()).hexdigest()[:8]}"
        for s, b in zip(base, grouped)
    ]


def _entry_rel(path: Path, root: Path | None) -> str:
    """Where the copy of an entry file goes: its path under the board directory, under entries/."""
    if root is not None:
        try:
            return "entries/" + path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    return f"entries/other/{digest}-{_slug(path.name)}"


def _find_figure(board: Sequence[Entry], root: Path | None) -> Path | None:
    """The board's figure as ``plasticity-gym reference`` draws it: figures/<env dir>-<scale>.png."""
    if root is None:
        return None
    res = board[0][1]
    names = [f"{p.parent.parent.name}-{p.parent.name}.png" for p, _ in board]
    names.append(f"{_slug(res.env_id.split(':')[-1])}-{_slug(res.scale)}.png")
    for name in dict.fromkeys(names):
        candidate = root / "figures" / name
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------- formatting
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(rel: str) -> str:
    """A relative link to a file of the site (its name may hold spaces or other odd characters)."""
    return _e(quote(rel))


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _shown(value: float | None, metric: str, digits: int = 4) -> str:
    """A summary value as the boards' README shows it: accuracies and ``*_pct`` metrics in
    percent with one decimal, everything else with ``digits`` significant digits."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if "accuracy" in metric:
        return f"{100 * value:.1f}%"
    if metric.endswith("_pct"):
        return f"{value:.1f}%"
    return _num(value, digits)


# Flags of `plasticity-gym run` that say how a run was executed (threads, progress line,
# checkpoints), not what it computed; the page's command to reproduce an entry leaves them out.
_MACHINERY_FLAGS = {"--threads": 1, "--workers": 1, "--checkpoint": 1, "--checkpoint-every": 1, "--progress": 0,
                    "--no-progress": 0, "--resume": 0, "--fresh": 0}


def user_command(command: str) -> str:
    """The command a reader types to reproduce an entry: its stored ``plasticity-gym run`` line
    without run-machinery flags (threads, progress, checkpoints, resume), and with ``--out`` a
    relative ``runs/<file>`` when it was an absolute or parent path. Other commands as stored."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if argv[:2] != ["plasticity-gym", "run"]:
        return command
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in _MACHINERY_FLAGS:
            i += 1 + (0 if eq else _MACHINERY_FLAGS[flag])
            continue
        if flag == "--out":
            path = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            rel = PurePosixPath(path)
            if rel.is_absolute() or ".." in rel.parts:
                path = f"runs/{rel.name}"
            out += ["--out", path]
            i += 1 if eq else 2
            continue
        out.append(arg)
        i += 1
    return shlex.join(out)


def _sort_attr(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _metric_names(board: Sequence[Entry]) -> list[str]:
    """The primary metric, then every other summary metric in the order the entries list them."""
    primary = board[0][1].primary
    names = [primary]
    for _, res in board:
        names += [m for m in res.summary if m not in names]
    return names


def _higher(board: Sequence[Entry], metric: str) -> bool | None:
    for _, res in board:
        if metric in res.summary:
            return bool(res.summary[metric]["higher_is_better"])
    return None


def _description(board: Sequence[Entry], metric: str) -> str:
    for _, res in board:
        if metric in res.summary:
            return str(res.summary[metric].get("description", ""))
    return ""


def _metric_head(board: Sequence[Entry], metric: str, *, primary: bool) -> str:
    higher = _higher(board, metric)
    arrow = "" if higher is None else (" ↑" if higher else " ↓")
    direction = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    title = _description(board, metric) + direction + ("; the board ranks by it" if primary else "")
    first = "descending" if higher else "ascending"
    label = _e(metric).replace("_", "_<wbr>")  # long metric names may wrap at their underscores
    label = f"<strong>{label}</strong>" if primary else label
    return f'<th data-first="{first}" title="{_e(title)}">{label}{arrow}</th>'


def _metric_cell(m: dict[str, Any] | None, seeds: Sequence[int], metric: str = "") -> str:
    if m is None:
        return '<td class="num">—</td>'
    shown = _shown(m["value"], metric)
    if m.get("ci_low") is not None and m.get("ci_high") is not None and len(m["per_seed"]) >= 2:
        shown += f'<br><span class="ci">[{_shown(m["ci_low"], metric, 3)}, {_shown(m["ci_high"], metric, 3)}]</span>'
    per_seed = ", ".join(f"seed {s}: {_shown(v, metric)}" for s, v in zip(seeds, m["per_seed"]))
    return f'<td class="num" data-sort="{_sort_attr(m["value"])}" title="{_e(per_seed)}">{shown}</td>'


def _ci_label(board: Sequence[Entry]) -> str:
    labels = []
    for _, res in board:
        ci = res.data["summary"].get("ci", {})
        level = ci.get("level")
        label = (f"{100 * level:g}% " if isinstance(level, (int, float)) else "") + str(ci.get("method", "interval"))
        if label not in labels:
            labels.append(label)
    return "; ".join(labels)


def _agent_label(res: Result) -> str:
    custom = res.data["agent"]["source"] != "reference"
    return _e(res.agent_name) + (' <span class="tag">custom</span>' if custom else "")


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return str(value)


# --------------------------------------------------------------------------- pages
def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<link rel=\"stylesheet\" href=\"assets/site.css\">\n"
        "<script src=\"assets/site.js\" defer></script>\n</head>\n<body>\n"
        f"{body}\n<footer>Built by <code>plasticity-gym site</code> from the result files; every number "
        "is computed from the runs stored in the entry it belongs to.</footer>\n</body>\n</html>\n"
    )


def _board_title(res: Result) -> str:
    return f"{res.env_id} — scale {res.scale}"


def _board_sub(board: Sequence[Entry]) -> str:
    res = board[0][1]
    env = res.data["env"]
    budget = env["budget"]
    unit = "env steps" if res.data["protocol"]["metric"] == "episodic_return" else "examples"
    higher = _higher(board, res.primary)
    better = "higher" if higher else "lower"
    return (
        f"data <code>{_e(env['data']['name'])}</code> (sha256 <code>{_e(env['data']['sha256'][:12])}</code>), "
        f"env kwargs <code>{_e(env['kwargs_hash'][:12])}</code>, {budget['n_examples_total']:,} {unit} per seed "
        f"in {budget['n_tasks']:,} tasks. Ranked by <strong>{_e(res.primary)}</strong> ({better} is better); "
        f"each value is the mean over seeds with its {_e(_ci_label(board))} in brackets. "
        "Hover a value for its per-seed values; click a column header to sort."
    )


def _board_page(board: Sequence[Entry], figure: str | None, entry_files: dict[str, str],
                preliminary: set[str], methods: str | None = None) -> str:
    res0 = board[0][1]
    metrics = _metric_names(board)
    head = ["<th data-first=\"ascending\">#</th>", "<th>agent</th>"]
    head += [_metric_head(board, m, primary=(i == 0)) for i, m in enumerate(metrics)]
    head += ["<th data-first=\"descending\">seeds</th>", "<th data-first=\"ascending\">wall time</th>",
             "<th>entry</th>"]
    rows = []
    for rank, (path, res) in enumerate(board, 1):
        wall = res.data["provenance"].get("wall_time_s")
        tag = ('<span class="tag warn" title="too few seeds for its interval to be trusted; see the board\'s '
               'rules">preliminary</span>' if str(path) in preliminary else "")
        cells = [f'<td class="num" data-sort="{rank}">{rank}</td>',
                 f'<td class="agent" data-sort="{_e(res.agent_name)}">{_agent_label(res)}{tag}</td>']
        cells += [_metric_cell(res.summary.get(m), res.seeds, m) for m in metrics]
        cells += [f'<td class="num" data-sort="{len(res.seeds)}">{len(res.seeds)}</td>',
                  f'<td class="num" data-sort="{_sort_attr(wall)}">{_duration(wall)}</td>',
                  f'<td><a href="#entry-{rank}">details</a><br><a href="{_href(entry_files[str(path)])}">json</a></td>']
        cls = ' class="first"' if rank == 1 else ""
        rows.append(f'<tr{cls} data-entry="{_e(path.name)}">' + "".join(cells) + "</tr>")
    table = (f'<div class="scroll"><table class="sortable board" id="board">\n<thead><tr>{"".join(head)}</tr></thead>\n'
             "<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")
    if figure:
        fig = (f'<figure><img src="{_href(figure)}" alt="{_e(_board_title(res0))}: per-task curves and plasticity '
               f'metrics"><figcaption>The paper\'s agents: curves and plasticity metrics, mean over seeds with the '
               "board's 95% Student-t band.</figcaption></figure>")
        if methods:
            fig += (f'<figure><img src="{_href(methods)}" alt="{_e(_board_title(res0))}: every other entry against '
                    'backprop and CBP"><figcaption>Every other entry, each in its own panel beside backprop and '
                    "CBP.</figcaption></figure>")
    else:
        fig = ('<p class="note">No figure for this board; draw its figures with <code>plasticity-gym leaderboard '
               f"{_e(res0.env_id)} --scale {_e(res0.scale)} --figures --dir &lt;board directory&gt;</code> (or "
               f"<code>plasticity-gym plot &lt;entries&gt; --out figures/{_e(_slug(res0.env_id.split(':')[-1]))}-"
               f"{_e(_slug(res0.scale))}.png</code> in the board directory).</p>")
    details = "\n".join(_entry_section(rank, path, res, entry_files[str(path)]) for rank, (path, res) in enumerate(board, 1))
    body = (
        '<nav class="crumbs"><a href="index.html">All boards</a></nav>\n'
        f"<h1>{_e(_board_title(res0))}</h1>\n<p class=\"sub\">{_board_sub(board)}</p>\n"
        f"{table}\n<h2>Figure</h2>\n{fig}\n<h2>Entries</h2>\n{details}"
    )
    return _page(f"{_board_title(res0)} · plasticity-gym", body)


def _entry_section(rank: int, path: Path, res: Result, json_href: str) -> str:
    data = res.data
    agent = data["agent"]
    prov = data["provenance"]
    command = prov.get("command")
    shown_command = user_command(command) if command else None
    reproduce = (f'<pre class="reproduce"><code>{_e(shown_command)}</code></pre>' if command else
                 '<p class="note">No command recorded in this entry.</p>')
    if command and shown_command != command:
        reproduce += (f'<details><summary>as it was run</summary><pre class="as-run"><code>{_e(command)}</code>'
                      "</pre></details>")
    metrics = list(res.summary)
    head = "<th data-first=\"ascending\">seed</th>" + "".join(
        f'<th data-first="{"descending" if res.summary[m]["higher_is_better"] else "ascending"}" '
        f'title="{_e(res.summary[m].get("description", ""))}">{_e(m)}</th>' for m in metrics
    ) + "<th data-first=\"ascending\">wall time</th>"
    rows = []
    for i, seed in enumerate(res.seeds):
        cells = [f'<td class="num" data-sort="{seed}">{seed}</td>']
        for m in metrics:
            v = res.summary[m]["per_seed"][i]
            cells.append(f'<td class="num" data-sort="{_sort_attr(v)}">{_shown(v, m)}</td>')
        run_wall = data["runs"][i].get("wall_time_s") if i < len(data["runs"]) else None
        cells.append(f'<td class="num" data-sort="{_sort_attr(run_wall)}">{_duration(run_wall)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    foot = "<td>mean</td>" + "".join(
        f'<td class="num">{_shown(res.summary[m]["value"], m)}</td>' for m in metrics) + "<td></td>"
    per_seed = (f'<div class="scroll"><table class="sortable per-seed">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
                + "\n".join(rows) + f"\n</tbody>\n<tfoot><tr>{foot}</tr></tfoot></table></div>")
    versions = prov.get("versions", {})
    code = [f"plasticity-gym {data['env'].get('package_version', versions.get('plasticity_gym', '?'))}"]
    code += [f"{k} {v}" for k, v in _flatten("", prov) if v and re.search(r"commit|source|git|code", k)]
    hw = prov.get("hardware", {})
    machine = ", ".join(str(x) for x in (hw.get("platform"), hw.get("device"), hw.get("accelerator")) if x)
    summary_rows = [("code", "; ".join(code)), ("machine", machine or "not recorded"),
                    ("torch", versions.get("torch") or "not recorded"), ("created", prov.get("created", "—"))]
    prov_rows = [(k, _show(v)) for k, v in _flatten("", prov) if k != "command"]

    def kv(pairs: Sequence[tuple[str, Any]]) -> str:
        return "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)

    source = "reference agent" if agent["source"] == "reference" else "custom agent"
    return (
        f'<section class="entry" id="entry-{rank}" data-entry="{_e(path.name)}">\n'
        f"<h3>#{rank} {_agent_label(res)}</h3>\n"
        f'<p class="sub">{source} <code>{_e(agent["factory"])}</code>, config sha256 '
        f'<code>{_e(agent["config_hash"][:12])}</code>; uses task boundaries: '
        f'{"yes" if agent["uses_task_boundaries"] else "no"}; {len(res.seeds)} seed(s); '
        f'file <a href="{_href(json_href)}">{_e(path.name)}</a></p>\n'
        f"<h4>Reproduce</h4>\n{reproduce}\n"
        f"<h4>Per-seed values</h4>\n{per_seed}\n"
        f'<h4>Provenance</h4>\n<table class="kv">{kv(summary_rows)}</table>\n'
        f"<details><summary>full provenance</summary><table class=\"kv\">{kv(prov_rows)}</table></details>\n"
        f"<details><summary>agent config</summary><pre><code>{_e(json.dumps(agent['config'], indent=1))}</code></pre>"
        "</details>\n</section>"
    )


def _index_page(pages: Sequence[tuple[str, Sequence[Entry], str | None]]) -> str:
    rows = []
    for slug, board, figure in pages:
        res = board[0][1]
        env = res.data["env"]
        leader = board[0][1]
        lead_m = leader.summary.get(leader.primary) or {}
        higher = _higher(board, res.primary)
        rows.append(
            "<tr>"
            f'<td><a href="{_href(slug + ".html")}">{_e(res.env_id)}</a></td>'
            f"<td>{_e(res.scale)}</td>"
            f"<td><code>{_e(env['data']['name'])}</code></td>"
            f'<td class="num" data-sort="{len(board)}">{len(board)}</td>'
            f"<td>{_e(res.primary)} ({'higher' if higher else 'lower'} is better)</td>"
            f"<td>{_agent_label(leader)} <span class=\"ci\">{_shown(lead_m.get('value'), leader.primary)}</span></td>"
            f"<td>{'yes' if figure else 'no'}</td>"
            "</tr>"
        )
    n_entries = sum(len(b) for _, b, _ in pages)
    body = (
        "<h1>plasticity-gym leaderboards</h1>\n"
        f'<p class="sub">{len(pages)} board(s), {n_entries} entries. A board is one environment at one scale '
        "with the same env kwargs and data; its entries are ranked by the board's primary metric. "
        "Open a board for its table, figure, per-seed values, provenance and the command that reproduces "
        "each entry.</p>\n"
        '<div class="scroll"><table class="sortable" id="boards">\n<thead><tr><th>board</th><th>scale</th>'
        '<th>data</th><th data-first="descending">entries</th><th>ranked by</th><th>leader</th><th>figure</th>'
        "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>"
    )
    return _page("plasticity-gym leaderboards", body)


__all__ = ["build_site", "write_site"]
