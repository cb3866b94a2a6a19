"""The web console in a real headless Chromium against a real sandboxd: sign in, create a
sandbox, type in its terminal, upload a file, watch the chart, read logs and events, and list
templates and pools. Each page is saved as a screenshot under target/console-shots/.

The steps share one browser and one sandbox and run in file order; no fixed sleeps: every wait
is for a condition in the page.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import SHOTS

IMAGE = "execd-test/busybox"
WAIT = 60


def shot(driver, name):
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver, timeout=WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def css(driver, selector):
    return wait(driver).until(EC.presence_of_element_located((By.CSS_SELECTOR, selector)))


class State:
    sandbox: str | None = None


@pytest.fixture(scope="module")
def console(browser, sandboxd):
    browser.get(sandboxd.url + "/console")
    yield browser
    # Whatever step stopped the run, the sandbox and the pool go (already gone: 404, fine).
    for path in ([f"/v1/sandboxes/{State.sandbox}"] if State.sandbox else []) + ["/v1/pools/console-pool"]:
        try:
            api(sandboxd, "DELETE", path)
        except urllib.error.HTTPError:
            pass


def test_the_assets_carry_a_strict_csp_and_need_no_credential(sandboxd):
    with urllib.request.urlopen(sandboxd.url + "/console") as r:
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert b"/console/app.js" in r.read()
    with urllib.request.urlopen(sandboxd.url + "/console/vendor/xterm.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")


def test_sign_in(console, sandboxd):
    css(console, "#login-form")
    shot(console, "01-login")
    Select(console.find_element(By.ID, "cred-kind")).select_by_value("apikey")
    console.find_element(By.ID, "cred-secret").send_keys(sandboxd.api_key)
    console.find_element(By.ID, "login").click()
    css(console, "table#sandboxes[data-count]")
    assert console.execute_script("return location.hash") == "#/sandboxes"
    wait(console).until(lambda d: "root" in d.find_element(By.ID, "who").text)


def test_a_wrong_key_is_refused_and_not_kept(browser, sandboxd):
    # A second tab-like check in the same browser: sign out, try a bad key, sign in again.
    browser.find_element(By.ID, "logout").click()
    css(browser, "#login-form")
    browser.find_element(By.ID, "cred-secret").send_keys("not-the-key")
    browser.find_element(By.ID, "login").click()
    err = css(browser, "#login-form .error")
    assert "OPEN-SANDBOX-API-KEY" in err.text or "API_KEY" in err.text
    assert browser.execute_script("return sessionStorage.length") == 0
    assert not browser.find_element(By.ID, "logout").is_displayed()
    secret = browser.find_element(By.ID, "cred-secret")
    secret.clear()
    secret.send_keys(sandboxd.api_key)
    browser.find_element(By.ID, "login").click()
    css(browser, "table#sandboxes[data-count]")


def test_create_a_sandbox(console):
    console.find_element(By.ID, "new-sandbox").click()
    image = css(console, "#create-form #image")
    image.send_keys(IMAGE)
    entry = console.find_element(By.ID, "entrypoint")
    entry.clear()
    entry.send_keys("sleep 3600")
    shot(console, "02-create")
    console.find_element(By.ID, "create").click()
    wait(console).until(lambda d: d.execute_script("return location.hash").startswith("#/sandbox/"))
    State.sandbox = console.execute_script("return location.hash").split("/")[2]
    wait(console, 120).until(lambda d: d.find_element(By.ID, "sandbox-info").get_attribute("data-state") == "Running")


def test_the_terminal_runs_echo_hi(console):
    assert State.sandbox, "no sandbox from the create step"
    box = css(console, "#terminal[data-connected=true]")
    # The shell's prompt first, then the command, through the focused xterm textarea.
    wait(console).until(lambda d: d.execute_script("return window.consoleTerminal.text()").strip())
    box.click()
    ta = console.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea")
    ta.send_keys("echo hi" + Keys.ENTER)
    # `hi` alone on a line: the output, not the echoed command line.
    wait(console).until(lambda d: "hi" in [
        line.strip() for line in d.execute_script("return window.consoleTerminal.text()").splitlines()])
    shot(console, "03-terminal")


def test_upload_a_file_and_see_it_listed(console, tmp_path):
    console.find_element(By.CSS_SELECTOR, "[data-tab=files]").click()
    css(console, "table#files[data-dir='/tmp']")
    local = tmp_path / "console-upload.txt"
    local.write_bytes(b"uploaded from the browser\n" * 4096)
    console.find_element(By.ID, "upload-file").send_keys(str(local))
    row = css(console, "table#files tr[data-name='console-upload.txt']")
    assert "KiB" in row.text
    assert console.find_element(By.ID, "upload-progress").get_attribute("value") == "100"
    shot(console, "04-files")


def test_the_chart_draws_points(console):
    console.find_element(By.CSS_SELECTOR, "[data-tab=metrics]").click()
    chart = css(console, "canvas#chart")
    wait(console).until(lambda d: int(chart.get_attribute("data-points")) >= 5)
    assert "MiB" in console.find_element(By.ID, "metrics-now").text
    shot(console, "05-metrics")


def test_logs(console):
    console.find_element(By.CSS_SELECTOR, "[data-tab=logs]").click()
    pre = css(console, "pre#logs[data-loaded=true]")
    assert "=== " in pre.text  # scope=all: each section under its header
    shot(console, "06-logs")


def test_events(console):
    console.find_element(By.CSS_SELECTOR, "[data-tab=events]").click()
    css(console, "table#events tr[data-type=Created]")
    types = [r.get_attribute("data-type") for r in console.find_elements(By.CSS_SELECTOR, "table#events tbody tr")]
    assert "Started" in types or "Ready" in types, types
    shot(console, "07-events")


def test_the_list_shows_the_sandbox_running(console):
    console.find_element(By.CSS_SELECTOR, "[data-nav=sandboxes]").click()
    row = css(console, f"table#sandboxes tr[data-id='{State.sandbox}']")
    wait(console).until(lambda d: row.get_attribute("data-state") == "Running")
    assert IMAGE in row.text
    shot(console, "08-sandboxes")


def api(sandboxd, method, path, body=None):
    req = urllib.request.Request(
        sandboxd.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"OPEN-SANDBOX-API-KEY": sandboxd.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.status, json.loads(r.read() or b"null")


def upgrade_status(base, path):
    """The status line's code of a WebSocket handshake on `path` (raw, with no credential header)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(1024)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_templates_and_pools_pages(console, sandboxd):
    status, _ = api(sandboxd, "POST", "/v1/templates",
                    {"name": "console-tpl", "spec": {"image": IMAGE, "command": ["sleep", "3600"], "ttl": 600}})
    assert status == 201
    # A pool that keeps no member warm: listed, and no container made for it.
    status, _ = api(sandboxd, "POST", "/v1/pools", {
        "name": "console-pool",
        "template": {"spec": {"containers": [{"name": "sandbox", "image": IMAGE, "command": ["sleep", "3600"]}]}},
        "capacitySpec": {"bufferMin": 0, "bufferMax": 0, "poolMin": 0, "poolMax": 2}})
    assert status == 201
    console.find_element(By.CSS_SELECTOR, "[data-nav=templates]").click()
    row = css(console, "table#templates tbody tr td code")
    assert row.text == "console-tpl"
    assert IMAGE in console.find_element(By.ID, "templates").text
    shot(console, "09-templates")
    console.find_element(By.CSS_SELECTOR, "[data-nav=pools]").click()
    row = css(console, "table#pools tbody tr td code")
    assert row.text == "console-pool"
    shot(console, "10-pools")


def test_the_credential_never_went_into_a_url_and_no_csp_violation(console, sandboxd):
    urls = console.execute_script("return performance.getEntries().map(e => e.name)")
    assert urls, "the browser recorded no requests"
    assert not [u for u in urls if sandboxd.api_key in u]
    logs = console.get_log("browser")
    violations = [e["message"] for e in logs if "Content Security Policy" in e["message"]]
    assert not violations, violations


def test_a_ticket_is_spent_by_its_websocket(sandboxd):
    # The terminal used one ticket; a fresh one is single-use and needs the credential.
    req = urllib.request.Request(
        f"{sandboxd.url}/v1/sandboxes/{State.sandbox}/tickets", method="POST",
        headers={"OPEN-SANDBOX-API-KEY": sandboxd.api_key})
    with urllib.request.urlopen(req) as r:
        body = json.load(r)
    assert r.status == 201 and len(body["ticket"]) == 64 and body["expiresInSeconds"] == 30
    anon = urllib.request.Request(f"{sandboxd.url}/v1/sandboxes/{State.sandbox}/tickets", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(anon)
    assert e.value.code == 401
    # Through the real proxy: the ticket opens one WebSocket, then it is spent.
    _, pty = api(sandboxd, "POST", f"/v1/sandboxes/{State.sandbox}/proxy/44772/pty", {})
    ws_path = f"/v1/sandboxes/{State.sandbox}/proxy/44772/pty/{pty['session_id']}/ws?sandboxd_ticket={body['ticket']}"
    assert upgrade_status(sandboxd.url, ws_path) == 101
    assert upgrade_status(sandboxd.url, ws_path) == 401
    # A ticket on a plain (non-upgrade) request is refused, not taken as a credential.
    plain = urllib.request.Request(
        f"{sandboxd.url}/v1/sandboxes/{State.sandbox}/proxy/44772/ping?sandboxd_ticket={body['ticket']}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(plain)
    assert e.value.code == 400


def test_delete_the_sandbox_from_the_list(console, sandboxd):
    console.find_element(By.CSS_SELECTOR, "[data-nav=sandboxes]").click()
    row = css(console, f"table#sandboxes tr[data-id='{State.sandbox}']")
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(console).until(EC.alert_is_present()).accept()
    wait(console).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, f"tr[data-id='{State.sandbox}']")))


def test_a_user_token_signs_in_as_that_user_and_sees_only_its_sandboxes(console, sandboxd):
    status, token = api(sandboxd, "POST", "/v1/tokens", {"userId": "alice", "role": "user", "ttlSeconds": 600})
    assert status == 201
    console.find_element(By.ID, "logout").click()
    css(console, "#login-form")
    Select(console.find_element(By.ID, "cred-kind")).select_by_value("token")
    console.find_element(By.ID, "cred-secret").send_keys(token["accessToken"])
    console.find_element(By.ID, "login").click()
    table = css(console, "table#sandboxes[data-count]")
    wait(console).until(lambda d: d.find_element(By.ID, "who").text == "alice · user")
    assert table.get_attribute("data-count") == "0"
    assert token["accessToken"] not in " ".join(console.execute_script("return performance.getEntries().map(e => e.name)"))
