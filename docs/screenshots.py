"""Screenshots of the main pages at desktop and phone size, for the README (issue 11).

Starts `bin/serve` with the sample photographs (ViT-S-32 with random weights unless CLIP_MODEL /
CLIP_RANDOM_INIT say otherwise: the order of results is meaningless, the pages are real), drives
Debian's Chromium through playwright, writes docs/screenshots/<page>-<desktop|phone>.jpg, stops.

    .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.first_search import serving  # noqa: E402 - after the path is set

OUT = ROOT / "docs" / "screenshots"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def main() -> None:
    from playwright.sync_api import sync_playwright

    data_dir = str(ROOT / "var" / "screenshots")
    OUT.mkdir(parents=True, exist_ok=True)
    with serving(data_dir) as (base, _ready_after):
        password = secrets.token_urlsafe(16)
        subprocess.run([sys.executable, "manage.py", "shell", "-c",
                        "from django.contrib.auth.models import User; User.objects.filter(username='screenshots').delete(); "
                        f"User.objects.create_superuser('screenshots', '', '{password}')"],
                       cwd=ROOT, env={**os.environ, "IMAGESEARCH_DATA_DIR": data_dir}, check=True,
                       stdout=subprocess.DEVNULL)
        with urllib.request.urlopen(f"{base}/api/images/?page_size=2") as response:
            images = json.load(response)["results"]
        pages = {"browse": "/", "results": "/?q=a+cup+of+coffee+on+a+table",
                 "more-like-this": f"/?similar_to={images[0]['id']}", "detail": f"/images/{images[1]['id']}/",
                 "invalid": "/?top_k=50", "import": "/imports/"}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            for size, (width, height) in SIZES.items():
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.goto(f"{base}/accounts/login/")
                page.fill("input[name=username]", "screenshots")
                page.fill("input[name=password]", password)
                page.click("form.login button[type=submit]")
                page.wait_for_load_state()
                for name, path in pages.items():
                    page.goto(base + path)
                    page.wait_for_load_state("networkidle")
                    page.screenshot(path=str(OUT / f"{name}-{size}.jpg"), type="jpeg", quality=80)
                    print(OUT / f"{name}-{size}.jpg")
            browser.close()


if __name__ == "__main__":
    main()
