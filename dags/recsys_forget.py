"""### recsys_forget: the right to be forgotten, on request

**Runs** only when triggered by hand (no schedule), with the Params `user_ids` (a list of user ids)
and `request_id` (names the request in the tombstone log; triggering the same id again resumes or
re-checks it and changes nothing more).

**Writes**: rewrites every table of the lake without the users' rows (raw landing files, user
snapshots, interactions, quarantine and the ingest reports, user profiles, every recommendations
night with its manifest), deletes the training workspaces' prepared datasets that hold them, tags
the registered model versions trained on their data `contains_forgotten_users=true`, and appends
a line to `<lake>/_forget/tombstones.jsonl` (salted hashes, never the ids). Later events of these
users are quarantined by the ingest with reason `forgotten`. The task log holds the report: every
table and file touched, rows before and after.
"""

from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import Param
from recsys_common import JOBS, PYTHON, recsys_dag, timeout

PARAMS = {
    "user_ids": Param([], type="array", items={"type": "string"}, minItems=1, title="User ids to forget"),
    "request_id": Param(
        None, type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", title="Request id (e.g. the ticket number)"
    ),
}

with recsys_dag(
    "recsys_forget",
    description="Remove every row of the given users from the lake, training data and models' tags",
    schedule=None,
    doc_md=__doc__,
    tags=["privacy"],
    params=PARAMS,
) as dag:
    BashOperator(
        bash_command=f'{PYTHON} {JOBS / "forget.py"} --users-json "$FORGET_USERS" --request-id "$FORGET_REQUEST"',
        env={"FORGET_USERS": "{{ params.user_ids | tojson }}", "FORGET_REQUEST": "{{ params.request_id }}"},
        append_env=True,
        doc_md="Runs `recsys_core.stages.forget` for the Params; a retry resumes from the request's journal.",
        **timeout("forget_users"),
    )
