"""recsys_core.cli: the platform's errors are one line and a hint, without a traceback unless --debug."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_core import cli
from recsys_core.config import get_settings

CASES = Path(__file__).parent / "config_cases"


@pytest.fixture(autouse=True)
def isolated(no_recsys_env, monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_CONFIG", str(Path(__file__).parent / "recsys-test.yaml"))
    monkeypatch.setenv("RECSYS_DATA_ROOT", str(tmp_path / "data"))
    # main() configures the root logger for a terminal; the test process keeps its own.
    monkeypatch.setattr(cli, "configure_logging", lambda verbose: None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_platform_error_is_one_line_and_a_hint(capsys):
    assert cli.main(["recs", "show", "--user", "u1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message, hint = err.splitlines()
    assert message.startswith("recsys: no published recommendations under ")
    assert hint == "hint: run `recsys recommend --date D`"


def test_debug_prints_the_traceback_too(capsys):
    assert cli.main(["--debug", "recs", "show", "--user", "u1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "MissingInput: no published recommendations" in err
    assert err.splitlines()[-2].startswith("recsys: no published recommendations")


def test_configuration_error_names_the_key(monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_CONFIG", str(CASES / "trend_short_not_a_window.yaml"))
    assert cli.main(["config"]) == 1
    message, hint = capsys.readouterr().err.splitlines()
    assert message.startswith(f"recsys: invalid configuration ({CASES / 'trend_short_not_a_window.yaml'}): ")
    assert "features.trend_short_days: 14 is not a popularity window" in message
    assert hint.startswith("hint: fix them in ")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args, settings):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_config", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["config"])


def test_success_exits_zero(capsys):
    assert cli.main(["config"]) == 0
    assert '"gate_metric": "ndcg@10"' in capsys.readouterr().out


def test_recs_show_prints_each_titles_reason(monkeypatch, capsys):
    from datetime import UTC, datetime

    import numpy as np
    from rich.console import Console

    from recsys_core.contracts import RECOMMENDATIONS
    from recsys_core.io.lake import Lake
    from recsys_core.serving.output import build_table

    lake = Lake(get_settings().lake)
    night = build_table(
        ["u1"],
        ["a", "b"],
        np.array([[1, 0]]),
        np.array([[0.5, 0.1]], np.float32),
        np.array(["model"]),
        "m",
        "1",
        datetime(2024, 5, 1, tzinfo=UTC),
        reason_item_ids=np.array([["x", None]], dtype=object),
        titles={"x": "Star Wars (1977)"},
    )
    staged = lake.new_staging_path(RECOMMENDATIONS, "dt=2024-05-01")
    lake.write_parquet(night, staged)
    lake.publish(RECOMMENDATIONS, "2024-05-01", staged, {"users": 1, "k": 2})
    monkeypatch.setattr(cli, "console", Console(width=200))
    assert cli.main(["recs", "show", "--user", "u1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "│" in line]
    assert "Because you watched Star Wars (1977)" in next(line for line in lines if " b " in line)
    assert "Popular with viewers like you" in next(line for line in lines if " a " in line)
