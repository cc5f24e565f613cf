"""The MLflow UI in a real browser: headless Chromium, driven by Selenium, on the CI run's server.

tests/browser/install.sh installs Debian's chromium and chromium-driver where they are missing.
The screenshots are test artifacts: they go to $FROZENREP_TEST_ARTIFACTS (default: test-artifacts/
in the repository, ignored by git); the README's screenshot is one of them.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from workspace import REPO

pytestmark = [pytest.mark.workflow, pytest.mark.browser]
ARTIFACTS = Path(os.environ.get("FROZENREP_TEST_ARTIFACTS", REPO / "test-artifacts"))
RUN_NAMES = sorted(f"{task}-tiny-swin-none-{mode}-s0" for task in ("ade20k", "coco", "k400")
                   for mode in ("finetune", "frozen"))


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    done = subprocess.run(["bash", str(REPO / "tests/browser/install.sh")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"tests/browser/install.sh failed:\n{done.stdout}\n{done.stderr}"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,900"):
        options.add_argument(argument)
    # the driver is given by path: Selenium Manager (which would download one) never runs
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_run_list_shows_every_run_and_the_readme_compares_one_task(ci_run, mlflow_server, browser):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    _, result = ci_run
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = MlflowClient(mlflow_server.uri).get_experiment_by_name("ci")
    wait = WebDriverWait(browser, 60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def run_links(driver) -> list[str]:
        return sorted(a.text for a in driver.find_elements(By.CSS_SELECTOR, "a[href*='/runs/']") if a.text)

    def unfold_table1(driver) -> None:  # child runs sit folded under their parent run
        driver.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()

    browser.get(f"{mlflow_server.uri}/#/experiments/{experiment.experiment_id}/runs")
    wait.until(lambda d: "table1" in run_links(d))
    for close in browser.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):  # the assistant panel
        close.click()
    unfold_table1(browser)
    wait.until(lambda d: len(run_links(d)) == 7)
    assert run_links(browser) == sorted(RUN_NAMES + ["table1"])
    browser.save_screenshot(str(ARTIFACTS / "mlflow-runs.png"))

    # the README's way to compare the runs of one task: search, unfold, tick, Compare
    search = browser.find_element(By.CSS_SELECTOR, "input[placeholder*='metrics.']")
    search.send_keys("tags.task = 'coco'", Keys.ENTER)
    wait.until(lambda d: "3 matching runs" in d.find_element(By.TAG_NAME, "body").text)
    if len(run_links(browser)) < 3:
        unfold_table1(browser)
    wait.until(lambda d: run_links(d) == ["coco-tiny-swin-none-finetune-s0", "coco-tiny-swin-none-frozen-s0", "table1"])
    for row in browser.find_elements(By.CSS_SELECTOR, "div[role='row']"):
        if "coco-tiny-swin-none-" in row.text:
            row.find_element(By.CSS_SELECTOR, "input[type='checkbox']").click()
    compare = wait.until(lambda d: [b for b in d.find_elements(By.TAG_NAME, "button") if b.text == "Compare"])
    compare[0].click()
    wait.until(lambda d: "Comparing 2 Runs" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: all(name in d.find_element(By.TAG_NAME, "body").text
                             for name in ("coco-tiny-swin-none-frozen-s0", "coco-tiny-swin-none-finetune-s0")))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"))  # the parallel-coordinates plot
    browser.save_screenshot(str(ARTIFACTS / "mlflow-compare-coco.png"))
    for name in ("mlflow-runs.png", "mlflow-compare-coco.png"):
        assert (ARTIFACTS / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshots in {ARTIFACTS}")
