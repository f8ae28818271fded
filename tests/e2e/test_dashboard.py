"""The dashboard in a real browser: Playwright driving Debian's Chromium against a real `baton serve`.

Every test starts its own server on a fresh SQLite file (the `sqlite_url` fixture) and opens a
fresh browser context; every page's console errors and uncaught exceptions fail the test. Waits
are Playwright expectations with deadlines, never sleeps.

Screenshots go to `docs/screenshots/` when BATON_SCREENSHOTS=1, else to the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import dashboardflows
from tests.e2e.server import Server, make_token, running_server

sync_api = pytest.importorskip("playwright.sync_api")
Page = sync_api.Page
expect = sync_api.expect

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
FLOWS = ["baton.examples", str(dashboardflows.PATH)]
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is not installed: CI must run the browser tests (.ci/run installs it)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    """`baton serve` with the example flows and the dashboard's test flows."""
    with running_server(sqlite_url, tmp_path, flows=FLOWS) as srv:
        yield srv


@dataclass
class Console:
    """Console errors and page exceptions of every page of a context; some may be expected."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: self._note(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self._note(f"uncaught: {e}"))

    def _note(self, text: str) -> None:
        if not any(p.search(text) for p in self.allowed):
            self.errors.append(text)

    @contextlib.contextmanager
    def allow(self, pattern: str) -> Iterator[None]:
        compiled = re.compile(pattern)
        self.allowed.append(compiled)
        try:
            yield
        finally:
            self.allowed.remove(compiled)


@dataclass
class Browsing:
    """A browser context (its own cookies) with console checking, and helpers for one server."""

    context: Any
    console: Console
    server: Server

    def page(self, viewport: dict[str, int] | None = None) -> Page:
        page = self.context.new_page()
        if viewport:
            page.set_viewport_size(viewport)
        self.console.watch(page)
        return page

    def sign_in(self, token: str, page: Page | None = None) -> Page:
        page = page or self.page()
        page.goto(f"{self.server.url}/login?token={token}")
        expect(page).to_have_url(f"{self.server.url}/")
        return page


@contextlib.contextmanager
def browsing_for(browser: Any, server: Server) -> Iterator[Browsing]:
    """A fresh context (no cookies); on leaving, no page may have logged an error."""
    console = Console()
    context = browser.new_context(viewport=WIDE, accept_downloads=True)
    context.set_default_timeout(15_000)
    try:
        yield Browsing(context, console, server)
    finally:
        context.close()
    assert console.errors == [], "the dashboard logged errors:\n" + "\n".join(console.errors)


@pytest.fixture
def browsing(browser: Any, server: Server) -> Iterator[Browsing]:
    with browsing_for(browser, server) as browsing:
        yield browsing


# --- helpers --------------------------------------------------------------------------------------


def screenshot_path(tmp_path: Path, name: str) -> Path:
    if os.environ.get("BATON_SCREENSHOTS"):
        folder = ROOT / "docs" / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name
    return tmp_path / name


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    """A screenshot of the top of the page as a visitor sees it (no toasts, animations settled)."""
    page.evaluate("window.scrollTo(0, 0); document.getElementById('toasts').replaceChildren()")
    page.screenshot(path=screenshot_path(tmp_path, name), animations="disabled")


def login_link(server: Server) -> str:
    """The link `baton serve` printed on its first start."""
    assert server.log is not None
    found = re.search(r"sign in at (\S+/login\?token=\S+)", server.log.read_text())
    assert found, server.log.read_text()
    return found.group(1)


def token_for(server: Server, user: str, project: str, role: str = "member") -> str:
    """`make_token`, off this thread: Playwright's sync API keeps an event loop running here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(make_token, server.database_url, user, project, role).result()


def api(server: Server, token: str) -> httpx.Client:
    return server.client(token)


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_status(client: httpx.Client, run_id: str) -> str:
    return str(client.get(f"/v1/runs/{run_id}").json()["status"])


def create(client: httpx.Client, flow: str, project: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/runs", json={"flow": flow, "project_id": project, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def no_horizontal_scroll(page: Page) -> None:
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page scrolls sideways: {width}px wide"


def stall(server: Server, run_id: str) -> None:
    """Make a run look running and silent for ten minutes (SQLite, straight in the file)."""
    path = server.database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "UPDATE runs SET status = 'running', started_at = created_at - 600 WHERE id = ?", (run_id,)
        )


def row_of(page: Page, run: dict[str, Any]) -> Any:
    return page.locator(f"[data-run-id={run['id']}]")


def only(page: Page, run: dict[str, Any]) -> None:
    """The list shows this run and nothing else (checked in that order: no transient match)."""
    expect(page.locator(f".run-row[data-run-id={run['id']}]")).to_be_visible()
    expect(page.locator(".run-row")).to_have_count(1)


def mark_page(page: Page) -> None:
    """A marker that a reload would erase: live updates must keep it."""
    page.evaluate("window.__noReload = 'still here'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__noReload") == "still here", "the page reloaded"


# --- tests ----------------------------------------------------------------------------------------


def test_handoff_from_login_link_to_report_live(browsing: Browsing, server: Server, tmp_path: Path) -> None:
    """Sign in through the printed link, launch handoff, confirm its plan, watch it, answer, read."""
    page = browsing.page()
    link = login_link(server)
    page.goto(link)
    expect(page).to_have_url(f"{server.url}/")
    cookies = {c["name"]: c for c in browsing.context.cookies()}
    assert cookies["baton_session"]["httpOnly"] and cookies["baton_session"]["sameSite"] == "Lax"
    assert not cookies["baton_csrf"]["httpOnly"]

    # The empty state's call to action opens the launcher.
    expect(page.locator("#runs-empty")).to_be_visible()
    page.locator("#runs-empty [data-launch]").click()
    dialog = page.locator("dialog#launch")
    expect(dialog).to_be_visible()
    dialog.get_by_role("tab", name=re.compile("Planning")).click()
    dialog.locator("[data-flow=handoff]").click()
    expect(dialog.locator("#launch-flow-title")).to_have_text("Hand off a task")
    # The flow asks for a confirmation and the policy lets the launcher skip it.
    expect(dialog.locator("#launch-skip-wrap")).to_be_visible()
    dialog.get_by_label("Focus").fill("Ship the dashboard")
    dialog.get_by_label("Title").fill("Dashboard handoff")
    dialog.locator("label[for=band-large]").click()
    dialog.get_by_role("button", name="Launch").click()

    # Launching opens the run: the plan preview and the policy, before anything runs.
    expect(page).to_have_url(re.compile(r"/runs/run_[0-9a-f]+$"))
    run_id = page.url.rsplit("/", 1)[1]
    panel = page.locator("#confirm-panel")
    expect(panel).to_be_visible()
    for key in ("context", "plan", "risks", "alternatives", "decision"):
        expect(panel.locator("#plan-steps")).to_contain_text(key)
    expect(panel.locator("#policy")).to_contain_text("read only")
    expect(page.locator("#run-meta")).to_contain_text("needs confirmation")

    mark_page(page)
    panel.locator("[data-action=confirm-plan]").click()
    roster = page.locator("#roster")
    for key in ("context", "plan", "risks", "alternatives"):
        expect(roster.locator(f".step[data-key={key}]")).to_have_attribute("data-status", "succeeded")
    expect(roster.locator(".step[data-key=decision]")).to_have_attribute("data-status", "waiting")
    expect(panel).to_be_hidden()
    expect(page.locator("#run-meta")).to_contain_text("waiting for input")
    expect(page.locator("#run-meta .chip.offline").first).to_be_visible()  # offline is labelled as such
    # The streamed tokens of an agent step, one step expanded at a time.
    roster.locator(".step[data-key=plan] .step-head").click()
    expect(roster.locator(".step[data-key=plan] .stream")).to_contain_text("goal")
    expect(roster.locator(".step-body:visible")).to_have_count(1)
    page.locator("#follow").click()  # follow again: the waiting step opens, with its form
    form = roster.locator(".step[data-key=decision] .ask-form")
    expect(form).to_be_visible()
    expect(page.locator("#waiting-banner")).to_be_visible()
    assert_not_reloaded(page)

    # Drop the live connection: the browser reconnects with Last-Event-ID and misses nothing.
    with browsing.console.allow(r"ERR_(CONNECTION_REFUSED|EMPTY_RESPONSE|CONNECTION_RESET|INCOMPLETE)"):
        server.kill()
        expect(page.locator("#live-state")).to_have_attribute("data-state", "false")
        server.start()
        expect(page.locator("#live-state")).to_have_attribute("data-state", "true", timeout=20_000)

    form.get_by_label("Approve").check()
    form.get_by_label("Note").fill("Go ahead, keep it small")
    form.get_by_role("button", name="Send answer").click()

    report = page.locator("#report")
    expect(report).to_be_visible(timeout=20_000)
    expect(report.locator("#report-body h1")).to_have_text("Handoff: Ship the dashboard")
    expect(report.locator("#report-body strong", has_text="Approved")).to_be_visible()
    expect(roster.locator(".step[data-key=act]")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-meta")).to_contain_text("succeeded")
    expect(page.locator("#live-state")).to_have_attribute("data-state", "done")
    assert_not_reloaded(page)

    # The timeline holds every event exactly once, in order, across the dropped connection.
    with api(server, link.rpartition("token=")[2]) as client:
        events = client.get(f"/v1/runs/{run_id}/events", params={"limit": 10000}).json()["events"]
    expected = [e["id"] for e in events if e["type"] != "step.delta"]
    shown = [int(s) for s in page.locator("#timeline li").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert shown == expected

    # Export links serve the run as Markdown and JSON.
    with page.expect_download() as download:
        page.locator("#run-actions [data-action=export-md]").click()
    assert "# " in Path(download.value.path()).read_text()

    shoot(page, tmp_path, "run-1280.png")
    page.set_viewport_size(PHONE)
    no_horizontal_scroll(page)
    shoot(page, tmp_path, "run-390.png")
    page.set_viewport_size(WIDE)

    # Artifacts render inline (Markdown here), with a download link.
    page.locator("details.artifact").first.locator("summary").click()
    expect(page.locator(".artifact-body .md h1").first).to_be_visible()
    # A long report shows in part until asked.
    expect(page.locator("#report-body")).to_have_class(re.compile("clamped"))
    page.locator("#report-more").click()
    expect(page.locator("#report-body")).not_to_have_class(re.compile("clamped"))


def test_runs_list_live_filters_sort_pages(browsing: Browsing, server: Server, tmp_path: Path) -> None:
    """The home page: live rows, progress and score, filters, sort, pagination, phone layout."""
    alice = token_for(server, "alice", "studio", role="admin")
    bob = token_for(server, "bob", "studio", role="member")
    with contextlib.ExitStack() as stack:
        page = browsing.sign_in(alice)
        expect(page.locator("#runs-empty")).to_be_visible()
        expect(page.locator("#runs-empty")).to_contain_text("Start a run")
        mark_page(page)

        as_alice, as_bob = api(server, alice), api(server, bob)
        stack.enter_context(as_alice)
        stack.enter_context(as_bob)
        loop = create(as_bob, "draft-critique", "studio", title="Launch post for evaluator loops")
        row = row_of(page, loop)
        expect(row).to_be_visible()  # arrived through the project stream
        expect(row).to_have_attribute("data-status", "succeeded", timeout=30_000)
        expect(row).to_contain_text("attempt 2/3")
        expect(row).to_contain_text("score 0.85")
        expect(row).to_contain_text("by bob")
        waiting = create(as_alice, "handoff", "studio", title="Tidy the release notes")
        expect(row_of(page, waiting)).to_have_attribute("data-status", "needs_confirmation")
        answered = create(as_alice, "handoff", "studio", title="Plan the docs", confirm=True)
        wait_for(lambda: run_status(as_alice, answered["id"]) == "waiting_for_input", what="a question")
        dropped = create(as_alice, "handoff", "studio", title="An idea dropped")
        as_alice.post(f"/v1/runs/{dropped['id']}/cancel", json={"reason": "not now"})
        expect(row_of(page, answered)).to_have_attribute("data-status", "waiting_for_input")
        expect(row_of(page, dropped)).to_have_attribute("data-status", "cancelled")
        assert_not_reloaded(page)
        expect(page.locator(".run-row")).to_have_count(4)
        shoot(page, tmp_path, "runs-1280.png")

        # Filters go through the API; sort orders what is loaded.
        page.select_option("#f-status", "waiting_for_input")
        only(page, answered)
        page.select_option("#f-status", "")
        page.select_option("#f-flow", "draft-critique")
        only(page, loop)
        page.select_option("#f-flow", "")
        page.fill("#f-q", "release")
        only(page, waiting)
        expect(page).to_have_url(re.compile(r"\?q=release$"))  # filters survive a reload
        page.fill("#f-q", "nothing like this")
        expect(page.locator("#runs-nomatch")).to_be_visible()
        page.click("#clear-filters")
        expect(page.locator(".run-row")).to_have_count(4)
        page.select_option("#f-sort", "oldest")
        expect(page.locator(".run-row").first).to_have_attribute("data-run-id", loop["id"])
        page.select_option("#f-sort", "newest")

        # The launcher opens from the keyboard and closes with Escape.
        page.locator("header [data-launch]").focus()
        page.keyboard.press("Enter")
        expect(page.locator("dialog#launch")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("dialog#launch")).to_be_hidden()

        phone = browsing.page(PHONE)
        phone.goto(server.url + "/")
        expect(phone.locator(".run-row")).to_have_count(4)
        no_horizontal_scroll(phone)
        shoot(phone, tmp_path, "runs-390.png")

        # Pagination follows the API cursor: 20 at a time, older ones on demand.
        for i in range(18):
            create(as_alice, "handoff", "studio", title=f"Bulk {i:02d}")
        page.reload()
        expect(page.locator(".run-row")).to_have_count(20)
        page.click("#load-more")
        expect(page.locator(".run-row")).to_have_count(22)
        expect(page.locator("#load-more")).to_be_hidden()

        # A running run with no sign of life for the stall threshold is flagged, in the list and
        # on its page. (Made so in the database: no worker holds its steps.)
        stall(server, waiting["id"])
        page.goto(f"{server.url}/?status=running")
        expect(row_of(page, waiting).locator(".flag.warn")).to_have_text("stalled")
        page.goto(f"{server.url}/runs/{waiting['id']}")
        expect(page.locator("#stalled")).to_be_visible()


def test_cancel_a_running_draft_critique_and_retry_it(browser: Any, sqlite_url: str, tmp_path: Path) -> None:
    """A slowed engine keeps the loop running; cancel it from its page, then retry it."""
    slow = {
        "BATON_DEFAULT_ENGINE": "python:tests.e2e.dashboardflows:slow_writer",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    with running_server(sqlite_url, tmp_path, flows=FLOWS, extra_env=slow) as slow_server:
        token = token_for(slow_server, "carol", "writers", role="member")
        with browsing_for(browser, slow_server) as browsing:
            page = browsing.sign_in(token)
            page.locator("header [data-launch]").click()
            dialog = page.locator("dialog#launch")
            dialog.get_by_role("tab", name=re.compile("Authoring")).click()
            dialog.locator("[data-flow=draft-critique]").click()
            expect(dialog.locator("#launch-skip-wrap")).to_be_hidden()  # it never waits for confirmation
            expect(dialog.get_by_label("Audience")).to_have_value("engineering team leads")
            dialog.get_by_role("button", name="Launch").click()
            expect(page).to_have_url(re.compile(r"/runs/run_[0-9a-f]+$"))
            first_id = page.url.rsplit("/", 1)[1]

            producing = page.locator(".step[data-key=produce-1]")
            expect(producing).to_have_attribute("data-status", "running")
            expect(producing).to_have_class(re.compile("expanded"))  # the active step is followed
            stream = producing.locator(".stream")
            expect(stream).to_contain_text("offline engine")  # tokens arrive while it runs
            expect(page.locator("#run-meta")).to_contain_text("attempt 1/3")
            expect(page.locator("#run-meta")).to_contain_text("producing")

            workers = browsing.page()
            workers.goto(slow_server.url + "/workers")
            expect(workers.locator("tr.worker-alive")).to_have_count(1)
            expect(workers.locator("tr.worker-alive")).to_contain_text("produce-1")
            workers.close()

            page.locator("#run-actions [data-action=cancel]").click()
            page.locator("#run-actions [data-action=cancel-yes]").click()
            expect(page.locator("#run-meta")).to_contain_text("cancelled", timeout=20_000)
            expect(producing).to_have_attribute("data-status", "cancelled")

            page.locator("#run-actions [data-action=retry]").click()
            expect(page).not_to_have_url(re.compile(first_id))
            expect(page.locator("#lineage")).to_contain_text(f"Retry of {first_id}")
            expect(page.locator(".step[data-key=produce-1]")).to_have_attribute("data-status", "running")
            second_id = page.url.rsplit("/", 1)[1]
            with api(slow_server, token) as client:
                client.post(f"/v1/runs/{second_id}/cancel", json={"reason": "test over"})
            expect(page.locator("#run-meta")).to_contain_text("cancelled", timeout=20_000)
            page.goto(f"{slow_server.url}/runs/{first_id}")
            expect(page.locator("#retried-link")).to_have_text(second_id)


def test_inbox_shows_and_clears_what_waits(browsing: Browsing, server: Server) -> None:
    """Plans to confirm and questions across projects, answered in place, live."""
    dana = token_for(server, "dana", "alpha", role="member")
    token_for(server, "dana", "beta", role="member")
    page = browsing.sign_in(dana)
    with api(server, dana) as client:
        first = create(client, "handoff", "alpha", title="Alpha handoff", band="small")
        second = create(client, "handoff", "beta", title="Beta handoff", band="small")
        # The badge counts what waits in every project (the list follows the current one).
        page.click("nav >> text=Inbox")
        expect(page).to_have_url(f"{server.url}/inbox")
        expect(page.locator("#inbox-count")).to_have_text("2")
        confirmations = page.locator("#confirmations .inbox-item")
        expect(confirmations).to_have_count(2)
        mark_page(page)
        page.locator(f"[data-run='{first['id']}'] [data-action=confirm]").click()
        # The confirmed run reaches its decision step: its question appears here by itself.
        question = page.locator("#questions .inbox-item")
        expect(question).to_have_count(1, timeout=20_000)
        expect(question).to_contain_text("Alpha handoff")
        expect(confirmations).to_have_count(1)
        question.get_by_label("Approve").check()
        question.get_by_role("button", name="Send answer").click()
        expect(question).to_have_count(0)
        wait_for(lambda: run_status(client, first["id"]) == "succeeded", what="the answered run to finish")

        page.locator(f"[data-run='{second['id']}'] [data-action=cancel]").click()
        expect(confirmations).to_have_count(0)
        expect(page.locator("#inbox-empty")).to_be_visible()
        expect(page.locator("#inbox-count")).to_be_hidden()
        assert_not_reloaded(page)
        assert run_status(client, second["id"]) == "cancelled"


def test_sign_in_out_and_foreign_runs_are_not_found(browsing: Browsing, server: Server) -> None:
    erin = token_for(server, "erin", "mine", role="member")
    frank = token_for(server, "frank", "theirs", role="member")
    with api(server, frank) as client:
        foreign = create(client, "handoff", "theirs", title="Not for erin")
    page = browsing.page()
    # Signed out, a page sends you to sign in and back.
    page.goto(f"{server.url}/inbox")
    expect(page).to_have_url(re.compile(r"/login\?next=/inbox$"))
    with browsing.console.allow(r"status of 401"):
        page.get_by_label("API token").fill("bt_not-a-real-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".form-error")).to_contain_text("not valid")
    page.get_by_label("API token").fill(erin)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{server.url}/inbox")

    with browsing.console.allow(r"status of 404"):
        response = page.goto(f"{server.url}/runs/{foreign['id']}")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        assert "Not for erin" not in page.content()
        response = page.goto(f"{server.url}/runs/run_000000000000nothere00")
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()

    # A run made by a schedule says so, in the list and on its page, after the schedule is gone.
    with api(server, erin) as client:
        made = client.post(
            "/v1/schedules",
            json={"flow": "handoff", "project_id": "mine", "title": "Every second", "interval_s": 1},
        )
        assert made.status_code == 201, made.text
        schedule_id = made.json()["id"]
        scheduled = wait_for(
            lambda: next((r for r in client.get("/v1/runs").json()["runs"] if r["schedule_id"]), None),
            what="the schedule's first run",
        )
        assert client.delete(f"/v1/schedules/{schedule_id}").status_code == 200
    page.goto(server.url + "/")
    expect(row_of(page, scheduled).locator(".flag", has_text="scheduled")).to_be_visible()
    page.goto(f"{server.url}/runs/{scheduled['id']}")
    expect(page.locator("#run-meta .schedule")).to_have_text(f"scheduled by {schedule_id}")

    page.goto(server.url + "/")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{server.url}/login")
    page.goto(server.url + "/")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_hostile_agent_output_never_runs_script(browsing: Browsing, server: Server) -> None:
    """Markdown, JSON, HTML artifacts, streamed text, logs and the report all stay inert."""
    token = token_for(server, "gina", "lab", role="member")
    page = browsing.sign_in(token)
    page.locator("header [data-launch]").click()
    dialog = page.locator("dialog#launch")
    dialog.get_by_role("tab", name=re.compile("Review")).click()
    dialog.locator("[data-flow=dash_hostile]").click()
    # Inline validation from the input schema, before anything is sent.
    dialog.get_by_label("Title").fill("<script>window.__pwned = 'title'</script>")
    label = dialog.locator("[data-field=label] input")
    label.fill("")
    dialog.get_by_role("button", name="Launch").click()
    expect(dialog.locator("[data-field=label] .field-error")).to_have_text("Required.")
    label.fill("ab")
    expect(dialog.locator("[data-field=label] .field-error")).to_have_text("At least 3 characters.")
    dialog.locator("[data-field=copies] input").fill("9")
    dialog.locator("[data-field=copies] input").blur()
    expect(dialog.locator("[data-field=copies] .field-error")).to_have_text("At most 3.")
    dialog.locator("[data-field=copies] input").fill("2")
    label.fill("<img src=x onerror=\"window.__pwned='title'\">")
    dialog.get_by_role("button", name="Launch").click()
    expect(page).to_have_url(re.compile(r"/runs/run_[0-9a-f]+$"))
    run_id = page.url.rsplit("/", 1)[1]

    expect(page.locator("#report")).to_be_visible(timeout=20_000)
    body = page.locator("#report-body")
    expect(body.locator("table")).to_be_visible()  # Markdown is rendered…
    expect(body).to_contain_text('<img src="x" onerror=')  # …and raw HTML shown as text
    for name in ("hostile.md", "hostile.json", "hostile.html"):
        details = page.locator(f"details[data-artifact='{name}']")
        # Opened, not toggled: the page may open one itself between a look and a click.
        details.evaluate("details => { details.open = true; }")
    expect(page.locator("details[data-artifact='hostile.md'] .artifact-body .md table")).to_be_visible()
    expect(page.locator(".artifact-body pre.json")).to_contain_text("<script>")
    expect(page.locator("details[data-artifact='hostile.html'] .artifact-body")).to_contain_text("<script>")
    expect(page.locator(".step[data-key=write] .step-label")).to_have_text("write <b>hostile</b> things")
    page.locator(".step[data-key=write] .step-head").click()
    expect(page.locator(".step[data-key=write] .stream")).to_contain_text("<script>")
    expect(page.locator("#timeline")).to_contain_text("<script>window.__pwned = 'log'</script>")

    assert page.evaluate("window.__pwned") is None
    dangerous = ["script", "img", "iframe", "[onerror]", "[onload]", "a[href^='javascript']"]
    assert page.locator(", ".join(f"#run {css}" for css in dangerous)).count() == 0
    # Even the raw artifact, opened by itself, cannot run script on the dashboard's origin.
    raw = browsing.page()
    with browsing.console.allow(r"Content Security Policy|sandbox"):
        artifacts = raw.request.get(f"{server.url}/v1/runs/{run_id}/artifacts").json()
        html = next(a for a in artifacts if a["name"] == "hostile.html")
        raw.goto(f"{server.url}/v1/runs/{run_id}/artifacts/{html['id']}")
        assert raw.evaluate("window.__pwned") is None
