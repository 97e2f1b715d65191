"""`lookalike serve` as a user runs it, for the tests: a real process on a free loopback port."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_SECONDS = 180
BANNER = "lookalike serving on "


@contextmanager
def running_twin(data_dir: Path, *serve_options: str) -> Iterator[tuple[str, str]]:
    """Start `lookalike --data-dir DATA_DIR serve --port 0 OPTIONS...`; yield (base URL, banner line).

    The cloud's variables are removed from its environment (the embedded stores only) and the
    model gets one thread. Its stderr goes to DATA_DIR/stderr.log; SIGINT stops it as Ctrl-C would.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKALIKE_", "MILVUS_", "OPENSEARCH_"))}
    env["LOOKALIKE_MODEL_THREADS"] = "1"
    command = [sys.executable, "-m", "lookalike.cli", "--data-dir", str(data_dir), "serve", "--", "--port", "0"]
    with (data_dir / "stderr.log").open("w") as log:
        process = subprocess.Popen([*command, *serve_options], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()

        def read_stdout() -> None:
            for line in process.stdout or []:
                lines.put(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=STARTUP_SECONDS)
                except queue.Empty:
                    pytest.fail(f"lookalike serve did not start; see {data_dir / 'stderr.log'}")
                if line.startswith(BANNER):
                    break
            yield line.split()[3], line
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
