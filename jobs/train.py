"""torchrun entry point: one process per rank trains the sequence model.

    torchrun --nnodes=1 --rdzv-backend=c10d-bound --rdzv-endpoint=127.0.0.1:0 --nproc-per-node=2 \
        jobs/train.py --dataset D --out DIR [--run-id ID]

Launched by `recsys train` / the recsys_train DAG, which prepare the dataset
and the MLflow run first.
"""

import argparse
import logging
import os
from pathlib import Path

from recsys_core.config import Settings, get_settings
from recsys_core.training.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run-id", default=None, help="MLflow run that receives per-epoch metrics (rank 0)")
    parser.add_argument("--settings", type=Path, default=None, help="settings JSON written by the prepare step")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(name)s: %(message)s")
    settings = Settings.model_validate_json(args.settings.read_text()) if args.settings else get_settings()
    train(args.dataset, args.out, settings.train, mlflow_run_id=args.run_id)


if __name__ == "__main__":
    main()
