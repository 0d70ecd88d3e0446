"""akd's pages in a real browser: Debian's Chromium, driven by Playwright for Python (``playwright install`` cannot
download browsers here, so the system Chromium is named). Under CI=true a missing browser fails; elsewhere these
tests skip with the reason."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from torch import nn

from akd.data.preprocessing import Preprocessing
from akd.models.teachers import _module_teacher

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
    from akd.models.surrogate import read_checkpoint

    _, header = read_checkpoint(tiny_checkpoint)
    pre = json.loads(header["config"])["preprocessing"]
    torch.manual_seed(0)
    target = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(8, 10))
    teacher = _module_teacher(target, Preprocessing(64, tuple(pre["mean"]), tuple(pre["std"])), {"name": "tiny"})
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
