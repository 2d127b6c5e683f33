"""The INT8 weight rounding: patches as an unfold makes them, less output error than nearest rounding, a valid file."""

import numpy as np
import pytest
import torch

from edgetl.formats.onnx_rounding import Conv, _patches, _rounded


@pytest.mark.parametrize("channels, kernel, stride, pads, size", [
    (3, 3, 2, (0, 0, 1, 1), 17),  # a TF-"same" stem: padding on the bottom/right only
    (8, 5, 1, (2, 2, 2, 2), 9),
    (6, 1, 1, (0, 0, 0, 0), 7),
    (4, 3, 2, (1, 1, 1, 1), 10),
])
def test_patches_are_torch_unfold_of_the_padded_input(channels, kernel, stride, pads, size):
    x = np.random.default_rng(0).normal(size=(2, channels, size, size)).astype(np.float32)
    conv = Conv("n", "x", np.zeros((channels, 1, kernel, kernel), np.float32), channels, (stride, stride), pads)
    got = _patches(x, conv, positions=10**9, rng=np.random.default_rng(0))
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    unfolded = torch.nn.functional.unfold(torch.from_numpy(padded), kernel, stride=stride).numpy()
    expected = unfolded.reshape(2, channels, kernel * kernel, -1).transpose(1, 2, 0, 3).reshape(channels, kernel ** 2, -1)
    np.testing.assert_array_equal(got, expected)


def _correlated_inputs(rng, k, n=4000):
    """Inputs with strongly correlated components (neighbouring pixels), where output-aware rounding pays."""
    base = rng.normal(size=(n, 1))
    return (0.8 * base + 0.6 * rng.normal(size=(n, k))).astype(np.float64)


@pytest.mark.parametrize("depthwise, k", [(False, 48), (True, 9), (True, 25)])
def test_rounding_has_less_output_error_than_nearest(depthwise, k):
    rng = np.random.default_rng(1)
    out = 16
    if depthwise:
        weight = rng.normal(size=(out, 1, int(k ** 0.5), int(k ** 0.5))).astype(np.float32)
        x = np.stack([_correlated_inputs(rng, k) for _ in range(out)])  # [C, n, k]
        h = np.einsum("cnk,cnl->ckl", x, x) / x.shape[1]
    else:
        weight = rng.normal(size=(out, k, 1, 1)).astype(np.float32)
        x = _correlated_inputs(rng, k)
        h = x.T @ x / len(x)
    conv = Conv("n", "x", weight, out if depthwise else 1, (1, 1), (0, 0, 0, 0))
    w = weight.reshape(out, -1).astype(np.float64)
    scale = np.abs(w).max(axis=1) / 127 * 20  # coarse steps, so rounding choices matter
    nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
    q = _rounded(conv, scale, nearest.reshape(weight.shape), h).reshape(out, -1)

    def error(q):
        d = q * scale[:, None] - w
        return np.einsum("ck,ckl,cl->c", d, h, d) if depthwise else np.einsum("ck,kl,cl->c", d, h, d)

    assert np.all(np.abs(q - w / scale[:, None]) <= 1.0 + 1e-9)  # within one step of the weight
    assert error(q).sum() < 0.8 * error(nearest).sum()
    if depthwise:
        assert np.all(error(q) <= error(nearest) + 1e-12)  # never worse than nearest, channel by channel
