#!/usr/bin/env python3
"""The Dockyard console in a real browser (headless Chromium from Debian, via chromedriver).

Run by `cargo xtask console-test`, which starts a platform of its own and passes, in the
environment: CONSOLE_URL, GATEWAY_URL, ADMIN_URL, ADMIN_TOKEN, CUSTOMER_ID, CUSTOMER_TOKEN,
INSTANCES (every instance's URL, comma separated), KILL_PID and KILL_URL (the catalog instance
to kill), ARTIFACTS (a directory for screenshots) and optionally SCREENSHOT (one more copy of the
last screenshot, e.g. for docs/).

Checks, each against the deadline the issue sets or a generous one where it sets none:
1. every instance has a card on the page, and each turns healthy;
2. SIGKILL of one catalog instance: its card turns unhealthy (or ejected) within 5 s;
3. moving the canary slider: the gateway's `/upstreams` reports the new weight;
4. an order placed through the gateway: found by its id, its trace holds spans of the gateway,
   order and catalog services.
"""

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

ENV = os.environ
ARTIFACTS = ENV["ARTIFACTS"]


def log(message):
    print(f"console-test | {message}", flush=True)


def http(method, url, token=None, body=None, headers=None):
    """One request; returns (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if body is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, None


def wait_for(what, condition, timeout, interval=0.1):
    """Polls `condition` until it returns something truthy; returns it and the seconds taken."""
    started = time.monotonic()
    last_error = None
    while time.monotonic() - started < timeout:
        try:
            value = condition()
            if value:
                return value, time.monotonic() - started
        except (StaleElementReferenceException, WebDriverException) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last error: {last_error})")


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = ENV.get("CHROMIUM", "/usr/bin/chromium")
    for flag in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1300",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    service = Service(executable_path=ENV.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=options)


def card(driver, url):
    cards = driver.find_elements(By.CSS_SELECTOR, f'[data-testid="instance"][data-url="{url}"]')
    return cards[0] if cards else None


def state_of(driver, url):
    found = card(driver, url)
    return found.get_attribute("data-state") if found else None


def screenshot(driver, name):
    path = os.path.join(ARTIFACTS, f"{name}.png")
    driver.save_screenshot(path)
    log(f"screenshot {path}")
    return path


def every_instance_is_shown_and_healthy(driver, instances):
    def all_healthy():
        states = {url: state_of(driver, url) for url in instances}
        return states if all(state == "healthy" for state in states.values()) else None

    states, took = wait_for("every instance shown healthy", all_healthy, timeout=30)
    log(f"every instance has a healthy card after {took:.1f} s: {sorted(states)}")


def a_killed_instance_turns_unhealthy(driver, pid, url):
    assert state_of(driver, url) == "healthy", f"{url} is not healthy before the kill"
    os.kill(pid, signal.SIGKILL)
    log(f"SIGKILL sent to {url} (pid {pid})")
    state, took = wait_for(
        f"the card of {url} turning unhealthy",
        lambda: (s := state_of(driver, url)) in ("unhealthy", "ejected") and s,
        timeout=5,
    )
    log(f"the card of {url} turned {state} {took:.1f} s after the kill")
    screenshot(driver, "console-instance-down")


def the_canary_slider_sets_the_weight(driver):
    admin, token = ENV["ADMIN_URL"], ENV["ADMIN_TOKEN"]

    def canary_weight():
        status, view = http("GET", f"{admin}/upstreams", token=token)
        assert status == 200, f"GET /upstreams answered {status}"
        return next(r["canary_weight"] for r in view["routes"] if r["route"] == "catalog")

    before = canary_weight()
    slider, _ = wait_for(
        "the catalog's canary slider",
        lambda: driver.find_elements(
            By.CSS_SELECTOR, '[data-testid="canary-weight"][data-route="catalog"]'
        )[0],
        timeout=10,
    )
    # A click three quarters along the track: the slider jumps there, one `change` event.
    width = slider.size["width"]
    ActionChains(driver).move_to_element_with_offset(slider, width // 4, 0).click().perform()
    chosen = int(slider.get_attribute("value"))
    assert chosen != before, f"the slider stayed at {before}"
    weight, took = wait_for(
        f"/upstreams reporting canary weight {chosen}",
        lambda: (w := canary_weight()) == chosen and w,
        timeout=5,
    )
    shown, _ = wait_for(
        "the page showing the new weight",
        lambda: driver.find_element(
            By.CSS_SELECTOR, '[data-testid="canary-weight-value"][data-route="catalog"]'
        ).text
        == str(chosen),
        timeout=5,
    )
    log(f"slider moved {before} → {chosen}: /upstreams reports {weight} after {took:.1f} s")


def an_orders_trace_is_shown(driver):
    gateway, token = ENV["GATEWAY_URL"], ENV["CUSTOMER_TOKEN"]
    status, page = http("GET", f"{gateway}/api/catalog/products?limit=1")
    assert status == 200, f"GET products answered {status}"
    product = page["items"][0]["id"]
    status, order = http(
        "POST",
        f"{gateway}/api/orders/orders",
        token=token,
        body={"customer_id": ENV["CUSTOMER_ID"], "lines": [{"product_id": product, "quantity": 1}]},
        headers={"idempotency-key": str(uuid.uuid4())},
    )
    assert status == 202, f"placing an order answered {status}"
    order_id = order["id"]
    log(f"order {order_id} placed")
    search = driver.find_element(By.CSS_SELECTOR, '[data-testid="order-search"]')
    search.clear()
    search.send_keys(order_id, Keys.ENTER)
    row, took = wait_for(
        "the order's trace listed",
        lambda: driver.find_elements(By.CSS_SELECTOR, '[data-testid="trace"]'),
        timeout=20,
    )
    log(f"the order's trace is listed after {took:.1f} s")

    wanted = {"gateway", "order", "catalog"}
    saga = {"order.placed process", "stock.reserved process"}

    def services_in_waterfall():
        waterfall = driver.find_elements(By.CSS_SELECTOR, '[data-testid="waterfall"]')
        if not waterfall:
            rows = driver.find_elements(By.CSS_SELECTOR, '[data-testid="trace"]')
            if rows:
                rows[0].click()
            return None
        spans = waterfall[0].find_elements(By.CSS_SELECTOR, '[data-testid="span"]')
        services = {span.get_attribute("data-service") for span in spans}
        names = {span.get_attribute("data-name") for span in spans}
        return services if wanted <= services and saga <= names else None

    services, took = wait_for(
        "a waterfall with spans of the gateway, order and catalog, and both saga hops",
        services_in_waterfall,
        timeout=20,
        interval=0.5,
    )
    spans = driver.find_elements(By.CSS_SELECTOR, '[data-testid="waterfall"] [data-testid="span"]')
    log(f"the waterfall shows {len(spans)} spans of {sorted(services)} after {took:.1f} s")
    # Drawn, not only listed: every span has a bar, the bars start at different offsets, the
    # last one ends at the end of the track, and spans are indented under their parents.
    bars = [span.find_element(By.CSS_SELECTOR, ".wf-bar") for span in spans]
    track = bars[0].find_element(By.XPATH, "..")
    track_end = track.location["x"] + track.size["width"]
    assert all(bar.size["width"] >= 1 for bar in bars), "a span without a bar"
    last_end = max(bar.location["x"] + bar.size["width"] for bar in bars)
    assert abs(last_end - track_end) <= 3, f"the bars are not scaled to the trace: {last_end} vs {track_end}"
    offsets = {bar.location["x"] for bar in bars}
    assert len(offsets) > 3, f"the bars are not placed in time: {offsets}"
    indents = {
        span.find_element(By.CSS_SELECTOR, ".wf-label").value_of_css_property("padding-left")
        for span in spans
    }
    assert len(indents) > 2, f"the spans are not indented by depth: {indents}"
    path = screenshot(driver, "console-trace")
    if ENV.get("SCREENSHOT"):
        shutil.copyfile(path, ENV["SCREENSHOT"])
        log(f"copied to {ENV['SCREENSHOT']}")


def main():
    instances = [url.rstrip("/") for url in ENV["INSTANCES"].split(",")]
    profile = tempfile.mkdtemp(prefix="console-test-chromium-")
    driver = browser(profile)
    failed = False
    try:
        driver.get(ENV["CONSOLE_URL"] + "/")
        every_instance_is_shown_and_healthy(driver, instances)
        screenshot(driver, "console-all-healthy")
        a_killed_instance_turns_unhealthy(driver, int(ENV["KILL_PID"]), ENV["KILL_URL"].rstrip("/"))
        the_canary_slider_sets_the_weight(driver)
        an_orders_trace_is_shown(driver)
        refused = [e for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert not refused, f"the page broke its own CSP: {refused}"
    except AssertionError as error:
        failed = True
        log(f"FAILED: {error}")
        screenshot(driver, "console-failure")
        for entry in driver.get_log("browser"):
            log(f"browser console: {entry}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
