"""Device code written into the export folder from its manifest: the numbers filled in, never copied by hand.

    entries = write_snippets(folder, manifest)   # device_predict.py (onnxruntime), device_predict.cpp (C++ API)

`device_predict.py` runs as it is (numpy, Pillow, onnxruntime): `python device_predict.py photo.jpg` prints the
top classes, `python device_predict.py --golden` checks the file against the golden vectors. `device_predict.cpp`
is the same for the onnxruntime C/C++ API on a device: the image decode is the device's own, so it starts from the
RGB crop; its sizes, mean/std and layout come from the manifest (a test checks them).
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from edgetl import files
from edgetl.formats import ENGINE_FORMAT
from edgetl.rundir import FileEntry, Manifest

PYTHON = "device_predict.py"
CPP = "device_predict.cpp"

_PYTHON = Template('''"""$title — written by edgetl export from manifest.json; run it beside the model file.

    python device_predict.py photo.jpg [more.jpg ...]   # top classes of each photo
    python device_predict.py --golden                  # the file against golden-inputs.npy and its golden output

Needs numpy, Pillow and onnxruntime. What the device does before the model: decode, resize the shorter side to
$resize_size px ($interpolation), center-crop $crop_size x $crop_size, RGB.$normalize_note
"""
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

MODEL = "$model"
LABELS = $labels
RESIZE_SIZE, CROP_SIZE = $resize_size, $crop_size
RESAMPLE = Image.Resampling.$resample
INPUT = "$input"  # uint8: [batch, crop, crop, 3] as it is; float: /255, (x - MEAN) / STD, NCHW
MEAN, STD = $mean, $std
OUTPUT = "$output"  # probs: the file ends in a softmax; logits: softmax here
GOLDEN_INPUTS, GOLDEN_OUTPUT, GOLDEN_ATOL = $golden_inputs, $golden_output, $golden_atol


def rgb(img):
    """The photo as edgetl decodes it for training and predict: EXIF orientation applied (phone photos), 16-bit
    grayscale scaled to 8 bits, palette and transparency composited on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        a = a / 257 if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255) else \
            a * 255 if img.mode == "F" and a.max() <= 1 else a
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img.convert("RGBA"))
    return img.convert("RGB")


def crop(path):
    """The RGB crop, uint8 [crop, crop, 3]: shorter side to RESIZE_SIZE, then the center square."""
    with Image.open(path) as img:
        img = rgb(img)
    w, h = img.size
    size = (RESIZE_SIZE, int(RESIZE_SIZE * h / w)) if w <= h else (int(RESIZE_SIZE * w / h), RESIZE_SIZE)
    img = img.resize(size, resample=RESAMPLE) if size != (w, h) else img
    w, h = img.size
    top, left = int(round((h - CROP_SIZE) / 2.0)), int(round((w - CROP_SIZE) / 2.0))
    return np.asarray(img.crop((left, top, left + CROP_SIZE, top + CROP_SIZE)), dtype=np.uint8)


def model_input(crops):
    if INPUT == "uint8":
        return np.ascontiguousarray(crops, dtype=np.uint8)
    x = crops.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def raw(session, crops):
    """The file's own output (logits or probabilities) on uint8 crops, at its fixed batch if it has one."""
    feed = session.get_inputs()[0]
    x = model_input(crops)
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else len(x)
    parts = []
    for i in range(0, len(x), batch):
        part = x[i:i + batch]
        n = len(part)
        if n < batch:  # a fixed-batch file: pad with copies of the last crop
            part = np.concatenate([part, np.repeat(part[-1:], batch - n, axis=0)])
        parts.append(session.run(None, {feed.name: part})[0][:n])
    return np.concatenate(parts)


def probabilities(session, crops):
    out = raw(session, crops)
    if OUTPUT == "probs":
        return out
    e = np.exp(out - out.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main(args):
    session = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    if args == ["--golden"]:
        got, expected = raw(session, np.load(GOLDEN_INPUTS)), np.load(GOLDEN_OUTPUT)
        diff = float(np.abs(got - expected).max())
        same = bool((got.argmax(1) == expected.argmax(1)).all())
        print(f"golden: max abs diff {diff:.3g} (atol {GOLDEN_ATOL:g}), top-1 {'same' if same else 'DIFFERENT'}")
        return 0 if diff <= GOLDEN_ATOL and same else 1
    for path in args:
        probs = probabilities(session, crop(path)[None])[0]
        top = np.argsort(-probs)[:5]
        print(path + ": " + ", ".join(f"{LABELS[i]} {probs[i]:.3f}" for i in top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
''')

_CPP = Template('''// $title — written by edgetl export from manifest.json (onnxruntime C/C++ API).
// The device decodes the photo, resizes its shorter side to $resize_size px ($interpolation) and center-crops
// $crop_size x $crop_size, RGB; this code takes that crop and returns the class probabilities.
// Build: g++ -std=c++17 device_predict.cpp -lonnxruntime
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

constexpr const char* kModel = "$model";
constexpr int64_t kCropSize = $crop_size;  // the crop the model takes, from the manifest
constexpr int64_t kResizeSize = $resize_size;  // the shorter side before cropping (the device's resize)
constexpr int kClasses = $classes;
constexpr bool kUint8Input = $uint8_input;  // true: uint8 [1, $crop_size, $crop_size, 3] NHWC as it is
constexpr bool kProbsOutput = $probs_output;  // true: the file ends in a softmax
constexpr std::array<float, 3> kMean = {$mean_cpp};  // used only for a float input
constexpr std::array<float, 3> kStd = {$std_cpp};
constexpr const char* kInputName = "$input_name";
constexpr const char* kOutputName = "$output_name";

// rgb: kCropSize * kCropSize * 3 bytes, row-major HWC, the center crop. Returns kClasses probabilities.
std::vector<float> Classify(Ort::Session& session, const std::vector<uint8_t>& rgb) {
  Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<float> chw;
  Ort::Value input{nullptr};
  if (kUint8Input) {
    const std::array<int64_t, 4> shape = {1, kCropSize, kCropSize, 3};
    input = Ort::Value::CreateTensor<uint8_t>(memory, const_cast<uint8_t*>(rgb.data()), rgb.size(),
                                              shape.data(), shape.size());
  } else {  // x / 255, (x - mean) / std, HWC -> CHW
    chw.resize(3 * kCropSize * kCropSize);
    for (int64_t y = 0; y < kCropSize; ++y)
      for (int64_t x = 0; x < kCropSize; ++x)
        for (int c = 0; c < 3; ++c)
          chw[(c * kCropSize + y) * kCropSize + x] =
              (rgb[(y * kCropSize + x) * 3 + c] / 255.0f - kMean[c]) / kStd[c];
    const std::array<int64_t, 4> shape = {1, 3, kCropSize, kCropSize};
    input = Ort::Value::CreateTensor<float>(memory, chw.data(), chw.size(), shape.data(), shape.size());
  }
  const char* inputs[] = {kInputName};
  const char* outputs[] = {kOutputName};
  auto result = session.Run(Ort::RunOptions{nullptr}, inputs, &input, 1, outputs, 1);
  const float* out = result[0].GetTensorData<float>();
  std::vector<float> probs(out, out + kClasses);
  if (!kProbsOutput) {  // softmax
    const float top = *std::max_element(probs.begin(), probs.end());
    float sum = 0.0f;
    for (float& p : probs) sum += (p = std::exp(p - top));
    for (float& p : probs) p /= sum;
  }
  return probs;
}

int main() {
  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "edgetl");
  Ort::Session session(env, kModel, Ort::SessionOptions{});
  std::vector<uint8_t> rgb(kCropSize * kCropSize * 3, 128);  // replace with the device's crop
  std::vector<float> probs = Classify(session, rgb);
  return probs.size() == kClasses ? 0 : 1;
}
''')


def _model_file(manifest: Manifest) -> str:
    """The ONNX file the snippets run: the fp32 one (the reference every other precision is judged against)."""
    onnx = [a for a in manifest.artifacts if a.format == ENGINE_FORMAT]
    return next((a for a in onnx if a.precision == "fp32"), onnx[0]).file


def write_snippets(folder: Path, manifest: Manifest) -> list[FileEntry] | None:
    """device_predict.py and device_predict.cpp for the export's ONNX file; none when it wrote no ONNX file."""
    if not any(a.format == ENGINE_FORMAT for a in manifest.artifacts):
        return None
    prep = manifest.preprocessing
    model = _model_file(manifest)
    golden = manifest.golden
    out = next((o for o in golden.outputs if o.of == model), None) if golden else None
    uint8 = manifest.input.dtype == "uint8"
    probs = manifest.output.name == "probs"
    title = f"{manifest.run.backbone}, {len(manifest.labels)} classes"
    values = {
        "title": title, "model": model, "labels": json.dumps(manifest.labels), "resize_size": prep.resize_size,
        "crop_size": prep.crop_size, "interpolation": prep.interpolation, "resample": prep.interpolation.upper(),
        "input": "uint8" if uint8 else "float", "output": "probs" if probs else "logits",
        "mean": json.dumps(list(prep.mean)), "std": json.dumps(list(prep.std)),
        "normalize_note": "" if uint8 else " Then x / 255, (x - mean) / std, NCHW.",
        "golden_inputs": json.dumps(golden.inputs.file if golden else None),
        "golden_output": json.dumps(out.file if out else None), "golden_atol": out.atol if out else 0.0,
        "classes": len(manifest.labels), "uint8_input": "true" if uint8 else "false",
        "probs_output": "true" if probs else "false",
        "mean_cpp": ", ".join(f"{m:.6g}f" for m in prep.mean), "std_cpp": ", ".join(f"{s:.6g}f" for s in prep.std),
        "input_name": manifest.input.name, "output_name": manifest.output.name,
    }
    entries = []
    for name, template in ((PYTHON, _PYTHON), (CPP, _CPP)):
        path = folder / name
        path.write_text(template.substitute(values))
        entries.append(FileEntry(file=name, bytes=path.stat().st_size, sha256=files.sha256_file(path)))
    return entries
