"""Nightly entry point: score every known user with the champion and publish the top-K.

python jobs/recommend.py --date 1998-03-31
"""

import argparse
import json
import logging
from datetime import date

from recsys_core.config import get_settings
from recsys_core.stages.recommend import run_recommend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run_recommend(get_settings(), args.date), indent=2, default=str))


if __name__ == "__main__":
    main()
