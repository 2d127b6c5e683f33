"""The engines a device may run the ONNX file with, each a `Runner` (float32 NCHW in, logits out) like onnxruntime's.

    runner = load_engine("openvino", "RUN/export/model.onnx", threads=1); logits = runner(x)
    runner = load_engine("opencv", path, target="/opt/cv455")   # an OpenCV wheel in its own folder, run aside
    engine_version("opencv")                                     # "5.0.0"; None when it is not installed

onnxruntime is the reference (`edgetl.formats.onnx`); OpenVINO and OpenCV's DNN module are optional extras
(`pip install 'edgetl[openvino]'`, `'edgetl[opencv]'`), imported only when asked for. What each engine needs to
compute what onnxruntime computes, as measured:

- OpenVINO compiles for the CPU with `INFERENCE_PRECISION_HINT=f32`: on a CPU with AVX512-BF16 or AMX its
  default is bfloat16, which is a different model as far as parity goes.
- OpenCV DNN is fed one image per call: 4.5 and 4.6 fail on a batch > 1 wherever a squeeze-excitation gate
  broadcasts over its input, and a device classifies one frame at a time anyway. An OpenCV too old for this
  numpy (≤ 4.9 wheels need numpy < 2) runs from its own folder (`pip install --target DIR
  opencv-python-headless==4.5.5.64 'numpy<2'`) in a child process that lives as long as the runner; arrays
  cross as raw bytes after a JSON line (`_WORKER`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.formats.base import Runner, Signature, fixed_batch_runner


class EngineError(EdgetlError):
    """An engine refused or failed to run a file: a finding about the file, not a usage error."""

    exit_code = 1


@dataclass(frozen=True)
class Engine:
    name: str  # the `--runtime` value
    title: str  # for tables: "OpenVINO"
    module: str  # what `import` needs
    extra: str | None  # `pip install 'edgetl[EXTRA]'`; None: a core dependency
    distributions: tuple[str, ...]  # the PyPI names it may be installed under, for its version
    load: Callable[..., Runner]  # (path, *, threads, target) -> Runner

    def missing(self) -> str | None:
        """One line naming the pip command when the engine is not installed; None when it is."""
        if importlib.util.find_spec(self.module) is not None:
            return None
        return f"--runtime {self.name} needs {self.module}, which is not installed — pip install 'edgetl[{self.extra}]'"


def _load_onnxruntime(path: Path, *, threads: int | None = None, target: Path | None = None) -> Runner:
    from edgetl.formats.onnx import load_onnx

    _no_target("onnxruntime", target)
    return load_onnx(Path(path), threads=threads)


def _no_target(name: str, target: Path | None) -> None:
    if target is not None:
        raise EdgetlError(f"--runtime {name} runs in this environment only; a target folder is for opencv")


# --- OpenVINO ---------------------------------------------------------------------------------------------------

def _load_openvino(path: Path, *, threads: int | None = None, target: Path | None = None) -> Runner:
    """OpenVINO's CPU plugin, fp32, latency-tuned; `threads` sets INFERENCE_NUM_THREADS (None: its default)."""
    _no_target("openvino", target)
    require_engine("openvino")
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except RuntimeError as e:
        raise EngineError(f"OpenVINO {engine_version('openvino')} cannot load {Path(path).name}: "
                          f"{_first_meaningful_line(str(e))}") from None
    request = compiled.create_infer_request()
    out = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        # copy: the request reuses its output buffer on the next call
        return np.array(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[out], copy=True)

    return Runner(run=run, inputs=[_ov_signature(p) for p in compiled.inputs],
                  outputs=[_ov_signature(p) for p in compiled.outputs])


def _ov_signature(port: Any) -> Signature:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    names = port.get_names()
    return Signature(port.get_any_name() if names else None, shape, dtype)


# --- OpenCV DNN ---------------------------------------------------------------------------------------------------

def _load_opencv(path: Path, *, threads: int | None = None, target: Path | None = None) -> Runner:
    """cv2.dnn on the CPU, one image per call; in this process, or from `target` (a pip --target folder) in a
    child process. `threads`: cv2.setNumThreads (process-wide in this process; None: OpenCV's default)."""
    if target is not None:
        return _opencv_worker(Path(path), Path(target), threads=threads)
    require_engine("opencv")
    import cv2

    if threads is not None:
        cv2.setNumThreads(threads)
    try:
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as e:
        raise EngineError(f"OpenCV {cv2.__version__} cannot load {Path(path).name}: "
                          f"{_first_meaningful_line(str(e))}") from None

    def run_one(x: np.ndarray) -> np.ndarray:
        net.setInput(x)
        try:
            return np.array(net.forward(), dtype=np.float32, copy=True).reshape(1, -1)
        except cv2.error as e:
            raise EngineError(f"OpenCV {cv2.__version__} failed to run {Path(path).name}: "
                              f"{_first_meaningful_line(str(e))}") from None

    return Runner(run=fixed_batch_runner(run_one, 1))


def _first_meaningful_line(text: str) -> str:
    """The line of an OpenCV / OpenVINO error that names the node or the check (they span many lines)."""
    lines = [line.strip(" >") for line in text.splitlines() if line.strip(" >")]
    for key in ("Node [", "parse error", "error:", "Exception"):
        hit = [line for line in lines if key in line]
        if hit:
            return hit[0][:300]
    return (lines[0] if lines else text)[:300]


# The child process of an OpenCV from another folder. Protocol, over stdin/stdout: each message is one JSON line,
# followed by the raw bytes of one C-order array when the line carries its "shape" and "dtype". Requests:
# {"load": path, "threads": n}, then {"shape": [1, 3, H, W], "dtype": "float32"} + bytes per image (with "repeat": k,
# run k times and reply each call's ns); replies: {"ok": true, ...} (+ the logits' shape, dtype and bytes) or
# {"ok": false, "error": text}.
_WORKER = r"""
import json, sys, time
import numpy as np
out, inp = sys.stdout.buffer, sys.stdin.buffer
def reply(msg, array=None):
    if array is not None:
        array = np.ascontiguousarray(array)
        msg = {**msg, "shape": list(array.shape), "dtype": array.dtype.name}
    out.write((json.dumps(msg) + "\n").encode())
    if array is not None:
        out.write(array.tobytes())
    out.flush()
try:
    import cv2
except Exception as e:
    reply({"ok": False, "error": f"cannot import cv2: {e}"}); sys.exit(0)
reply({"ok": True, "version": cv2.__version__, "numpy": np.__version__})
net = None
for line in inp:
    req = json.loads(line)
    try:
        if "load" in req:
            if req.get("threads") is not None:
                cv2.setNumThreads(int(req["threads"]))
            net = cv2.dnn.readNetFromONNX(req["load"])
            reply({"ok": True})
        else:
            dtype = np.dtype(req["dtype"])
            n = int(np.prod(req["shape"])) * dtype.itemsize
            x = np.frombuffer(inp.read(n), dtype=dtype).reshape(req["shape"])
            times = []
            for _ in range(int(req.get("repeat", 1))):  # timed here, so no pipe is in the figure
                t0 = time.perf_counter_ns()
                net.setInput(x)
                y = net.forward()
                times.append(time.perf_counter_ns() - t0)
            reply({"ok": True, "ns": times}, np.asarray(y, dtype=np.float32))
    except Exception as e:
        reply({"ok": False, "error": str(e)})
"""


class _Worker:
    """A child Python with `target` first on its path, running `_WORKER`."""

    def __init__(self, target: Path) -> None:
        if not (target / "cv2").is_dir():
            raise EdgetlError(f"{target}: no cv2 package there — pip install --target {target} "
                              f"opencv-python-headless==4.5.5.64 'numpy<2' (or the version you need)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "PYTHONNOUSERSITE": "1", "OPENCV_LOG_LEVEL": "ERROR"}
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 — closed with the process, by _stop
        self._proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, env=env, cwd=str(target))
        weakref.finalize(self, _stop, self._proc, self._stderr)
        hello = self._receive()[0]
        if not hello.get("ok"):
            raise EngineError(f"OpenCV from {target}: {hello.get('error')}")
        self.version: str = hello["version"]
        self.target = target

    def call(self, request: dict[str, Any], array: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        stdin: BinaryIO = self._proc.stdin  # type: ignore[assignment]
        if array is not None:
            array = np.ascontiguousarray(array)
            request = {**request, "shape": list(array.shape), "dtype": array.dtype.name}
        try:
            stdin.write((json.dumps(request) + "\n").encode())
            if array is not None:
                stdin.write(array.tobytes())
            stdin.flush()
        except BrokenPipeError:
            pass  # the child died: _receive says how
        return self._receive()

    def _receive(self) -> tuple[dict[str, Any], np.ndarray | None]:
        stdout: BinaryIO = self._proc.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            code = self._proc.wait()
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise EngineError(f"the OpenCV process ({self.target if hasattr(self, 'target') else 'starting'}) "
                              f"exited with code {code}: {tail[0][:200]}")
        msg = json.loads(line)
        if "shape" not in msg:
            return msg, None
        dtype = np.dtype(msg["dtype"])
        data = stdout.read(int(np.prod(msg["shape"])) * dtype.itemsize)
        return msg, np.frombuffer(data, dtype=dtype).reshape(msg["shape"]).copy()


def _stop(proc: subprocess.Popen, stderr: Any) -> None:
    if proc.poll() is None:
        proc.stdin.close()  # the worker's loop ends on EOF
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()
    stderr.close()


def _opencv_worker(path: Path, target: Path, *, threads: int | None) -> Runner:
    worker = _Worker(target.expanduser().resolve())
    reply, _ = worker.call({"load": str(path.resolve()), "threads": threads})
    if not reply["ok"]:
        raise EngineError(f"OpenCV {worker.version} cannot load {path.name}: {_first_meaningful_line(reply['error'])}")

    def run_one(x: np.ndarray) -> np.ndarray:
        reply, y = worker.call({}, np.ascontiguousarray(x, dtype=np.float32))
        if not reply["ok"]:
            raise EngineError(f"OpenCV {worker.version} failed to run {path.name}: "
                              f"{_first_meaningful_line(reply['error'])}")
        return y.reshape(1, -1)

    runner = Runner(run=fixed_batch_runner(run_one, 1))
    runner.worker = worker  # type: ignore[attr-defined]  # the child lives as long as the runner
    return runner


def worker_timings(runner: Runner, x: np.ndarray, *, calls: int) -> list[int] | None:
    """Per-call ns of `calls` runs on one image, timed inside an OpenCV child process (so the pipe that carries
    the image is not in the figure); None for a runner in this process (time it with edgetl.verify.latency)."""
    worker = getattr(runner, "worker", None)
    if worker is None:
        return None
    reply, _ = worker.call({"repeat": calls}, np.ascontiguousarray(x[:1], dtype=np.float32))
    if not reply["ok"]:
        raise EngineError(f"OpenCV {worker.version} failed to run: {_first_meaningful_line(reply['error'])}")
    return list(reply["ns"])


# --- the registry -------------------------------------------------------------------------------------------------

REFERENCE_ENGINE = "onnxruntime"  # the format's own runtime: what verify's bars and the latency gate are measured in

ENGINES: dict[str, Engine] = {e.name: e for e in (
    Engine(REFERENCE_ENGINE, "onnxruntime", "onnxruntime", None, ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
           _load_onnxruntime),
    Engine("openvino", "OpenVINO", "openvino", "openvino", ("openvino",), _load_openvino),
    Engine("opencv", "OpenCV", "cv2", "opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python",
                                                 "opencv-contrib-python-headless"), _load_opencv),
)}


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise EdgetlError(f"unknown runtime {name!r}; known: {', '.join(ENGINES)}") from None


def require_engine(name: str) -> None:
    """A missing optional engine is a one-line usage error (exit 2) naming the pip command."""
    message = get_engine(name).missing()
    if message:
        raise EdgetlError(message)


def engine_version(name: str, *, target: Path | str | None = None) -> str | None:
    """The installed version of an engine (None: not installed), read from package metadata without importing it;
    with `target`, the OpenCV wheel installed in that folder ('4.5.5', not the wheel's '4.5.5.64')."""
    engine = get_engine(name)
    paths = None if target is None else [str(Path(target).expanduser())]
    for dist in importlib.metadata.distributions(**({} if paths is None else {"path": paths})):
        if (dist.metadata["Name"] or "").lower() in engine.distributions:
            version = dist.version
            return ".".join(version.split(".")[:3]) if name == "opencv" else version
    return None


def load_engine(name: str, path: Path | str, *, threads: int | None = None, target: Path | str | None = None) -> Runner:
    """A Runner for the ONNX file at `path` in engine `name` (`target`: an OpenCV folder, run in a child process).
    Raises EdgetlError (exit 2) when the engine is not installed, EngineError when it refuses the file."""
    return get_engine(name).load(Path(path), threads=threads, target=None if target is None else Path(target))
