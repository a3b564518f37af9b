"""`scripts/airflow_local.py` for real, on an empty synthetic setup: every listener on loopback, a generated
password, the UI usable in a browser, and no process left after stop."""

from __future__ import annotations

from datetime import date

import pytest
import requests
import yaml

from tests.e2e.browser import browser_missing, chromium_page, login, open_grid, trigger_with_run_date
from tests.e2e.live_airflow import is_loopback, listening_sockets, live_airflow

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("airflow-local")
    config_file = root / "recsys.yaml"
    config_file.write_text(yaml.safe_dump({"data_root": str(root / "data")}))
    with live_airflow(data_root=root / "data", airflow_home=root / "airflow", config_file=config_file) as live:
        yield live


def test_healthy_and_every_listener_on_loopback(airflow):
    health = airflow.client.health()
    assert {part["status"] for part in health.values()} == {"healthy"}, health

    sockets = listening_sockets(airflow.processes())
    assert any(port == airflow.port for _, _, _, port in sockets), sockets
    assert all(is_loopback(address) for _, _, address, _ in sockets), sockets


def test_dags_come_up_unpaused(airflow):
    assert airflow.client.wait_for_dag("recsys_features")["is_paused"] is False


def test_login_needs_the_generated_password(airflow):
    assert airflow.client.password != "admin"
    assert airflow.client.token()
    wrong = requests.post(f"{airflow.url}/auth/token", json={"username": "admin", "password": "admin"}, timeout=30)
    assert wrong.status_code == 401


@pytest.mark.browser
@pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
def test_browser_signs_in_triggers_with_a_run_date_and_shows_the_grid(airflow, tmp_path):
    shots = tmp_path / "screenshots"
    with chromium_page() as page:
        login(page, airflow.url, airflow.client.username, airflow.client.password, shots)
        run_url = trigger_with_run_date(page, airflow.url, "recsys_features", date(2024, 3, 6), shots)
        shown = open_grid(page, airflow.url, "recsys_features", shots)
    assert sorted(shown) == sorted(airflow.client.task_ids("recsys_features"))
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    runs = {run["dag_run_id"]: run for run in airflow.client.dag_runs("recsys_features")}
    assert runs[run_id]["conf"] == {"run_date": "2024-03-06"}
    assert sorted(p.name for p in shots.iterdir()) == [
        "airflow-grid-recsys_features.png",
        "airflow-login.png",
        "airflow-trigger-recsys_features.png",
        "airflow-triggered-recsys_features.png",
    ]


def test_stop_leaves_no_process(airflow):
    assert airflow.processes()
    airflow.stop()  # asserts that `start` ended and that no process of the session is left
    assert not airflow.processes()
