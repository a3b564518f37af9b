"""spark-submit entry point: validate landed raw events into interactions + quarantine.

spark-submit jobs/ingest_events.py --date 1998-03-31 [--catch-up]
"""

import argparse
import logging
from datetime import date

from recsys_core.config import get_settings
from recsys_core.io.lake import Lake
from recsys_core.stages.ingest import dates_to_ingest, run_ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    parser.add_argument("--catch-up", action="store_true", help="also ingest earlier landed days not yet ingested")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = get_settings()
    dates = dates_to_ingest(Lake(settings.lake), args.date, catch_up=args.catch_up)
    run_ingest(settings, dates)


if __name__ == "__main__":
    main()
