"""The interactive path in a real browser: JupyterLab, headless Chromium, the chapters run as a learner runs them.

Selenium drives Debian's `chromium` through Debian's `chromium-driver`: the two come from the same package
version, so the driver always speaks the browser's protocol (Playwright would bring, or expect, a browser build of
its own, which cannot be downloaded here). JupyterLab starts on a free localhost port with a token, on prepared
copies of chapters 02, 04 and 06 (papermill --prepare-only with the smoke parameters, as the nbval test does). The
test runs every cell from the browser (Run All), then uses each interactive part: it types a completion into
chapter 02's scorer and reads the new score; it watches chapter 04's dashboard stay one image that is redrawn
between steps, and its tqdm bars render as widgets; it clicks chapter 06's Solve button and reads the answer.
It waits on page state, never on fixed sleeps, and fails on a cell error, a dead kernel or a widget that does not
answer. Screenshots land in the test's tmp folder (and in $GRPO_SCREENSHOTS_DIR when set: that is how the README's
are made). Without chromium it is skipped, except where GRPO_BROWSER_TEST=required (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import papermill
import pytest

from grpo_helpers.run_notebooks import NOTEBOOKS_DIR, declared_parameters, load_params, shared_paths

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SMOKE = load_params(ROOT / "params" / "smoke")
CHAPTERS = ("02_reward_design.ipynb", "04_single_node_training.ipynb", "06_inference.ipynb")
WAIT = 420  # seconds any one wait may take on a slow machine before the test fails with what it saw


def _browser_or_skip() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromium-driver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (requirements.txt)")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("GRPO_BROWSER_TEST") == "required":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = WAIT, every: float = 0.25):
    """Poll `check()` until it returns something truthy; fail naming `what` (and the last value) on timeout."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last state: {last!r}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on prepared copies of the chapters; yields (base url, token, run folder)."""
    _browser_or_skip()
    work = tmp_path_factory.mktemp("lab")
    notebooks, run_dir = work / "notebooks", work / "runs"
    notebooks.mkdir()
    for name in ("01_countdown_dataset.ipynb", *CHAPTERS):
        declared = declared_parameters(NOTEBOOKS_DIR / name)
        params = SMOKE.get(name[:2], {}) | shared_paths(declared, run_dir)
        papermill.execute_notebook(str(NOTEBOOKS_DIR / name), str(notebooks / name), parameters=params,
                                   prepare_only=name != "01_countdown_dataset.ipynb", cwd=str(NOTEBOOKS_DIR),
                                   progress_bar=False)  # chapter 01 runs here: it writes the data split
    settings = work / "settings"
    for plugin, values in {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
                           "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                                            "checkForUpdates": False}}.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    log = (work / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", "--allow-root",  # CI runs as root
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={work / 'workspaces'}",
         "--LabApp.expose_app_in_browser=True"],
        stdout=log, stderr=subprocess.STDOUT, cwd=notebooks)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with {server.returncode}: {(work / 'jupyterlab.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    _wait("JupyterLab to answer", up, timeout=180)
    try:
        yield base, token, run_dir, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


NOTEBOOK_STATE = """
const app = window.jupyterapp;
const panel = app && app.shell.currentWidget;
if (!panel || !panel.sessionContext || !panel.content || !panel.content.widgets) return null;
const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
const cells = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of cells) for (const o of c.model.outputs.toJSON())
  if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
return {kernel: kernel ? kernel.status : null, kernelName: kernel ? kernel.name : null,
        done: cells.filter(c => c.model.executionCount !== null).length, total: cells.length, errors};
"""


def _open(browser, lab, name: str) -> None:
    """Open a chapter in a fresh workspace and wait for its kernel."""
    base, token, _, _ = lab
    browser.get(f"{base}/lab/workspaces/{name[:2]}/tree/{name}?reset&token={token}")
    state = _wait(f"{name} to open with an idle kernel",
                  lambda: (s := browser.execute_script(NOTEBOOK_STATE)) and s["kernel"] == "idle" and s)
    assert state["kernelName"] == "grpo-notebooks", f"{name} opened on kernel {state['kernelName']!r}"


def _run_all(browser, name: str, while_running=None) -> dict:
    """Run All from the browser, calling `while_running()` at each poll; the final state (no error, no dead kernel)."""
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")

    def finished():
        state = browser.execute_script(NOTEBOOK_STATE)
        if state["errors"]:
            pytest.fail(f"{name}: a cell failed in the browser: {state['errors']}")
        if state["kernel"] in ("dead", "unknown"):
            pytest.fail(f"{name}: the kernel died ({state})")
        if while_running is not None:
            while_running()
        return state if state["done"] == state["total"] and state["kernel"] == "idle" else None

    return _wait(f"every cell of {name} to run", finished)


def _screenshot(browser, lab, name: str) -> Path:
    _, _, _, work = lab
    path = work / "screenshots" / name
    path.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(path))
    if os.environ.get("GRPO_SCREENSHOTS_DIR"):
        Path(os.environ["GRPO_SCREENSHOTS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["GRPO_SCREENSHOTS_DIR"]) / name)
    return path


def _scroll_to(browser, css: str):
    element = _wait(f"an element {css!r}", lambda: browser.find_elements("css selector", css))[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    return element


def test_chapter_02_scorer_rescores_what_is_typed(browser, lab):
    name = CHAPTERS[0]
    _open(browser, lab, name)
    _run_all(browser, name)
    box = _scroll_to(browser, ".widget-textarea textarea")
    output = box.find_element("xpath", "ancestor::div[contains(@class, 'widget-vbox')][1]")
    before = output.text
    box.clear()
    box.send_keys("<think>7 * 5 = 35, 35 - 3 = 32.</think>\n<answer>7 * 5 - 3</answer>")
    after = _wait("the scorer to print the typed answer's value",
                  lambda: "answer value 32" in " ".join(output.text.split()) and output.text)
    assert after != before and "shaped total" in after
    _screenshot(browser, lab, "02_live_scorer.png")


DASHBOARD_IMAGES = """
const panel = window.jupyterapp.shell.currentWidget;
const cell = panel.content.widgets.find(c => c.model.type === 'code'
                                        && c.model.sharedModel.getSource().includes('LiveDashboard('));
const outputs = cell ? cell.model.outputs.toJSON() : [];
return {images: outputs.filter(o => o.data && o.data['image/png']).map(o => o.data['image/png'].length + ':'
                                                                          + o.data['image/png'].slice(-64)),
        widgets: outputs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length,
        doctor: outputs.filter(o => o.data && !o.data['image/png'] && String(o.data['text/plain'] || '')
                                                                    .startsWith('GRPO doctor')).length};
"""


def test_chapter_04_dashboard_is_one_image_redrawn_in_place_with_the_doctor_under_it(browser, lab):
    name = CHAPTERS[1]
    _open(browser, lab, name)
    seen: list[str] = []
    counts: list[int] = []

    def watch():
        state = browser.execute_script(DASHBOARD_IMAGES)
        counts.append(len(state["images"]))
        for image in state["images"]:
            if not seen or seen[-1] != image:
                seen.append(image)

    _run_all(browser, name, while_running=watch)
    watch()
    final = browser.execute_script(DASHBOARD_IMAGES)
    assert len(final["images"]) == 1, f"the dashboard should be one image, found {len(final['images'])}"
    assert max(counts) == 1, f"at some point the dashboard cell held {max(counts)} images"
    assert len(seen) >= 2, "the dashboard image never changed between steps"
    assert final["widgets"] >= 1, "tqdm's progress bar did not render as a widget"
    assert final["doctor"] == 1, f"the doctor's verdict should be one output under the figure, found {final['doctor']}"
    _scroll_to(browser, ".widget-hprogress")  # rendered by the page, not only present in the model
    browser.execute_script("""
      const panel = window.jupyterapp.shell.currentWidget;
      const cell = panel.content.widgets.find(c => c.model.sharedModel.getSource().includes('LiveDashboard('));
      cell.node.querySelector('.jp-OutputArea-output img').scrollIntoView({block: 'center'});""")
    _screenshot(browser, lab, "04_live_dashboard.png")


def test_chapter_06_solve_button_answers(browser, lab):
    name = CHAPTERS[2]
    _open(browser, lab, name)
    _run_all(browser, name)
    _scroll_to(browser, "button.jupyter-button")
    buttons = [b for b in browser.find_elements("css selector", "button.jupyter-button") if b.text.strip() == "Solve"]
    assert buttons, f"no Solve button (buttons: {[b.text for b in browser.find_elements('css selector', 'button')]})"
    button = buttons[0]
    box = button.find_element("xpath", "ancestor::div[contains(@class, 'widget-vbox')][1]")
    numbers = box.find_element("css selector", ".widget-text input[type='text']")
    numbers.clear()
    numbers.send_keys("4, 6, 10")
    button.click()
    answered = _wait("the Solve button's answer (the solver's, then the fine-tuned model's)",
                     lambda: "solver says" in box.text and "fine-tuned" in box.text and "tokens" in box.text
                     and box.text)
    assert "[4, 6, 10]" in answered and "Traceback" not in answered and "Error" not in answered, answered
    _screenshot(browser, lab, "06_solve_button.png")
