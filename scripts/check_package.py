"""Check what `sam build` produced before it is deployed: size, glibc, and a smoke test.

Run by ``make package-check`` after ``sam build``; exits 1 when any check fails.

1. Size: each function's code plus its layers, unzipped, must fit Lambda's 250 MB
   (262,144,000 bytes). A table shows where the bytes go.
2. glibc: no shared library in a layer may need a newer glibc or libstdc++ than the Amazon
   Linux that the function's runtime runs on. The build host's glibc proves nothing.
3. Smoke test, in a fresh interpreter of the runtime's Python version (python3.12 on PATH or
   from pyenv: see :func:`find_python`) that sees only what Lambda would (``-S``: no
   site-packages; ``-B``: nothing written, /opt is read-only; PYTHONPATH = the function's
   code, its layers and a stand-in for the boto3 the Lambda runtime ships): every shared
   object in the layers loads, every lookalike module imports, real signatures (decode,
   pHash, embedding with the model from the model layer) come out of a JPEG, a PNG and a
   HEIF image, each handler imports with the environment the template gives it, and the
   HTTP API's handler answers the OpenAPI document, a request that pydantic validates, and
   the page. This is what proves the layer's pruning, and its sourceless bytecode, safe.
4. Cold start: fresh interpreters import each handler, then what its first request imports;
   every layer module they load must come from bytecode that Lambda will use as it is (a
   module compiled at each cold start fails the check), and the times are printed.

``--find-python 3.12`` prints the interpreter it would use (the core layer's build uses it).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO_ROOT / ".aws-sam" / "build"

#: Lambda's limit on a function's code plus all its layers, unzipped (250 MiB).
UNZIPPED_LIMIT = 262_144_000


@dataclass(frozen=True, slots=True)
class LambdaOs:
    name: str
    glibc: tuple[int, int]
    glibcxx: int  # GLIBCXX_3.4.<n>: the newest symbol version of its libstdc++


AMAZON_LINUX_2 = LambdaOs("Amazon Linux 2", (2, 26), 24)  # glibc 2.26, GCC 7 libstdc++
AMAZON_LINUX_2023 = LambdaOs("Amazon Linux 2023", (2, 34), 29)  # glibc 2.34, GCC 11 libstdc++

#: The OS under each Python runtime (docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html).
RUNTIME_OS = {
    "python3.10": AMAZON_LINUX_2,
    "python3.11": AMAZON_LINUX_2,
    "python3.12": AMAZON_LINUX_2023,
    "python3.13": AMAZON_LINUX_2023,
    "python3.14": AMAZON_LINUX_2023,
}

#: What the Lambda Python runtime ships itself (/var/runtime); the core layer leaves them out.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")

#: Values for the template references the smoke test's environment needs and that have no
#: default: well-formed, and pointing nowhere (importing a handler must not reach a network).
SMOKE_VALUES = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "UploadBucket": "smoke-uploads-123456789012-eu-west-1",
    "IdempotencyTable": "smoke-idempotency",
    "MilvusUri": "https://milvus.smoke.invalid:19530",
    "MilvusTokenSecretArn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:smoke-AbCdEf",
    "OpenSearchEndpoint": "https://opensearch.smoke.invalid",
    "OpenSearchResourceArn": "arn:aws:es:eu-west-1:123456789012:domain/smoke",
    "JwtIssuerUrl": "https://issuer.smoke.invalid",
    "CorsAllowOrigin": "https://app.smoke.invalid",
}

#: What a function's first request imports after its handler module: the composition root and
#: the adapters of the cloud stores, which lookalike.bootstrap imports as it builds them.
FIRST_REQUEST_IMPORTS = (
    "lookalike.bootstrap", "lookalike.adapters.milvus", "lookalike.adapters.opensearch_hashes",
    "lookalike.adapters.s3_objects", "aws_lambda_powertools.utilities.parameters",
)  # fmt: skip
COLD_START_RUNS = 3


@dataclass(frozen=True)
class BuiltFunction:
    name: str
    runtime: str
    handler: str
    code_dir: Path
    layers: dict[str, Path]  # logical id -> built layer directory (its contents land in /opt)
    environment: dict[str, str]
    serves_http_api: bool

    @property
    def python_version(self) -> str:
        return self.runtime.removeprefix("python")


# ---------------------------------------------------------------------------- the built template


def load_template(path: Path) -> dict[str, Any]:
    """The built template, with short-form intrinsics (!Ref, !Sub, ...) as their long forms."""
    # Only the host side needs cfn-lint's loader, never the smoke interpreter.
    from cfnlint.decode import cfn_yaml

    template: dict[str, Any] = cfn_yaml.load(str(path))
    return template


def built_functions(template: Mapping[str, Any], build_dir: Path) -> list[BuiltFunction]:
    """Every AWS::Serverless::Function with its Globals applied, as `sam build` laid it out."""
    defaults = template.get("Globals", {}).get("Function", {})
    resources = template["Resources"]
    functions = []
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = {**defaults, **resource["Properties"]}
        variables = {
            **defaults.get("Environment", {}).get("Variables", {}),
            **resource["Properties"].get("Environment", {}).get("Variables", {}),
        }
        layers = {}
        for layer in props.get("Layers", []):
            layer_id = layer["Ref"]
            layers[layer_id] = build_dir / resources[layer_id]["Properties"]["ContentUri"]
        functions.append(
            BuiltFunction(
                name=name,
                runtime=props["Runtime"],
                handler=props["Handler"],
                code_dir=build_dir / props["CodeUri"],
                layers=layers,
                environment={key: resolve(value, template) for key, value in variables.items()},
                serves_http_api=any(e["Type"] == "HttpApi" for e in props.get("Events", {}).values()),
            )
        )
    return functions


def resolve(value: Any, template: Mapping[str, Any]) -> str:
    """An environment value as the smoke test sets it: literals as they are, references to a
    parameter's default or to SMOKE_VALUES."""
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, Mapping) and set(value) == {"Ref"}:
        name = value["Ref"]
        default = template.get("Parameters", {}).get(name, {}).get("Default")
        if default is not None:
            return str(default)
        if name in SMOKE_VALUES:
            return SMOKE_VALUES[name]
    raise ValueError(f"no smoke value for {value!r}: add one to SMOKE_VALUES in {Path(__file__).name}")


# ---------------------------------------------------------------------------- size


def tree_size(path: Path) -> int:
    """Bytes of every file under ``path``, as Lambda counts them once unzipped."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_sizes(functions: list[BuiltFunction]) -> list[str]:
    layer_ids = sorted({layer for f in functions for layer in f.layers})
    sizes = {layer: tree_size(path) for f in functions for layer, path in f.layers.items()}
    header = ["function", "code", *layer_ids, "total", "limit", ""]
    rows, errors = [], []
    for f in functions:
        code = tree_size(f.code_dir)
        total = code + sum(sizes[layer] for layer in f.layers)
        verdict = "ok" if total <= UNZIPPED_LIMIT else f"OVER by {_mib(total - UNZIPPED_LIMIT)}"
        layer_cells = [_mib(sizes[layer]) if layer in f.layers else "-" for layer in layer_ids]
        rows.append([f.name, _mib(code), *layer_cells, _mib(total), _mib(UNZIPPED_LIMIT), verdict])
        if total > UNZIPPED_LIMIT:
            errors.append(f"{f.name}: {total:,} bytes unzipped, Lambda allows {UNZIPPED_LIMIT:,}")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return errors


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------- glibc


def elf_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.so*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as file:
                if file.read(4) == b"\x7fELF":
                    yield path


def symbol_versions(paths: list[Path]) -> dict[Path, tuple[tuple[int, int], int]]:
    """The newest GLIBC_x.y and GLIBCXX_3.4.n each file needs (readelf's version sections)."""
    found: dict[Path, tuple[tuple[int, int], int]] = {}
    for start in range(0, len(paths), 200):
        chunk = paths[start : start + 200]
        out = subprocess.run(  # a fixed program on files this script found
            ["readelf", "--version-info", "--wide", *map(str, chunk)],  # binutils, from PATH
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        # With several files readelf starts each one's report with "File: <path>".
        sections = re.split(r"^File: (.+)$", out, flags=re.MULTILINE)
        reports = zip(sections[1::2], sections[2::2], strict=True) if len(chunk) > 1 else [(chunk[0], out)]
        for name, report in reports:
            glibc = max(((int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", report)), default=(0, 0))
            glibcxx = max((int(n) for n in re.findall(r"Name: GLIBCXX_3\.4\.(\d+)", report)), default=0)
            found[Path(name)] = (glibc, glibcxx)
    return found


def check_glibc(functions: list[BuiltFunction]) -> list[str]:
    errors = []
    checked: set[tuple[Path, str]] = set()
    for f in functions:
        target = RUNTIME_OS.get(f.runtime)
        if target is None:
            errors.append(f"{f.name}: runtime {f.runtime} is not one this check knows the OS of")
            continue
        for layer, path in f.layers.items():
            if (path, f.runtime) in checked:
                continue
            checked.add((path, f.runtime))
            versions = symbol_versions(list(elf_files(path)))
            if not versions:
                continue
            too_new = {p: v for p, v in versions.items() if v[0] > target.glibc or v[1] > target.glibcxx}
            newest = max((v[0] for v in versions.values()), default=(0, 0))
            print(
                f"{layer}: {len(versions)} shared objects, newest glibc needed {newest[0]}.{newest[1]}; "
                f"{f.runtime} runs on {target.name} (glibc {target.glibc[0]}.{target.glibc[1]})"
            )
            if too_new:
                worst = sorted(too_new.items(), key=lambda item: item[1], reverse=True)[:4]
                examples = ", ".join(f"{p.relative_to(path)} ({_versions_text(*v)})" for p, v in worst)
                errors.append(
                    f"{layer}: {len(too_new)} shared objects need a newer glibc or libstdc++ than "
                    f"{target.name} under {f.runtime} has, e.g. {examples}"
                )
    return errors


def _versions_text(glibc: tuple[int, int], glibcxx: int) -> str:
    return f"GLIBC_{glibc[0]}.{glibc[1]}" + (f", GLIBCXX_3.4.{glibcxx}" if glibcxx else "")


# ---------------------------------------------------------------------------- the runtime's Python


def find_python(version: str) -> Path | None:
    """An interpreter of Python ``version`` ("3.12"): ``python3.12`` from PATH if it runs, else
    the newest pyenv installation of that version (pyenv's shims run only the versions
    selected, so its installations are looked up directly), else None.

    >>> find_python("3.12")  # doctest: +SKIP
    PosixPath('/root/.pyenv/versions/3.12.1/bin/python3.12')
    """
    candidates = [Path(found)] if (found := shutil.which(f"python{version}")) else []
    installed = Path(_pyenv_root(), "versions").glob(f"{version}.*/bin/python{version}")
    candidates += sorted(installed, key=lambda path: _release(path.parents[1].name), reverse=True)
    probe = "import sys; print(sys.executable); print('%d.%d' % sys.version_info[:2])"
    for candidate in candidates:
        try:
            done = subprocess.run(  # each candidate is a python of the wanted name
                [str(candidate), "-S", "-c", probe], capture_output=True, text=True, timeout=60, check=False
            )
        except OSError:
            continue
        answer = done.stdout.split()
        if done.returncode == 0 and len(answer) == 2 and answer[1] == version:
            return Path(answer[0])
    return None


def _pyenv_root() -> str:
    if root := os.environ.get("PYENV_ROOT"):
        return root
    if pyenv := shutil.which("pyenv"):
        done = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return str(Path.home() / ".pyenv")


def _release(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def no_python_message(version: str) -> str:
    return (
        f"no Python {version} found (python{version} on PATH, or pyenv's versions/{version}.*): the function's "
        f"runtime is python{version}, and its layer's bytecode and this check need that very version. "
        f"Install it, e.g. `pyenv install {version}`."
    )


# ---------------------------------------------------------------------------- smoke test (host side)


def runtime_standin(directory: Path, python: Path) -> Path:
    """A folder with only what /var/runtime gives a Lambda function: boto3 and friends (linked
    file by file from this interpreter, which has the locked versions), compiled by ``python``
    so that the cold-start times measure the layers, not the runtime's own packages."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{name} is not installed here, so the smoke test cannot stand in for Lambda's")
        source = next(iter(spec.submodule_search_locations))
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(source, directory / name, copy_function=os.symlink, ignore=skip)
    compile_all = [str(python), "-m", "compileall", "-q", "-j", "0", str(directory)]
    subprocess.run(compile_all, check=True, stdout=subprocess.DEVNULL)
    return directory


def lambda_environment(f: BuiltFunction) -> dict[str, str]:
    """The function's environment with /opt paths pointed into the built layers."""
    env = {}
    for key, value in f.environment.items():
        if value.startswith("/opt/"):
            relative = value.removeprefix("/opt/")
            homes = [path for path in f.layers.values() if (path / relative).exists()]
            if not homes:
                raise FileNotFoundError(f"{f.name}: {key}={value} is in none of its layers")
            value = str(homes[0] / relative)
        env[key] = value
    return env


def run_smoke(functions: list[BuiltFunction]) -> list[str]:
    errors = []
    layers_checked: set[tuple[str, tuple[Path, ...]]] = set()
    interpreters = {version: find_python(version) for version in sorted({f.python_version for f in functions})}
    cold_starts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lookalike-smoke-") as scratch:
        standins = {
            version: runtime_standin(Path(scratch) / f"var-runtime-{version}", python)
            for version, python in interpreters.items()
            if python is not None
        }
        for f in functions:
            python = interpreters[f.python_version]
            if python is None:
                errors.append(f"{f.name}: {no_python_message(f.python_version)}")
                continue
            standin = standins[f.python_version]
            try:
                env = lambda_environment(f)
            except FileNotFoundError as exc:
                errors.append(str(exc))
                continue
            layer_paths = [path / "python" for path in f.layers.values() if (path / "python").is_dir()]
            module, _, attribute = f.handler.rpartition(".")
            layer_arguments = [arg for path in layer_paths for arg in ("--layer", str(path))]
            this_script = [str(python), "-S", "-B", str(Path(__file__).resolve())]
            command = [
                *this_script, "--smoke",
                "--python-version", f.python_version, "--handler", module, attribute,
                "--model", env.get("LOOKALIKE_MODEL_PATH", ""), *layer_arguments,
            ]  # fmt: skip
            if f.serves_http_api:
                command.append("--http-api")
            # Functions that share a runtime and layers share the layer checks; each handler is its own.
            key = (f.python_version, tuple(layer_paths))
            if key in layers_checked:
                command.append("--handler-only")
            layers_checked.add(key)
            child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "AWS_"))}
            child_env |= env | {
                "PYTHONPATH": os.pathsep.join(map(str, [f.code_dir, *layer_paths, standin])),
                "AWS_REGION": "eu-west-1",
                "AWS_DEFAULT_REGION": "eu-west-1",
                "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
            }
            print(f"\n== smoke test of {f.name}: {python} -S -B, PYTHONPATH = its code, {', '.join(f.layers)}, boto3")
            done = subprocess.run(command, env=child_env, cwd=scratch, check=False)  # our own argv
            if done.returncode != 0:
                errors.append(f"{f.name}: the smoke test failed (exit status {done.returncode}, see above)")
                continue
            cold_command = [*this_script, "--cold-start", module, *layer_arguments]
            timings, problems = measure_cold_start(cold_command, child_env, Path(scratch))
            errors += [f"{f.name}: {problem}" for problem in problems]
            if timings:
                cold_starts[f.name] = timings
    if cold_starts:
        print(f"\ncold start, median of {COLD_START_RUNS} fresh interpreters (imports; the model session comes after):")
        for name, t in cold_starts.items():
            print(
                f"  {name:<16} handler module {t['handler']:.2f} s, then its first request's imports "
                f"{t['first_request']:.2f} s: {t['handler'] + t['first_request']:.2f} s, {t['modules']:.0f} modules"
            )
    return errors


def measure_cold_start(command: list[str], env: Mapping[str, str], cwd: Path) -> tuple[dict[str, float], list[str]]:
    """Median import times over fresh interpreters, and the layer modules that would be
    compiled at every cold start (reported by the first run)."""
    runs: list[dict[str, Any]] = []
    for _ in range(COLD_START_RUNS):
        done = subprocess.run(command, env=dict(env), cwd=cwd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {}, [f"the cold-start import failed:\n{done.stdout}{done.stderr}"]
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    problems = []
    if compiled := runs[0]["compiled_at_cold_start"]:
        problems.append(
            f"{len(compiled)} layer modules have no bytecode Lambda would use, so every cold start compiles "
            f"them: {', '.join(compiled[:8])}{' ...' if len(compiled) > 8 else ''}"
        )
    timings = {key: statistics.median(run[key] for run in runs) for key in ("handler", "first_request", "modules")}
    return timings, problems


# ---------------------------------------------------------------------------- smoke test (inside)

#: What lookalike reaches in Lambda besides itself, imported by name so that a pruned
#: dependency fails here even if no lookalike module imports it at the top.
THIRD_PARTY = (
    "numpy", "PIL.Image", "pillow_heif", "imagehash", "scipy.fftpack", "onnxruntime", "pymilvus",
    "grpc", "pandas", "opensearchpy", "aws_lambda_powertools.logging", "aws_lambda_powertools.tracing",
    "aws_lambda_powertools.metrics", "aws_lambda_powertools.utilities.batch",
    "aws_lambda_powertools.utilities.idempotency", "aws_lambda_powertools.utilities.data_classes",
    "aws_lambda_powertools.event_handler",
)  # fmt: skip


def smoke(
    python_version: str, layers: list[Path], handler: list[str], model_path: str, handler_only: bool, http_api: bool
) -> int:
    """Runs in the isolated interpreter; returns the exit status."""
    failures: list[str] = []
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != python_version:
        failures.append(f"this is Python {running}, the function's runtime is {python_version}")
    if not handler_only:
        failures += _load_every_shared_object(layers)
        failures += _import_third_party()
        failures += _import_lookalike()
        failures += _signatures_of_real_images(model_path)
    failures += _import_handler(*handler)
    if http_api and not failures:
        failures += _answer_http_requests(*handler)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{'FAILED' if failures else 'passed'}: {len(failures)} failure(s)", flush=True)
    return 1 if failures else 0


def _load_every_shared_object(layers: list[Path]) -> list[str]:
    """dlopen every ELF file, imported by the checks below or not: a vendored library that
    pruning removed, or a file that stripping corrupted, fails here."""
    import ctypes

    failures, loaded = [], 0
    for root in layers:
        for library in elf_files(root):
            try:
                ctypes.CDLL(str(library), mode=os.RTLD_LAZY | os.RTLD_LOCAL)
                loaded += 1
            except OSError as exc:
                failures.append(f"cannot load {library.relative_to(root)}: {exc}")
    print(f"ok   {loaded} shared objects load")
    return failures


def _import_third_party() -> list[str]:
    failures = []
    for name in THIRD_PARTY:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failures.append(f"import {name}: {type(exc).__name__}: {exc}")
    print(f"ok   {len(THIRD_PARTY) - len(failures)} of {len(THIRD_PARTY)} third-party modules import")
    return failures


def _import_handler(module_name: str, attribute: str) -> list[str]:
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        return [f"import the handler module {module_name}: {type(exc).__name__}: {exc}"]
    if not callable(getattr(module, attribute, None)):
        return [f"{module_name} has no {attribute}, which the template names as the handler"]
    print(f"ok   handler {module_name}.{attribute} imports")
    return []


class _SmokeContext:
    """The attributes of a LambdaContext that Powertools reads."""

    function_name = "smoke"
    function_version = "$LATEST"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:smoke"
    aws_request_id = "00000000-0000-4000-8000-000000000000"


def _http_event(method: str, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as the JWT authorizer lets it through."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "&".join(f"{key}={value}" for key, value in (query or {}).items()),
        **({"queryStringParameters": dict(query)} if query else {}),
        "headers": {"host": "api.smoke.invalid", "accept": "*/*"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "smoke",
            "authorizer": {"jwt": {"claims": {"sub": "smoke"}, "scopes": None}},
            "domainName": "api.smoke.invalid",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1"},
            "requestId": "smoke",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1795000000000,
        },
        "isBase64Encoded": False,
    }


def _answer_http_requests(module_name: str, attribute: str) -> list[str]:
    """Requests the handler answers without reaching a store: the OpenAPI document (generated
    by Powertools through pydantic), a query parameter pydantic rejects, and the page with
    one of its files. With the dependencies shipped as bytecode only, this is what shows
    that nothing needs their source."""
    handler = getattr(importlib.import_module(module_name), attribute)

    def call(method: str, path: str, query: Mapping[str, str] | None = None) -> tuple[int, str, bytes]:
        response = handler(_http_event(method, path, query), _SmokeContext())
        body = response.get("body") or ""
        data = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()
        headers = {key.lower(): value for key, value in response.get("headers", {}).items()}
        return response["statusCode"], headers.get("content-type", ""), data

    failures = []
    try:
        status, _, body = call("GET", "/openapi.json")
        paths = json.loads(body).get("paths", {}) if status == 200 else {}
        if not paths:
            failures.append(f"GET /openapi.json answered {status} without paths: {body[:300]!r}")
        status, _, body = call("GET", "/images", {"page_size": "many"})
        parameter = json.loads(body).get("error", {}).get("parameter") if status == 400 else None
        if parameter != "page_size":
            failures.append(f"GET /images?page_size=many answered {status}, not 400 naming page_size: {body[:300]!r}")
        for path, wanted in (("/", "text/html"), ("/static/app.js", "javascript")):
            status, content_type, body = call("GET", path)
            if status != 200 or wanted not in content_type or not body:
                failures.append(f"GET {path} answered {status} {content_type!r} with {len(body)} bytes")
    except Exception as exc:
        failures.append(f"the HTTP API handler failed: {type(exc).__name__}: {exc}")
    if not failures:
        print(f"ok   GET /openapi.json ({len(paths)} paths), GET /images?page_size=many 400, GET / and a page file")
    return failures


def cold_start(handler_module: str, layers: list[Path]) -> int:
    """Runs in a fresh isolated interpreter: import the handler, then what its first request
    imports; print the times and the layer modules without usable bytecode as JSON."""
    started = time.perf_counter()
    importlib.import_module(handler_module)
    handler_done = time.perf_counter()
    for name in FIRST_REQUEST_IMPORTS:
        importlib.import_module(name)
    done = time.perf_counter()
    roots = [layer.resolve() for layer in layers]
    compiled = sorted(
        name
        for name, module in list(sys.modules.items())
        if (spec := getattr(module, "__spec__", None)) is not None
        and spec.origin
        and any(Path(spec.origin).is_relative_to(root) for root in roots)
        and not _bytecode_used_as_is(spec)
    )
    result = {
        "handler": handler_done - started,
        "first_request": done - handler_done,
        "modules": len(sys.modules),
        "compiled_at_cold_start": compiled,
    }
    print(json.dumps(result))
    return 0


def _bytecode_used_as_is(spec: importlib.machinery.ModuleSpec) -> bool:
    """True for a module loaded from a .pyc alone, from a shared object, or from source with an
    unchecked-hash .pyc beside it: none of them is compiled, or rechecked, when it is imported.
    A timestamp .pyc does not count: it is compared with its source's mtime, which does not
    survive zipping (2 s resolution), and Python cannot write a fresh one in read-only /opt."""
    origin = str(spec.origin)
    if not origin.endswith(".py"):
        return True  # sourceless .pyc, extension module, namespace package
    if not spec.cached or not Path(spec.cached).is_file():
        return False
    with open(spec.cached, "rb") as cached:
        header = cached.read(16)
    flags = int.from_bytes(header[4:8], "little")
    return header[:4] == importlib.util.MAGIC_NUMBER and flags == 0b01  # hash-based, not checked


def _import_lookalike() -> list[str]:
    """Import every lookalike module. A module that needs a package the runtime lock does not
    ship (the laptop's CLI and local server) is listed, not failed: Lambda never imports it;
    the handlers' imports show what Lambda does need."""
    import pkgutil

    import lookalike

    failures, laptop_only, count = [], [], 0
    for info in pkgutil.walk_packages(lookalike.__path__, "lookalike."):
        try:
            importlib.import_module(info.name)
            count += 1
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if missing and importlib.util.find_spec(missing) is None and not missing.startswith("lookalike"):
                laptop_only.append(f"{info.name} (needs {missing})")
            else:
                failures.append(f"import {info.name}: {exc}")
        except Exception as exc:
            failures.append(f"import {info.name}: {type(exc).__name__}: {exc}")
    print(f"ok   {count} lookalike modules import")
    if laptop_only:
        print(f"note need packages outside the runtime lock (fine if Lambda never imports them): {laptop_only}")
    return failures


def _signatures_of_real_images(model_path: str) -> list[str]:
    """Decode, trim, pHash and embed one picture saved as JPEG, PNG and HEIF, through the same
    SignatureExtractor the indexer uses: the copies must agree."""
    import io

    import numpy as np
    import pillow_heif
    from PIL import Image, ImageDraw

    from lookalike.embedding import FeatureModel
    from lookalike.signatures import SignatureExtractor, Signatures

    picture = Image.new("RGB", (320, 240), (235, 225, 200))
    draw = ImageDraw.Draw(picture)
    for i in range(12):  # a busy, deterministic scene: bands, discs and a diagonal
        draw.rectangle((i * 27, 0, i * 27 + 12, 240), fill=(20 * i, 90, 255 - 20 * i))
        draw.ellipse((30 + i * 20, 40 + (i * 37) % 150, 70 + i * 20, 80 + (i * 37) % 150), fill=(200, 30, 10 * i))
    draw.line((0, 240, 320, 0), fill=(0, 0, 0), width=9)
    blobs = {}
    for fmt, options in (("JPEG", {"quality": 90}), ("PNG", {}), ("HEIF", {"quality": 90})):
        buffer = io.BytesIO()
        if fmt == "HEIF":
            pillow_heif.from_pillow(picture).save(buffer, **options)
        else:
            picture.save(buffer, format=fmt, **options)
        blobs[fmt] = buffer.getvalue()

    failures = []
    try:
        extractor = SignatureExtractor(FeatureModel(model_path))
        results = dict(zip(blobs, extractor.extract_many(list(blobs.values())), strict=True))
    except Exception as exc:
        return [f"signatures: {type(exc).__name__}: {exc}"]
    accepted = {fmt: r for fmt, r in results.items() if isinstance(r, Signatures)}
    failures += [f"{fmt} rejected: {r}" for fmt, r in results.items() if not isinstance(r, Signatures)]
    if "PNG" in accepted:
        reference = accepted["PNG"]
        for fmt, result in accepted.items():
            bits = result.phash.distance(reference.phash)
            cosine = float(np.dot(result.vector, reference.vector))
            norm = float(np.linalg.norm(result.vector))
            print(f"     {fmt:<4} pHash {result.phash}  {bits:2d} bits from PNG  cosine {cosine:.4f}  |v| {norm:.4f}")
            if bits > 8 or cosine < 0.9 or abs(norm - 1) > 1e-3:
                failures.append(f"{fmt}: pHash {bits} bits / cosine {cosine:.4f} / norm {norm:.4f} from the PNG")
    if not failures:
        print(f"ok   signatures of JPEG, PNG and HEIF agree (model {next(iter(accepted.values())).model})")
    return failures


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, default=BUILD_DIR, help="what `sam build` wrote")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--python-version", help=argparse.SUPPRESS)
    parser.add_argument("--layer", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--handler", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--handler-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--http-api", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cold-start", metavar="MODULE", help=argparse.SUPPRESS)
    parser.add_argument("--find-python", metavar="X.Y", help="print the Python X.Y the checks would use, and exit")
    args = parser.parse_args(argv)
    if args.find_python:
        python = find_python(args.find_python)
        print(python or no_python_message(args.find_python), file=sys.stdout if python else sys.stderr)
        return 0 if python else 1
    if args.smoke:
        return smoke(args.python_version, args.layer, args.handler, args.model, args.handler_only, args.http_api)
    if args.cold_start:
        return cold_start(args.cold_start, args.layer)

    template_path = args.build_dir / "template.yaml"
    if not template_path.is_file():
        print(f"{template_path} not found: run `sam build` first (make package-check does)", file=sys.stderr)
        return 2
    functions = built_functions(load_template(template_path), args.build_dir)
    errors = check_sizes(functions)
    print()
    errors += check_glibc(functions)
    errors += run_smoke(functions)
    print()
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print("package check " + ("FAILED" if errors else "passed"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
