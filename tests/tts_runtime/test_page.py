"""The status page in headless Chromium: live state per model; offload turns the row to CPU."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tts_runtime.server import create_app
from tts_runtime.server.background import serve_in_thread
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
    "factory": "tts_runtime.testing.tiny:factory",
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


def test_offload_button_turns_the_row_to_cpu(base_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            badge = page.locator('tr[data-model="tiny"] .state')
            expect(badge).to_have_attribute("data-state", "unloaded")
            expect(badge).to_have_text("unloaded")

            body = {"model": "tiny", "input": "Hello.", "response_format": "wav"}
            assert httpx.post(f"{base_url}/v1/audio/speech", json=body, timeout=30).status_code == 200
            expect(badge).to_have_attribute("data-state", "gpu")  # pushed by the event stream
            expect(badge).to_have_text("GPU")

            offload = page.locator('tr[data-model="tiny"] button[data-verb="offload"]')
            offload.click()  # no token yet: refused, said inline, nothing changes
            expect(page.locator("#message")).to_contain_text("admin token")
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
