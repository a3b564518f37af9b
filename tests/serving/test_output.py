"""recsys_core.serving.output: the published table, its content digest, the report as text."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from recsys_core.contracts import RECOMMENDATIONS
from recsys_core.serving.output import build_table, content_digest, format_report

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
T1 = datetime(2024, 5, 2, 3, 0, tzinfo=UTC)


def sample(generated_at=T0, scores=None) -> pa.Table:
    items = np.array([[2, 0, 1], [1, 2, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]], dtype=np.float32) if scores is None else scores
    return build_table(["u1", "u2"], ["a", "b", "c"], items, scores, np.array(["model", "fallback"]), "m", "3", generated_at)


def test_build_table_follows_the_contract():
    table = sample()
    assert table.schema.equals(RECOMMENDATIONS.schema)
    assert table["user_id"].to_pylist() == ["u1"] * 3 + ["u2"] * 3
    assert table["rank"].to_pylist() == [1, 2, 3, 1, 2, 3]
    assert table["item_id"].to_pylist() == ["c", "a", "b", "b", "c", "a"]
    assert table["source"].to_pylist() == ["model"] * 3 + ["fallback"] * 3
    assert set(table["generated_at"].to_pylist()) == {T0}


def test_reasons_name_the_reason_items_title_or_say_nothing_personal():
    items = np.array([[2, 0, 1], [1, 2, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2]], dtype=np.float32)
    reason_ids = np.array([["x", None, "y"], [None, None, None]], dtype=object)
    table = build_table(
        ["u1", "u2"],
        ["a", "b", "c"],
        items,
        scores,
        np.array(["model", "fallback"]),
        "m",
        "3",
        T0,
        reason_item_ids=reason_ids,
        titles={"x": "Star Wars (1977)"},
    )
    assert table["reason_item_id"].to_pylist() == ["x", None, "y", None, None, None]
    assert table["reason"].to_pylist() == [
        "Because you watched Star Wars (1977)",
        "Popular with viewers like you",
        "Because you watched item y",  # no title: named by its id
        *["Trending this week"] * 3,
    ]
    assert sample()["reason"].to_pylist() == ["Popular with viewers like you"] * 3 + ["Trending this week"] * 3


def test_digest_ignores_generated_at_row_order_and_chunking():
    table = sample()
    digest = content_digest(table)
    assert len(digest) == 64
    assert content_digest(sample(generated_at=T1)) == digest
    shuffled = table.take(pa.array([4, 0, 5, 2, 1, 3]))
    assert content_digest(shuffled) == digest
    rechunked = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    assert rechunked["item_id"].num_chunks == 2
    assert content_digest(rechunked) == digest


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.set_column(2, "item_id", pa.array(["c", "a", "b", "b", "a", "c"])),
        lambda t: t.set_column(3, "score", pa.array(np.array([0.9, 0.5, 0.1, 0.8, 0.7, 0.2000001], dtype=np.float32))),
        lambda t: t.set_column(5, "model_version", pa.array(["4"] * 6)),
        lambda t: t.set_column(7, "source", pa.array(["model"] * 6)),
        lambda t: t.set_column(8, "reason_item_id", pa.array(["b", None, None, None, None, None])),
        lambda t: t.slice(0, 3),
    ],
)
def test_digest_sees_every_content_change(change):
    assert content_digest(change(sample())) != content_digest(sample())


def test_digest_of_an_empty_table():
    empty = RECOMMENDATIONS.schema.empty_table()
    assert content_digest(empty) == content_digest(empty)
    assert content_digest(empty) != content_digest(sample())


def test_format_report_is_a_small_table():
    text = format_report({"catalogue_coverage": 0.5, "users_source_model": 1234, "note": "x", "nested": {"a": 1}}, "night")
    lines = text.splitlines()
    assert lines[0] == "night"
    assert len({len(line) for line in lines[1:]}) == 1  # aligned
    assert any("catalogue_coverage" in line and "0.5000" in line for line in lines)
    assert any("users_source_model" in line and "1,234" in line for line in lines)
    assert any("nested[a]" in line for line in lines)


def test_digest_covers_the_contract_columns_only():
    table = sample()
    assert content_digest(table.append_column("dt", pa.array(["2024-05-01"] * 6).dictionary_encode())) == content_digest(table)
