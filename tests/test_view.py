"""`distill view` in a real browser (headless Debian chromium through Selenium) over a real `distill run`.

One run serves every test: `distill run --view` against a loopback teacher that answers only the problems the test
lets through (a gate), and a tiny in-process PRM (so samples have step scores). While it writes, the page the run
printed must show the count growing by itself; once it finished, a viewer on the folder must list the samples,
narrow them with a filter, and show a sample's steps coloured by score.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from conftest import DISTILL, ROOT, write_jsonl, write_spec

from testing.loopback.teacher import LoopbackTeacher

# One run serves the three tests, in this order: under pytest-xdist they stay on one worker.
pytestmark = pytest.mark.xdist_group("view-browser")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
N_PROBLEMS = 12


def _browser_or_skip() -> None:
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.environ.get("CI"):
        pytest.fail("chromium and chromedriver are missing in CI: `make setup` installs them (apt-get)")
    pytest.skip("chromium/chromedriver missing: apt-get install -y chromium chromium-driver (make setup does)")


def responder_factory(gate: threading.Semaphore | None = None) -> object:
    def responder(messages: list[dict[str, str]], index: int) -> str:
        if gate is not None and index == 0:
            assert gate.acquire(timeout=120), "the test never let this problem through"
        question = messages[-1]["content"]
        a, b = (int(x) for x in question.split("What is ")[1].rstrip("?").split("+"))
        total = a + b + (index == 1 and a % 3 == 0)  # some second samples are wrong
        thought = (f"Step 1: take {a} and {b}.\n\nStep 2: add the ones: {a % 10} + {b % 10}.\n\n"
                   f"Step 3: so {a} + {b} = {total}.")
        if index == 1 and a % 4 == 1:
            return f"The answer is {total}"  # no thought: rejected before verification
        return f"<thought>\n{thought}\n</thought>\n\\boxed{{{total}}}"

    return responder


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # no Selenium Manager download
    browser.set_page_load_timeout(30)
    yield browser
    browser.quit()


class RunWithView:
    """`distill run --view` in the background: its printed viewer URL, and the finished folder."""

    def __init__(self, tmp: Path, tiny_model_dir: Path) -> None:
        problems = [{"question": f"What is {10 + 7 * i}+{3 + 5 * i}?", "answer": str(13 + 12 * i)}
                    for i in range(N_PROBLEMS)]
        source = write_jsonl(tmp / "problems.jsonl", problems)
        self.gate = threading.Semaphore(0)
        self.teacher = LoopbackTeacher(responder_factory(self.gate)).__enter__()
        spec = write_spec(tmp / "view-run.yaml", source, dedupe={"enabled": False},
                          teacher={"base_url": self.teacher.base_url, "max_new_tokens": 256,
                                   "max_concurrency": 1},  # one request in flight: parts land one by one
                          run={"batch_size": 1},
                          prm={"model": str(tiny_model_dir), "style": "math-shepherd", "threshold": 0.0})
        self.out = tmp / "out"
        self.log = (tmp / "run.log").open("w")
        self.process = subprocess.Popen([*DISTILL, "run", str(spec), "--out", str(self.out), "--view"], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("viewer: http://127.0.0.1:"), line + (tmp / "run.log").read_text()[-2000:]
        self.url = line.split()[1]

    def finish(self) -> Path:
        self.gate.release(N_PROBLEMS)
        out, _ = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, out + Path(self.log.name).read_text()[-3000:]
        return self.out

    def close(self) -> None:
        self.gate.release(N_PROBLEMS)
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.teacher.__exit__(None, None, None)
        self.log.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunWithView]:
    _browser_or_skip()
    started = RunWithView(tmp_path_factory.mktemp("view"), tiny_model_dir)
    yield started
    started.close()


@pytest.fixture(scope="module")
def viewer(run: RunWithView) -> Iterator[str]:
    """A viewer on the finished folder (the run's own stopped with it)."""
    from distill.view.server import serve_in_thread

    server, url = serve_in_thread(run.finish())
    yield url
    server.shutdown()
    server.server_close()


def total(browser: object) -> int:
    from selenium.webdriver.common.by import By

    return int(browser.find_element(By.ID, "total").text.replace(",", ""))


def wait_for_total(browser: object, want: int, timeout: float = 30) -> None:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = total(browser)
            if last == want:
                return
        except Exception:  # noqa: BLE001 - the page is reloading (the first part file landed)
            pass
        time.sleep(0.2)
    raise AssertionError(f"the page shows {last} samples, not {want}, after {timeout:.0f} s")


def click_and_wait(browser: object, element: object) -> None:
    """Click a link or the filter button, and wait until the new page replaced the old one.

    Without the wait, an element could be found on the old page just before it unloads, and reading it then raises
    StaleElementReferenceException (seen under load in CI).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(old))
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")


def apply_filters(browser: object) -> None:
    from selenium.webdriver.common.by import By

    click_and_wait(browser, browser.find_element(By.ID, "apply"))


def test_live_run_count_grows_while_it_writes(driver: object, run: RunWithView) -> None:
    from selenium.webdriver.common.by import By

    driver.get(run.url)  # before the teacher answered anything: the page waits for the first part file
    assert total(driver) == 0 and driver.find_element(By.ID, "waiting")
    run.gate.release(3)
    wait_for_total(driver, 6)  # 3 problems × 2 samples, the page reloaded itself once
    assert driver.find_element(By.ID, "live").text.startswith("run writing")
    driver.execute_script("window.notReloaded = true")
    run.gate.release(4)
    wait_for_total(driver, 14)
    assert driver.execute_script("return window.notReloaded") is True  # the count and rows refreshed in place
    assert len(driver.find_elements(By.CSS_SELECTOR, "#samples tr.kept, #samples tr.rejected")) == 14
    assert run.process.poll() is None  # the run is still writing (5 problems are held back)


def test_table_loads_and_a_filter_narrows_it(driver: object, viewer: str, run: RunWithView) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    frame = pd.read_parquet(run.out)
    driver.get(viewer)
    assert total(driver) == len(frame) == N_PROBLEMS * 2
    rows = driver.find_elements(By.CSS_SELECTOR, "#samples tr.kept, #samples tr.rejected")
    assert len(rows) == len(frame)
    assert "What is 10+3?" in rows[0].text and "#0" in rows[0].text

    Select(driver.find_element(By.ID, "status")).select_by_visible_text("rejected")
    apply_filters(driver)
    rejected = int((~frame.kept).sum())
    assert 0 < rejected < len(frame)
    assert total(driver) == rejected and "status=rejected" in driver.current_url
    rows = driver.find_elements(By.CSS_SELECTOR, "#samples tr.kept, #samples tr.rejected")
    assert len(rows) == rejected and all("rejected" in r.get_attribute("class") for r in rows)

    driver.find_element(By.ID, "q").send_keys("The answer is")  # in the answers of the no-thought samples
    apply_filters(driver)
    assert total(driver) == int(frame.completion.str.contains("The answer is").sum()) > 0

    driver.get(viewer + "table?at=.&pass_min=abc")
    assert driver.find_element(By.ID, "error").text.startswith("error: pass_min: 'abc' is not a number")


def test_sample_page_shows_steps_coloured_by_score(driver: object, viewer: str, run: RunWithView) -> None:
    from selenium.webdriver.common.by import By

    frame = pd.read_parquet(run.out)
    scored = frame[frame.step_scores.notna()].sort_values(["problem_index", "sample_index"]).iloc[0]
    driver.get(viewer)
    click_and_wait(driver, driver.find_elements(By.CSS_SELECTOR, "a.sample-link")[0])
    assert driver.find_element(By.ID, "problem").text == scored.problem
    steps = driver.find_elements(By.CSS_SELECTOR, "#thought .step")
    assert len(steps) == 3 == len(scored.step_scores)
    scores = [float(s.get_attribute("data-score")) for s in steps]
    assert scores == pytest.approx(list(scored.step_scores), abs=1e-6)
    colours = [s.value_of_css_property("background-color") for s in steps]
    assert all(c not in ("rgba(0, 0, 0, 0)", "rgb(235, 235, 235)") for c in colours)  # a score's hue, not grey
    if len(set(round(x, 3) for x in scores)) > 1:
        assert len(set(colours)) > 1
    assert "Step 2: add the ones" in steps[1].text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#others .box")) == 1  # the problem's other sample

    driver.get(viewer + "summary?at=.")
    spec = driver.find_element(By.ID, "spec").text
    assert "prm:" in spec and "base_url" not in spec and "127.0.0.1" not in spec
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart")) >= 2
