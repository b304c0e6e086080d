"""The run report: a real tiny run (CLI, SQLite archive, Chroma, LangGraph, builtin
agents, sandboxed training), its report written at the end of the run, the report CLI,
and the page in headless Chromium (selenium + chromedriver)."""
import base64
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "data" / "tiny_context.json"
REPO = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('pwned')</script> & <b>bold</b>"


def _cli(module, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _copy_home(src: Path, dst: Path) -> Path:
    """A consistent copy of an archive (sqlite backup API: WAL content included)."""
    dst.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(src / "archive.db") as a, sqlite3.connect(dst / "archive.db") as b:
        a.backup(b)
    return dst


class Page(HTMLParser):
    """Start tags with their attributes, the class of the enclosing table, and whether
    they sit inside the inline SVG."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict, str | None, bool]] = []
        self._table: list[str | None] = []
        self._svg = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table.append(attrs.get("class"))
        if tag == "svg":
            self._svg += 1
        self.tags.append((tag, attrs, self._table[-1] if self._table else None,
                          self._svg > 0))

    def handle_endtag(self, tag):
        if tag == "table" and self._table:
            self._table.pop()
        if tag == "svg":
            self._svg -= 1

    def tree_nodes(self) -> list[int]:
        return [int(a["data-candidate-id"]) for t, a, _, in_svg in self.tags
                if in_svg and "node" in (a.get("class") or "").split()
                and "data-candidate-id" in a]

    def rows(self, table: str) -> list[int]:
        return [int(a["data-candidate-id"]) for t, a, cls, _ in self.tags
                if t == "tr" and cls == table and "data-candidate-id" in a]

    def article(self, cid: int) -> bool:
        return any(t == "article" and a.get("id") == f"cand-{cid}" for t, a, _, _ in self.tags)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def run_home(tmp_path_factory):
    """One real 3-candidate run on the tiny testbed; graph.run writes its report."""
    home = tmp_path_factory.mktemp("report") / "home"
    r = _cli("graph.run", "--home", str(home), "--directive", "accurate and concise",
             "--candidates", "3", "--config", str(TINY), "--no-smoke", "--quiet",
             timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return home, r.stdout


def _add_synthetic(home: Path, run_id: int) -> dict[str, int]:
    """Candidates the tiny run cannot be relied on to produce, written through the real
    archive: a failure with hostile text, a 3-seed candidate (a real CI), a crossover
    that failed training, and a duplicate."""
    from memory.archive import Archive

    with Archive(home, index=False) as a:
        seed = next(c for c in a.candidates(run_id) if not a.parents(c.id))
        child_code = seed.code.replace("def ", "def  ", 1) + "\n# <added line> & more\n"
        keys = ("reward", "accuracy", "entropy", "response_length", "validity", "kl_to_start")
        curves = lambda k: {key: [[s, k * s / 4 + 0.1 * (key == "entropy")]  # noqa: E731
                                  for s in range(1, 5)] for key in keys}
        ids = {}
        ids["three"] = a.add_candidate(run_id, "three-seeds", 1, "norm tweak",
                                       child_code, parents=[seed.id], status="evaluated",
                                       details={"round": 1, "genes": ["normalization=x"]})
        for s, fit in enumerate([0.5, 0.7, 0.9]):
            a.add_evaluation(ids["three"], s, "verl", metrics={"val": {"overall": 40 + s,
                                                               "length": 9.0}},
                             fitness=fit, curves=curves(fit))
        a.add_reflection(ids["three"], "<img src=x onerror=alert(1)> lengths fell", ["len"])
        ids["evil"] = a.add_candidate(run_id, "evil-proposal", 2, EVIL, child_code + "x = 1\n",
                                      parents=[ids["three"]], status="failed_verification",
                                      error="SyntaxError: <bad> & worse",
                                      details={"round": 2})
        ids["cross"] = a.add_candidate(run_id, "crossover-child", 2, "mix", None,
                                       parents=[ids["three"], seed.id],
                                       status="failed_training", error="nan loss",
                                       details={"round": 2})
        ids["dup"] = a.add_candidate(run_id, "dup-of-three", 2, "norm tweak again",
                                     child_code, parents=[ids["three"]], status="duplicate",
                                     error="near-duplicate of three-seeds",
                                     details={"round": 2})
    return ids


@pytest.fixture(scope="module")
def augmented(run_home, tmp_path_factory):
    """A copy of the run's archive with the synthetic candidates, and its report written
    by the CLI to an explicit --out."""
    home = _copy_home(run_home[0], tmp_path_factory.mktemp("augmented") / "home")
    ids = _add_synthetic(home, 1)
    out = home.parent / "out" / "page.html"
    r = _cli("graph.report", "1", "--home", str(home), "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"report: {out}" in r.stdout
    return home, ids, out


@pytest.fixture(scope="session")
def chromedriver():
    """chromedriver on PATH, installed with apt-get when missing and possible."""
    if shutil.which("chromedriver") is None:
        apt = shutil.which("apt-get")
        if apt is None or os.geteuid() != 0:
            pytest.skip("chromedriver is missing and apt-get is not usable here "
                        "(needs root): apt-get install chromium chromium-driver")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = [apt, "install", "-y", "-qq", "chromium", "chromium-driver"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:  # stale package lists: refresh once and retry
            subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, timeout=600)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if shutil.which("chromedriver") is None:
            pytest.skip("apt-get install chromium chromium-driver failed: "
                        + (r.stderr.strip().splitlines() or ["no output"])[-1])
    return shutil.which("chromedriver")


# ----------------------------------------------------------------------------- tests

def test_the_run_writes_its_report(run_home):
    from memory.archive import Archive

    home, stdout = run_home
    report = home / "runs" / "1" / "report.html"
    assert f"report: {report}" in stdout
    for name in ("genealogy", "curves", "leaderboard"):
        assert (report.parent / f"report-{name}.png").stat().st_size > 1000
    page = Page(report.read_text())
    with Archive(home, create=False, index=False) as a:
        cands = a.candidates(1)
        board = a.leaderboard(1)
        assert sorted(page.tree_nodes()) == [c.id for c in cands]
        assert page.rows("leaderboard") == [s.candidate_id for s in board]
        assert len(board) == len([c for c in cands if c.status == "evaluated"])
        assert all(page.article(c.id) for c in cands)
        # every proposal with code and a parent shows a diff against that parent
        text = report.read_text()
        for c in cands:
            if c.code and a.parents(c.id):
                art = text[text.index(f"id='cand-{c.id}'"):]
                art = art[:art.index("</article>")]
                assert "<pre class='diff'>" in art and "<span class='add'>+" in art, c.name


def test_report_matches_the_archive(augmented):
    from evals.stats import mean_ci
    from memory.archive import Archive

    home, ids, out = augmented
    text = out.read_text()
    page = Page(text)
    with Archive(home, create=False, index=False) as a:
        cands = a.candidates(1)
        board = a.leaderboard(1)
    assert sorted(page.tree_nodes()) == [c.id for c in cands]
    assert page.rows("leaderboard") == [s.candidate_id for s in board]
    assert sorted(page.rows("unranked")) == sorted(ids[k] for k in ("evil", "cross", "dup"))
    # the 3-seed candidate: its t interval, from the stats module, in its row
    ci = mean_ci([0.5, 0.7, 0.9])
    row = re.search(rf"<tr data-candidate-id='{ids['three']}'.*?</tr>", text).group(0)
    assert f"[{ci.ci_low:.3f}, {ci.ci_high:.3f}]" in row and ">3<" in row
    single = re.search(r"<tr data-candidate-id='\d+' class='baseline'>.*?</tr>", text).group(0)
    assert "n=1, no CI" in single
    # which backend trained what: the tiny run's candidates locally, three-seeds on verl
    assert "<td class='backend'>verl</td>" in row
    assert "<td class='backend'>local</td>" in single
    # failures are drawn differently from evaluated nodes
    statuses = dict(re.findall(r'data-candidate-id="(\d+)" data-status="(\w+)"', text))
    assert statuses[str(ids["evil"])] == "failed_verification"
    assert "nan loss" in text and "near-duplicate of three-seeds" in text


def test_archive_text_is_escaped(augmented):
    _, ids, out = augmented
    text = out.read_text()
    assert "<script" not in text.lower()          # the page has no script at all
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold" in text
    assert "<b>bold</b>" not in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "SyntaxError: &lt;bad&gt; &amp; worse" in text
    evil = text[text.index(f"id='cand-{ids['evil']}'"):]
    evil = evil[:evil.index("</article>")]
    assert "<span class='add'>+x = 1</span>" in evil           # diff vs its parent
    three = text[text.index(f"id='cand-{ids['three']}'"):]
    assert "<span class='add'>+# &lt;added line&gt; &amp; more</span>" in three


def test_pngs_are_written_and_embedded(augmented):
    from PIL import Image

    _, _, out = augmented
    text = out.read_text()
    embedded = [base64.b64decode(m) for m in
                re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)]
    for name in ("genealogy", "curves", "leaderboard", "pareto"):
        data = (out.parent / f"page-{name}.png").read_bytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        assert img.width > 300 and img.height > 200
        assert len(img.getcolors(maxcolors=1 << 20) or range(2)) > 10  # a drawing
        if name != "genealogy":                   # the tree is inline SVG on the page
            assert data in embedded
    assert len(embedded) == 3
    assert "<section id='pareto'><h2>Overall vs length</h2>" in text
    assert not re.search(r"(src|href)=['\"]https?://", text)   # self-contained


BAD_INPUT = {  # case -> (arguments after RUN_ID's place, what stderr must say)
    "unknown run": (["42"], "no run 42"),
    "missing home": (["1", "--home", "{tmp}/nowhere"], "no POISE home"),
    "corrupt archive": (["1", "--home", "{tmp}"], "corrupt"),
    "no archive": (["1", "--home", "{tmp}"], "no archive at"),
    "bad run id": (["one"], "invalid int value"),
    "out is a directory": (["1", "--out", "{tmp}"], "is a directory"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, run_home, capsys):
    """In-process (the same code path as the command, without the interpreter start);
    the corrupt archive also through a real process, to see that no traceback leaks."""
    from graph.report import main
    from memory.cli import run_cli

    args, expect = BAD_INPUT[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--home" not in args:
        args += ["--home", str(run_home[0])]
    if case == "corrupt archive":
        (tmp_path / "archive.db").write_bytes(b"this is not sqlite" * 100)
        r = _cli("graph.report", *args, timeout=120)
        assert (r.returncode, "Traceback" in r.stderr) == (2, False), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and expect in err, err


WRITER = textwrap.dedent("""
    import sys, time
    from memory.archive import Archive
    a = Archive(sys.argv[1], index=False)
    for i in range(int(sys.argv[2])):
        cid = a.add_candidate(1, f"live-{i}", 3, f"proposal {i}", None, parents=[1],
                              status="evaluated", details={"round": 3})
        a.add_evaluation(cid, 0, metrics={"val": {"overall": i}}, fitness=i / 100,
                         curves={"reward": [[1, 0.1], [2, 0.2]]})
        a.add_reflection(cid, f"reflection {i}")
        time.sleep(0.01)
    print("done", flush=True)
""")


def test_report_while_the_run_writes(run_home, tmp_path):
    """Reports written while another process commits to the archive: the writer is
    never blocked or broken, and each report is consistent with itself."""
    from graph.report import write_report
    from memory.archive import Archive

    home = _copy_home(run_home[0], tmp_path / "home")
    n = 25
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home), str(n)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reports = 0
    try:
        while writer.poll() is None or reports == 0:
            page = Page(write_report(home, 1, tmp_path / f"r{reports}.html").read_text())
            nodes = page.tree_nodes()
            assert nodes and all(page.article(c) for c in nodes)
            assert set(page.rows("leaderboard")) <= set(nodes)
            reports += 1
    finally:
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0 and "done" in out, err[-2000:]
    with Archive(home, create=False, index=False) as a:
        assert len([c for c in a.candidates(1) if c.name.startswith("live-")]) == n
    # an open write transaction does not stop a report, and the report does not see it
    con = sqlite3.connect(home / "archive.db", timeout=1)
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE candidate SET name = 'uncommitted' WHERE id = 1")
    started = time.time()
    text = write_report(home, 1, tmp_path / "locked.html").read_text()
    assert time.time() - started < 30 and "uncommitted" not in text
    con.commit()                                  # and the writer still commits after
    con.close()


def test_a_run_without_candidates_yet(run_home, tmp_path):
    from graph.report import write_report
    from memory.archive import Archive

    home = _copy_home(run_home[0], tmp_path / "home")
    with Archive(home, index=False) as a:
        run_id = a.start_run("brand new", {})
    text = write_report(home, run_id).read_text()
    assert "no candidates yet" in text and "run in progress" in text
    assert (home / "runs" / str(run_id) / "report.html").is_file()


def test_report_in_a_browser(augmented, chromedriver, tmp_path):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from memory.archive import Archive

    home, ids, out = augmented
    with Archive(home, create=False, index=False) as a:
        n_cands = len(a.candidates(1))
        n_ranked = len(a.leaderboard(1))
    opts = webdriver.ChromeOptions()
    binary = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(b)), None)
    if binary:
        opts.binary_location = shutil.which(binary)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-extensions", "--disable-background-networking",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(out.resolve().as_uri())
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        img = Image.open(shot).convert("RGB")
        assert len(img.getcolors(maxcolors=1 << 24)) > 1, "blank screenshot"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth])")
        assert {i for i, _, _ in images} >= {"plot-curves", "plot-leaderboard"}
        assert all(done and width > 0 for _, done, width in images), images
        nodes = driver.find_elements(By.CSS_SELECTOR,
                                     "#genealogy svg .node[data-candidate-id]")
        assert len(nodes) == n_cands
        assert all(n.size["width"] > 0 and n.size["height"] > 0 for n in nodes)
        rows = driver.find_elements(By.CSS_SELECTOR, "table.leaderboard tbody tr")
        assert len(rows) == n_ranked
        # clicking a node opens that candidate's section
        node = driver.find_element(By.CSS_SELECTOR,
                                   f".node[data-candidate-id='{ids['evil']}'] a")
        driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', "
                              "{bubbles: true}))", node)
        assert driver.execute_script("return location.hash") == f"#cand-{ids['evil']}"
        heading = driver.find_element(By.CSS_SELECTOR, f"#cand-{ids['evil']} h3").text
        assert "evil-proposal" in heading
        assert driver.execute_script("return document.querySelectorAll('script').length") == 0
    finally:
        driver.quit()


def test_pareto_points_and_front(augmented):
    """The Pareto plot's points are each ranked candidate's mean val Overall and length,
    the seed baseline marked as GRPO; the front keeps exactly the non-dominated ones."""
    from graph.report import _pareto_points
    from graph.report.data import load_snapshot
    from graph.report.plots import pareto_front, pareto_plot
    from memory.archive import Archive

    home, _, _ = augmented
    run_id = 1
    with Archive(home, create=False, index=False) as a:
        snap = load_snapshot(a, run_id)
        points = _pareto_points(snap, snap.leaderboard())
        for p in points:
            c = next(c for c in a.candidates(run_id) if c.name == p["name"])
            vals = [e.metrics["val"] for e in a.evaluations(c.id)]
            assert p["overall"] == pytest.approx(sum(v["overall"] for v in vals) / len(vals))
            assert p["length"] == pytest.approx(sum(v["length"] for v in vals) / len(vals))
    assert [p["kind"] for p in points].count("grpo") == 1
    pts = [{"name": n, "overall": o, "length": ln, "kind": "candidate"}
           for n, o, ln in (("a", 50, 30), ("b", 55, 35), ("c", 49, 31), ("d", 55, 33),
                            ("e", 40, 10))]
    assert [p["name"] for p in pareto_front(pts)] == ["e", "a", "d"]  # c, b dominated
    assert pareto_plot(pts, "t")[:8] == b"\x89PNG\r\n\x1a\n"
    assert pareto_plot([], "t") is None
