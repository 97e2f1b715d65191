"""What the Lambda package is built from and how scripts/check_package.py judges it.

The layers are built for Lambda's python3.12 from requirements/runtime.lock while laptops and
tests run python3.11 from requirements/dev.lock: both must pin the same versions, since index
and query have to decode, resize and embed identically wherever they run.
"""

from __future__ import annotations

import py_compile
import re
import subprocess
import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from scripts import check_package
from tests.conftest import REPO_ROOT

LOCKS = REPO_ROOT / "requirements"


def pins(lock: Path) -> dict[str, str]:
    """Normalised distribution name -> pinned version."""
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", lock.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


def test_the_lambda_lock_pins_exactly_the_versions_development_runs() -> None:
    runtime, dev = pins(LOCKS / "runtime.lock"), pins(LOCKS / "dev.lock")

    assert {"numpy", "pillow", "imagehash", "scipy", "onnxruntime", "pydantic"} <= set(runtime)
    assert {name: (version, dev.get(name)) for name, version in runtime.items() if dev.get(name) != version} == {}


def test_the_lambda_lock_is_resolved_for_the_lambda_runtime() -> None:
    header = (LOCKS / "runtime.lock").read_text().splitlines()[1]

    assert "--python-version 3.12" in header
    # Amazon Linux 2023 under python3.12 has glibc 2.34: manylinux_2_28 wheels run there.
    assert "--python-platform x86_64-manylinux_2_28" in header
    assert "--generate-hashes" in header


def spec_of(name: str, folder: Path) -> ModuleSpec:
    spec = PathFinder.find_spec(name, [str(folder)])
    assert spec is not None
    return spec


def test_only_bytecode_used_as_it_is_counts_as_ready_for_a_read_only_layer(tmp_path: Path) -> None:
    # Given four modules: compiled without source, with an unchecked-hash .pyc, with a
    # timestamp .pyc (Python compares it with the source's mtime), and not compiled at all
    for name in ("sourceless", "unchecked", "timestamped", "plain"):
        (tmp_path / f"{name}.py").write_text(f"NAME = {name!r}\n")
    py_compile.compile(str(tmp_path / "sourceless.py"), cfile=str(tmp_path / "sourceless.pyc"), doraise=True)
    (tmp_path / "sourceless.py").unlink()
    for name, mode in (("unchecked", "UNCHECKED_HASH"), ("timestamped", "TIMESTAMP")):
        py_compile.compile(
            str(tmp_path / f"{name}.py"), doraise=True, invalidation_mode=py_compile.PycInvalidationMode[mode]
        )

    # When the check looks at how each would be imported
    ready = {name: check_package._bytecode_used_as_is(spec_of(name, tmp_path)) for name in
             ("sourceless", "unchecked", "timestamped", "plain")}  # fmt: skip

    # Then only the first two are never compiled or rechecked at import
    assert ready == {"sourceless": True, "unchecked": True, "timestamped": False, "plain": False}


def test_an_interpreter_is_found_by_its_version_or_reported_missing() -> None:
    running = f"{sys.version_info.major}.{sys.version_info.minor}"

    found = check_package.find_python(running)

    assert found is not None
    version = subprocess.run(
        [str(found), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == running
    assert check_package.find_python("2.1") is None
    assert "pyenv install 2.1" in check_package.no_python_message("2.1")
