"""The web console (/ui/, docs/ui.md) in Debian's headless chromium, driven by Playwright, against the real stack:
the API under gunicorn (two workers, so a session signed by one is read by the other) and the events process
behind nginx with the project's own template (one origin, as deployed), a worker and the ComfyUI stand-in, on a
database of the module's own. One stack and one browser for the module; every page fails its test if it logs a
JavaScript error. COMFYQ_UI_SCREENSHOTS=<folder> saves a screenshot of each page there (docs/ui/)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from comfyq import tokens
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.stack import start_api
from tests.conftest import SQL_DIR, scratch_database
from tests.e2e_support import TINY_GRAPH, Stack
from tests.support.events_client import start_events
from tests.test_front_door import start_nginx

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")  # Debian's (make system-tools); Playwright downloads no browser of its own
STREAM_SECRET = "console-test-stream-secret-" + "x" * 16
ASSETS = Path(__file__).resolve().parents[1] / "comfyq" / "api" / "console" / "static"


@dataclass
class Console:
    base: str
    db: Database
    queue: JobQueue
    browser: Browser
    token_a: str
    token_b: str


@pytest.fixture(scope="module")
def console(server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system-tools` (Debian's chromium)"
    tmp = tmp_path_factory.mktemp("console")
    with contextlib.ExitStack() as stack, scratch_database(server_url, template_db) as db_url:
        db = Database(db_url, SQL_DIR, max_size=4)
        stack.callback(db.close)
        procs = Stack(tmp, db_url)
        stack.callback(procs.close)
        procs.standin("--sampler-step-seconds", "0.1")
        procs.worker("w1")
        env = {"DATABASE_URL": db_url, "COMFYQ_EVENTS_STREAM_SECRET": STREAM_SECRET,
               "COMFYQ_STORAGE_DIR": str(procs.storage_dir), "COMFYQ_TOKEN_CACHE_SECONDS": "0"}
        api, api_url = start_api(tmp / "logs", env, workers=2)
        stack.callback(api.stop)
        events, events_url = start_events(tmp / "logs", env)
        stack.callback(events.stop)
        nginx, port = start_nginx(tmp / "nginx", api_url.removeprefix("http://"), events_url.removeprefix("http://"))
        stack.callback(nginx.stop)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        stack.callback(browser.close)
        token_a, token_b = (tokens.create(db, tenant, "submitter").token for tenant in ("tenant-a", "tenant-b"))
        yield Console(f"http://127.0.0.1:{port}", db, JobQueue(db, lease_seconds=30), browser, token_a, token_b)


@contextlib.contextmanager
def browsing(console: Console, *, width: int = 1280, height: int = 900) -> Iterator[tuple[BrowserContext, Page]]:
    """A fresh browser context (no cookies) and page; any JavaScript error it logs fails the test."""
    context = console.browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield context, page
        assert not errors, f"the page logged JavaScript errors: {errors}"
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("COMFYQ_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def sign_in(console: Console, page: Page, token: str) -> None:
    page.goto(f"{console.base}/ui/")
    expect(page).to_have_url(f"{console.base}/ui/signin?next=/ui/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()


def test_a_wrong_token_is_refused_and_pages_need_a_session(console: Console) -> None:
    with browsing(console) as (context, page):
        page.goto(f"{console.base}/")
        expect(page).to_have_url(re.compile(r"/ui/signin\?next=/$"))
        screenshot(page, "signin")
        page.get_by_label("API token").fill(tokens.generate())
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not accepted")
        for path in ("/ui/jobs", "/ui/submit", "/ui/jobs/1"):
            answer = context.request.get(console.base + path, max_redirects=0)
            assert answer.status == 302 and "/ui/signin" in answer.headers["location"], path
        page.goto(f"{console.base}/ui/signin")  # a session with a CSRF token, but no sign-in
        csrf = page.locator("input[name=csrf_token]").first.input_value()
        answer = context.request.post(f"{console.base}/ui/submit", form={"csrf_token": csrf, "workflow": "txt2img",
                                                                          "prompt": "x"}, max_redirects=0)
        assert answer.status == 401
        cookie = next(c for c in context.cookies() if c["name"] == "comfyq_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui/"


def test_submit_a_template_job_and_watch_it_succeed_live(console: Console) -> None:
    with browsing(console) as (_, page):
        sign_in(console, page, console.token_a)
        page.get_by_role("link", name="Submit").click()
        page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
        page.get_by_label("Width").fill("100")  # not a multiple of 8: the API's own message, next to the field
        page.get_by_label("Priority").fill("lots")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#e-priority")).to_contain_text("valid integer")
        page.get_by_label("Priority").fill("3")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#e-width")).to_contain_text("is not a multiple of 8")
        expect(page.get_by_label("Prompt", exact=True)).to_have_value("a lighthouse at dusk")
        screenshot(page, "submit")
        page.get_by_label("Width").fill("64")
        page.get_by_label("Height").fill("64")
        page.get_by_label("Steps").fill("10")
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_role("heading", name="Job #")).to_be_visible()
        page.evaluate("window.loadedOnce = true")  # gone if the page reloads
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
        image = page.locator("#job-outputs img").first
        expect(image).to_be_visible()
        assert page.evaluate("window.loadedOnce === true"), "the page was reloaded"
        assert page.evaluate("document.querySelector('#job-outputs img').naturalWidth") > 0
        expect(page.locator("#job-timeline")).to_contain_text("succeeded")
        assert page.locator("#job-progress").evaluate("el => el.value") == 1
        job_id = int(page.url.rsplit("/", 1)[1])
        row = console.queue.get(job_id, "tenant-a")
        assert row is not None and row["priority"] == 3 and row["params"]["prompt"] == "a lighthouse at dusk"
        screenshot(page, "job")


def test_cancel_a_queued_job_from_the_list_and_a_post_without_csrf_is_refused(console: Console) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = console.queue.enqueue(NewJob(graph=TINY_GRAPH, tenant="tenant-a", run_at=later))["id"]
    with browsing(console) as (context, page):
        sign_in(console, page, console.token_a)
        page.get_by_label("Status").select_option("queued")
        page.get_by_role("button", name="Filter").click()
        row = page.locator(f"tr[data-job-id='{job_id}']")
        expect(row).to_contain_text("queued")
        screenshot(page, "jobs")
        refused = context.request.post(f"{console.base}/ui/jobs/{job_id}/cancel", max_redirects=0)
        assert refused.status == 403
        assert console.queue.status(job_id, "tenant-a") == "queued"
        page.get_by_role("button", name=f"Cancel job {job_id}").click()
        expect(page.get_by_role("status")).to_contain_text(f"Job {job_id}: cancel requested")
        assert console.queue.status(job_id, "tenant-a") == "canceled"


def test_tenant_b_never_sees_tenant_a_jobs(console: Console) -> None:
    job_id = console.queue.enqueue(NewJob(graph=TINY_GRAPH, tenant="tenant-a",
                                          run_at=datetime.now(UTC) + timedelta(hours=1)))["id"]
    with browsing(console) as (context, page):
        sign_in(console, page, console.token_b)
        expect(page.locator(f"tr[data-job-id='{job_id}']")).to_have_count(0)
        assert context.request.get(f"{console.base}/ui/jobs/{job_id}").status == 404
        assert context.request.get(f"{console.base}/ui/jobs/{job_id}/outputs/0").status == 404
        csrf = page.locator("input[name=csrf_token]").first.input_value()
        answer = context.request.post(f"{console.base}/ui/jobs/{job_id}/cancel", form={"csrf_token": csrf})
        assert answer.ok and f"no job {job_id}" in answer.text()
        assert console.queue.status(job_id, "tenant-a") == "queued"
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_label("API token")).to_be_visible()


def test_pages_fit_a_phone_and_assets_stay_small(console: Console) -> None:
    assert sum(f.stat().st_size for f in ASSETS.iterdir()) < 100_000
    with browsing(console, width=390, height=844) as (_, page):
        sign_in(console, page, console.token_a)
        for path in ("/ui/jobs", "/ui/submit"):
            page.goto(console.base + path)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), path
        screenshot(page, "phone-submit")


def submit_form(page: Page) -> None:
    """The submit page's template form, filled for a small, quick txt2img job."""
    page.get_by_role("link", name="Submit").click()
    page.get_by_label("Prompt", exact=True).fill("a sweep")
    for label, value in (("Width", "64"), ("Height", "64"), ("Steps", "1")):
        page.get_by_label(label, exact=True).fill(value)


def test_a_sweep_is_one_batch_with_the_batch_limits_and_messages(console: Console) -> None:
    with browsing(console) as (context, page):
        sign_in(console, page, console.token_a)
        submit_form(page)
        page.get_by_label("Vary").select_option("seed")
        page.get_by_label("From").fill("1")
        page.get_by_label("To").fill("10001")  # one more than COMFYQ_MAX_BATCH_JOBS: the batch's own refusal
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#e-sweep")).to_have_text("a batch holds at most 10000 jobs")
        page.get_by_label("Vary").select_option("prompt")
        page.get_by_label("Values, one per line").fill("a red barn\n\na blue barn\na green barn\n")
        page.get_by_label("Width", exact=True).fill("100")  # every item shares it: said once, next to the field
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#e-width")).to_contain_text("is not a multiple of 8")
        expect(page.locator("#form-error")).to_contain_text("3 item(s) are invalid; nothing was written")
        page.get_by_label("Width", exact=True).fill("64")
        page.get_by_label("Values, one per line").fill("a red barn\n" + "x" * 10_001 + "\na green barn")
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#e-sweep")).to_have_text("line 2: longer than 10000 characters")
        page.locator("#e-sweep").scroll_into_view_if_needed()
        screenshot(page, "submit-sweep")
        page.get_by_label("Vary").select_option("seed")
        page.get_by_label("To").fill("5")
        key = page.locator("input[name=submission_key]").input_value()
        form = page.evaluate("Object.fromEntries(new FormData(document.querySelector('form[method=post].card')))")
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_role("heading", name="Batch of 5 jobs")).to_be_visible()
        assert page.url.endswith(f"/ui/batches/{key}")
        ids = [int(i) for i in page.locator("#batch-jobs li").evaluate_all("items => items.map(i => i.dataset.jobId)")]
        rows = [console.queue.get(job_id, "tenant-a") for job_id in ids]
        assert [(r or {}).get("params", {}).get("seed") for r in rows] == [1, 2, 3, 4, 5]
        assert {(r or {})["params"]["prompt"] for r in rows} == {"a sweep"}
        screenshot(page, "batch")
        # The same form again (a double click, a resent POST): the batch's Idempotency-Key answers with its jobs.
        again = context.request.post(f"{console.base}/ui/submit", form=form, max_redirects=0)
        assert again.status == 303 and again.headers["location"].endswith(f"/ui/batches/{key}")
        assert [r["id"] for r in console.queue.submission_jobs("tenant-a", key) or []] == ids
        assert context.request.get(f"{console.base}/ui/batches/{key}").ok
        with browsing(console) as (other_context, other):  # another tenant cannot open it
            sign_in(console, other, console.token_b)
            refused = other_context.request.get(f"{console.base}/ui/batches/{key}")
            assert refused.status == 404 and "No such batch." in refused.text()


def test_download_an_output_and_resubmit_a_job(console: Console) -> None:
    with browsing(console) as (_, page):
        sign_in(console, page, console.token_a)
        submit_form(page)
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)
        first = int(page.url.rsplit("/", 1)[1])
        with page.expect_download() as download:
            page.get_by_role("link", name=re.compile(r"^Download output 0")).click()
        assert Path(download.value.path()).read_bytes().startswith(b"\x89PNG")
        assert download.value.suggested_filename.endswith(".png")
        page.get_by_role("button", name="Re-submit as a new job").click()
        expect(page.get_by_role("status").first).to_contain_text(f"a re-submission of job {first}")
        second = int(page.url.rsplit("/", 1)[1])
        assert second != first
        old, new = console.queue.get(first, "tenant-a"), console.queue.get(second, "tenant-a")
        assert old is not None and new is not None
        assert new["workflow"] == old["workflow"] == "txt2img" and new["params"] == old["params"]  # the seed too
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)


# Fails at execution in the stand-in as in ComfyUI: a blur radius at least the image's size cannot be padded.
FAILING_GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 1}},
                 "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 20, "sigma": 1.0}},
                 "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}}}


def test_a_failed_job_shows_its_error_readably_and_retries(console: Console) -> None:
    later = datetime.now(UTC) + timedelta(seconds=2)  # the page is open (and live) before the job runs
    job_id = console.queue.enqueue(NewJob(graph=FAILING_GRAPH, tenant="tenant-a", max_attempts=1, run_at=later))["id"]
    with browsing(console) as (_, page):
        sign_in(console, page, console.token_a)
        page.goto(f"{console.base}/ui/jobs/{job_id}")
        expect(page.locator("#job-retry")).to_be_hidden()
        expect(page.locator("#job-status")).to_have_text("failed", timeout=30_000)
        expect(page.locator("#job-error-type")).to_have_text("execution_error")
        expect(page.locator("#job-error-message")).to_contain_text("Padding size should be less than")
        expect(page.locator("#job-error-node")).to_have_text("2 (ImageBlur)")
        expect(page.locator("#job-error-traceback")).to_contain_text("File ")
        expect(page.locator("#job-error-details-box")).to_be_visible()
        assert "{" not in page.locator("#job-error dl").inner_text(), "the error is shown as fields, not JSON"
        live = page.locator("#job-error").inner_text()
        page.reload()  # the server's rendering of the same error says the same
        expect(page.locator("#job-error-traceback")).to_be_visible()
        assert page.locator("#job-error").inner_text() == live
        screenshot(page, "job-failed")
        page.get_by_role("button", name="Retry this job").click()
        expect(page.get_by_role("status").first).to_contain_text(f"Job {job_id}: queued again")
        expect(page.locator("#job-status")).to_have_text("failed", timeout=30_000)
        expect(page.locator("#job-timeline li", has_text="failed")).to_have_count(2)
        row = console.queue.get(job_id, "tenant-a")
        assert row is not None and row["status"] == "failed" and row["error"]["details"]["node_type"] == "ImageBlur"
