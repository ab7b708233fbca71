"""Phase 1 trains the head on standardised features and folds the scaling into its
weights: the saved network must then give the same logit on the raw features."""

from __future__ import annotations

import numpy as np

from pneumo.train import fold_standardisation


def test_folded_weights_give_the_same_logit_on_raw_features():
    rng = np.random.default_rng(0)
    # channels whose scales differ by orders of magnitude, as a middle block's do
    features = rng.normal(5.0, 1.0, (64, 728)) * np.logspace(-2, 2, 728)
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    kernel = rng.normal(0, 0.1, (728, 1)).astype(np.float32)
    bias = np.array([0.3], np.float32)
    folded_kernel, folded_bias = fold_standardisation(kernel, bias, mean, scale)
    assert folded_kernel.shape == kernel.shape and folded_bias.shape == bias.shape
    assert folded_kernel.dtype == np.float32 and folded_bias.dtype == np.float32
    on_standardised = ((features - mean) / scale) @ kernel + bias
    on_raw = features @ folded_kernel.astype(np.float64) + folded_bias
    np.testing.assert_allclose(on_raw, on_standardised, rtol=1e-4, atol=1e-4)
    assert not np.allclose(features @ kernel + bias, on_standardised, atol=1e-2)
