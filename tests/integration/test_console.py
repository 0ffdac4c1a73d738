"""The analyst console in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium; nothing is downloaded), against a real worker and API on the embedded broker.

A screenshot of each page is saved under the test's temporary directory, and also under
``$FRAUD_CONSOLE_SCREENSHOTS`` when it is set (``docs/console`` refreshes the README's).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest

from model.schemas import wire_value
from streaming.api.security import key_line, new_key
from tests.integration.conftest import Stack, consume, decisions_by_id, make_topics, produce

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ANALYST = "ana.lyst"
#: The analyst's API key: the console signs in with it and records its name as every change's author.
ANALYST_KEY = new_key()
#: The test's own calls to the API, with the analyst's key.
AUTH = {"X-API-Key": ANALYST_KEY}
#: Transactions streamed before the pages are opened: enough for a few review decisions.
TRAFFIC = 2400


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or CHROMIUM
    driver = shutil.which("chromedriver") or CHROMEDRIVER
    missing = [p for p in (chromium, driver) if not Path(p).is_file()]
    if missing:
        message = f"{', '.join(missing)} not found: apt-get install chromium chromium-driver (make test does)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must install them")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class ConsoleStack(Stack):
    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}


@pytest.fixture(scope="module")
def stack(bootstrap_servers: str, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    workdir = tmp_path_factory.mktemp("console-stack")
    s = ConsoleStack(
        topics=make_topics(bootstrap_servers),
        model_dir=model_dir,
        workdir=workdir,
        api_keys=key_line(ANALYST, ANALYST_KEY, ["console", "admin", "predict"]),
    )
    s.extra = {
        "FRAUD_BACKTEST_DATA": str(model_dir.parent / "train.csv"),
        "FRAUD_WORKER_METRICS_URL": f"http://127.0.0.1:{s.metrics_port}/metrics",
    }
    try:
        s.start_worker()
        s.start_api()
        yield s
    finally:
        s.stop_all()


@pytest.fixture(scope="module")
def streamed(stack: ConsoleStack, traffic_frame: pd.DataFrame) -> dict[str, dict]:
    """The decisions of the first TRAFFIC transactions, once the worker published them all."""
    rows = traffic_frame.iloc[:TRAFFIC].to_dict("records")
    produce(stack.topics.settings, [(str(r["card_id"]).encode(), wire_value(r)) for r in rows])
    got = decisions_by_id(consume(stack.topics.settings, stack.topics.decisions, until=len(rows), distinct=True))
    assert len(got) == len(rows)
    return got


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Any, str], Path]:
    """Saves a full-page screenshot of the browser's page as NAME.png."""
    out = tmp_path_factory.mktemp("console-screenshots")
    refresh = os.environ.get("FRAUD_CONSOLE_SCREENSHOTS")

    def shoot(driver: Any, name: str) -> Path:
        # The whole page, not the window: Chromium renders beyond the viewport for it.
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        path = out / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        assert path.read_bytes().startswith(b"\x89PNG"), f"no screenshot of {name}"
        if refresh:
            Path(refresh).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(refresh) / path.name)
        return path

    return shoot


def wait(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = check()
        except Exception:  # noqa: BLE001 - a page in the middle of reloading; try again
            found = None
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def api(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.api_port}"


def console(stack: Stack, page: str) -> str:
    return f"{api(stack)}/console/{page}"


def sign_in(driver: Any, stack: Stack) -> None:
    """The analyst's key, typed once into the console's sign-in page (kept as an HttpOnly cookie)."""
    from selenium.webdriver.common.by import By

    driver.get(console(stack, "live"))
    if driver.find_elements(By.ID, "analyst"):
        return  # signed in already
    assert driver.current_url.endswith("/console/login")
    driver.find_element(By.NAME, "key").send_keys(ANALYST_KEY)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait("the signed-in console", lambda: driver.find_elements(By.ID, "analyst"))
    assert driver.find_element(By.ID, "analyst").text == ANALYST


def queued(driver: Any) -> list[str]:
    rows: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#queue tbody tr[data-tx]')).map((r) => r.dataset.tx)"
    )
    return rows


def test_an_analyst_labels_a_case_and_it_leaves_the_queue(
    browser: Any, stack: ConsoleStack, streamed: dict[str, dict], shots: Callable[[Any, str], Path]
) -> None:
    from selenium.webdriver.common.by import By

    reviews = {t: d for t, d in streamed.items() if d["decision"] == "review"}
    assert len(reviews) >= 2, "the traffic must give the model something to review"
    sign_in(browser, stack)
    browser.get(console(stack, "review"))
    wait("every review case in the queue", lambda: browser.refresh() or set(queued(browser)) == set(reviews))
    # Oldest first: by when each was decided.
    order = queued(browser)
    assert order == sorted(order, key=lambda t: (pd.Timestamp(reviews[t]["scored_at"]), t))

    oldest = order[0]
    browser.find_element(By.CSS_SELECTOR, f'#queue tr[data-tx="{oldest}"] a.case-link').click()
    wait("the case page", lambda: browser.find_element(By.ID, "verdict").get_attribute("data-tx") == oldest)
    text = browser.find_element(By.TAG_NAME, "main").text
    decision = reviews[oldest]
    assert decision["card_id"] in text and f"{decision['score']:.4f}" in text
    reason_rows = browser.find_elements(By.CSS_SELECTOR, "table.reasons tbody tr")
    assert decision["reasons"] and len(reason_rows) >= len(decision["reasons"])
    assert decision["reasons"][0] in reason_rows[0].text
    assert browser.find_elements(By.CSS_SELECTOR, "table.history tbody tr")
    shots(browser, "review-case")

    browser.find_element(By.CSS_SELECTOR, "#verdict button.fraud").click()
    flash = wait("the label's acknowledgement", lambda: browser.find_element(By.ID, "flash").text)
    assert f"Labelled fraud by {ANALYST}" in flash, flash
    assert browser.find_element(By.ID, "next-case").is_displayed()

    # The label is on the labels topic, keyed by the card, with who and when.
    labels = [
        orjson.loads(v) | {"_key": k}
        for k, v, _ in consume(stack.topics.settings, stack.topics.settings.labels_topic, until=1)
    ]
    (label,) = [x for x in labels if x["transaction_id"] == oldest]
    assert (label["is_fraud"], label["source"], label["labelled_by"]) == (True, "manual", ANALYST)
    assert label["_key"] == decision["card_id"].encode() and label["card_id"] == decision["card_id"]
    assert pd.Timestamp(label["labelled_at"]) >= pd.Timestamp(label["timestamp"])

    browser.get(console(stack, "review"))
    assert oldest not in queued(browser) and set(queued(browser)) == set(reviews) - {oldest}
    recent = browser.find_element(By.CSS_SELECTOR, f'#recent tr[data-tx="{oldest}"]').text
    assert "fraud" in recent and ANALYST in recent and "manual" in recent
    shots(browser, "review-queue")
    # Labelled already: a second label is refused, and the case page says who labelled it.
    again = httpx.post(
        f"{api(stack)}/console/review/label", json={"transaction_id": oldest, "is_fraud": False}, headers=AUTH
    )
    assert again.status_code == 409 and "labelled already" in again.json()["detail"]


def live_rows(driver: Any) -> dict[str, str]:
    """The live table's rows, read at once (the page replaces them every two seconds)."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#live table.latest tbody tr[data-tx]'))"
        ".map((r) => [r.dataset.tx, r.dataset.decidedBy])"
    )
    return dict(rows)


def fill(driver: Any, values: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    for name, value in values.items():
        element = driver.find_element(By.ID, name)
        if element.tag_name == "select":
            Select(element).select_by_value("" if value is None else str(value))
        elif element.get_attribute("type") == "checkbox":
            if element.is_selected() != bool(value):
                element.click()
        else:
            element.clear()
            element.send_keys("" if value is None else str(value))


def test_live_score_and_model_pages(
    browser: Any,
    stack: ConsoleStack,
    streamed: dict[str, dict],
    traffic_frame: pd.DataFrame,
    shots: Callable[[Any, str], Path],
) -> None:
    from selenium.webdriver.common.by import By

    # Live: every streamed decision was read back; the page refreshes itself as more arrive.
    browser.get(console(stack, "live"))
    wait("the latest decisions", lambda: set(live_rows(browser)) <= set(streamed) and live_rows(browser))
    review = browser.find_element(By.CSS_SELECTOR, '#live-cards [data-outcome="review"]')
    in_review = sum(d["decision"] == "review" for d in streamed.values())
    assert int(review.get_attribute("data-count")) >= in_review > 0
    assert int(review.get_attribute("data-window")) >= len(streamed)
    latency = "return document.querySelector('#latency .value').textContent.trim()"
    assert wait("a latency", lambda: browser.execute_script(latency).endswith(" ms"))
    row = traffic_frame.iloc[TRAFFIC].to_dict()
    produce(stack.topics.settings, [(str(row["card_id"]).encode(), wire_value(row))])
    wait("the new decision on the page without a reload", lambda: row["transaction_id"] in live_rows(browser))
    shots(browser, "live")

    # Score: a streamed transaction typed into the form gets the stream's decision, as /predict does.
    tx_id = max(t for t, d in streamed.items() if d["decision"] == "review")
    tx = traffic_frame.set_index("transaction_id").loc[tx_id]
    browser.get(console(stack, "score"))
    assert browser.find_element(By.ID, "f-card_id").get_attribute("value")  # prefilled from the live feed
    fields = {"transaction_id": tx_id, "timestamp": tx["timestamp"], "card_id": tx["card_id"],
              "merchant_id": tx["merchant_id"], "amount": f"{tx['amount']:.2f}", "currency": tx["currency"],
              "country": tx.get("country") or "", "merchant_category": tx.get("merchant_category") or "",
              "channel": tx.get("channel") or ""}  # fmt: skip
    fill(browser, {f"f-{k}": v for k, v in fields.items()})
    browser.find_element(By.CSS_SELECTOR, "#score-form button[type=submit]").click()
    result = wait("the decision", lambda: browser.find_element(By.ID, "score-result").text)
    body = {k: v for k, v in fields.items() if v != ""} | {"amount": float(fields["amount"])}
    answer = httpx.post(f"{api(stack)}/predict", json=body, headers=AUTH).json()
    assert answer["decision"] == streamed[tx_id]["decision"] == "review"
    assert f"{answer['score']:.4f}" in result and "review" in result
    assert browser.find_elements(By.CSS_SELECTOR, "table.reasons tbody tr")
    shots(browser, "score")

    # Model: the serving artifact with its plots, live quality per version, the worker's drift.
    version = httpx.get(f"{api(stack)}/ready").json()["model_version"]
    browser.get(console(stack, "model"))
    assert browser.find_element(By.ID, "serving-version").text == version
    images = browser.find_elements(By.CSS_SELECTOR, ".plots img")
    assert len(images) == 2
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images)
    assert version in browser.find_element(By.ID, "live-quality").text
    wait("the worker's drift gauges", lambda: browser.refresh() or "score" in browser.find_element(By.ID, "drift").text)
    shots(browser, "model")


def admin_rule(stack: Stack, rule_id: str) -> dict[str, Any] | None:
    rules = httpx.get(f"{api(stack)}/admin/rules", headers=AUTH).json()["rules"]
    return next((r for r in rules if r["id"] == rule_id), None)


def test_a_block_rule_added_in_the_console_blocks_the_next_matching_transaction(
    browser: Any,
    stack: ConsoleStack,
    streamed: dict[str, dict],
    traffic_frame: pd.DataFrame,
    shots: Callable[[Any, str], Path],
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, stack)
    browser.get(console(stack, "rules"))
    fill(browser, {"rule-id": "console-block", "rule-expression": 'merchant_id == "m-console" and amount > 1',
                   "rule-action": "block", "rule-description": "added in the browser test"})  # fmt: skip
    browser.find_element(By.CSS_SELECTOR, "#rule-form button[type=submit]").click()
    wait("the rule on the page", lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-rule-id="console-block"]'))
    saved = admin_rule(stack, "console-block")
    assert saved is not None and saved["updated_by"] == ANALYST and saved["enabled"] is True

    def versions() -> tuple[str, str]:
        worker = httpx.get(f"http://127.0.0.1:{stack.web_port}/health").json()["rules_version"]
        return worker, httpx.get(f"{api(stack)}/ready").json()["rules_version"]

    wait("the rule in the worker", lambda: versions()[0] == versions()[1] != "none")
    row = traffic_frame.iloc[TRAFFIC + 1].to_dict() | {"transaction_id": "console-tx-1", "merchant_id": "m-console"}
    produce(stack.topics.settings, [(str(row["card_id"]).encode(), wire_value(row))])
    got = decisions_by_id(consume(stack.topics.settings, stack.topics.decisions, until=len(streamed) + 3, timeout=60))
    assert (got["console-tx-1"]["decision"], got["console-tx-1"]["decided_by"]) == ("block", "rule:console-block")
    browser.get(console(stack, "live"))
    wait("the blocked transaction on the live page", lambda: live_rows(browser).get("console-tx-1"))
    assert live_rows(browser)["console-tx-1"] == "rule:console-block"

    # A block-list entry, with who added it; then a backtest on FRAUD_BACKTEST_DATA.
    browser.get(console(stack, "rules"))
    fill(browser, {"entry-list": "block", "entry-kind": "card", "entry-value": "card-console", "entry-note": "test"})
    browser.find_element(By.CSS_SELECTOR, "#entry-form button[type=submit]").click()
    wait(
        "the entry on the page",
        lambda: browser.find_elements(By.CSS_SELECTOR, '#entries tr[data-value="card-console"]'),
    )
    entries = httpx.get(f"{api(stack)}/admin/lists", headers=AUTH).json()
    assert [e["updated_by"] for e in entries if e["value"] == "card-console"] == [ANALYST]
    fill(browser, {"bt-expression": 'amount > 200 and channel == "ecommerce"'})
    browser.find_element(By.CSS_SELECTOR, "#backtest-form button[type=submit]").click()
    table = wait("the backtest", lambda: browser.find_element(By.ID, "backtest-table").text, timeout=120)
    assert "Hits" in table and "Precision" in table
    shots(browser, "rules")

    # Disable, then delete (after the browser's confirmation).
    browser.find_element(By.CSS_SELECTOR, 'tr[data-rule-id="console-block"] [data-act="toggle"]').click()
    wait("the rule disabled", lambda: (admin_rule(stack, "console-block") or {}).get("enabled") is False)
    wait(
        "the page reloaded",
        lambda: (
            "disabled"
            in browser.find_element(By.CSS_SELECTOR, 'tr[data-rule-id="console-block"]').get_attribute("class")
        ),
    )
    browser.find_element(By.CSS_SELECTOR, 'tr[data-rule-id="console-block"] [data-act="delete"]').click()
    browser.switch_to.alert.accept()
    wait("the rule deleted", lambda: admin_rule(stack, "console-block") is None)
