"""Check what `sam build` produced before it is deployed: size, glibc, and a smoke test.

Run by ``make package-check`` after ``sam build``; exits 1 when any check fails.

1. Size: each function's code plus its layers, unzipped, must fit Lambda's 250 MB
   (262,144,000 bytes). A table shows where the bytes go.
2. glibc: no shared library in a layer may need a newer glibc or libstdc++ than the Amazon
   Linux that the function's runtime runs on. The build host's glibc proves nothing.
3. Smoke test, in a fresh interpreter of the runtime's Python version that sees only what
   Lambda would (``-S``: no site-packages; PYTHONPATH = the function's code, its layers and a
   stand-in for the boto3 the Lambda runtime ships): every shared object in the layers
   loads, every lookalike module imports, real signatures (decode, pHash, embedding with the
   model from the model layer) come out of a JPEG, a PNG and a HEIF image, and each handler
   imports with the environment the template gives it. This is what proves the layer's
   pruning safe.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


@dataclass(frozen=True)
class BuiltFunction:
    name: str
    runtime: str
    handler: str
    code_dir: Path
    layers: dict[str, Path]  # logical id -> built layer directory (its contents land in /opt)
    environment: dict[str, str]

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


# ---------------------------------------------------------------------------- smoke test (host side)


def runtime_standin(directory: Path) -> Path:
    """A folder with only what /var/runtime gives a Lambda function: boto3 and friends
    (linked from this interpreter, which has the locked versions)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PROVIDED:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{name} is not installed here, so the smoke test cannot stand in for Lambda's")
        (directory / name).symlink_to(next(iter(spec.submodule_search_locations)))
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
    with tempfile.TemporaryDirectory(prefix="lookalike-smoke-") as scratch:
        standin = runtime_standin(Path(scratch) / "var-runtime")
        for f in functions:
            python = shutil.which(f"python{f.python_version}")
            if python is None:
                errors.append(f"{f.name}: no python{f.python_version} on PATH to smoke-test its layers with")
                continue
            try:
                env = lambda_environment(f)
            except FileNotFoundError as exc:
                errors.append(str(exc))
                continue
            layer_paths = [path / "python" for path in f.layers.values() if (path / "python").is_dir()]
            module, _, attribute = f.handler.rpartition(".")
            command = [
                python, "-S", "-B", str(Path(__file__).resolve()), "--smoke",
                "--python-version", f.python_version, "--handler", module, attribute,
                "--model", env.get("LOOKALIKE_MODEL_PATH", ""),
                *(arg for path in layer_paths for arg in ("--layer", str(path))),
            ]  # fmt: skip
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
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
            print(f"\n== smoke test of {f.name}: {python} -S, PYTHONPATH = its code, {', '.join(f.layers)}, boto3")
            done = subprocess.run(command, env=child_env, cwd=scratch, check=False)  # our own argv
            if done.returncode != 0:
                errors.append(f"{f.name}: the smoke test failed (exit status {done.returncode}, see above)")
    return errors


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


def smoke(python_version: str, layers: list[Path], handler: list[str], model_path: str, handler_only: bool) -> int:
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
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke(args.python_version, args.layer, args.handler, args.model, args.handler_only)

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
