"""spark-submit entry point: user profiles and item features as of a date.

spark-submit jobs/build_features.py --date 1998-03-31
"""

import argparse
import logging
from datetime import date

from recsys_core.config import get_settings
from recsys_core.stages.features import run_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_features(get_settings(), args.date)


if __name__ == "__main__":
    main()
