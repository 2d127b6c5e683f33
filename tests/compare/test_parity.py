"""Parity figures, batched runs (static batches padded), and the names -> shapes -> values checks of one artifact."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compare.gate import BARS, Gate
from edgetl.compare.parity import PARITY_BATCH, check_parity, compare_logits, run_batched
from edgetl.data.inputs import Inputs
from edgetl.formats.base import Runner, Signature
from edgetl.preprocessing import Preprocessing
from edgetl.rundir import ExportedFrom, Manifest, ModelFacts, TensorSpec

CLASSES = 3
WEIGHTS = np.random.default_rng(1).standard_normal((3 * 8 * 8, CLASSES)).astype(np.float32)


def linear(x: np.ndarray) -> np.ndarray:
    """A stand-in model: logits depend on each row alone, so batching must not change them."""
    return x.reshape(len(x), -1) @ WEIGHTS


def manifest(batch: int | str = "batch") -> Manifest:
    prep = Preprocessing(crop_size=8, resize_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Manifest(run=ExportedFrom(backbone="tiny", checkpoint="checkpoints/best.pt"), labels=["a", "b", "c"],
                    preprocessing=prep, input=TensorSpec(name="input", shape=[batch, 3, 8, 8], dtype="float32"),
                    output=TensorSpec(name="logits", shape=[batch, CLASSES], dtype="float32"),
                    model=ModelFacts(params=1, bn_folded=0, lora_merged=0), artifacts=[])


def signature(batch: int | str = "batch", *, input_name: str = "input", output_name: str = "logits",
              dtype: str = "float32", classes: int = CLASSES) -> dict[str, list[Signature]]:
    return {"inputs": [Signature(input_name, [batch, 3, 8, 8], dtype)],
            "outputs": [Signature(output_name, [batch, classes], "float32")]}


@pytest.fixture
def inputs() -> Inputs:
    x = np.random.default_rng(0).standard_normal((PARITY_BATCH + 5, 3, 8, 8)).astype(np.float32)
    targets = np.full(len(x), -1, dtype=np.int64)
    targets[:4] = linear(x[:4]).argmax(axis=1)  # the reference is right on the labelled rows
    return Inputs(x=x, targets=targets, info={})


def test_parity_figures_on_known_logits():
    ref = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=np.float32)
    out = ref + np.array([[0.0, 0.5, 0.0], [2.5, 0.0, 0.0]], dtype=np.float32)  # row 1's top-1 flips
    f = compare_logits(ref, out, targets=np.array([0, -1]))
    assert f["max_abs_diff"] == 2.5 and f["mean_abs_diff"] == pytest.approx(3 / 6)
    assert f["max_rel_diff"] == pytest.approx(2.5 / 3)  # row 1's largest |logit| (2) is under the median row's (3)
    assert f["top1_agreement"] == 0.5
    assert f["accuracy"] == 1.0 and f["reference_accuracy"] == 1.0  # only row 0 is labelled
    # with 5 classes or fewer every class is in the top 5: overlap and top-5 accuracy would be 100 % by definition
    assert f["top5_overlap"] is None and f["top5_accuracy"] is None and f["reference_top5_accuracy"] is None


def test_a_near_tie_is_judged_at_the_sets_logit_scale_and_scaled_logits_still_fail():
    # a 2-class model: confident rows at +-2, one near tie at +-0.01 that INT8 rounding moves by 0.05
    ref = np.array([[2.0, -2.0], [-1.8, 1.8], [2.2, -2.2], [0.01, -0.01]], dtype=np.float32)
    rounded = ref + np.array([[0.05, -0.05], [0.04, -0.04], [-0.03, 0.03], [0.05, -0.05]], dtype=np.float32)
    # the near tie is measured against the median row's largest |logit| (1.9), not its own 0.01 (old: 5.0)
    assert compare_logits(ref, rounded, targets=np.full(4, -1))["max_rel_diff"] == pytest.approx(0.05 / 1.9)
    doubled = compare_logits(ref, 2 * ref, targets=np.full(4, -1))  # every class survives, the values do not
    assert doubled["top1_agreement"] == 1.0 and doubled["max_rel_diff"] == pytest.approx(1.0)


def test_top5_figures_count_where_there_are_more_than_5_classes():
    # 7 classes; row 0's target (6) is last in the reference and 4th in the file; row 1's (0) 1st, then 2nd
    ref = np.array([[7, 6, 5, 4, 3, 2, 1], [9, 1, 2, 3, 4, 5, 0]], dtype=np.float32)
    out = ref.copy()
    out[0, 6] = 4.5  # above classes 3, 4, 5: in the file's top 5, pushing class 4 out
    out[1, 5] = 10.0  # row 1's top-1 flips from class 0 to class 5
    f = compare_logits(ref, out, targets=np.array([6, 0]))
    assert f["top5_k"] == 5
    assert f["reference_top5_accuracy"] == 0.5 and f["top5_accuracy"] == 1.0
    assert f["reference_accuracy"] == 0.5 and f["accuracy"] == 0.0
    assert f["top5_overlap"] == pytest.approx((4 / 5 + 5 / 5) / 2)  # row 0 swapped one class, row 1 none


def test_accuracy_is_none_without_a_labelled_row():
    ref = np.eye(3, dtype=np.float32)
    f = compare_logits(ref, ref, targets=np.full(3, -1))
    assert f["accuracy"] is None and f["reference_accuracy"] is None and f["max_abs_diff"] == 0.0


@pytest.mark.parametrize("static, calls", [(True, [4, 4]), (False, [4, 1])])
def test_run_batched_pads_only_a_static_last_batch_with_zeros(static, calls):
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    seen: list[np.ndarray] = []

    def runner(part: np.ndarray) -> np.ndarray:
        seen.append(part.copy())
        return linear(part)

    logits = run_batched(runner, x, batch=4, static=static)
    assert [len(part) for part in seen] == calls
    np.testing.assert_allclose(logits, linear(x), rtol=1e-6, atol=1e-5, err_msg="batching changed the logits")
    np.testing.assert_array_equal(seen[1][:1], x[4:])
    if static:
        assert not seen[1][1:].any(), "the padding rows are not zeros"


def test_a_matching_artifact_passes_names_shapes_and_values(inputs):
    gate = Gate()
    reference = linear(inputs.x)
    figures = check_parity(Runner(run=linear, **signature()), manifest(), "model.onnx", gate, inputs=inputs,
                           reference=reference, bars=BARS["fp32"])
    assert gate.failures == []
    assert [(c.kind, c.measure) for c in gate.checks] == [
        ("names", "input count"), ("names", "output count"), ("names", "input name"), ("names", "output name"),
        ("shapes", "input dtype"), ("shapes", "output dtype"), ("shapes", "input shape"), ("shapes", "output shape"), ("shapes", "logits shape"),
        ("values", "batch 1 vs batched max diff"), ("values", "max abs diff"), ("values", "top-1 agreement")]
    assert figures["inputs"] == len(inputs.x) and figures["max_abs_diff"] == 0.0 and figures["accuracy"] == 1.0


def test_a_static_batch_export_gets_full_batches_only(inputs):
    def fixed(x: np.ndarray) -> np.ndarray:
        if len(x) != 2:
            raise RuntimeError(f"Got invalid dimensions for input: index 0 Got {len(x)} Expected 2")
        return linear(x)

    gate = Gate()
    figures = check_parity(Runner(run=fixed, **signature(2)), manifest(2), "model.onnx", gate, inputs=inputs,
                           reference=linear(inputs.x), bars=BARS["fp32"])
    assert gate.failures == [] and figures["inputs"] == len(inputs.x)  # an odd count: the last call was padded


def test_a_wrong_signature_fails_names_and_shapes_in_the_gate_without_running(inputs):
    calls = []
    wrong = Runner(run=lambda x: calls.append(x) or linear(x),
                   **signature(input_name="images", dtype="float16", classes=CLASSES + 1))
    gate = Gate()
    figures = check_parity(wrong, manifest(), "model.onnx", gate, inputs=inputs, reference=linear(inputs.x),
                           bars=BARS["fp32"])
    assert figures is None and calls == [], "an artifact with the wrong signature was run"
    assert [(c.kind, c.measure) for c in gate.failures] == [
        ("names", "input name"), ("shapes", "input dtype"), ("shapes", "output shape")]
    assert [c.message() for c in gate.failures] == [
        "model.onnx: input name 'images' fails the bar = 'input'",
        "model.onnx: input dtype 'float16' fails the bar = 'float32'",
        "model.onnx: output shape ['dynamic', 4] fails the bar = ['dynamic', 3]"]


def test_an_extra_output_fails_the_count_and_stops_there(inputs):
    sig = signature()
    two = Runner(run=linear, inputs=sig["inputs"], outputs=sig["outputs"] * 2)
    gate = Gate()
    assert check_parity(two, manifest(), "model.onnx", gate, inputs=inputs, reference=linear(inputs.x),
                        bars=None) is None
    assert [c.measure for c in gate.checks] == ["input count", "output count"]
    assert [c.message() for c in gate.failures] == ["model.onnx: output count 2 fails the bar = 1"]


def test_a_runtime_error_and_wrong_logits_are_failures_in_the_gate(inputs):
    def crashes(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("kernel not implemented\nsecond line")

    gate = Gate()
    assert check_parity(Runner(run=crashes), manifest(), "model.torchscript.pt", gate, inputs=inputs,
                        reference=linear(inputs.x), bars=BARS["fp32"]) is None
    assert [c.message() for c in gate.failures] == [
        "model.torchscript.pt: runs on the inputs 'RuntimeError: kernel not implemented' fails the bar = 'ok'"]

    gate = Gate()  # no signature declared (TorchScript): values are still checked
    reference = linear(inputs.x)
    drifted = Runner(run=lambda x: linear(x) * np.float32(1.01))
    figures = check_parity(drifted, manifest(), "model.torchscript.pt", gate, inputs=inputs, reference=reference,
                           bars=BARS["fp32"])
    np.testing.assert_allclose(figures["max_abs_diff"], 0.01 * np.abs(reference).max(), rtol=1e-3)
    assert [c.measure for c in gate.failures] == ["max abs diff"]
    assert figures["top1_agreement"] == 1.0  # a positive scale keeps every top-1

    # Rounding-sized differences on large logits pass: the bar scales with the largest |logit|
    gate = Gate()
    large = linear(inputs.x) * np.float32(1000)
    rounded = Runner(run=lambda x: (linear(x) * np.float32(1000)) * np.float32(1 + 2e-7))
    figures = check_parity(rounded, manifest(), "model.torchscript.pt", gate, inputs=inputs, reference=large,
                           bars=BARS["fp32"])
    assert figures["max_abs_diff"] > 1e-4 and not gate.failures
    assert figures["atol_bar"] == pytest.approx(1e-4 * np.abs(large).max())


def test_accuracy_comes_with_its_95_percent_interval_and_the_images_it_stands_on():
    from edgetl.compare.parity import accuracy_interval

    lo, hi = accuracy_interval(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # the Wilson score interval's textbook value
    lo, hi = accuracy_interval(153, 153)
    assert hi == 1.0 and 0.97 < lo < 0.98  # all right on 153 images still leaves ~2.5 points of doubt
    assert accuracy_interval(0, 0) == [0.0, 1.0]
    narrow, wide = accuracy_interval(900, 1000), accuracy_interval(90, 100)
    assert wide[0] < narrow[0] < 0.9 < narrow[1] < wide[1]
    ref = np.eye(3)[[0, 1, 2, 0]] * 5
    figures = compare_logits(ref, ref, targets=np.array([0, 1, 2, -1]))
    assert figures["labelled"] == 3 and figures["accuracy_ci"] == figures["reference_accuracy_ci"]
    assert figures["accuracy_ci"][1] == 1.0 and figures["accuracy_ci"][0] < 1.0
