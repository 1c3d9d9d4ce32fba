"""The notebooks in a real browser: headless Chromium (Debian's ``/usr/bin/chromium``, ``make sysdeps``)
driven by Playwright (PyPI, the ``dev`` extra; its own browser download is never used) on JupyterLab
serving the tiny pipeline's tree.

* :func:`test_06_listen_in_the_browser`: the executed copy of 06_listen opens trusted, its progress
  bars at 100 %, its saved panel saying that its (disabled) controls need a kernel; run with a live
  kernel, the panel shows playable audio (``readyState`` 4, ``duration`` > 0) in four columns side by
  side at 1600 px with the file browser open, and another utterance brings other audio.
* :func:`test_09_listening_test_in_the_browser`: the executed copy of 09_listening_test opens trusted
  with its answer controls disabled and the saved-view note shown; a rater types an id into its
  parameters cell and runs it, hears each trial's own stimuli (playable), answers three CMOS/SMOS
  trials (buttons and the one-key box) that land in ``ratings.csv`` with the right signs, saves,
  reloads, restarts the kernel and resumes at trial 4 (:func:`check_listening_test`).

The tree is the one tests/test_notebooks.py fills (this file sorts after it, so in a whole run the
executed notebooks are reused); run alone, it executes what it needs (00_corpus, 01_teacher,
02_distill, 06_listen; the vocoder falls back to Griffin-Lim without 00_vocoder); 09 is always prepared
here, as its own small test (``results/runs/browser/``, ``results/listening/browser/``). Screenshots go to
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

import pandas as pd
import pytest

from imf.core.runtime import repo_root
from imf.runs.pipeline import run_notebook
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


# -- 09: the listening test -------------------------------------------------------------------------
# One utterance and three conditions: 2 CMOS trials (against the reference) then 3 SMOS trials, so
# the first three answers mix both kinds. Its own test folder and executed copy (results/runs/browser/),
# so tests/test_notebooks.py's "nb" test and its copy are left as they are.
LISTENING_PARAMS = {"TEST": "browser", "N_UTTS": 1, "CONDITIONS": ["teacher@4", "student@1", "copy-synthesis"],
                    "REFERENCE": "teacher@4", "N_BOOT": 200}
LISTENING_COPY = f"results/runs/browser/{LISTENING_TEST}.ipynb"
TEST_PANEL = ".jp-Notebook .imf-listen-test"


def checksum(data: bytes) -> int:
    """:func:`audio_state`'s checksum of some bytes."""
    s = 0
    for b in data:
        s = (s * 31 + b) % 1000000007
    return s


def wait_ready(page, path: str) -> None:
    """Wait until the page shows ``path`` with its kernel idle (as :func:`open_notebook` does)."""
    page.wait_for_function("""path => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        return !!(w && w.context && w.context.path === path && w.context.isReady && w.content.widgets.length
                  && w.sessionContext.session && w.sessionContext.session.kernel
                  && w.sessionContext.session.kernel.status === 'idle'); }""", arg=path)


def run_all(page) -> None:
    """Run ▸ Run All Cells in the live kernel; fails with the traceback if a cell raised."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'")
    errors = page.evaluate("""() => { const nb = window.jupyterapp.shell.currentWidget.content, out = [];
        nb.widgets.forEach(c => c.model.type === 'code' && c.model.outputs.toJSON().forEach(o =>
            o.output_type === 'error' && out.push(o.ename + ': ' + o.evalue))); return out; }""")
    assert not errors, f"a cell raised: {errors}"


def set_rater(page, rater: str) -> None:
    """Type the rater id between the quotes of ``RATER = ""`` in the parameters cell, as a rater does."""
    line = page.locator('.jp-Cell .cm-line', has_text='RATER = ""')
    line.click()
    page.keyboard.press("Home")
    for _ in range(len('RATER = "')):
        page.keyboard.press("ArrowRight")
    page.keyboard.type(rater)
    page.keyboard.press("Escape")  # back to command mode
    src = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
        .map(c => c.model.sharedModel.getSource()).join('\\n')""")
    assert f'RATER = "{rater}"' in src, "the parameters cell was not edited"


def wait_trial(page, k: int, n: int, want: tuple[int, int]) -> None:
    """Wait until the live panel shows trial ``k`` (1-based) of ``n`` with the two stimuli whose
    checksums are ``want``, both playable (``readyState`` 4, ``duration`` > 0)."""
    page.wait_for_function("([sel, text]) => document.querySelector(sel)?.innerText.includes(text)",
                           arg=[TEST_PANEL + " .imf-listen-progress", f"Trial {k} of {n}"])
    page.wait_for_function(PLAYABLE, arg=TEST_PANEL)
    page.wait_for_function("""async ([root, want]) => { const sums = [];
        for (const cls of ['.imf-listen-audio-a', '.imf-listen-audio-b']) {
            const a = document.querySelector(root + ' ' + cls);
            if (!a || !a.src || a.readyState !== 4 || !(a.duration > 0)) return false;
            const b = new Uint8Array(await (await fetch(a.src)).arrayBuffer());
            let s = 0; for (let i = 0; i < b.length; i++) s = (s * 31 + b[i]) % 1000000007; sums.push(s); }
        return sums[0] === want[0] && sums[1] === want[1]; }""", arg=[TEST_PANEL, list(want)], polling=200)


def check_listening_test(context, lab, tree: Path, path: str = LISTENING_COPY) -> None:
    """The rater's path through 09_listening_test in JupyterLab, on the executed copy the pipeline prepared.

    1. The copy opens trusted, its saved panel rendered with every answer control disabled
       (``imf-needs-kernel``) and the saved-view note (``imf-kernel-note``) shown.
    2. The rater types an id into ``RATER = ""`` in the parameters cell and runs all cells: the live
       panel asks trial 1, its players playing exactly the trial's stimuli (checksums of the WAV bytes).
    3. Three answers: CMOS by a button (+2), CMOS by the one-key box ("2" = -2), SMOS by a button
       (4); ``ratings.csv`` then holds exactly those three rows for the rater, CMOS scores
       sign-corrected when the rated condition played as A.
    4. The rater saves, reloads the page, restarts the kernel and runs all again: the test resumes at
       trial 4 ("3 answered"), with nothing answered twice.
    """
    from imf.eval.listening_test import CMOS, SMOS, ListeningTest

    folder = tree / "results" / "listening" / LISTENING_PARAMS["TEST"]
    test, rater = ListeningTest.open(folder), f"browser-{secrets.token_hex(3)}"
    trials = test.trials(rater)
    n = len(trials)
    assert [t.kind for t in trials[:4]] == [CMOS, CMOS, SMOS, SMOS], trials

    def stimuli(t) -> tuple[int, int]:
        pair = (t.a, t.b) if t.kind == CMOS else ("prompt", t.a)
        return checksum(test.wav(pair[0], t.utt)), checksum(test.wav(pair[1], t.utt))

    page = open_notebook(context, lab, path)
    page.on("dialog", lambda d: d.accept())
    # 1. the saved view
    assert cells_trusted(page) and all(cells_trusted(page))
    page.wait_for_selector(TEST_PANEL + " .imf-kernel-note")
    disabled = page.eval_on_selector_all(TEST_PANEL + " .imf-needs-kernel",
                                         "els => els.map(e => (e.matches('button') ? e : e.querySelector('input')).disabled)")
    assert len(disabled) == 7 + 5 + 1 and all(disabled), disabled  # CMOS, SMOS buttons and the key box
    note = page.inner_text(TEST_PANEL + " .imf-kernel-note")
    assert "Saved view" in note and "running kernel" in note and "RATER" in note, note
    assert "No rater" in page.inner_text(TEST_PANEL + " .imf-listen-progress")
    page.eval_on_selector(TEST_PANEL, "e => e.scrollIntoView()")
    screenshot(page, "09_saved")

    # 2. a rater takes the test
    set_rater(page, rater)
    run_all(page)
    page.wait_for_function("sel => document.querySelector(sel)?.innerText.includes('Each answer is saved')",
                           arg=TEST_PANEL + " .imf-kernel-note")
    assert page.locator(TEST_PANEL).count() == 1
    wait_trial(page, 1, n, stimuli(trials[0]))
    assert page.is_visible(TEST_PANEL + " .imf-cmos-buttons") and not page.is_visible(TEST_PANEL + " .imf-smos-buttons")
    live = page.eval_on_selector_all(TEST_PANEL + " .imf-needs-kernel button, " + TEST_PANEL + " button.imf-needs-kernel",
                                     "els => els.map(e => e.disabled)")
    assert live and not any(live)
    screenshot(page, "09_trial1")

    # 3. three answers: a CMOS button, a CMOS key, an SMOS button
    page.click(TEST_PANEL + " .imf-cmos-p2")
    wait_trial(page, 2, n, stimuli(trials[1]))
    page.click(TEST_PANEL + " .imf-listen-key input")
    page.keyboard.type("2")  # key 2 of 1..7 = -2
    wait_trial(page, 3, n, stimuli(trials[2]))
    assert page.is_visible(TEST_PANEL + " .imf-smos-buttons") and not page.is_visible(TEST_PANEL + " .imf-cmos-buttons")
    assert page.input_value(TEST_PANEL + " .imf-listen-key input") == ""
    page.click(TEST_PANEL + " .imf-smos-4")
    wait_trial(page, 4, n, stimuli(trials[3]))
    assert "saved trial 3 (SMOS 4)" in page.inner_text(TEST_PANEL + " .imf-listen-status")
    screenshot(page, "09_answered3")
    table = pd.read_csv(folder / "ratings.csv")
    mine = table[table.rater == rater]
    assert list(mine.trial) == [t.key for t in trials[:3]], mine
    assert list(mine.answer) == [2, -2, 4]
    assert list(mine.score) == [-a if t.a == t.condition else a for t, a in zip(trials[:2], (2, -2))] + [4]

    # 4. save, reload, restart the kernel, run again: resumes at trial 4
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")
    page.reload()
    wait_ready(page, path)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.restartKernel()")
    wait_ready(page, path)
    run_all(page)
    wait_trial(page, 4, n, stimuli(trials[3]))
    assert "3 answered" in page.inner_text(TEST_PANEL + " .imf-listen-progress")
    screenshot(page, "09_resumed")
    again = pd.read_csv(folder / "ratings.csv")
    assert (again.rater == rater).sum() == 3, "answered again after the restart"
    page.close()


def test_09_listening_test_in_the_browser(tree, lab, browser):
    t0 = time.monotonic()
    # always executed afresh (~10 s; the stimuli are reused once prepared): the test saves over its copy
    run_notebook(LISTENING_TEST, (tree / LISTENING_COPY).parent, {"PROFILE": "tiny", **LISTENING_PARAMS})
    t1 = time.monotonic()
    check_listening_test(browser, lab, tree)
    print(f"browser test of 09_listening_test: prepared in {t1 - t0:.0f} s, in the browser {time.monotonic() - t1:.0f} s")
