"""The VGG16 feature model: a decoded image → a 512-d unit vector whose cosine says "looks alike".

The model (built by ``make model``, see ``layers/model/``) is VGG16's convolutional base with
ImageNet weights, global max pooling and L2 normalisation. Vectors are comparable only when
made by the same model *and* the same preprocessing, so :func:`to_model_input` is the one
place that turns an image into the model's input, for indexing and querying alike.

>>> model = FeatureModel("layers/model/build/vgg16-gmp-fp32.onnx", threads=2)  # doctest: +SKIP
>>> model.embed(image).shape  # doctest: +SKIP
(512,)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from lookalike.errors import ModelError
from lookalike.imaging import RESAMPLING

MODEL_NAME = "vgg16-gmp-fp32"
INPUT_SIZE = 224

# Keras VGG16 'caffe' preprocessing: BGR channel order, ImageNet means subtracted, no scaling.
BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# One filter, everywhere: the filter moves the features far more than quantisation does, so
# indexing and querying must resize identically. Measured on 50 dataset photos (mean cosine
# of an edited copy to its original): JPEG quality 20 → BILINEAR 0.969, NEAREST 0.959;
# half-size copy → BILINEAR 0.985 (min 0.900), NEAREST 0.949 (min 0.513). Pillow's bilinear
# widens its support when reducing (an antialiased reduce), so aliasing does not change
# with the size of the upload the way nearest-neighbour sampling does.
RESIZE_FILTER = RESAMPLING  # the decoder's filter too: one constant for every resize

# Images per inference call. Batching buys no throughput on a CPU (about 140 ms of CPU per
# image at batch 1, 4, 8 or 16) but each image in a batch adds about 53 MB of activations
# (peak RSS 258 MB at 1, 431 MB at 4, 643 MB at 8, 1091 MB at 16): 4 keeps a Lambda small.
BATCH_CHUNK = 4

_MAKE_MODEL = "run `make model` to build it"


def to_model_input(image: Image.Image) -> npt.NDArray[np.float32]:
    """The model's input for one image: (224, 224, 3) float32, BGR, ImageNet means subtracted.

    The aspect ratio is ignored (as Keras' ``load_img(target_size=...)`` does): the whole
    picture is seen, squeezed, rather than a crop that might cut off what was edited.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb.resize((INPUT_SIZE, INPUT_SIZE), RESIZE_FILTER), dtype=np.float32)
    return pixels[..., ::-1] - BGR_MEAN


class FeatureModel:
    """An ONNX feature model with its inference session, built once and reused.

    ``expected_sha256`` is checked before the session is created; when it is not given, the
    checksum recorded in the facts file beside the model (``<model>.json``) is checked
    instead, which catches a truncated or swapped file for about 40 ms on a 59 MB model.
    The session is safe to share between threads.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, expected_sha256: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"feature model not found at {self.path}: {_MAKE_MODEL}")
        facts = _read_facts(self.path.with_suffix(".json"))
        expected = expected_sha256 or facts.get("sha256")
        if expected:
            _verify_checksum(self.path, str(expected))
        self.name: str = facts.get("name", MODEL_NAME)
        self._session = _open_session(self.path, threads)
        self._input_name: str = self._session.get_inputs()[0].name
        output = self._session.get_outputs()[0]
        self._output_name: str = output.name
        if len(output.shape) != 2 or not isinstance(output.shape[1], int):
            raise ModelError(f"{self.path} outputs {output.shape}, not [N, dimension]: {_MAKE_MODEL}")
        self.dimension: int = output.shape[1]

    def embed(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """The (dimension,) float32 unit vector of one image."""
        return self.embed_batch([image])[0]

    def embed_batch(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]:
        """The (len(images), dimension) float32 unit vectors, row i for images[i]."""
        chunks = [np.empty((0, self.dimension), dtype=np.float32)]
        for start in range(0, len(images), BATCH_CHUNK):
            batch = np.stack([to_model_input(image) for image in images[start : start + BATCH_CHUNK]])
            chunks.append(self._run(batch))
        return np.concatenate(chunks)

    def _run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        try:
            (features,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as exc:  # onnxruntime's errors derive from Exception directly
            raise ModelError(f"feature model {self.path} failed to run: {exc}") from exc
        # A NaN would be stored and then poison every search that meets it.
        if not np.isfinite(features).all():
            raise ModelError(f"feature model {self.path} produced non-finite features")
        return np.asarray(features, dtype=np.float32)


def _read_facts(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable model facts {path}: {exc}; {_MAKE_MODEL}") from exc
    if not isinstance(facts, dict):
        raise ModelError(f"model facts {path} are not a JSON object; {_MAKE_MODEL}")
    return facts


def _verify_checksum(path: Path, expected: str) -> None:
    with path.open("rb") as stream:
        actual = hashlib.file_digest(stream, "sha256").hexdigest()
    if actual != expected.lower():
        raise ModelError(
            f"feature model {path} does not match its checksum "
            f"(expected sha256 {expected}, found {actual}): {_MAKE_MODEL} again"
        )


def _open_session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one chain of convolutions: nothing to run side by side
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors derive from Exception directly
        raise ModelError(f"cannot load feature model {path}: {exc}; {_MAKE_MODEL}") from exc
