"""Entry point of the recsys_forget DAG: forget users everywhere (``recsys_core.stages.forget``).

python jobs/forget.py --users-json '["42", "43"]' --request-id r1

The DAG passes its Params through environment variables (quoted expansions), never through the
shell's parsing, so a user id cannot inject a command.
"""

import argparse
import json
import logging
import sys

from recsys_core.cli import print_forget_report
from recsys_core.config import get_settings
from recsys_core.errors import RecsysError
from recsys_core.stages.forget import run_forget


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users-json", required=True, help='a JSON list of user ids, e.g. ["42", "43"]')
    parser.add_argument("--request-id", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    users = [str(u) for u in json.loads(args.users_json)]
    try:
        report = run_forget(get_settings(), users, args.request_id)
    except RecsysError as err:
        print(f"recsys: {err}\nhint: {err.hint}", file=sys.stderr)
        return 1
    print_forget_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
