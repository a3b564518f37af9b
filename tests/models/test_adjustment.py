"""recsys_core.models.adjustment: the per-item affine change of the score, and its statistics."""

from __future__ import annotations

import numpy as np

from recsys_core.models.adjustment import MIN_SPREAD, ItemAdjustment, adjust, affine, item_score_stats


def scores() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(50, 8)) * np.arange(1, 9) + np.arange(8) * 3).astype(np.float32)


def test_full_centering_and_scaling_leave_every_item_mean_zero_and_spread_one():
    adjusted = adjust(scores(), centering=1.0, scaling=1.0)
    np.testing.assert_allclose(adjusted.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(adjusted.std(axis=0), 1, atol=1e-5)


def test_no_adjustment_is_the_scores_themselves_and_half_centering_keeps_half_the_mean():
    raw = scores()
    assert adjust(raw, 0.0, 0.0) is raw
    np.testing.assert_allclose(adjust(raw, 0.5, 0.0).mean(axis=0), raw.mean(axis=0) / 2, rtol=1e-5, atol=1e-5)


def test_a_constant_item_is_not_blown_up():
    flat = np.ones((10, 3), dtype=np.float32)
    mean, spread = item_score_stats(flat)
    scale, offset = affine(mean, spread, 1.0, 1.0)
    np.testing.assert_allclose(scale, 1 / MIN_SPREAD, rtol=1e-5)
    assert np.all(np.isfinite(offset))


def test_catalogue_items_the_model_never_saw_get_the_median_statistics():
    fitted = ItemAdjustment.of_scores(scores(), centering=1.0, scaling=0.5)
    scale, offset = fitted.affine_of(np.array([3, 0, 1]))  # 1-based vocabulary index; 0: unknown
    expected_scale, expected_offset = affine(fitted.mean, fitted.spread, 1.0, 0.5)
    assert (scale[0], offset[0]) == (expected_scale[2], expected_offset[2])
    assert (scale[2], offset[2]) == (expected_scale[0], expected_offset[0])
    median_scale, median_offset = affine(np.median(fitted.mean), np.median(fitted.spread), 1.0, 0.5)
    np.testing.assert_allclose([scale[1], offset[1]], [median_scale, median_offset], rtol=1e-6)


def test_moments_gathered_batch_by_batch_equal_those_of_the_whole_matrix():
    from recsys_core.models.adjustment import ScoreMoments

    whole = scores()
    moments = ScoreMoments()
    for start in range(0, len(whole), 7):
        assert moments.add(whole[start : start + 7]) is not None
    for gathered, direct in zip(moments.stats(), (whole.astype(np.float64).mean(0), whole.astype(np.float64).std(0))):
        np.testing.assert_allclose(gathered, direct, rtol=1e-5, atol=1e-5)
