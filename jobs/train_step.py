"""Entry point for one step of training (what the recsys_train DAG runs per task).

python jobs/train_step.py prepare  --date D   # dataset + MLflow parent run
python jobs/train_step.py torchrun --date D   # torchrun jobs/train.py (DDP)
python jobs/train_step.py evaluate --date D   # baselines, evaluation, registry gate
"""

import argparse
import json
import logging
from datetime import date

from recsys_core.config import get_settings
from recsys_core.stages import train as stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("step", choices=["prepare", "torchrun", "evaluate"])
    parser.add_argument("--date", type=date.fromisoformat, required=True)
    parser.add_argument("--nproc", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = get_settings()
    if args.step == "prepare":
        result = stage.prepare_training(settings, args.date)
    elif args.step == "torchrun":
        result = {
            protocol: {k: v for k, v in r.items() if k != "history"}
            for protocol, r in stage.run_torchrun(settings, args.date, args.nproc).items()
        }
    else:
        result = stage.evaluate_and_register(settings, args.date)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
