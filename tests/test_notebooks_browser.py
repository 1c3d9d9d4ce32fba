"""The notebooks in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``, ``make sysdeps``)
driven by Playwright (PyPI, the ``dev`` extra; its own browser download is never used) on JupyterLab
serving the tiny pipeline's tree.

* :func:`test_06_listen_in_the_browser`: the executed copy of 06_listen opens trusted, its progress
  bars at 100 %, its saved panel saying that its (disabled) controls need a kernel; run with a live
  kernel, the panel shows playable audio (``readyState`` 4, ``duration`` > 0) in four columns side by
  side at 1600 px with the file browser open, and another utterance brings other audio.
* :func:`test_09_listening_test_in_the_browser`: the listening-test notebook (answer three CMOS/SMOS
  trials, find them in ``ratings.csv``, reload and resume), through :func:`check_listening_test`;
  skipped while ``notebooks/09_listening_test.ipynb`` does not exist.

The tree is the one tests/test_notebooks.py fills (this file sorts after it, so in a whole run the
executed notebooks are reused); run alone, it executes what it needs (00_corpus, 01_teacher,
02_distill, 06_listen; the vocoder falls back to Griffin-Lim without 00_vocoder). Screenshots go to
``$IMF_SCREENSHOTS`` when set.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from imf.core.runtime import repo_root
from imf.runs.pipeline import notebook_path, run_notebook
from tests.helpers import pipeline_env

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--mute-audio"]
VIEWPORT = {"width": 1600, "height": 1000}  # a laptop screen
WAIT_MS = 180_000  # generous: two shared cores, a kernel to start and a model to run
# what each notebook needs run before it, with the parameters tests/test_notebooks.py gives it (same tree)
PIPELINE = {"00_corpus": {}, "01_teacher": {}, "02_distill": {}, "06_listen": {"N_UTTS": 2, "JUDGES": ["pesq"]}}
LISTENING_TEST = "09_listening_test"

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra (pip install -e '.[dev]')")
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing: run 'make sysdeps' (apt-get install chromium)", allow_module_level=True)


def ensure_run(tree: Path, name: str, **params) -> Path:
    """The executed copy of ``name`` in ``tree``, executing it (tiny profile) if no test did yet."""
    out = tree / "results" / "runs" / f"{name}.ipynb"
    if not out.exists():
        run_notebook(name, out.parent, {"PROFILE": "tiny", **params})
    return out


@pytest.fixture(scope="module")
def tree(pipeline_root):
    with pipeline_env(pipeline_root):
        for name, params in PIPELINE.items():
            ensure_run(pipeline_root, name, **params)
        yield pipeline_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tree):
    """JupyterLab serving ``tree`` on a free port with a random token (its kernels import this
    checkout's ``imf`` and see the tree's IMF_* folders); yields ``(base_url, token)``."""
    port, token = free_port(), secrets.token_hex(16)
    home = Path(tempfile.mkdtemp(prefix="imf-lab-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root()), os.environ.get("PYTHONPATH")])),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IMF_THREADS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tree}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about Jupyter news?" toast over the page
    log = open(home / "lab.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start: {(home / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, token
    finally:
        proc.terminate()  # the server shuts its kernels down
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium with a throw-away profile, at a 1600 px wide viewport."""
    profile = tempfile.mkdtemp(prefix="imf-chromium-")
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport=VIEWPORT)
        context.set_default_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def screenshot(page, name: str) -> None:
    folder = os.environ.get("IMF_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


# -- JupyterLab, through the app it exposes (window.jupyterapp) ------------------------------------

def open_notebook(context, lab, path: str):
    """A new page showing ``path`` (relative to the served tree) with its kernel ready and the file browser open."""
    url, token = lab
    page = context.new_page()
    page.goto(f"{url}/lab/tree/{path}?reset&token={token}")
    page.wait_for_function("""path => {
        const app = window.jupyterapp, w = app && app.shell.currentWidget;
        return !!(w && w.context && w.context.path === path && w.context.isReady && w.content.widgets.length
                  && w.sessionContext.session && w.sessionContext.session.kernel
                  && w.sessionContext.session.kernel.status === 'idle');
    }""", arg=path)
    page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    return page


def cells_trusted(page) -> list[bool]:
    return page.evaluate("""() => {
        const cells = window.jupyterapp.shell.currentWidget.content.model.cells, out = [];
        for (let i = 0; i < cells.length; i++) { const c = cells.get(i); if (c.type === 'code') out.push(c.trusted); }
        return out;
    }""")


def run_through(page, marker: str) -> None:
    """Run the notebook's cells from the first up to the first one whose source contains ``marker``
    (that cell included, left active), in the live kernel; returns when they ran and the kernel is idle."""
    page.evaluate("""async marker => {
        const app = window.jupyterapp, panel = app.shell.currentWidget, nb = panel.content;
        const i = nb.widgets.findIndex(c => c.model.sharedModel.getSource().includes(marker));
        if (i < 0) throw new Error('no cell contains ' + marker);
        nb.activeCellIndex = i;
        await app.commands.execute('notebook:run-all-above');
        nb.activeCellIndex = i;
        await app.commands.execute('notebook:run-cell');
    }""", marker)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")


def audio_state(page, root: str) -> list[dict]:
    """readyState, duration, src and a checksum of the bytes of every <audio> under ``root``."""
    return page.evaluate("""async root => Promise.all([...document.querySelectorAll(root + ' audio')].map(async a => {
        let sum = 0;
        if (a.src) { const b = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
                     for (let i = 0; i < b.length; i++) sum = (sum * 31 + b[i]) % 1000000007; }
        return {ready: a.readyState, duration: a.duration, src: a.src, sum};
    }))""", root)


def assert_one_row(page, panel: str, n: int = 4) -> None:
    """The panel's ``n`` columns sit side by side (same top), not wrapped."""
    tops = page.eval_on_selector_all(panel + " .imf-listen-column", "els => els.map(e => e.getBoundingClientRect().top)")
    assert len(tops) == n and max(tops) - min(tops) < 1, f"columns wrap: tops {tops}"


PLAYABLE = """root => { const a = [...document.querySelectorAll(root + ' audio')];
    return a.length > 0 && a.every(x => x.readyState === 4 && x.duration > 0); }"""


# -- 06: the listening panel --------------------------------------------------------------------------

def test_06_listen_in_the_browser(tree, lab, browser):
    t0 = time.monotonic()
    page = open_notebook(browser, lab, "results/runs/06_listen.ipynb")
    # the executed copy as saved: trusted, widgets rendered from their saved state, progress bars at 100 %
    assert cells_trusted(page) and all(cells_trusted(page))
    page.wait_for_selector(".imf-listen-panel")
    bars = page.eval_on_selector_all(":is(.widget-hprogress, .widget-vprogress) .progress-bar",
                                     "els => els.map(e => e.style.width || e.style.height)")
    assert bars and all(w == "100%" for w in bars), bars  # tqdm.auto's bars (render_all), as they ended
    text = page.eval_on_selector(".jp-Notebook", "e => e.textContent").replace("\u2007", " ")  # off-screen cells too; tqdm pads with figure spaces
    assert "render: 100%" in text and "VBox(children" not in text
    saved = page.eval_on_selector_all(".imf-listen-panel select", "els => els.map(e => e.disabled)")
    assert saved and all(saved), "the saved panel's controls should be disabled (no kernel behind them)"
    assert "need a running kernel" in page.inner_text(".imf-listen-panel .imf-kernel-note")
    page.eval_on_selector(".imf-listen-panel", "e => e.scrollIntoView()")
    assert_one_row(page, ".imf-listen-panel")
    screenshot(page, "06_saved")

    # run it with a live kernel: the panel shows, says what it is generating, and fills with playable audio
    page.evaluate("""() => { window.imfSawBusy = false;
        new MutationObserver(() => { if (document.body.innerText.includes('generating…')) window.imfSawBusy = true; })
            .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
    run_through(page, "ListeningPanel(comp)")
    panel = ".jp-Cell.jp-mod-active .imf-listen-panel"  # the live panel (the cell just run)
    page.wait_for_function(PLAYABLE, arg=panel)
    assert page.evaluate("() => window.imfSawBusy"), "no 'generating…' state was shown while computing"
    before = audio_state(page, panel)
    assert len(before) == 4 and all(a["ready"] == 4 and a["duration"] > 0 for a in before), before
    live = page.eval_on_selector_all(panel + " select", "els => els.map(e => e.disabled)")
    assert live and not any(live) and page.inner_text(panel + " .imf-kernel-note") == ""
    # four columns side by side at 1600 px with the file browser open
    page.eval_on_selector(panel, "e => e.scrollIntoView()")
    assert_one_row(page, panel)
    assert page.evaluate("() => !document.querySelector('#filebrowser').classList.contains('lm-mod-hidden')")
    screenshot(page, "06_live")

    # another utterance: every column gets other, playable audio
    page.select_option(panel + " .imf-needs-kernel select", index=1)
    page.wait_for_function("""([root, old]) => { const a = [...document.querySelectorAll(root + ' audio')];
        return a.length === old.length && a.every((x, i) => x.src && x.src !== old[i] && x.readyState === 4 && x.duration > 0); }""",
                           arg=[panel, [a["src"] for a in before]])
    after = audio_state(page, panel)
    assert all(a["sum"] != b["sum"] for a, b in zip(after, before)), "the audio bytes did not change"
    screenshot(page, "06_live_utterance2")
    page.close()
    print(f"browser test of 06_listen: {time.monotonic() - t0:.0f} s")


# -- 09: the listening test (helper "listen"'s notebook) ---------------------------------------------

def check_listening_test(context, lab, tree: Path, n_trials: int = 3) -> None:
    """Answer ``n_trials`` CMOS/SMOS trials of 09_listening_test in the browser, find them in its
    ``ratings.csv``, reload the page and see the test resume after them.

    Assumes the notebook's widgets carry the house CSS classes (``imf-...``): ``imf-rater`` (a text
    field), ``imf-trial`` (the trial's box, its ``<audio>`` players), ``imf-cmos`` / ``imf-smos`` (the
    rating controls: a slider or toggle buttons), ``imf-submit`` (the answer button) and
    ``imf-progress`` (text "trial k of n"); adjust the selectors here if 09 names them otherwise.
    """
    import pandas as pd

    path = f"results/runs/{LISTENING_TEST}.ipynb"
    page = open_notebook(context, lab, path)
    run_through(page, "ListeningTest(")
    trial = ".jp-Cell.jp-mod-active .imf-trial"
    page.fill(".jp-Cell.jp-mod-active .imf-rater input", "browser-test")
    for k in range(n_trials):
        page.wait_for_function(PLAYABLE, arg=trial)
        for kind in ("cmos", "smos"):
            buttons = page.query_selector_all(f"{trial} .imf-{kind} button")
            if buttons:
                buttons[len(buttons) // 2].click()
        page.click(f"{trial} .imf-submit")
        page.wait_for_function("([sel, k]) => document.querySelector(sel)?.innerText.includes(`trial ${k + 2}`)",
                               arg=[".jp-Cell.jp-mod-active .imf-progress", k])
    ratings = sorted((tree / "results" / "listening").glob("*/ratings.csv"))
    assert ratings, "no ratings.csv written"
    table = pd.read_csv(ratings[-1])
    assert (table.rater == "browser-test").sum() == n_trials
    page.reload()
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget")
    run_through(page, "ListeningTest(")
    page.wait_for_function("sel => document.querySelector(sel)?.innerText.includes('trial')",
                           arg=".jp-Cell.jp-mod-active .imf-progress")
    assert f"trial {n_trials + 1}" in page.inner_text(".jp-Cell.jp-mod-active .imf-progress")
    page.close()


def test_09_listening_test_in_the_browser(tree, lab, browser):
    if not notebook_path(LISTENING_TEST).exists():
        pytest.skip(f"notebooks/{LISTENING_TEST}.ipynb does not exist yet")
    ensure_run(tree, LISTENING_TEST)
    check_listening_test(browser, lab, tree)
