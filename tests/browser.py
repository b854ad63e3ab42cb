"""Headless Debian chromium for the tests of the results page (apt-get install -y chromium; .ci/run
installs it). Without it the browser tests are skipped on a developer's machine and fail under CI,
where it must be."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
         "--no-first-run", "--disable-extensions"]


def chromium():
    """The browser's executable; skips the test without one (fails it under CI)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = "no chromium: apt-get update && apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def page_url(path, fragment=""):
    """A page file -> its file:// URL, with a #fragment when given."""
    return Path(path).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dom(path, fragment=""):
    """The page's DOM after its scripts ran and it loaded, as HTML text."""
    result = subprocess.run([chromium(), *FLAGS, "--dump-dom", page_url(path, fragment)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def screenshot(path, out, width=1200, height=900, fragment=""):
    """A PNG of the page's first width x height pixels at `out`."""
    result = subprocess.run([chromium(), *FLAGS, f"--window-size={width},{height}",
                             f"--screenshot={out}", page_url(path, fragment)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and Path(out).is_file(), result.stderr
    return out
