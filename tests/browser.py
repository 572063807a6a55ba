"""Headless Chromium (Debian's) driven by Playwright: load a page as a person would and
report what they would see: console errors, a screenshot, the numbers marked on it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import need

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's notes say: without these, Chromium keeps reaching for the network.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@dataclass
class Page:
    console_errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    marked: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (value, text)
    svg_count: int = 0
    drawn_series: int = 0
    title: str = ""


def open_page(path: Path, width: int = 1200) -> Page:
    need(os.path.exists(CHROMIUM), "needs Debian's chromium (make install as root)")
    playwright = pytest.importorskip("playwright.sync_api")
    page_info = Page()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on(
                "console",
                lambda m: page_info.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: page_info.console_errors.append(str(e)))
            page.on("requestfailed", lambda r: page_info.console_errors.append(f"request {r.url}"))
            page.goto(path.resolve().as_uri(), wait_until="load")
            page_info.title = page.title()
            page_info.screenshot = page.screenshot(full_page=True)
            page_info.marked = {
                k: (v, t)
                for k, v, t in page.eval_on_selector_all(
                    "[data-key]",
                    "els => els.map(e => [e.dataset.key, e.dataset.value, e.textContent])",
                )
            }
            page_info.svg_count = page.locator("svg").count()
            page_info.drawn_series = page.eval_on_selector_all(
                "polyline.series, rect.segment",
                "els => els.filter(e => { const b = e.getBBox(); return b.width > 0 && b.height >= 0; }).length",
            )
        finally:
            browser.close()
    return page_info


def ink_fraction(png: bytes) -> float:
    """Share of pixels that are not (near) white: a blank page gives 0."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    histogram = image.histogram()
    dark = sum(histogram[:240])
    return dark / max(sum(histogram), 1)


def json_value(doc: object, key: str) -> object:
    """doc at a path like arms[1].metrics.wait_to_run_ratio."""
    import re

    value = doc
    for name, index in re.findall(r"([A-Za-z_0-9]+)|\[(\d+)\]", key):
        if name:
            assert isinstance(value, dict)
            value = value[name]
        else:
            assert isinstance(value, list | tuple)
            value = value[int(index)]
    return value
