"""Browser tests: the search page in headless Chromium against the local twin."""
