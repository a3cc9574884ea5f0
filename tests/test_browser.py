"""The rendered book in a real browser, offline: headless Chromium driven by Selenium.

Builds the site as ``make book`` does (into ``_build/html``), opens every page of
the table of contents from ``file://`` with the network cut off, and checks:
no JavaScript errors, no request leaving the machine, equations typeset by
MathJax, every image loaded, and, for each kernel-free explorer, that moving
each of its controls changes what its figures draw. A screenshot of every
explorer before and after goes to ``_build/screenshots``.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``); nothing is downloaded. Without them the test is skipped with
that message, and fails under CI (``CI=true``), where ``.ci/run`` installs them.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
JUPYTER_BOOK = Path(sys.executable).parent / "jupyter-book"
DRIVER = Path(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
INSTALL = ("the browser test needs Debian's Chromium and its driver: "
           "`sudo apt-get install chromium chromium-driver` (and `pip install selenium`)")

# Collects elements through Bokeh's shadow roots (test code, not shipped with the site).
DEEP = """
const deep = (root, sel, out = []) => {
  root.querySelectorAll(sel).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) deep(e.shadowRoot, sel, out); });
  return out;
};
"""


def _browser():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed"
    if binary is None or not DRIVER.is_file():
        return None, f"chromium={binary}, chromedriver={DRIVER if DRIVER.is_file() else None}"
    return binary, ""


def _unavailable(why):
    message = f"{INSTALL} ({why})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI must run the browser test: " + message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def driver():
    binary, why = _browser()
    if binary is None:
        _unavailable(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    browser.set_page_load_timeout(60)
    browser.set_script_timeout(30)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def site():
    """The site as the README's `make book` builds it (all pages rebuilt: none stale)."""
    if _browser()[0] is None:
        _unavailable(_browser()[1])
    result = subprocess.run([str(JUPYTER_BOOK), "build", str(ROOT), "--all", "-W", "-n", "--keep-going"],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return SITE


def _pages():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [toc["root"]] + [c["file"] for c in toc["chapters"]]


def _wait(browser, script, what, *args, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = browser.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _canvases(browser, explorer):
    """Pixels of every canvas an explorer draws into (its figures, not its controls)."""
    return browser.execute_script(DEEP + "return deep(arguments[0], 'canvas')"
                                  ".map(c => c.toDataURL());", explorer)


def _move(browser, control):
    """Move one control the way a reader would: arrow keys on a slider, a click on a button."""
    from selenium.webdriver.common.keys import Keys

    kind, element = control
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    if kind == "slider":
        left = browser.execute_script(
            "return Number(arguments[0].getAttribute('aria-valuenow')) - "
            "Number(arguments[0].getAttribute('aria-valuemin'));", element)
        key = Keys.ARROW_LEFT if left > 0 else Keys.ARROW_RIGHT
        element.click()
        for _ in range(3):
            element.send_keys(key)
    else:  # a button group: press a button that is not active
        buttons = browser.execute_script(
            "return [...arguments[0].querySelectorAll('.bk-btn')]"
            ".filter(b => !b.classList.contains('bk-active'));", element)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", buttons[-1])
        buttons[-1].click()


def _shoot(browser, element, path):
    """A screenshot of the whole element (scrolled to the top of the window, under the header)."""
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'}); "
                           "window.scrollBy(0, -70);", element)
    time.sleep(0.3)
    element.screenshot(str(path))


def _check_explorers(browser, page, problems):
    explorers = browser.find_elements("css selector", "div.frcnn-explorer")
    for index, explorer in enumerate(explorers):
        _wait(browser, DEEP + "return deep(arguments[0], 'canvas').length > 0 && "
                              "deep(arguments[0], '.noUi-handle, .bk-btn').length > 0;",
              f"{page}: explorer {index} to render", explorer, timeout=30)
        stem = f"{Path(page).name}-explorer{index}"
        _shoot(browser, explorer, SHOTS / f"{stem}-before.png")
        controls = [("slider", e) for e in browser.execute_script(
            DEEP + "return deep(arguments[0], '.noUi-handle');", explorer)]
        controls += [("buttons", e) for e in browser.execute_script(
            DEEP + "return deep(arguments[0], '.bk-btn-group');", explorer)]
        if not controls:
            problems.append(f"{page}: explorer {index} has no controls")
        for number, control in enumerate(controls):
            before = _canvases(browser, explorer)
            _move(browser, control)
            try:
                _wait(browser, DEEP + "return deep(arguments[0], 'canvas').map(c => "
                      "c.toDataURL()).join() !== arguments[1].join();", "a redraw", explorer,
                      before, timeout=5)
            except AssertionError:
                problems.append(f"{page}: explorer {index}, control {number} ({control[0]}) "
                                f"moved but nothing drawn changed")
        _shoot(browser, explorer, SHOTS / f"{stem}-after.png")
    return len(explorers)


def _network_requests(browser):
    import json

    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]


def test_site_offline_in_chromium(driver, site):
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems, explorers, typeset = [], 0, 0
    for page in _pages():
        path = site / f"{page}.html"
        assert path.is_file(), f"{page} was not rendered"
        driver.get_log("browser"), driver.get_log("performance")  # start each page afresh
        driver.get(path.as_uri())
        _wait(driver, "return document.readyState === 'complete';", f"{page} to load")
        n_math = driver.execute_script("return document.querySelectorAll('.math').length;")
        if n_math:
            driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
                " ? MathJax.startup.promise.then(() => done(true), e => done(String(e)))"
                " : setTimeout(wait, 100); wait();")
            untypeset = driver.execute_script(
                "return [...document.querySelectorAll('.math')]"
                ".filter(m => !m.querySelector('mjx-container')).length;")
            if untypeset:
                problems.append(f"{page}: {untypeset} of {n_math} equations not typeset")
            typeset += n_math - untypeset
        raw = driver.execute_script(
            "const body = document.body.cloneNode(true);"
            "body.querySelectorAll('pre, code, script, style, textarea').forEach(e => e.remove());"
            "const t = body.textContent; const i = t.search(/\\\\[(\\[]/);"
            "return i < 0 ? '' : t.slice(Math.max(0, i - 40), i + 40);")
        if raw:
            problems.append(f"{page}: raw TeX in the text: ...{raw}...")
        broken = driver.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.src.slice(0, 80));")
        if broken:
            problems.append(f"{page}: images that did not load: {broken[:3]}")
        if page.split("/")[-1][:2].isdigit() and not driver.find_elements(
                "css selector", "img[src$='.png'], div.frcnn-explorer"):
            problems.append(f"{page}: no figure")
        explorers += _check_explorers(driver, page, problems)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            problems.append(f"{page}: JavaScript errors: {errors[:3]}")
        outside = _network_requests(driver)
        if outside:
            problems.append(f"{page}: requests off the machine: {outside[:3]}")
    assert not problems, "\n".join(problems)
    assert typeset > 0, "no page had an equation: the MathJax check tested nothing"
    assert explorers >= 4, f"expected the four explorers (chapters 3, 5, 6, 9), found {explorers}"
