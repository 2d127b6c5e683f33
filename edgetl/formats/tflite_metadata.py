"""Standard TFLite metadata for an image classifier: what MediaPipe and the TFLite Task Library read.

    entry = model_metadata(meta, precision="int8")   # the "TFLITE_METADATA" buffer (schema file id "M001")
    pack_labels(path, meta.labels)                  # labels.txt, zipped onto the end of the .tflite

The fields an image classifier's metadata carries (TFLite Support's `metadata_schema.fbs`, the one MediaPipe
reads): the input tensor as an RGB image of the crop size with its normalization (mean and std on 0-255 pixel
values, as the Task Library applies them) and value range; the output as a feature vector of scores with the label
file as its `TENSOR_AXIS_LABELS`. The label file travels inside the model file as a zip appended to the
flatbuffer, which is how TFLite's metadata populator packs associated files.

Built with `flatbuffers` by hand (the field slots below follow the schema) because the one library that writes
it, `tflite-support`, does not install beside edgetl: it pins protobuf < 4 where onnx needs protobuf >= 5, and its
reader links libusb. The tests read the result back with that standard reader, from a folder it is installed
into, in a subprocess, where it is available.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgetl.formats.base import ExportMeta

NAME = "TFLITE_METADATA"  # the TFLite Model.metadata entry the readers look for
IDENTIFIER = b"M001"
LABEL_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"  # only fields of the schema's first version are written

# enum values and union type tags of metadata_schema.fbs
_TENSOR_AXIS_LABELS = 2
_RGB = 1
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES = 1, 2
_NORMALIZATION_OPTIONS = 1


def _table(builder, fields: dict[int, tuple[str, object]]) -> int:
    """One table: {slot: (kind, value)} with kind "offset" (already built), "byte" or "uint"."""
    builder.StartObject(max(fields) + 1 if fields else 0)
    for slot, (kind, value) in sorted(fields.items()):
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
        elif kind == "byte":
            builder.PrependInt8Slot(slot, value, 0)
        else:
            builder.PrependUint32Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _floats(builder, values: list[float]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(value)
    return builder.EndVector()


def _stats(builder, low: list[float], high: list[float]) -> int:
    return _table(builder, {0: ("offset", _floats(builder, high)), 1: ("offset", _floats(builder, low))})


def model_metadata(meta: ExportMeta, *, precision: str) -> bytes:
    """The ModelMetadata flatbuffer for an image classifier file written from `meta`."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    prep = meta.preprocessing
    mean = [255.0 * float(m) for m in prep["mean"]]
    std = [255.0 * float(s) for s in prep["std"]]
    crop = int(prep["crop_size"])
    inside = meta.input == "uint8"
    pixel_range = ([0.0], [255.0]) if inside else \
        ([(0.0 - m) / s for m, s in zip(mean, std)], [(255.0 - m) / s for m, s in zip(mean, std)])

    size = _table(builder, {0: ("uint", crop), 1: ("uint", crop)})
    image = _table(builder, {0: ("byte", _RGB), 1: ("offset", size)})
    image_content = _table(builder, {0: ("byte", _IMAGE_PROPERTIES), 1: ("offset", image)})
    normalization = _table(builder, {0: ("offset", _floats(builder, mean)), 1: ("offset", _floats(builder, std))})
    unit = _table(builder, {0: ("byte", _NORMALIZATION_OPTIONS), 1: ("offset", normalization)})
    layout = "uint8 [batch, height, width, 3], the normalization inside the file" if inside else \
        "float32 [batch, 3, height, width], normalized by the caller"
    input_tensor = _table(builder, {
        0: ("offset", builder.CreateString("image")),
        1: ("offset", builder.CreateString(
            f"RGB image, {crop}x{crop} after resize to {prep.get('resize_size', crop)} and center crop: {layout}.")),
        3: ("offset", image_content),
        4: ("offset", _vector(builder, [unit])),
        5: ("offset", _stats(builder, *pixel_range)),
    })

    labels = _table(builder, {
        0: ("offset", builder.CreateString(LABEL_FILE)),
        1: ("offset", builder.CreateString("Labels for the classes the model scores, one per line.")),
        2: ("byte", _TENSOR_AXIS_LABELS),
    })
    feature = _table(builder, {})
    scores_content = _table(builder, {0: ("byte", _FEATURE_PROPERTIES), 1: ("offset", feature)})
    probs = meta.output == "probs"
    output_fields = {
        0: ("offset", builder.CreateString("probability" if probs else "logits")),
        1: ("offset", builder.CreateString(
            f"{'Probabilities' if probs else 'Logits (no softmax)'} of the {len(meta.labels)} labels respectively.")),
        3: ("offset", scores_content),
        6: ("offset", _vector(builder, [labels])),
    }
    if probs:
        output_fields[5] = ("offset", _stats(builder, [0.0], [1.0]))
    output_tensor = _table(builder, output_fields)

    subgraph = _table(builder, {
        0: ("offset", builder.CreateString("image_classifier")),
        2: ("offset", _vector(builder, [input_tensor])),
        3: ("offset", _vector(builder, [output_tensor])),
    })
    model = _table(builder, {
        0: ("offset", builder.CreateString(f"{meta.backbone} image classifier")),
        1: ("offset", builder.CreateString(
            f"Identify the most prominent object in the image from {len(meta.labels)} categories "
            f"({precision}; written by edgetl).")),
        2: ("offset", builder.CreateString(meta.recipe_sha256 or "")),
        3: ("offset", _vector(builder, [subgraph])),
        4: ("offset", builder.CreateString("edgetl")),
        7: ("offset", builder.CreateString(MIN_PARSER_VERSION)),
    })
    builder.Finish(model, file_identifier=IDENTIFIER)
    return bytes(builder.Output())


def pack_labels(path: Path, labels: list[str]) -> None:
    """Append labels.txt to the .tflite as a zip archive (a TFLite interpreter ignores bytes after the
    flatbuffer; metadata readers open the file as a zip)."""
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABEL_FILE, "".join(f"{label}\n" for label in labels))
