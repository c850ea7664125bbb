"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a real
daemon (busybox hull, real git push over SSH, nginx). Missing chromium or playwright fails.

Set HYPERDRIVE_SCREENSHOTS=docs to write the README's screenshots from these same pages.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright

from tests.conftest import Daemon, wait_for
from tests.e2e.squadron import Admiral, admiral_squadron, http_get

pytestmark = [pytest.mark.root, pytest.mark.lxc, pytest.mark.nginx, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SHOTS = os.environ.get("HYPERDRIVE_SCREENSHOTS")
WAIT_MS = 90_000


@pytest.fixture(scope="module")
def squadron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Admiral, str]]:
    with admiral_squadron(tmp_path_factory.mktemp("dash")) as (d, admiral):
        yield d, admiral, d.hd("token", "alice").stdout.strip()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), "the browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser(playwright: Playwright) -> Iterator[BrowserContext]:
    """A fresh profile each test: no cookie survives from one to the next."""
    with tempfile.TemporaryDirectory(prefix="hd-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1100, "height": 900},
        )  # fmt: skip
        try:
            yield context
        finally:
            context.close()


def base(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.api_port}"


def sign_in(page: Page, d: Daemon, token: str) -> None:
    page.goto(base(d) + "/")
    expect(page).to_have_url(base(d) + "/sign-in")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def shot(page: Page, name: str, width: int = 1100, dark: bool = False) -> None:
    """A screenshot for the README, when HYPERDRIVE_SCREENSHOTS names a folder."""
    if SHOTS:
        page.set_viewport_size({"width": width, "height": 900})
        page.emulate_media(color_scheme="dark" if dark else "light")
        page.screenshot(path=str(Path(SHOTS) / f"dashboard-{name}.png"), full_page=True)
        page.emulate_media(color_scheme="light")
        page.set_viewport_size({"width": 1100, "height": 900})


def push(admiral: Admiral, work: Path, text: str, *options: str) -> None:
    admiral.commit(work, {"index.html": text}, message=f"serve {text.strip()}")
    admiral.git("push", *options, "hyperdrive", "master", cwd=work)


def test_signed_out_sees_nothing_a_bad_token_is_refused_a_good_one_signs_in(
    squadron: tuple[Daemon, Admiral, str], browser: BrowserContext, tmp_path: Path
) -> None:
    d, admiral, token = squadron
    work = admiral.working_copy(tmp_path / "quiet", "quiet")
    push(admiral, work, "quiet\n")
    page = browser.new_page()
    for path in ("/", "/apps/quiet", "/webhooks"):
        page.goto(base(d) + path)
        expect(page).to_have_url(base(d) + "/sign-in")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert "quiet" not in page.content()
    shot(page, "sign-in", 360)
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Sign-in refused")
    assert "quiet" not in page.content()
    d.wait_event("SignInRefused")
    metrics = http_get(d.api_port, "/metrics")[1]
    assert "hyperdrive_dashboard_sign_ins_refused 1.0" in metrics, metrics
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="quiet", exact=True)).to_be_visible()
    d.wait_event("SignedIn", admiral="alice")
    other = browser.new_page()  # a second tab of the same browser, following the overview
    other.goto(base(d) + "/")
    expect(other.locator("#live-status")).to_have_text("Live updates: on")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(base(d) + "/sign-in")
    expect(other).to_have_url(base(d) + "/sign-in", timeout=20_000)  # it showed nothing more
    assert "quiet" not in other.content()
    page.goto(base(d) + "/apps/quiet")
    expect(page).to_have_url(base(d) + "/sign-in")


def test_a_push_shows_up_live_and_rollback_brings_the_old_version_back(
    squadron: tuple[Daemon, Admiral, str], browser: BrowserContext, tmp_path: Path
) -> None:
    d, admiral, token = squadron
    work = admiral.working_copy(tmp_path / "site", "site")
    push(admiral, work, "one\n")
    assert http_get(d.http_port, "/site/") == (200, "one\n")
    page = browser.new_page()
    sign_in(page, d, token)
    page.get_by_role("link", name="site", exact=True).click()
    expect(page.get_by_role("heading", name="site", exact=True)).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Live updates: on")
    page.evaluate("window.notReloaded = true")

    push(admiral, work, "two\n", "-o", "nowait")
    newest = page.locator("#history li").first
    expect(newest).to_contain_text("serve two", timeout=WAIT_MS)
    expect(newest).to_contain_text("finished", timeout=WAIT_MS)
    expect(newest).to_contain_text("health")  # its stages, laid out on its timeline
    live_row = page.locator("#ships tr.is-live")
    expect(live_row).to_contain_text("serve two")  # the live marker moved with the swap
    assert page.evaluate("window.notReloaded") is True, "updated without a reload"
    assert http_get(d.http_port, "/site/") == (200, "two\n")
    shot(page, "app")
    page.goto(base(d) + "/")
    shot(page, "overview")
    shot(page, "overview-dark", 360, dark=True)
    page.goto(base(d) + "/apps/site")
    page.set_viewport_size({"width": 360, "height": 800})
    for path in ("/", "/apps/site"):  # readable at 360 px: nothing runs off the side
        page.goto(base(d) + path)
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), path

    # by keyboard: Tab to Rollback, Enter; the confirmation's Confirm has the focus
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Rollback":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Confirm")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Deploy of site")).to_be_visible()
    expect(page.locator("#summary")).to_contain_text("rolled back", timeout=WAIT_MS)
    wait_for(lambda: http_get(d.http_port, "/site/") == (200, "one\n"), 30, 0.2, "v1 served again")
    d.wait_event("RolledBack", app="site")


def test_a_failed_builds_output_is_readable_and_a_post_without_csrf_is_refused(
    squadron: tuple[Daemon, Admiral, str], browser: BrowserContext, tmp_path: Path
) -> None:
    d, admiral, token = squadron
    work = admiral.working_copy(tmp_path / "broken", "broken")
    push(admiral, work, "fine\n")
    (work / "bin").mkdir()
    (work / "bin" / "build").write_text("#!/bin/sh\necho compiling the broken thing\nexit 3\n")
    (work / "bin" / "build").chmod(0o755)
    admiral.commit(
        work, {"Procfile": "web: busybox httpd -f -p $PORT -h /app\n"}, message="break the build"
    )
    admiral.git("push", "hyperdrive", "master", cwd=work, check=False)
    d.wait_event("DeployFailed", app="broken", stage="build", timeout=60)
    page = browser.new_page()
    sign_in(page, d, token)
    page.goto(base(d) + "/apps/broken")
    failed = page.locator("#history li").first
    expect(failed).to_contain_text("failed at build")
    failed.get_by_role("link").first.click()
    setup = page.get_by_label("Build output (setup.log)")
    expect(setup).to_contain_text("compiling the broken thing")
    expect(page.locator("#summary")).to_contain_text("DeployFailed")
    shot(page, "failed-deploy")
    assert http_get(d.http_port, "/broken/") == (200, "fine\n")

    queued = len([e for e in d.events() if e["event"] == "DeployQueued"])
    for form in ({}, {"csrf": "forged"}):
        answer = page.request.post(base(d) + "/apps/broken/redeploy", form=form, max_redirects=0)
        assert answer.status == 403
        assert "nothing was done" in answer.text()
    assert len([e for e in d.events() if e["event"] == "DeployQueued"]) == queued
    page.goto(base(d) + "/webhooks")
    expect(page.get_by_role("heading", name="Webhook deliveries")).to_be_visible()
