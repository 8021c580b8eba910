"""Screenshots of the viewer for the docs: `python scripts/screenshots.py` (needs Chromium).

Runs `card demo` and photographs the viewer at 400 px (a VS Code side panel) and at full width.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import CHROMIUM, CHROMIUM_FLAGS, launch  # noqa: E402
from playwright.async_api import async_playwright  # noqa: E402

SHOTS = {"viewer-400.png": (400, 860), "viewer-wide.png": (1400, 860)}


async def main() -> None:
    server = launch(["demo", "--interval", "0.4"], Path(tempfile.mkdtemp()))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                       args=CHROMIUM_FLAGS)
            for name, (width, height) in SHOTS.items():
                page = await browser.new_page(viewport={"width": width, "height": height})
                await page.goto(server.url)
                await page.wait_for_selector("#frames iframe:not(.incoming)")
                await page.wait_for_timeout(4000)  # let the demo run a few updates for the picture
                await page.screenshot(path=str(REPO / "docs" / name))
                print("wrote", REPO / "docs" / name)
            await browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
