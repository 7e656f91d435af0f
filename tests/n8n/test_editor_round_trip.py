"""The editor round trip on the real thing: the pinned n8n, prepared and started as the n8n tests do it, and its
editor in a real headless browser (Debian's chromium driven by Playwright), signed in through the sign-in form as
the owner n8n makes from the environment. Opening every comfyq workflow, double-clicking every node (its panel opens
and is closed; a sticky note's text editor opens and is left) and waiting past the editor's autosave saves nothing:
the browser writes no workflow, none gains a version in n8n's workflow history, each published one still shows
"Published" (a draft would show "Publish"), and `make n8n-export` (n8nctl.export) gives the committed files back
byte for byte. Then the operator's round trip of docs/n8n.md ("Editing a workflow"): the cleanup's schedule changed
in the editor and saved, and the export differs from the committed files by exactly that line."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Page, Request, sync_playwright

from n8n import n8nctl
from tests.n8n.conftest import Prepared, _start_n8n

LOG = logging.getLogger(__name__)
pytestmark = [pytest.mark.n8n, pytest.mark.slow, pytest.mark.timeout(420)]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (make system-tools); Playwright downloads no browser of its own
# The editor autosaves 1.5 s after a change and at most 5 s after the first of a burst (n8n-editor-ui's
# DEBOUNCE_TIME.API.AUTOSAVE and AUTOSAVE_MAX_WAIT). A change shows at once on its workflow's publish button
# (checked for each); after the last one the test waits longer than both, so any save it caused has been sent.
AUTOSAVE_WAIT_MS = 6_000
UI_TIMEOUT_MS = 30_000
QUIET_MS = 400  # a panel has settled once no REST call has been in flight for this long
# What the browser may send that writes a workflow or its history (reads are GETs, and POSTs elsewhere).
WORKFLOW_WRITE = re.compile(r"^/rest/(workflows|workflow-history)(/|$)")
CLEANUP_ID, CLEANUP_NAME = "comfyqCleanup001", "comfyq: daily cleanup"
CLEANUP_CRON, NEW_CLEANUP_CRON = "0 30 3 * * *", "0 0 4 * * *"


@dataclass
class Editor:
    """A fresh n8n of the test's own, prepared as `make n8n` prepares one, and how to sign in to it."""

    base_url: str
    env: dict[str, str]  # the instance's configuration (its user folder): what n8nctl.export takes
    email: str
    password: str

    def versions(self) -> dict[str, tuple[str, str | None, int]]:
        """Each workflow's current version, published version and number of versions in its history, read from
        n8n's own database (read-only, beside the running server)."""
        path = Path(self.env["N8N_USER_FOLDER"]) / ".n8n" / "database.sqlite"
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            history = dict(conn.execute("SELECT workflowId, count(*) FROM workflow_history GROUP BY workflowId"))
            return {wid: (version, active, history.get(wid, 0)) for wid, version, active in
                    conn.execute("SELECT id, versionId, activeVersionId FROM workflow_entity")}
        finally:
            conn.close()


class EditorTraffic:
    """The page's calls to n8n's REST API: those in flight (to tell when a panel has loaded what it loads) and
    every one that writes a workflow. The push connection stays open and is left out."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.in_flight: set[int] = set()
        self.workflow_writes: list[str] = []
        page.on("request", self._sent)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._done)

    def _sent(self, request: Request) -> None:
        path = urlsplit(request.url).path
        if not path.startswith("/rest/") or path.startswith("/rest/push"):
            return
        self.in_flight.add(id(request))
        if request.method != "GET" and WORKFLOW_WRITE.match(path):
            self.workflow_writes.append(f"{request.method} {path}")

    def _done(self, request: Request) -> None:
        self.in_flight.discard(id(request))

    def settle(self) -> None:
        """Until no REST call has been in flight for QUIET_MS (Playwright delivers events while it waits)."""
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET_MS / 1000:
            assert time.monotonic() < deadline, f"the editor still waits for {len(self.in_flight)} REST calls"
            self.page.wait_for_timeout(50)
            if self.in_flight:
                quiet_since = time.monotonic()


@pytest.fixture
def editor(tmp_path: Path, prepared: Prepared) -> Iterator[Editor]:
    """Its own user folder (a copy of the session's prepared one) and ports. Published workflows run on their
    schedules meanwhile, against the prepared instance's own database; whatever they would send goes to a port
    where nothing listens."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system-tools` (Debian's chromium)"
    env = prepared.copy(tmp_path / "user")
    run_env = n8nctl.runtime_env(env)
    run_env.update(n8nctl.owner_env(env))
    base_url = f"http://127.0.0.1:{env['N8N_PORT']}"
    process = _start_n8n(run_env, tmp_path / "logs", base_url)
    try:
        yield Editor(base_url=base_url, env=env, email=env["COMFYQ_N8N_OWNER_EMAIL"],
                     password=env["COMFYQ_N8N_OWNER_PASSWORD"])
    finally:
        process.stop(timeout=20)


@contextlib.contextmanager
def browser_page(screenshot: Path) -> Iterator[Page]:
    """A page in headless chromium; on any failure inside, a screenshot of what it showed goes to `screenshot`."""
    with sync_playwright() as playwright:
        playwright.selectors.set_test_id_attribute("data-test-id")  # n8n's attribute (Playwright's: data-testid)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            try:
                yield page
            except BaseException:
                with contextlib.suppress(PlaywrightError):
                    page.screenshot(path=screenshot)
                raise
        finally:
            browser.close()


def sign_in(page: Page, editor: Editor) -> None:
    """Through the sign-in form; n8n then shows the list of workflows."""
    page.goto(f"{editor.base_url}/signin")
    page.get_by_label("Email").fill(editor.email)
    page.get_by_label("Password").fill(editor.password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("resources-list-item-workflow").first.wait_for()


def open_from_the_list(page: Page, name: str, traffic: EditorTraffic) -> None:
    """Click the workflow in the list, as an operator opens it, and wait until the canvas has loaded it."""
    page.get_by_test_id("resources-list-item-workflow").filter(has=page.get_by_text(name, exact=True)).click()
    page.get_by_test_id("canvas-node").first.wait_for()
    traffic.settle()
    suggestions = page.get_by_test_id("suggested-actions-close")  # a "Production Checklist" may cover the canvas
    if suggestions.is_visible():
        suggestions.click()


def back_to_the_list(page: Page) -> None:
    page.go_back()
    page.get_by_test_id("resources-list-item-workflow").first.wait_for()


def open_and_close_every_node(page: Page, workflow: dict[str, Any], traffic: EditorTraffic) -> None:
    """Double-click each node: its panel opens and loads what it loads, then it is closed. A sticky note's
    double-click opens its text editor, which Escape leaves."""
    nodes = [node["name"] for node in workflow["nodes"] if node["type"] != "n8n-nodes-base.stickyNote"]
    shown = page.get_by_test_id("canvas-node").evaluate_all("els => els.map(e => e.getAttribute('data-node-name'))")
    assert sorted(shown) == sorted(nodes), f"{workflow['id']}: the canvas shows other nodes than the file"
    for name in nodes:
        page.locator(f'[data-test-id="canvas-node"][data-node-name="{name}"]').dblclick()
        panel = page.get_by_test_id("ndv")
        panel.wait_for()
        traffic.settle()
        page.get_by_test_id("ndv-close-button").click()
        panel.wait_for(state="hidden")
    stickies = page.get_by_test_id("sticky")
    assert stickies.count() == len(workflow["nodes"]) - len(nodes)
    for index in range(stickies.count()):
        stickies.nth(index).dblclick()
        text = stickies.nth(index).locator("textarea")
        text.press("Escape")
        text.wait_for(state="hidden")
    traffic.settle()


def publish_button(page: Page) -> str:
    """The header's publish button: "Published" while the editor holds the published version, "Publish" once
    it holds changes (or for a workflow never published)."""
    return page.get_by_test_id("workflow-open-publish-modal-button").inner_text().strip()


def change_cleanup_schedule_and_save(page: Page, traffic: EditorTraffic) -> None:
    """What an operator does: open the cleanup, its Schedule node, type another cron expression, close, save."""
    open_from_the_list(page, CLEANUP_NAME, traffic)
    page.locator('[data-test-id="canvas-node"][data-node-name="Schedule"]').dblclick()
    field = page.get_by_test_id("parameter-input-expression").locator("input")
    assert field.input_value() == CLEANUP_CRON
    field.fill(NEW_CLEANUP_CRON)
    field.press("Tab")
    page.get_by_test_id("ndv-close-button").click()
    page.get_by_test_id("ndv").wait_for(state="hidden")
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    while f"PATCH /rest/workflows/{CLEANUP_ID}" not in traffic.workflow_writes:
        assert time.monotonic() < deadline, f"the change was not saved: {traffic.workflow_writes}"
        page.wait_for_timeout(100)
    traffic.settle()


def exported(editor: Editor, folder: Path) -> dict[str, str]:
    """`make n8n-export` of the instance into a copy of n8n-workflows/: each committed file's name and new text."""
    shutil.copytree(n8nctl.WORKFLOWS_DIR, folder)
    written = n8nctl.export(editor.env, folder)
    assert sorted(p.name for p in written) == sorted(p.name for p in n8nctl.WORKFLOWS_DIR.glob("*.json"))
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.json"))}


def test_opening_every_node_in_the_editor_changes_nothing_and_an_edit_exports_as_itself(editor: Editor,
                                                                                         tmp_path: Path) -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in sorted(n8nctl.WORKFLOWS_DIR.glob("*.json"))}
    # The instance's settings workflow too: made from the environment at import, it is opened like the others.
    workflows = [*n8nctl.workflows(), json.loads(n8nctl.SETTINGS_TEMPLATE.read_text(encoding="utf-8"))]
    published = {*n8nctl.published_ids(), *n8nctl.INSTANCE_WORKFLOWS}
    versions = editor.versions()
    with browser_page(tmp_path / "failure.png") as page:
        traffic = EditorTraffic(page)
        sign_in(page, editor)
        for workflow in workflows:
            started = time.monotonic()
            open_from_the_list(page, workflow["name"], traffic)
            open_and_close_every_node(page, workflow, traffic)
            if workflow["id"] in published:  # a change shows at once, before the autosave sends it
                assert publish_button(page) == "Published", f"opening the nodes of {workflow['name']} changed it"
            LOG.info("opened %s and its %d nodes in %.1f s", workflow["id"], len(workflow["nodes"]),
                     time.monotonic() - started)
            back_to_the_list(page)
        page.wait_for_timeout(AUTOSAVE_WAIT_MS)
        assert traffic.workflow_writes == [], "opening nodes saved workflows"
        assert editor.versions() == versions, "a workflow gained a version in n8n's workflow history"
        started = time.monotonic()
        assert exported(editor, tmp_path / "opened") == committed
        LOG.info("exported in %.1f s", time.monotonic() - started)

        # The round trip docs/n8n.md describes: edit and save, export, and the diff is that change alone.
        change_cleanup_schedule_and_save(page, traffic)
        assert publish_button(page) == "Publish"
    edited = exported(editor, tmp_path / "edited")
    old, new = f'"expression": "{CLEANUP_CRON}"', f'"expression": "{NEW_CLEANUP_CRON}"'
    cleanup = next(name for name, text in committed.items() if f'"id": "{CLEANUP_ID}"' in text)
    assert committed[cleanup].count(old) == 1
    assert edited == {**committed, cleanup: committed[cleanup].replace(old, new)}
