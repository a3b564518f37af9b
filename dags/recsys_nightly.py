"""recsys_nightly: score every known user with ``@champion`` and publish the top-K atomically.

Runs after a new champion is decided (model asset) or by hand with a run
date. Output: ``lake/recommendations/dt=YYYY-MM-DD/`` with a manifest; the
``latest`` pointer moves last.
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from recsys_common import JOBS, MODEL_ASSET, PYTHON, RECOMMENDATIONS_ASSET, RUN_DATE, emit, recsys_dag, resolve_run_date

with recsys_dag(
    "recsys_nightly",
    description="Batch top-K recommendations for every user",
    schedule=[MODEL_ASSET],
    doc_md=__doc__,
    tags=["serving"],
) as dag:
    run_date = resolve_run_date()
    recommend = BashOperator(task_id="score_and_publish", bash_command=f"{PYTHON} {JOBS / 'recommend.py'} --date {RUN_DATE}")
    run_date >> recommend >> emit(RECOMMENDATIONS_ASSET)(run_date)
