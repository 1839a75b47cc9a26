"""``report.pdf``: ``report.html`` printed by a headless Chromium (A4, the report's ``@media print`` rules);
the cohort's ``cohort_report.pdf`` likewise.

The browser is looked up once on ``PATH`` (:func:`find_browser`: ``chromium``,
``chromium-browser``, ``google-chrome``, ``google-chrome-stable``, or the
``TIBSPACE_BROWSER`` environment variable). Without one the PDF is skipped with
a one-line note; a browser that fails is also one line, never an error of the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Why a PDF was not printed when no browser is found.
NO_BROWSER = "no Chromium/Chrome found (install chromium or set TIBSPACE_BROWSER)"

#: Chromium flags for a quiet, offline, throw-away headless session.
HEADLESS_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def find_browser() -> Optional[str]:
    """Path of a Chromium-family browser (``TIBSPACE_BROWSER`` first), or None."""
    env = os.environ.get("TIBSPACE_BROWSER")
    for name in ((env,) if env else ()) + BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def headless_command(browser: str, profile: Path, *args: str) -> list[str]:
    """The command line of one headless Chromium call with a private profile folder."""
    return [browser, *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args]


def print_pdf(html: Path, pdf: Path, *, browser: Optional[str] = None, timeout_s: float = 120.0) -> Optional[str]:
    """Print ``html`` to ``pdf``; returns None when written, else a one-line note why not.

    The file appears whole or not at all (written beside, then renamed).
    """
    html, pdf = Path(html).resolve(), Path(pdf)
    browser = browser or find_browser()
    if browser is None:
        return f"{pdf.name} skipped: {NO_BROWSER}"
    tmp = pdf.with_name(f".{pdf.name}.part")
    with tempfile.TemporaryDirectory(prefix="tibspace-chromium-") as profile:
        cmd = headless_command(browser, Path(profile), "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw",
                               f"--print-to-pdf={tmp}", html.as_uri())
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError) as exc:
            tmp.unlink(missing_ok=True)
            return f"{pdf.name} skipped: {Path(browser).name} failed ({type(exc).__name__})"
    if not tmp.exists() or tmp.read_bytes()[:5] != b"%PDF-":
        tmp.unlink(missing_ok=True)
        return f"{pdf.name} skipped: {Path(browser).name} wrote no PDF"
    tmp.replace(pdf)
    return None
