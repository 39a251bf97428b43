"""The status page in headless Chromium: live state per model; offload turns the row to CPU."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.background import serve_in_thread
from tts_runtime.server import create_app
from tts_runtime.settings import Settings

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists() and not os.environ.get("CI"),
        reason="needs /usr/bin/chromium (apt-get install -y chromium); CI installs it",
    ),
]
TOKEN = "page-token"
TINY = {
    "name": "tiny",
    "backend": "torch",
    "factory": "support.tiny:factory",
    "execution": "inline",
}


@pytest.fixture
def base_url() -> Iterator[str]:
    # Offload after use off, so the model stays on the GPU until the button offloads it.
    settings = Settings(
        models_json=json.dumps({"models": [TINY]}), device="cpu", offload_after_use=False, admin_token=TOKEN
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_offload_button_turns_the_row_to_cpu(base_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            badge = page.locator('tr[data-model="tiny"] .state')
            expect(badge).to_have_attribute("data-state", "unloaded")
            expect(badge).to_have_text("unloaded")

            body = {"model": "tiny", "input": "Hello.", "response_format": "wav"}
            assert httpx.post(f"{base_url}/v1/audio/speech", json=body, timeout=30).status_code == 200
            expect(badge).to_have_attribute("data-state", "gpu")  # pushed by the event stream
            # No GPU on this host: the model is active on its device, said as such, never a green "GPU".
            expect(badge).to_have_text("active (CPU)")
            expect(page.locator('tr[data-model="tiny"] td.device')).to_have_text("cpu")
            assert badge.evaluate("e => getComputedStyle(e).backgroundColor") != "rgb(165, 214, 167)"

            offload = page.locator('tr[data-model="tiny"] button[data-verb="offload"]')
            offload.click()  # no token yet: refused, said inline, nothing changes
            expect(page.locator("#message")).to_contain_text("needs the admin token")
            expect(badge).to_have_attribute("data-state", "gpu")
            page.fill("#token", "not-the-token")
            page.dispatch_event("#token", "change")
            offload.click()  # a wrong token is told apart from a missing one
            expect(page.locator("#message")).to_contain_text("token entered is wrong")
            expect(badge).to_have_attribute("data-state", "gpu")

            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            offload.click()
            expect(badge).to_have_attribute("data-state", "cpu")
            expect(badge).to_have_text("CPU")
            # Retried like the others: the event stream may re-render the row between two reads.
            expect(badge).to_have_css("background-color", "rgb(255, 241, 118)")  # yellow
            shot = os.environ.get("RESIDENCY_SCREENSHOT", str(tmp_path / "status-page.png"))
            page.screenshot(path=shot, full_page=True)

            page.locator('tr[data-model="tiny"] button[data-verb="release"]').click()
            expect(badge).to_have_attribute("data-state", "unloaded")
            page.locator('tr[data-model="tiny"] button[data-verb="load"]').click()
            expect(badge).to_have_attribute("data-state", "gpu")
            assert page.evaluate("sessionStorage.getItem('residency-admin-token')") == TOKEN
            page.click("#refresh")
            expect(page.locator("#message")).to_have_text("")
        finally:
            browser.close()


LONG_ERROR = "the weights at /models/very/deep/path/" + "x" * 2000 + " are corrupt"
BROKEN = {
    "name": "broken",
    "backend": "torch",
    "factory": "support.faults:failing_factory",
    "options": {"message": LONG_ERROR},
    "execution": "inline",
}


@pytest.fixture
def panel_url() -> Iterator[str]:
    settings = Settings(
        models_json=json.dumps({"models": [TINY, BROKEN]}), device="cpu", offload_after_use=False
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


def test_buttons_follow_state_errors_stay_in_their_cell_and_policy_is_editable(panel_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert httpx.post(f"{panel_url}/v1/models/broken/load", timeout=30).status_code == 503
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(panel_url + "/")
            row = page.locator('tr[data-model="tiny"]')
            button = lambda verb: row.locator(f'button[data-verb="{verb}"]')  # noqa: E731
            expect(row.locator(".state")).to_have_attribute("data-state", "unloaded")
            expect(button("load")).to_be_enabled()
            expect(button("offload")).to_be_disabled()
            expect(button("release")).to_be_disabled()
            button("load").click()
            expect(row.locator(".state")).to_have_attribute("data-state", "gpu")
            expect(button("load")).to_be_disabled()
            expect(button("offload")).to_be_enabled()
            button("offload").click()
            expect(row.locator(".state")).to_have_attribute("data-state", "cpu")
            expect(button("load")).to_have_text("Restore")

            # The failed model's 2 kB error: in its cell, scrolled, the table no wider than the page.
            failed = page.locator('tr[data-model="broken"]')
            expect(failed.locator(".state")).to_have_attribute("data-state", "failed")
            expect(failed.locator(".err")).to_contain_text("are corrupt")
            assert failed.evaluate("e => e.getBoundingClientRect().height") < 200
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280

            # Policy from the page: the dialog shows the current policy and saves the change.
            button("policy").click()
            field = page.locator('#policy-form input[name="idleOffloadSeconds"]')
            expect(field).to_have_value("600")
            field.fill("42")
            page.locator('#policy-form input[name="pinned"]').check()
            page.click("#policy-save")
            expect(row.locator(".policy")).to_contain_text("pinned")
            policy = httpx.get(f"{panel_url}/v1/models/tiny/policy", timeout=10).json()
            assert policy["idleOffloadSeconds"] == 42 and policy["pinned"] is True

            # At 400 px: one card per model, nothing wider than the screen, the buttons reachable.
            page.set_viewport_size({"width": 400, "height": 900})
            assert page.evaluate("document.documentElement.scrollWidth") <= 400
            box = button("release").bounding_box()
            assert box is not None and box["x"] + box["width"] <= 400
        finally:
            browser.close()
