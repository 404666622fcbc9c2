"""The web leaderboard (plasticity_gym.harness.site): the pages' structure without a browser, then
the built site in a real headless Chromium driven by Selenium (skipped only where no Chromium
is installed; ``./dev.sh test`` installs it with apt-get when run as root)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from plasticity_gym.harness import boards
from plasticity_gym.harness.evaluate import evaluate
from plasticity_gym.harness.site import MARKER, build_site, write_site
from tests.harness import fakes

EVIL = '<b>evil</b> & "co"'


def evil_agent(observation_space, action_space, *, seed=0, device="cpu"):
    agent = fakes.make_agent(observation_space, action_space, seed=seed, device=device)
    agent.name = EVIL  # a name that breaks the page unless it is escaped
    return agent


def tiny_png(path: Path, w: int = 48, h: int = 24) -> None:
    raw = b"".join(b"\x00" + bytes((40, 90, 200)) * w for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory) -> Path:
    """Two boards of fake entries: a classification one (higher is better, with a figure and an
    agent whose name needs escaping) and a regression one (lower is better, no figure)."""
    root = tmp_path_factory.mktemp("boards")
    runs = root.parent / "runs"
    runs.mkdir(exist_ok=True)
    jobs = [
        ("tests.harness.fakes:FakeClassify-v0", evil_agent, [0, 1], {}, "evil"),
        ("tests.harness.fakes:FakeClassify-v0", "tests.harness.fakes:make_agent", [0, 1, 2, 3, 4], {}, "plain"),
        ("tests.harness.fakes:FakeClassify-v0", "tests.harness.fakes:make_agent", [3], {"lr": 0.5}, "one-seed"),
        ("tests.harness.fakes:FakeRegress-v0", "tests.harness.fakes:make_agent", [0, 1], {}, "sgd"),
        ("tests.harness.fakes:FakeRegress-v0", "tests.harness.fakes:make_agent", [0, 1], {"lr": 0.001}, "slow"),
    ]
    for env_id, agent, seeds, overrides, name in jobs:
        res = evaluate(env_id, agent, scale="smoke", seeds=seeds, overrides=overrides, probe_every=0,
                       progress=False)
        boards.submit(res.save(runs / f"{name}.json"), root, name=name)
    tiny_png(root / "figures" / "FakeClassify-v0-smoke.png")
    return root


@pytest.fixture(scope="module")
def site(board_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("site") / "www"
    return out, build_site(board_dir, out)


class Page(HTMLParser):
    """What the tests look at in a page: links, images, ids, table rows and their cells."""

    def __init__(self, path: Path):
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.rows: dict[str, list[dict]] = {}  # table id or class -> body rows (attrs + cells)
        self.tables: list[dict] = []  # every table: {"name", "head": [...], "rows": [...]}
        self._table: dict | None = None
        self._cell: dict | None = None
        self._section: str | None = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self._section = a.get("data-entry")
        for key in ("href", "src"):
            if key in a and tag in ("a", "img", "link", "script"):
                self.links.append(a[key])
        if tag == "table":
            self._table = {"name": a.get("id") or a.get("class", ""), "section": self._section, "head": [],
                           "rows": [], "part": None}
            self.tables.append(self._table)
        elif self._table is not None:
            if tag in ("thead", "tbody", "tfoot"):
                self._table["part"] = tag
            elif tag == "tr" and self._table["part"] in ("tbody", None):  # None: rows without a <tbody>
                self._table["rows"].append({"attrs": a, "cells": []})
            elif tag in ("td", "th"):
                self._cell = {"attrs": a, "text": ""}

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None and self._table is not None:
            if self._table["part"] == "thead":
                self._table["head"].append(self._cell["text"].strip())
            elif self._table["part"] in ("tbody", None):
                self._table["rows"][-1]["cells"].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def table(self, name: str) -> dict:
        return next(t for t in self.tables if t["name"] == name)


def board_pages(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.html") if p.name != "index.html")


# --------------------------------------------------------------------------- structure
def test_site_has_an_index_and_one_page_per_board(site, board_dir):
    out, written = site
    n_boards = len(boards.group_boards(boards.load_entries([board_dir])))
    assert written[0] == out / "index.html"
    pages = board_pages(out)
    assert len(pages) == n_boards == 2
    assert set(written[1:1 + n_boards]) == set(pages)
    assert all(p.is_file() for p in written)
    index = Page(out / "index.html")
    assert sorted(h for h in index.links if h.endswith(".html")) == sorted(p.name for p in pages)
    assert len(index.table("boards")["rows"]) == n_boards


def test_every_link_and_image_resolves_to_a_file_and_nothing_is_fetched(site):
    out, _ = site
    for page in out.glob("*.html"):
        parsed = Page(page)
        assert parsed.links, page
        for link in parsed.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, f"{page.name} reaches out to {link}"
            if parts.path:
                assert (page.parent / unquote(parts.path)).is_file(), f"{page.name}: broken link {link}"
            if parts.fragment:
                target = Page(page.parent / unquote(parts.path)) if parts.path else parsed
                assert parts.fragment in target.ids, f"{page.name}: no anchor #{parts.fragment}"


def test_every_entry_is_in_its_table_ranked_by_the_primary_metric(site, board_dir):
    out, _ = site
    for board in boards.group_boards(boards.load_entries([board_dir])).values():
        res = board[0][1]
        page = Page(out / f"{res.env_id.split(':')[-1]}-{res.scale}.html")
        table = page.table("board")
        assert sorted(r["attrs"]["data-entry"] for r in table["rows"]) == sorted(p.name for p, _ in board)
        head = [h.rstrip("↑↓ ") for h in table["head"]]  # a metric's header ends with its direction
        assert head[:3] == ["#", "agent", res.primary]
        assert {"seeds", "wall time"} <= set(head)
        for name in {m for _, r in board for m in r.summary}:
            assert name in head
        # rows come best first: the primary values move in the board's direction
        values = [float(r["cells"][2]["attrs"]["data-sort"]) for r in table["rows"]]
        higher = res.summary[res.primary]["higher_is_better"]
        assert values == sorted(values, reverse=higher)
        assert [r["cells"][0]["text"] for r in table["rows"]] == [str(i) for i in range(1, len(board) + 1)]


def test_per_seed_values_provenance_and_command_of_every_entry(site, board_dir):
    out, _ = site
    for board in boards.group_boards(boards.load_entries([board_dir])).values():
        res0 = board[0][1]
        page_path = out / f"{res0.env_id.split(':')[-1]}-{res0.scale}.html"
        page, text = Page(page_path), page_path.read_text(encoding="utf-8")
        for path, res in board:
            per_seed = next(t for t in page.tables if t["section"] == path.name and "per-seed" in t["name"])
            assert [r["cells"][0]["text"] for r in per_seed["rows"]] == [str(s) for s in res.seeds]
            for metric, m in res.summary.items():
                col = per_seed["head"].index(metric)
                shown = [float(r["cells"][col]["attrs"]["data-sort"]) for r in per_seed["rows"]]
                assert shown == m["per_seed"], (path.name, metric)
            assert res.data["provenance"]["command"].replace('"', "&quot;").replace("'", "&#x27;") in text
            assert res.data["provenance"]["versions"]["torch"] in text
            assert res.data["provenance"]["hardware"]["platform"] in text


def test_agent_names_are_escaped(site):
    out, _ = site
    text = (out / "FakeClassify-v0-smoke.html").read_text(encoding="utf-8")
    assert "<b>evil</b>" not in text
    assert "&lt;b&gt;evil&lt;/b&gt; &amp; &quot;co&quot;" in text
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>evil" not in index


def test_a_board_without_a_figure_says_how_to_draw_one(site):
    out, _ = site
    assert "<img" in (out / "FakeClassify-v0-smoke.html").read_text(encoding="utf-8")
    regress = (out / "FakeRegress-v0-smoke.html").read_text(encoding="utf-8")
    assert "<img" not in regress and "plasticity-gym plot" in regress


def test_rebuild_replaces_a_previous_build_and_refuses_other_folders(board_dir, tmp_path):
    out = tmp_path / "www"
    build_site(board_dir, out)
    assert (out / "FakeRegress-v0-smoke.html").is_file() and (out / MARKER).is_file()
    fewer = tmp_path / "fewer"
    shutil.copytree(board_dir / "FakeClassify-v0", fewer / "FakeClassify-v0")
    build_site(fewer, out)  # the regression board is gone: so is its page
    assert not (out / "FakeRegress-v0-smoke.html").exists() and (out / "FakeClassify-v0-smoke.html").is_file()

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a plasticity-gym site"):
        build_site(board_dir, other)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="is a file"):
        build_site(board_dir, other / "notes.txt")
    with pytest.raises(ValueError, match="inside the board folder"):
        build_site(board_dir, board_dir / "site")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no result entries"):
        build_site(tmp_path / "empty", tmp_path / "www2")


@pytest.fixture(scope="module")
def reference_site(tmp_path_factory) -> tuple[list, Path, list[Path]]:
    out = tmp_path_factory.mktemp("reference") / "www"
    rejected: list[tuple[Path, list[str]]] = []  # asserted empty below; the other tests use the valid rest
    entries = boards.load_entries([boards.default_dir()], skipped=lambda p, errors: rejected.append((p, errors)))
    REFERENCE_REJECTED[:] = rejected
    return entries, out, write_site(entries, out, board_dir=boards.default_dir())


REFERENCE_REJECTED: list[tuple[Path, list[str]]] = []


def test_the_reference_boards_build(reference_site):
    """Every committed board (streams, vision, episodic RL) renders from its summary metrics."""
    assert not REFERENCE_REJECTED, "committed entries fail validation: " + "; ".join(
        f"{p}: {errors[0][:120]}" for p, errors in REFERENCE_REJECTED[:3])
    entries, out, written = reference_site
    assert len(board_pages(out)) == len(boards.group_boards(entries))
    rows = [r["attrs"]["data-entry"] for p in board_pages(out) for r in Page(p).table("board")["rows"]]
    assert sorted(rows) == sorted(p.name for p, _ in entries)
    assert all(p.is_file() for p in written)


def _cli_has_site() -> bool:
    from plasticity_gym.harness.cli import build_parser

    return "site" in re.findall(r"\{([^}]*)\}", build_parser().format_usage())[0].split(",")


@pytest.mark.skipif(not _cli_has_site(), reason="cli.py has no `site` command yet")
def test_cli_builds_the_site_and_reports_a_bad_out_in_one_line(cli, board_dir, tmp_path):
    code, out, _ = cli("site", "--out", tmp_path / "www", "--dir", board_dir)
    assert code == 0 and (tmp_path / "www" / "index.html").is_file() and "index.html" in out
    (tmp_path / "afile").write_text("x")
    code, _, err = cli("site", "--out", tmp_path / "afile", "--dir", board_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "afile" in err


# --------------------------------------------------------------------------- in a browser
def _binary(name: str) -> str | None:
    found = shutil.which(name) or f"/usr/bin/{name}"
    return found if Path(found).is_file() else None


CHROMIUM, CHROMEDRIVER = _binary("chromium"), _binary("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no chromium/chromedriver installed and none could be: `./dev.sh test` installs the Debian "
           "packages chromium and chromium-driver with apt-get when run as root",
)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: install the test extra (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system browser: nothing is downloaded
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1400", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _column(driver, table_id: str, col: int) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows, r => "
        "r.cells[arguments[1]].getAttribute('data-sort') ?? r.cells[arguments[1]].textContent.trim())",
        table_id, col)


@needs_browser
def test_site_in_a_headless_browser(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    out, _ = site
    browser.get((out / "index.html").as_uri())
    assert browser.title == "plasticity-gym leaderboards"
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#boards a")]
    assert len(links) == len(board_pages(out))
    for link in links:
        browser.get(link)
        rows = browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")
        assert rows and all(r.is_displayed() for r in rows)
        widths = browser.execute_script("return Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
        assert all(w > 0 for w in widths), f"{link}: an image did not load"
        browser.find_element(By.LINK_TEXT, "All boards").click()
        assert browser.title == "plasticity-gym leaderboards"

    browser.get((out / "FakeClassify-v0-smoke.html").as_uri())
    assert browser.execute_script("return document.images[0].naturalWidth") == 48
    agents = _column(browser, "board", 1)
    assert any(a.startswith(EVIL) for a in agents)  # shown as text, not parsed as markup
    heads = browser.find_elements(By.CSS_SELECTOR, "#board thead th")
    primary = [float(v) for v in _column(browser, "board", 2)]
    heads[2].click()  # higher is better: the first click puts the best first
    assert [float(v) for v in _column(browser, "board", 2)] == sorted(primary, reverse=True)
    heads[2].click()
    assert [float(v) for v in _column(browser, "board", 2)] == sorted(primary)
    assert heads[2].get_attribute("aria-sort") == "ascending"
    heads[1].click()
    assert _column(browser, "board", 1) == sorted(agents)
    heads[0].click()
    assert _column(browser, "board", 0) == [str(i) for i in range(1, len(agents) + 1)]

    shot = tmp_path / "site-board.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {shot}")


@needs_browser
def test_reference_boards_in_a_headless_browser(browser, reference_site, tmp_path):
    """The committed boards (every metric kind, real figures) render; with
    PLASTICITY_GYM_SITE_SCREENSHOT=docs/figures/site-board.png this refreshes the docs' screenshot."""
    from selenium.webdriver.common.by import By

    _, out, _ = reference_site
    for page in board_pages(out):
        browser.get(page.as_uri())
        assert browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")
        widths = browser.execute_script("return Array.from(document.images, i => i.complete ? i.naturalWidth : 0)")
        assert all(w > 0 for w in widths), f"{page.name}: an image did not load"
    shown = out / "SlowRegression-v0-cpu.html"
    browser.get((shown if shown.exists() else board_pages(out)[0]).as_uri())
    shot = Path(os.environ.get("PLASTICITY_GYM_SITE_SCREENSHOT") or tmp_path / "reference-board.png")
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {shot}")


def test_entries_the_board_marks_preliminary_are_tagged(board_dir, tmp_path):
    """The page tags exactly the entries the board calls preliminary (too few seeds)."""
    out = tmp_path / "www"
    build_site(board_dir, out)
    rows = Page(out / "FakeClassify-v0-smoke.html").table("board")["rows"]
    tagged = {r["attrs"]["data-entry"] for r in rows if "preliminary" in r["cells"][1]["text"]}
    entries = boards.load_entries([board_dir / "FakeClassify-v0"])
    expected = {p.name for p, r in entries if boards.is_preliminary(r)}
    assert expected and tagged == expected
    assert len(tagged) < len(rows)  # an entry with enough seeds is not tagged


def test_a_recorded_commit_is_shown_with_the_package_version(board_dir, tmp_path):
    """Provenance is shown from what the entry holds: a commit recorded in any provenance field
    whose name says so lands in the entry's `code` line."""
    import copy

    from plasticity_gym.harness.result import Result

    (path, res), *_ = boards.load_entries([board_dir / "FakeClassify-v0"])
    data = copy.deepcopy(res.data)
    data["provenance"]["code"] = {"git_commit": "0123abcd" * 5, "dirty": False}
    write_site([(path, Result(data))], tmp_path / "www", board_dir=board_dir)
    page = Page(tmp_path / "www" / "FakeClassify-v0-smoke.html")
    code = next(t for t in page.tables if t["section"] == path.name and t["name"] == "kv")
    assert "0123abcd" * 5 in code["rows"][0]["cells"][1]["text"]
    assert data["env"]["package_version"] in code["rows"][0]["cells"][1]["text"]


def test_the_reproduce_command_is_the_one_a_reader_types():
    from plasticity_gym.harness.site import user_command

    stored = ("plasticity-gym run PermutedMNIST-v0 --agent cbp --scale cpu --seeds 3 --out "
              "/tmp/suite4/runs/cpu/PermutedMNIST-v0-cbp.json --no-progress --resume --threads 1 --set lr=0.01")
    assert user_command(stored) == ("plasticity-gym run PermutedMNIST-v0 --agent cbp --scale cpu --seeds 3 --out "
                                    "runs/PermutedMNIST-v0-cbp.json --set lr=0.01")
    assert user_command("plasticity-gym run X-v0 --agent a --out=../r.json --workers=2 --checkpoint-every 0") == (
        "plasticity-gym run X-v0 --agent a --out runs/r.json")
    kept = "plasticity-gym run X-v0 --agent a --out runs/mine.json --lockstep off --probe-every 5"
    assert user_command(kept) == kept  # what changes the result stays
    assert user_command("plasticity_gym.harness.evaluate('X-v0', 'a')") == "plasticity_gym.harness.evaluate('X-v0', 'a')"


_ACCURACY = re.compile(r"^\d{1,3}\.\d%$")


@needs_browser
def test_board_pages_fit_1280_pixels_and_show_percentages(browser, reference_site):
    """At 1280 px no page scrolls sideways; a board table wider than its frame scrolls inside it
    with the agent column fixed; accuracies and % metrics read as percentages; the command to
    reproduce an entry has no run-machinery flags and no absolute path."""
    _, out, _ = reference_site
    browser.set_window_size(1280, 1000)
    scrolled = 0
    for page in board_pages(out):
        browser.get(page.as_uri())
        page_w, view_w = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert page_w <= view_w, f"{page.name}: the page scrolls sideways ({page_w} > {view_w} px)"
        fits, before, after, frame_left = browser.execute_script("""
            const frame = document.getElementById('board').parentElement;
            const agent = () => document.querySelector('#board tbody td.agent').getBoundingClientRect().left;
            const fits = frame.scrollWidth <= frame.clientWidth;
            const before = agent();
            frame.scrollLeft = frame.scrollWidth;
            return [fits, before, agent(), frame.getBoundingClientRect().left];""")
        if not fits:
            scrolled += 1
            assert abs(after - frame_left) <= 2, f"{page.name}: the agent column scrolled away ({before} -> {after})"
        cells = browser.execute_script("""
            const heads = Array.from(document.querySelectorAll('#board thead th'), th => th.textContent);
            return Array.from(document.querySelectorAll('#board tbody tr'), tr => Array.from(tr.cells, (td, i) =>
                [heads[i], td.childNodes[0] ? td.childNodes[0].textContent.trim() : '']));""")
        for row in cells:
            for head, text in row:
                if ("accuracy" in head or "_pct" in head) and text not in ("—", "n/a"):
                    assert _ACCURACY.match(text), f"{page.name}: {head} shown as {text!r}"
        commands = browser.execute_script(
            "return Array.from(document.querySelectorAll('pre.reproduce code'), c => c.textContent)")
        assert commands, page.name
        for command in commands:
            assert not re.search(r"--(threads|no-progress|progress|resume|fresh|workers|checkpoint)\b", command), command
            assert not re.search(r"--out /", command), command
    assert scrolled, "no reference board is wider than its frame: the sticky column went untested"
