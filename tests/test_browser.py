"""akd's pages in a real browser - report.html and akd-serve's live page: Debian's Chromium, driven by
Playwright for Python (``playwright install`` cannot download browsers here, so the system Chromium is named).
Under CI=true a missing browser fails; elsewhere these tests skip with the reason."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    if missing:
        message = f"browser tests need {' and '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_report_html_opens_with_every_image_loaded_and_sorts(browser, tiny_checkpoint, flat_folder, tmp_path):
    from akd.evaluation.report import EvalOptions, evaluate

    from conftest import tiny_eval_target

    teacher = tiny_eval_target(tiny_checkpoint)
    options = EvalOptions(models=[str(tiny_checkpoint)], data=str(flat_folder), out=str(tmp_path / "report"),
                          methods=("akd", "rise"), limit=5, rise_masks=30)
    report = evaluate(options, teacher, progress=False)
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto((tmp_path / "report" / "report.html").as_uri(), wait_until="load")
    images = page.eval_on_selector_all("img", "all => all.map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 5 + 2 * 5 + 1 and all(done and width > 0 for done, width in images), images
    margins = {row["image"]: row["insertion"] for row in report["results"]["akd"]["per_image"]}
    rise = {row["image"]: row["insertion"] for row in report["results"]["rise"]["per_image"]}
    expected = sorted(margins, key=lambda name: margins[name] - rise[name])

    def order() -> list[str]:
        return page.eval_on_selector_all("#gallery tbody tr", "rows => rows.map(r => r.dataset.name)")

    page.click("#loses")
    assert order() == expected
    page.click("#wins")
    assert order() == expected[::-1]
    page.click("#names")
    assert order() == sorted(expected)
    assert not errors, errors
    page.close()


@contextlib.contextmanager
def live_server(engine, source: str):
    """akd-serve's app on a free port of 127.0.0.1, its pipeline reading ``source``."""
    import uvicorn

    from akd.runtime.live import LivePipeline, create_app

    pipeline = LivePipeline(engine, source).start()
    server = uvicorn.Server(uvicorn.Config(create_app(pipeline), host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/", pipeline
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        pipeline.stop()


def _counted(engine) -> dict[str, int]:
    """Count the model's real calls: the runner's own infer/submit, wrapped."""
    calls = {"batches": 0}
    for name in ("infer", "submit"):
        original = getattr(engine.runner, name)

        def counting(batch, original=original):
            calls["batches"] += 1
            return original(batch)

        setattr(engine.runner, name, counting)
    return calls


def _poll(page, script: str, timeout: float = 30.0):
    """An MJPEG page never finishes loading: poll the DOM until ``script`` is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def test_live_page_streams_updates_and_shares_one_model_run(browser, shipped_onnx):
    from akd.runtime import SaliencyEngine

    clip = Path(__file__).resolve().parents[1] / "examples" / "bottles.mp4"
    with SaliencyEngine.load(str(shipped_onnx)) as engine:
        calls = _counted(engine)
        with live_server(engine, str(clip)) as (url, pipeline):
            first = browser.new_page()
            first.goto(url, wait_until="commit")
            _poll(first, "document.getElementById('live').naturalWidth > 0")
            _poll(first, "document.querySelectorAll('#top li').length === 5")
            frames = int(_poll(first, "parseInt(document.getElementById('frames').textContent) > 0 && "
                                      "document.getElementById('frames').textContent"))
            shot = first.locator("#live").screenshot()
            _poll(first, f"parseInt(document.getElementById('frames').textContent) > {frames + 10}")
            assert first.locator("#live").screenshot() != shot  # the overlay moves with the clip
            assert first.text_content("#fps") != "-"
            second = browser.new_page()
            second.goto(url, wait_until="commit")
            _poll(second, "document.getElementById('live').naturalWidth > 0")
            _poll(first, "document.getElementById('viewers').textContent === '2'")
            before = (calls["batches"], pipeline.latest.sequence)
            time.sleep(2.0)
            after = (calls["batches"], pipeline.latest.sequence)
            produced = after[1] - before[1]
            assert produced > 0 and abs((after[0] - before[0]) - produced) <= 2  # one model call per frame
            first.click("#pause")
            _poll(first, "document.getElementById('state').textContent === 'paused'")
            paused_at = pipeline.latest.sequence
            time.sleep(1.0)
            assert pipeline.latest.sequence <= paused_at + 1
            first.click("#pause")
            _poll(first, f"parseInt(document.getElementById('frames').textContent) > {paused_at + 2}")
            first.close()
            second.close()


def test_live_page_says_when_the_source_ended(browser, shipped_onnx, tmp_path):
    from akd.runtime import SaliencyEngine
    from akd.runtime.video import demo_clip

    clip = demo_clip(tmp_path / "short.avi", frames=12, size=(160, 120))
    with SaliencyEngine.load(str(shipped_onnx)) as engine, live_server(engine, str(clip)) as (url, pipeline):
        page = browser.new_page()
        page.goto(url, wait_until="commit")
        message = _poll(page, "document.getElementById('state').className === 'ended' && "
                              "document.getElementById('state').textContent")
        assert "the source ended" in message and pipeline.latest.sequence == 12
        page.close()
