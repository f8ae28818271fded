"""A hostile agent's output in the dashboard, in a real browser: shown as text, never run as script.

A run's steps put the classic payloads (`<script>`, `<img onerror>`, `javascript:` links,
`<iframe>`, SVG with script, `ontoggle`, `data:` links) in everything the run page shows: its
title, a log line, streamed output, step output, an error, the Markdown report and artifacts of
every kind (Markdown, HTML, SVG, JSON, text). Each payload calls `window.__pwned`, a binding the
test exposes; the test fails if it is ever called, if any dialog opens, or if the page's DOM holds
an active element from the payloads (a script, an event-handler attribute, an iframe, a
`javascript:` or `data:` link): the sanitizer must hold on its own, not only behind the CSP.
The raw artifact URLs serve HTML and SVG in a CSP sandbox, where opening them runs nothing.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

if shutil.which("chromium") is None and not os.environ.get("CI"):
    # Said here too: test_dashboard skips itself while being imported, and this module's import
    # of it would then fail as an error instead of a skip.
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from tests.e2e.server import Server, running_server
from tests.e2e.test_dashboard import CHROMIUM_ARGS, browsing_for, create, token_for, wait_for

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.slow

PAYLOADS = [
    "<script>window.__pwned('script')</script>",
    "<img src=x onerror=\"window.__pwned('img')\">",
    "[click me](javascript:window.__pwned('md-link'))",
    "<a href=\"javascript:window.__pwned('a')\">a link</a>",
    "<iframe src=\"javascript:window.__pwned('iframe')\"></iframe>",
    "<iframe srcdoc=\"<script>parent.__pwned('srcdoc')</script>\"></iframe>",
    "<svg onload=\"window.__pwned('svg')\"><script>window.__pwned('svg-script')</script></svg>",
    "<details open ontoggle=\"window.__pwned('toggle')\">x</details>",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<form action=\"javascript:window.__pwned('form')\"><button>go</button></form>",
]
EVIL = "\n\n".join(PAYLOADS)

HOSTILE_FLOWS = f'''
"""A flow whose steps return, log, stream, store and fail with hostile markup."""
import json

from baton.domain.errors import StepFailed
from baton.flows.spec import Flow

EVIL = {EVIL!r}
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned(\\'svg-file\\')">'
    "<script>window.__pwned('svg-file-script')</script></svg>"
)

hostile = Flow("hostile", title="Hostile output")


@hostile.step()
def write(ctx):
    ctx.log(EVIL)
    ctx.emit(EVIL + "\\n")
    ctx.artifact("evil.md", "# Evil\\n\\n" + EVIL, "text/markdown")
    ctx.artifact("evil.html", "<html><body>" + EVIL + "</body></html>", "text/html")
    ctx.artifact("evil.svg", SVG, "image/svg+xml")
    ctx.artifact("evil.json", json.dumps({{"html": EVIL}}), "application/json")
    ctx.artifact("evil.txt", EVIL, "text/plain")
    return "## Output\\n\\n" + EVIL


@hostile.step(needs=["write"], max_attempts=1)
def fail(ctx):
    raise StepFailed("failed: " + EVIL, retryable=False)
'''


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from tests.e2e.test_dashboard import CHROMIUM

    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def server(sqlite_url: str, tmp_path: Path) -> Iterator[Server]:
    flows = tmp_path / "hostile_flows.py"
    flows.write_text(textwrap.dedent(HOSTILE_FLOWS))
    with running_server(sqlite_url, tmp_path, flows=[str(flows)]) as srv:
        yield srv


#: run in the page: every active thing the payloads could have planted
ACTIVE_ELEMENTS = """() => {
  const PAGE_FORMS = ['#launch-form', '.project-switch', '.signout', '.answer-form', '[data-page-form]'];
  const LINKING = ['href', 'src', 'action', 'formaction', 'srcdoc'];
  const found = [];
  for (const node of document.querySelectorAll('*')) {
    const tag = node.tagName;
    for (const attr of node.attributes) {
      if (attr.name.startsWith('on')) found.push(`${tag} ${attr.name}`);
      if (LINKING.includes(attr.name) && /^\\s*(javascript|data|vbscript):/i.test(attr.value)) {
        found.push(`${tag} ${attr.name}=${attr.value}`);
      }
      if (attr.name === 'srcdoc') found.push(`${tag} srcdoc`);
    }
    if (['IFRAME', 'FRAME', 'OBJECT', 'EMBED'].includes(tag)) found.push(tag);
    // The page's own forms and its JSON data island; anything else came from agent output.
    if (tag === 'FORM' && !PAGE_FORMS.some((s) => node.matches(s))) {
      found.push(`FORM ${node.outerHTML.slice(0, 80)}`);
    }
    if (tag === 'SCRIPT' && !(node.src || '').includes('/static/') && node.id !== 'baton-data') {
      found.push('inline SCRIPT');
    }
    if (tag.toLowerCase() === 'svg' && node.closest('.md, .artifact-body, #report-body')) found.push('SVG');
  }
  return found;
}"""


def test_hostile_output_is_shown_as_text_and_never_runs(browser: Any, server: Server) -> None:
    token = token_for(server, "mallory", "p1", role="admin")
    with server.client(token) as client:
        run = create(client, "hostile", "p1", title="<img src=x onerror=\"window.__pwned('title')\">")
        run_id = run["id"]
        wait_for(
            lambda: client.get(f"/v1/runs/{run_id}").json()["status"] == "failed", what="the run to fail"
        )
        artifacts = {a["name"]: a["id"] for a in client.get(f"/v1/runs/{run_id}/artifacts").json()}
        assert {"evil.md", "evil.html", "evil.svg", "evil.json", "evil.txt"} <= set(artifacts)
        # Raw HTML and SVG are served in a CSP sandbox: an opaque origin where script cannot run.
        for name in ("evil.html", "evil.svg"):
            raw = client.get(f"/v1/runs/{run_id}/artifacts/{artifacts[name]}")
            assert raw.status_code == 200
            assert "sandbox" in raw.headers["content-security-policy"], raw.headers
            assert raw.headers["x-content-type-options"] == "nosniff"
    pwned: list[str] = []
    dialogs: list[str] = []
    with browsing_for(browser, server) as browsing:
        browsing.context.expose_binding("__pwned", lambda source, what=None: pwned.append(str(what)))
        page = browsing.sign_in(token)

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        # The CSP reports (as console errors) any inline script it blocks: that would be a payload.
        page.goto(f"{server.url}/runs/{run_id}")
        expect(page.locator("#report-body")).to_contain_text("window.__pwned('script')")
        # All five listed before they are opened: one listed later would stay closed, and empty.
        expect(page.locator("details.artifact")).to_have_count(len(artifacts))
        for details in page.locator("details.artifact").all():
            # Opened, not toggled: the page may open one itself between a look and a click.
            details.evaluate("details => { details.open = true; }")
        for name in ("evil.md", "evil.html", "evil.json", "evil.txt"):
            body = page.locator(f'details.artifact[data-artifact="{name}"] .artifact-body')
            expect(body).to_contain_text("onerror=")
        svg = page.locator('details.artifact[data-artifact="evil.svg"] .artifact-body')
        expect(svg).to_contain_text("download it")
        # The step output, log line and error are on the page too, as text.
        expect(page.locator("body")).to_contain_text("failed: <script>")
        active = page.evaluate(ACTIVE_ELEMENTS)
        # A javascript: link that survived would run when clicked: click every agent link there is.
        for link in page.locator("#report-body a, .artifact-body a").all():
            href = link.get_attribute("href") or ""
            assert href.startswith(("http://", "https://", "mailto:", "/")), href
        # The raw files themselves, opened in the browser with the session cookie.
        with browsing.console.allow(r"Content Security Policy|sandbox|Blocked script"):
            raw_page = browsing.page()
            for name in ("evil.html", "evil.svg"):
                raw_page.goto(f"{server.url}/v1/runs/{run_id}/artifacts/{artifacts[name]}")
                expect(raw_page.locator("body, svg").first).to_be_attached()
        assert pwned == [], f"agent output ran script: {pwned}"
        assert dialogs == [], dialogs
        assert active == [], f"active elements from agent output in the page: {active}"
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get(f"/v1/runs/{run_id}/artifacts/{artifacts['evil.html']}").status_code == 401
