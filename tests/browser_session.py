"""A real headless Chromium driving Label Studio's web UI, for tests. Not a test module.

``browser`` is a session fixture yielding a selenium 4 WebDriver (Debian's ``chromium`` and
``chromium-driver``, installed with apt when missing; a failed install raises, tests never skip). The
functions below drive Label Studio 1.23.2's labeling view as an annotator would:

- ``login_label_studio`` fills the form at ``/user/login/``.
- ``open_task`` opens one task: by default the data manager's quick view,
  ``/projects/<project>/data?task=<task>`` (Submit/Update, no Skip button); with ``stream=True`` the
  label stream, ``/projects/<project>/data?tab=<view>&labeling=1`` on a data-manager tab (view) that is
  filtered to that one task (Label Studio shows Skip only in the label stream, when the project's
  ``show_skip_button`` is on; the stream ignores a ``task=`` parameter and serves the tab's next task).
- ``task_image_state``, ``choose_and_submit``, ``submit_without_choice``, ``skip_task``,
  ``close_instructions``, ``console_errors``, ``screenshot``.

Selectors (Label Studio 1.23.2): image ``.lsf-main-view .lsf-image img`` (its ``src`` is a ``blob:`` URL:
Label Studio loads the image with an XMLHttpRequest first); load error: an element whose class contains
``error`` with "There was an issue loading URL"; choices ``.lsf-choices input[name=<value>]`` inside a
``label``; buttons ``[data-testid=bottombar-submit-button|bottombar-update-button|bottombar-skip-button]``;
outcome: a toast ``[class*=toast__content]`` ("Annotation saved successfully", "... updated ...",
"Task skipped successfully") or a warning dialog ``.ant-modal-confirm-content``. ``window.Htx`` (the
editor's store) tells which task is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium")
CHROMEDRIVER_CANDIDATES = ("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
UI_TIMEOUT_S = 60.0
# Exceptions a click on a re-rendering or animating page can meet; waits retry through them.
_CLICK_RACES = (StaleElementReferenceException, ElementClickInterceptedException, ElementNotInteractableException)
# SEVERE console lines an offline test machine always produces (Label Studio's Sentry, a missing tips file).
OFFLINE_NOISE = ("sentry-cdn.com", "ingest.sentry.io", "/heidi-tips")

# 'ready' once the editor shows task arguments[0] (null: any task) with its buttons, unchanged for a second
# (the data manager mounts the editor twice while loading); 'empty' when the label stream has nothing to serve.
_TASK_READY_JS = """
if (document.body.innerText.includes('No More Tasks')) return 'empty';
const task = window.Htx && Htx.task, view = document.querySelector('.lsf-main-view');
const button = document.querySelector('[data-testid=bottombar-submit-button],[data-testid=bottombar-update-button]');
if (!(task && (arguments[0] === null || task.id == arguments[0]) && view && button)) {
  window.osalView = null; return null;
}
if (window.osalView !== view || window.osalButton !== button) {
  window.osalView = view; window.osalButton = button; window.osalSince = Date.now(); return null;
}
return Date.now() - window.osalSince > 1000 ? 'ready' : null;
"""
_IMAGE_STATE_JS = """
const view = document.querySelector('.lsf-main-view') || document;
const img = view.querySelector('.lsf-image img');
const errors = [...view.querySelectorAll('[class*="error"]')]
  .map(e => e.innerText || '').filter(t => t.includes('There was an issue loading'));
return {natural_width: img ? img.naturalWidth : 0, natural_height: img ? img.naturalHeight : 0,
        complete: img ? img.complete : false, src: img ? img.src : '',
        error_text: errors.length ? errors[errors.length - 1].trim() : ''};
"""
# Marks the toasts and dialogs on screen, so that _press_and_wait only reports ones that appear later.
_MARK_SEEN_JS = """
document.querySelectorAll('[class*="toast__content"], .ant-modal-confirm-content')
  .forEach(e => e.dataset.osalSeen = e.innerText.trim());
"""
_NEW_OUTCOME_JS = """
const fresh = sel => [...document.querySelectorAll(sel)]
  .filter(e => e.innerText.trim() && e.dataset.osalSeen !== e.innerText.trim());
const dialog = fresh('.ant-modal-confirm-content'), toast = fresh('[class*="toast__content"]');
if (dialog.length) return ['dialog', dialog[0].innerText.trim()];
if (toast.length) return ['toast', toast[0].innerText.trim()];
return null;
"""


def _which(candidates: tuple[str, ...]) -> str | None:
    return next((found for found in map(shutil.which, candidates) if found), None)


def chromium_paths() -> tuple[str, str]:
    """Return ``(chromium, chromedriver)`` paths, apt-installing Debian's packages when either is missing.

    Raises RuntimeError with apt's output tail if they still cannot be found (tests fail, never skip).
    """
    chromium, driver = _which(CHROMIUM_CANDIDATES), _which(CHROMEDRIVER_CANDIDATES)
    if chromium and driver:
        return chromium, driver
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = []
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium", "chromium-driver"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            output.append(f"$ {' '.join(command)} (exit {done.returncode})\n{done.stdout}{done.stderr}")
        except (OSError, subprocess.TimeoutExpired) as error:
            output.append(f"$ {' '.join(command)}: {error}")
    chromium, driver = _which(CHROMIUM_CANDIDATES), _which(CHROMEDRIVER_CANDIDATES)
    if chromium and driver:
        return chromium, driver
    tail = "\n".join("\n".join(output).splitlines()[-30:])
    raise RuntimeError(
        f"headless browser tests need Debian's chromium and chromium-driver (found chromium={chromium}, "
        f"chromedriver={driver}); apt-get install did not provide them:\n{tail}"
    )


def make_browser() -> WebDriver:
    """Start headless Chromium (1400x1000, browser console log kept) with the local chromedriver."""
    chromium, chromedriver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(UI_TIMEOUT_S)
    return driver


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the test session, quit at the end."""
    driver = make_browser()
    try:
        yield driver
    finally:
        driver.quit()


def login_label_studio(driver: WebDriver, url: str, email: str, password: str) -> None:
    """Log into Label Studio's web UI at ``url`` with its login form; raise if the form comes back."""
    driver.get(f"{url.rstrip('/')}/user/login/")
    WebDriverWait(driver, UI_TIMEOUT_S).until(lambda d: d.find_elements(By.NAME, "email"))
    driver.find_element(By.NAME, "email").send_keys(email)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit], form input[type=submit]").click()
    try:
        WebDriverWait(driver, UI_TIMEOUT_S).until(lambda d: "/user/login" not in d.current_url)
    except TimeoutException:
        raise RuntimeError(f"Label Studio login as {email} failed: {_body_text(driver)[:500]}") from None


def open_task(driver: WebDriver, url: str, project_id: int, task_id: int, stream: bool = False) -> None:
    """Open task ``task_id``'s labeling view and wait until the editor shows that task and its buttons.

    ``stream=False``: the data manager's quick view ``/projects/<p>/data?task=<t>``. ``stream=True``: the
    label stream (which has Skip) on a new data-manager tab filtered to this task, created through the
    logged-in browser session; a task the stream will not serve (e.g. already annotated) raises.
    """
    base = url.rstrip("/")
    if stream:
        if not driver.current_url.startswith(base):  # the API call below runs from a Label Studio page
            driver.get(f"{base}/projects/")
        view = _api(driver, "POST", "/api/dm/views/", {"project": project_id, "data": {
            "title": f"task {task_id}",
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": task_id}]},
        }})  # fmt: skip
        driver.get(f"{base}/projects/{project_id}/data?tab={view['id']}&labeling=1")
    else:
        driver.get(f"{base}/projects/{project_id}/data?task={task_id}")
    state = _wait_editor(driver, task_id)
    if state != "ready":
        raise RuntimeError(
            f"labeling view of task {task_id}: {state} after loading {driver.current_url}: {_body_text(driver)[:500]}"
        )


def task_image_state(driver: WebDriver, timeout: float = 30.0) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the task image to load or fail; return its state, loaded or not.

    Keys: ``natural_width``/``natural_height`` (0 when no image loaded), ``complete``, ``src`` (a
    ``blob:`` URL once loaded; "" when Label Studio never created the element) and ``error_text``
    (Label Studio's "There was an issue loading URL ..." message, or "").
    """

    def settled(d: WebDriver) -> dict[str, Any] | None:
        state = d.execute_script(_IMAGE_STATE_JS)
        done = state["error_text"] or (state["complete"] and state["src"])
        return state if done else None

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(settled)
    except TimeoutException:
        return driver.execute_script(_IMAGE_STATE_JS)


def choose_and_submit(driver: WebDriver, choice: str, timeout: float = UI_TIMEOUT_S) -> str:
    """Select the Choice ``choice`` (left as is if already selected, e.g. by a prediction), then press
    Submit, or Update when the task already has this annotation; wait for the saved toast and return it.
    """
    close_instructions(driver, timeout=0)

    def selected(d: WebDriver) -> bool:  # found afresh each time: the editor may re-render after loading
        boxes = [e for e in d.find_elements(By.CSS_SELECTOR, ".lsf-choices input") if e.get_attribute("name") == choice]
        if not boxes:
            raise RuntimeError(f"no Choice {choice!r} in the labeling view")
        if boxes[0].is_selected():
            return True
        boxes[0].find_element(By.XPATH, "./ancestor::label").click()
        return False

    WebDriverWait(driver, 10, poll_frequency=0.5, ignored_exceptions=_CLICK_RACES).until(selected)
    kind, text = _press_and_wait(driver, "bottombar-submit-button", "bottombar-update-button", timeout=timeout)
    if kind != "toast" or "successfully" not in text:
        raise RuntimeError(f"submitting {choice!r} did not save: {kind}: {text}")
    _wait_editor(driver, None)  # the view reloads the task (quick view) or shows the next (stream)
    return text


def submit_without_choice(driver: WebDriver, timeout: float = UI_TIMEOUT_S) -> str:
    """Press Submit (or Update) as is and return what the UI answers: the warning dialog's text (e.g.
    'Checkbox "label" is required.'; the dialog is then closed with OK) or the toast if it saved."""
    kind, text = _press_and_wait(driver, "bottombar-submit-button", "bottombar-update-button", timeout=timeout)
    if kind == "dialog":
        try:  # press OK until the dialog is gone (a click during its opening animation can be lost)
            WebDriverWait(driver, 10, poll_frequency=0.5, ignored_exceptions=_CLICK_RACES).until(_dialog_closed)
        except TimeoutException:
            raise RuntimeError(f"the dialog {text!r} did not close: {_body_text(driver)[-300:]}") from None
    else:
        _wait_editor(driver, None)
    return text


def skip_task(driver: WebDriver, timeout: float = UI_TIMEOUT_S) -> str:
    """Press Label Studio's Skip (label stream only: ``open_task(..., stream=True)``); return the toast.

    Label Studio stores a cancelled annotation (``was_cancelled: true``, empty result).
    """
    if not driver.find_elements(By.CSS_SELECTOR, "[data-testid=bottombar-skip-button]"):
        raise RuntimeError("no Skip button: open the task with stream=True and keep show_skip_button on")
    kind, text = _press_and_wait(driver, "bottombar-skip-button", timeout=timeout)
    if kind != "toast" or "skipped" not in text:
        raise RuntimeError(f"skip did not go through: {kind}: {text}")
    _wait_editor(driver, None)  # the stream's next task, or "No More Tasks"
    return text


def close_instructions(driver: WebDriver, timeout: float = 5.0) -> str:
    """Wait up to ``timeout`` s for the "Labeling Instructions" dialog, close it and return its body text.

    The label stream opens it by itself when the project has ``show_instruction`` on and an
    ``expert_instruction``; returns "" when none is shown.
    """

    def visible(d: WebDriver) -> list:
        return d.find_elements(By.CSS_SELECTOR, ".lsf-modal-ls_visible .lsf-modal-ls__body")

    try:
        body = WebDriverWait(driver, timeout, poll_frequency=0.2).until(visible)[0]
    except TimeoutException:
        return ""
    text = body.text.strip()
    driver.find_element(By.CSS_SELECTOR, '.lsf-modal-ls_visible button[aria-label="Close modal"]').click()
    WebDriverWait(driver, 10).until(lambda d: not visible(d))
    return text


def console_errors(driver: WebDriver, include_noise: bool = False) -> list[str]:
    """SEVERE browser console messages since the last call (reading the log drains it).

    Lines from ``OFFLINE_NOISE`` (Label Studio's Sentry and tips requests) are left out unless asked for.
    """
    messages = [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
    return [m for m in messages if include_noise or not any(noise in m for noise in OFFLINE_NOISE)]


def screenshot(driver: WebDriver, path: str | Path) -> Path:
    """Save a PNG of the browser window at ``path`` (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"screenshot to {path} failed")
    return path


def _dialog_closed(driver: WebDriver) -> bool:
    """True once no modal dialog is displayed; otherwise press the dialog's last button (OK) and say False."""
    if not any(e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, ".ant-modal-wrap, .ant-modal-mask")):
        return True
    buttons = [e for e in driver.find_elements(By.CSS_SELECTOR, ".ant-modal-confirm-btns button") if e.is_displayed()]
    if buttons:
        buttons[-1].click()
    return False


def _wait_editor(driver: WebDriver, task_id: int | None) -> str:
    """Wait until the editor is settled on ``task_id`` (None: any task): 'ready', 'empty' or 'not ready'."""
    driver.execute_script("window.osalView = null;")  # start the settling second afresh
    try:
        return str(WebDriverWait(driver, UI_TIMEOUT_S, poll_frequency=0.25).until(
            lambda d: d.execute_script(_TASK_READY_JS, task_id)
        ))  # fmt: skip
    except TimeoutException:
        return "not ready"


def _press_and_wait(driver: WebDriver, *testids: str, timeout: float) -> tuple[str, str]:
    """Click the first bottom-bar button found among ``testids``; wait for a new toast or dialog."""
    selector = ",".join(f"[data-testid={testid}]" for testid in testids)
    close_instructions(driver, timeout=0)  # an open instructions dialog would take the click
    driver.execute_script(_MARK_SEEN_JS)

    def pressed(d: WebDriver) -> bool:  # found afresh: a re-render makes an old reference stale
        buttons = d.find_elements(By.CSS_SELECTOR, selector)
        if not buttons:
            raise RuntimeError(f"none of the buttons {testids} is in the labeling view")
        buttons[0].click()
        return True

    WebDriverWait(driver, 10, ignored_exceptions=_CLICK_RACES).until(pressed)
    try:
        outcome = WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(_NEW_OUTCOME_JS))
    except TimeoutException:
        toasts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[class*="toast__content"]')]
        raise RuntimeError(
            f"no new toast or dialog {timeout:.0f} s after pressing {testids[0]} (toasts on screen: {toasts})"
        ) from None
    return str(outcome[0]), str(outcome[1])


def _api(driver: WebDriver, method: str, path: str, body: Any = None) -> Any:
    """Call Label Studio's API from the page with the browser's session cookie and CSRF token."""
    csrf = (driver.get_cookie("csrftoken") or {}).get("value", "")
    script = """
const [method, path, body, csrf, done] = arguments;
fetch(path, {method, credentials: 'same-origin', body: body === null ? undefined : body,
             headers: {'Content-Type': 'application/json', 'X-CSRFToken': csrf}})
  .then(async r => done([r.status, await r.text()]), e => done([0, String(e)]));
"""
    driver.set_script_timeout(UI_TIMEOUT_S)
    try:
        status, text = driver.execute_async_script(
            script, method, path, None if body is None else json.dumps(body), csrf
        )
    except WebDriverException as error:
        raise RuntimeError(f"{method} {path} from the browser failed: {error.msg}") from None
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {path} from the browser answered {status}: {text[:300]}")
    return json.loads(text) if text else None


def _body_text(driver: WebDriver) -> str:
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException:
        return "(no page)"
