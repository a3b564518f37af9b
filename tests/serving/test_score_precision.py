"""recsys_core.serving.score with serve.precision: the bf16 + fp32 re-rank path against a brute-force oracle."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys_core.config import ServeSettings
from recsys_core.serving.score import _BF16_OUTPUT_REL, _error_bound, _item_norms, score_top_k

K = 10


def exact_case(n_users=40, n_items=3001, dim=16, seed=3, density=0.05):
    """Vectors of multiples of 2^-5 below 2^4: every dot product is exact in fp32 (and inexact in bf16).

    A quarter of the items repeat earlier items exactly, so scores tie; seen items are masked.
    """
    rng = np.random.default_rng(seed)
    users = rng.integers(-511, 512, size=(n_users, dim)).astype(np.float32) / 32
    items = rng.integers(-511, 512, size=(n_items, dim)).astype(np.float32) / 32
    copies = rng.choice(n_items, size=n_items // 4, replace=False)
    items[copies] = items[rng.integers(0, n_items, size=len(copies))]
    mask = rng.random((n_users, n_items)) < density
    return torch.from_numpy(users), torch.from_numpy(items), mask


def oracle(users: torch.Tensor, items: torch.Tensor, k: int, mask: np.ndarray):
    """Brute force: every score in float64, masked items out, best first, equal scores lowest column first."""
    scores = users.numpy().astype(np.float64) @ items.numpy().astype(np.float64).T
    scores = np.where(mask, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_exact_data_has_ties_and_is_not_exact_in_bf16():
    users, items, mask = exact_case()
    expected, _ = oracle(users, items, K + 1, mask)
    scores = users.numpy().astype(np.float64) @ items.numpy().astype(np.float64).T
    top = np.take_along_axis(scores, expected, axis=1)
    assert (np.diff(top, axis=1) == 0).any()  # ties inside the top-k
    assert not torch.equal(users.bfloat16().float(), users)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("batch_users", [7, 1024])
def test_top_k_equals_the_brute_force_oracle_with_ties_and_masks(precision, batch_users):
    users, items, mask = exact_case()
    stats: dict = {}
    top, scores = score_top_k(
        users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), batch_users=batch_users, precision=precision, stats=stats
    )
    expected_items, expected_scores = oracle(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    if precision == "bf16":  # the bf16 pool, not the fp32 fallback, served the rows
        assert stats["fallback_rows"] < len(users) // 4
        assert stats["pool"] > K


def test_bf16_matches_fp32_on_random_data():
    gen = torch.Generator().manual_seed(5)
    users, items = torch.randn(300, 32, generator=gen), torch.randn(5000, 32, generator=gen)
    mask = np.random.default_rng(5).random((300, 5000)) < 0.01
    exclude = sp.csr_matrix(mask.astype(np.float32))
    a_items, a_scores = score_top_k(users, items, 20, exclude=exclude)
    stats: dict = {}
    b_items, b_scores = score_top_k(users, items, 20, exclude=exclude, precision="bf16", stats=stats)
    np.testing.assert_array_equal(b_items, a_items)
    np.testing.assert_allclose(b_scores, a_scores, rtol=1e-6, atol=1e-6)
    assert stats["fallback_rows"] < 30
    assert {"gemm_s", "pool_s", "select_s", "rerank_s"} <= stats.keys()


def test_bf16_error_bound_holds_for_every_score():
    gen = torch.Generator().manual_seed(9)
    users = torch.randn(64, 48, generator=gen) * torch.rand(64, 1, generator=gen) * 4
    items = torch.randn(2000, 48, generator=gen) * torch.rand(2000, 1, generator=gen) * 4
    users_bf16, eps = _error_bound(users, _item_norms(items))
    assert torch.equal(users_bf16, users.bfloat16())  # the GEMM's input: torch's own rounding
    exact = users @ items.T
    approx = (users_bf16 @ items.T.contiguous().bfloat16()).float()
    assert ((exact - approx).abs().numpy() <= _BF16_OUTPUT_REL * approx.abs().numpy() + eps[:, None]).all()


def test_bf16_negative_scores_fall_back_to_fp32_and_stay_exact():
    users, items, mask = exact_case(n_users=12)
    users = users.abs()
    items = -items.abs() - 1  # every score negative: the raw-bits block maxima do not apply
    stats: dict = {}
    top, scores = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16", stats=stats)
    expected_items, expected_scores = oracle(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert stats["fallback_rows"] == 12


def test_bf16_candidate_pool_pads_users_with_fewer_valid_items():
    users, items, mask = exact_case(n_users=6)
    mask[2] = True
    mask[2, [5, 17, 2999]] = False  # three items left, K = 10, min_valid = 2
    mask[4, :] = False
    exclude = sp.csr_matrix(mask.astype(np.float32))
    top, scores = score_top_k(users, items, K, exclude=exclude, min_valid=2, precision="bf16")
    expected_items, expected_scores = oracle(users, items, K, mask)
    assert sorted(top[2, :3].tolist()) == [5, 17, 2999]
    assert (top[2, 3:] == -1).all() and np.isneginf(scores[2, 3:]).all()
    keep = np.isfinite(expected_scores)
    np.testing.assert_array_equal(top[keep], expected_items[keep])
    np.testing.assert_array_equal(scores[keep], expected_scores[keep].astype(np.float32))
    with pytest.raises(ValueError, match="user row 2 has fewer than K=4"):
        score_top_k(users, items, K, exclude=exclude, min_valid=4, precision="bf16")


def test_bf16_all_masked_row_and_non_finite_scores_are_refused():
    users, items, mask = exact_case(n_users=5)
    mask[3, :] = True
    with pytest.raises(ValueError, match="user row 3 has fewer than K=10"):
        score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16")
    users[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"user row 1 .*non-finite"):
        score_top_k(users, items, K, precision="bf16")


@pytest.mark.parametrize("n_items", [15, 400])  # catalogues too small for the block tree
def test_bf16_small_catalogues(n_items):
    users, items, mask = exact_case(n_users=9, n_items=n_items)
    top, scores = score_top_k(users, items, 5, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16")
    expected_items, expected_scores = oracle(users, items, 5, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))


def test_precision_is_checked():
    users, items, _ = exact_case(n_users=2, n_items=20)
    with pytest.raises(ValueError, match=r"serve\.precision must be 'auto' or one of"):
        score_top_k(users, items, 3, precision="fp16")  # type: ignore[arg-type]
    assert ServeSettings().precision == "auto"
    with pytest.raises(ValueError):
        ServeSettings(precision="int8")


def test_bf16_pool_of_exactly_k_is_still_exact(monkeypatch):
    # A pool of k items: bf16 rounding reorders the boundary, so the error-bound check must send
    # exactly the rows whose pool may miss an item to the fp32 path.
    import recsys_core.serving.score as score

    monkeypatch.setattr(score, "_POOL_MARGIN", 0.0)
    monkeypatch.setattr(score, "_POOL_MARGIN_MIN", 0)
    users, items, mask = exact_case(n_users=60)
    stats: dict = {}
    top, scores = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16", stats=stats)
    expected_items, expected_scores = oracle(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert stats["pool"] == K and 0 < stats["fallback_rows"] < 60


def test_bf16_rows_whose_pool_overflows_with_ties_are_scored_again_in_fp32():
    """Every item repeats one of four vectors: thousands of items tie at the pool's threshold, more
    than the pool can hold, so those rows go to the exact path and still match the oracle."""
    users, items, mask = exact_case(n_users=24, n_items=4000)
    items = items[torch.from_numpy(np.random.default_rng(1).integers(0, 4, size=len(items)))]
    stats: dict = {}
    top, scores = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16", stats=stats)
    expected_items, expected_scores = oracle(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert stats["fallback_rows"] == len(users)


def test_users_round_to_bf16_as_torch_does_ties_and_infinities_included():
    halfway = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x00800000], dtype=np.uint32).view(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-3, -65504.0], dtype=np.float32)
    values = np.concatenate([halfway, specials, np.random.default_rng(0).standard_normal(500).astype(np.float32)])
    users = torch.from_numpy(np.resize(values, (64, 8)))  # every value, repeated to fill the rows
    users_bf16, _ = _error_bound(users, (1.0, 0.0))
    nan = users.isnan()  # NaN stays NaN (which NaN bits torch writes depends on its code path)
    assert torch.equal(users_bf16.float().isnan(), nan)
    assert torch.equal(users_bf16.view(torch.int16)[~nan], users.bfloat16().view(torch.int16)[~nan])


@pytest.mark.parametrize(("n_items", "levels"), [(301, 0), (1001, 1), (3001, 2), (8001, 3)])
def test_bf16_pool_is_exact_at_every_depth_of_the_block_maximum_tree(n_items, levels):
    users, items, mask = exact_case(n_users=30, n_items=n_items)
    stats: dict = {}
    top, scores = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="bf16", stats=stats)
    expected_items, expected_scores = oracle(users, items, K, mask)
    np.testing.assert_array_equal(top, expected_items)
    np.testing.assert_array_equal(scores, expected_scores.astype(np.float32))
    assert stats["levels"] == levels
    assert stats["fallback_rows"] < len(users) // 4


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2", "fma"}, "fp32"), ({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16", "amx_tile"}, "bf16"), (set(), "fp32")],
)
def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, flags, expected):
    from recsys_core.serving import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert precision.resolve_precision("auto") == expected
    assert precision.resolve_precision("fp32") == "fp32" and precision.resolve_precision("bf16") == "bf16"
    stats: dict = {}
    users, items, mask = exact_case(n_users=5, n_items=200)
    top, _ = score_top_k(users, items, K, exclude=sp.csr_matrix(mask.astype(np.float32)), precision="auto", stats=stats)
    assert stats["precision"] == expected
    np.testing.assert_array_equal(top, oracle(users, items, K, mask)[0])


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    from recsys_core.serving import precision

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.setattr(precision, "CPUINFO", info)
    precision.cpu_flags.cache_clear()
    try:
        assert precision.cpu_flags() == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
        monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
        precision.cpu_flags.cache_clear()
        assert precision.cpu_flags() == frozenset()
    finally:
        precision.cpu_flags.cache_clear()
