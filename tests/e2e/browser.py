"""Playwright helpers that drive the Airflow and MLflow UIs in Debian's Chromium, as a person would.

Debian's `chromium` (apt) is used, never `playwright install` (it downloads a browser build). Each helper saves
a screenshot of what it saw into the folder it is given.

    with chromium_page() as page:
        login(page, airflow.url, "admin", password, shots)
        run_url = trigger_with_run_date(page, airflow.url, "recsys_features", date(2024, 3, 6), shots)
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",  # nothing outside 127.0.0.1 is reachable, nor needed
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000  # the UIs share 2 cores with Airflow, Spark and torchrun
# [offsetTop, offsetLeft, text] of each cell a virtualised grid has rendered.
RENDERED_CELLS_JS = (
    "g => [...g.querySelectorAll('[role=rowgroup] > div')].map(c => [c.offsetTop, c.offsetLeft, c.innerText.trim()])"
)


def browser_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed"
    return None


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def screenshot(page, shots: Path, name: str) -> Path:
    shots.mkdir(parents=True, exist_ok=True)
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# Airflow 3.3 ------------------------------------------------------------------------
def login(page, base_url: str, user: str, password: str, shots: Path) -> None:
    """Sign in through the simple auth manager's form; fails if the home page does not follow."""
    page.goto(base_url)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    try:
        page.get_by_role("button", name="User", exact=True).wait_for()  # the user menu: signed in
    finally:
        screenshot(page, shots, "airflow-login")


def trigger_with_run_date(page, base_url: str, dag_id: str, run_date: date, shots: Path) -> str:
    """Trigger dag_id from its page with the `run_date` Param set in the form; returns the new run's URL."""
    page.goto(f"{base_url}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    # A Param with `format: date` renders as a date input named after the Param.
    dialog.locator("input[type=date][name=element_run_date]").fill(run_date.isoformat())
    screenshot(page, shots, f"airflow-trigger-{dag_id}")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url(f"{base_url}/dags/{dag_id}/runs/**")  # the UI opens the run it created
    screenshot(page, shots, f"airflow-triggered-{dag_id}")
    return page.url


def open_grid(page, base_url: str, dag_id: str, shots: Path) -> list[str]:
    """The task names the DAG's grid view shows, top to bottom."""
    page.goto(f"{base_url}/dags/{dag_id}")
    page.get_by_role("button", name="Show Grid").click()
    cells = page.locator("[data-task-id]")
    cells.first.wait_for()
    # Name cells carry the task's name; the state cells of each run, with the same attribute, carry no text.
    names = [name.strip() for name in cells.all_inner_texts() if name.strip()]
    screenshot(page, shots, f"airflow-grid-{dag_id}")
    return names


# MLflow 3.17 ------------------------------------------------------------------------
def run_state_shown(page, base_url: str, dag_id: str, run_id: str, shots: Path) -> str:
    """The state the page of one DAG run shows for it, lower-cased (e.g. "success")."""
    from urllib.parse import quote

    page.goto(f"{base_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
    badge = page.get_by_text(re.compile(r"^(success|failed|running|queued)$", re.IGNORECASE)).first
    badge.wait_for()
    screenshot(page, shots, f"airflow-run-{dag_id}")
    return badge.inner_text().strip().lower()


def compare_runs_url(mlflow_url: str, run_ids: list[str], experiment_ids: list[str]) -> str:
    # The route MLflow's own "Compare" button opens: JSON arrays in the hash's query.
    return f"{mlflow_url}/#/compare-runs?runs={json.dumps(run_ids)}&experiments={json.dumps(sorted(set(experiment_ids)))}"


def mlflow_compare(page, mlflow_url: str, run_ids: list[str], shots: Path) -> dict[str, list[str]]:
    """MLflow's compare-runs view of run_ids: {metric: [its value as shown, one per run in run_ids order]}.

    The view lines metrics up by key; a run that did not log a key shows "NaN" there."""
    experiment_ids = []
    for run_id in run_ids:
        response = page.request.get(f"{mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": run_id})
        assert response.ok, f"MLflow has no run {run_id}: {response.status} {response.text()[:200]}"
        experiment_ids.append(response.json()["run"]["info"]["experiment_id"])
    page.goto(compare_runs_url(mlflow_url, run_ids, experiment_ids))
    switch = page.get_by_role("switch", name="Metrics - Show diff only")
    switch.wait_for()
    # Two grids: the metric names, and their values with one column per run.
    names_grid, values_grid = switch.locator("xpath=ancestor::div[.//div[@role='grid']][1]").get_by_role("grid").all()
    names_grid.locator("[role=rowgroup] > div").first.wait_for()
    # Before any scrolling, while both grids show their first rows side by side.
    switch.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    screenshot(page, shots, "mlflow-compare")
    # The grids are virtualised (only the rows in view exist) and scroll separately: scroll both through,
    # and line cells up by their position: row by offsetTop, run by offsetLeft.
    names: dict[int, str] = {}
    values: dict[int, dict[int, str]] = {}
    while True:
        for top, _, text in names_grid.evaluate(RENDERED_CELLS_JS):
            names[top] = text
        for top, left, text in values_grid.evaluate(RENDERED_CELLS_JS):
            values.setdefault(top, {})[left] = text
        grids = (names_grid, values_grid)
        if all(grid.evaluate("g => g.scrollTop + g.clientHeight >= g.scrollHeight - 1") for grid in grids):
            break
        for grid in grids:
            grid.evaluate("g => { g.scrollTop += g.clientHeight / 2; }")
        page.wait_for_timeout(300)  # let both grids render the rows now in view
    rows = {name: [values.get(top, {})[left] for left in sorted(values.get(top, {}))] for top, name in sorted(names.items())}
    incomplete = {name: row for name, row in rows.items() if len(row) != len(run_ids)}
    assert not incomplete, f"metric rows not read in full: {incomplete}"
    return rows
