"""The chat page in a real browser (the system Chromium driven by Playwright): a streamed reply with
accepted guesses highlighted, live τ and tokens/s, the PPD switch, and the message shown when the
server goes away. Saves screenshots under the test's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="the `playwright` package is not installed")

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "no /usr/bin/chromium: run scripts/setup_browser.sh (as root) to install it", allow_module_level=True
    )

from ppdecode import load  # noqa: E402
from ppdecode.server import ServerConfig, create_app  # noqa: E402
from ppdecode.server.runner import BackgroundServer  # noqa: E402

pytestmark = pytest.mark.slow

# No browser download is possible: Playwright drives Debian's Chromium with everything that would
# reach the network switched off.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A prompt whose answer repeats its input, so that guesses are accepted within a few tokens.
PROMPT = "Repeat this sentence exactly, twice: The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def test_chat_page_streams_highlights_and_reports_unreachable(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = load(device="cpu", dtype="float32", tree="default", max_batch=2, max_length=1024)
    server = BackgroundServer(create_app(engine, ServerConfig()))
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    with server:
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#model")).to_have_text(engine.base.name)
        sync_api.expect(page.locator("#status")).to_have_class("status ok")
        page.fill("#max-tokens", "40")

        page.fill("#prompt", PROMPT)
        page.click("#send")
        reply = page.locator(".msg.assistant").last
        sync_api.expect(reply.locator(".meta")).to_contain_text("PPD on", timeout=120_000)
        assert "quick brown fox" in reply.inner_text()
        guessed = reply.locator("span.tok-ppd, span.tok-lookup")
        assert guessed.count() > 0, "no accepted guess was highlighted"
        assert float(page.inner_text("#stat-tau")) > 1.0
        assert float(page.inner_text("#stat-tps")) > 0
        page.screenshot(path=str(tmp_path / "chat-ppd.png"), full_page=True)

        page.uncheck("#ppd-toggle")
        page.fill("#prompt", "Now say it once more.")
        page.click("#send")
        vanilla = page.locator(".msg.assistant").last
        sync_api.expect(vanilla.locator(".meta")).to_contain_text("PPD off", timeout=120_000)
        assert vanilla.locator("span.tok-ppd, span.tok-lookup").count() == 0  # one token per forward
        assert page.inner_text("#stat-tau") == "1.00"
        page.screenshot(path=str(tmp_path / "chat-vanilla.png"), full_page=True)

    # the server is gone: the page says so, on the next send and in its health check
    page.fill("#prompt", "Are you there?")
    page.click("#send")
    banner = page.locator("#banner")
    sync_api.expect(banner).to_be_visible(timeout=10_000)
    sync_api.expect(banner).to_contain_text("cannot be reached")
    sync_api.expect(page.locator("#status")).to_have_text("unreachable")
    page.screenshot(path=str(tmp_path / "chat-unreachable.png"), full_page=True)
    page.close()
