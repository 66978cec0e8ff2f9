"""Screenshot of the built site's start page, rendered by headless Chromium.

Usage (``make docs-screenshot`` builds the site first)::

    python docs/screenshot.py [SITE_DIR] [OUT_PNG]

Serves SITE_DIR (default ``site``) on a local port, checks that every picture the start page
shows is in the site, and saves Chromium's rendering of the page to OUT_PNG (default
``docs/images/site_start_page.png``, which the README shows).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "headless Chromium is needed: on Debian/Ubuntu `sudo apt-get install -y chromium`, on "
    "macOS `brew install --cask chromium`; or put a chromium/google-chrome binary on PATH"
)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without logging each request."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


def find_browser() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def page_images(site: Path) -> list[str]:
    """The local pictures (``<img src>``) of the start page; raises if one is not in the site."""
    html = (site / "index.html").read_text(encoding="utf-8")
    sources = [s for s in re.findall(r'<img[^>]*\ssrc="([^"]+)"', html) if "://" not in s]
    missing = [s for s in sources if not (site / s).is_file()]
    if missing:
        raise FileNotFoundError(f"start page pictures missing from {site}: {missing}")
    return sources


def screenshot(site: Path, out: Path, width: int = 1280, height: int = 1250) -> Path:
    """Serve ``site`` locally and save headless Chromium's rendering of its start page."""
    browser = find_browser()
    if browser is None:
        raise RuntimeError(INSTALL_HINT)
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",  # needed when run as root (containers, CI)
                "--disable-gpu",
                "--hide-scrollbars",
                "--virtual-time-budget=5000",  # let pictures load before the capture
                f"--window-size={width},{height}",
                f"--screenshot={out.resolve()}",
                f"http://127.0.0.1:{server.server_port}/",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        server.shutdown()
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"{browser} wrote no screenshot to {out}")
    return out


def main(argv: list[str]) -> int:
    """Check the start page's pictures, then save the screenshot; 1 on failure."""
    site = Path(argv[0] if argv else "site")
    out = Path(argv[1] if len(argv) > 1 else "docs/images/site_start_page.png")
    if not (site / "index.html").is_file():
        print(f"no built site in {site}/: run `make docs` first", file=sys.stderr)
        return 1
    try:
        images = page_images(site)
        screenshot(site, out)
    except (RuntimeError, FileNotFoundError, subprocess.SubprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{out}: start page with {len(images)} picture(s): {', '.join(images) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
