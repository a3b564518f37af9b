"""The lever table of model quality: one configuration's leave-last-out quality on MovieLens-100K.

Trains only the leave-last-out sequence model of ``--date`` with torchrun, exactly as ``recsys
train`` does (the effective settings: config/recsys.yaml plus RECSYS_* overrides), and scores each
user's held-out last item with the training stage's own evaluation (full ranking, seen items
excluded; the figure ``make demo`` prints as leave-last-out NDCG@10). The features for the date
must exist (``recsys features --date D``). Each run appends one line to
results/quality-levers.jsonl; ``--table`` renders results/quality-levers.md (mean and spread
over seeds, each lever against the default configuration of the same date).

    RECSYS_TRAIN__MODEL__DROPOUT=0.4 python benchmarks/quality_levers.py --date 1998-04-22 --lever "dropout 0.4"
    RECSYS_TRAIN__SEED=7 python benchmarks/quality_levers.py --date 1998-04-22 --lever default
    python benchmarks/quality_levers.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine_line

LINES = RESULTS / "quality-levers.jsonl"
TABLE = RESULTS / "quality-levers.md"
DEFAULT = "default"


def slug(lever: str) -> str:
    """The lever's name as a folder name."""
    return "".join(c if c.isalnum() else "-" for c in lever)


def training_settings(settings_json: str) -> dict:
    """The settings that decide the transformer's training: all of ``train`` but the item-item term's,
    which is fitted after training (``ease_lambda`` too: the term's EASE part and the EASE baseline)."""
    train = json.loads(settings_json)["train"]
    train.pop("ease_lambda", None)
    train["model"] = {k: v for k, v in train["model"].items() if not k.startswith("item_item")}
    return train


def train_and_score(as_of: date, lever: str, training_of: str | None = None) -> dict:
    from recsys_core.config import get_settings
    from recsys_core.evaluation.protocols import evaluate
    from recsys_core.models.bundle import ModelBundle
    from recsys_core.models.transformer import SeqRec
    from recsys_core.stages.training.evaluation import known_before_targets, seqrec_scorer
    from recsys_core.stages.training.launch import JOB, torchrun_env
    from recsys_core.stages.training.protocols import leave_last_out_scored, load_inputs
    from recsys_core.timeutil import end_of_day, epoch_day
    from recsys_core.training.checkpoint import load_checkpoint
    from recsys_core.training.dataset import build_dataset, model_config, prepare
    from recsys_core.training.item_item import fit_item_item
    from recsys_core.training.loop import BEST, RESULT

    settings = get_settings()
    out = settings.work_dir / "levers" / slug(lever) / as_of.isoformat() / f"seed-{settings.train.seed}"
    out.mkdir(parents=True, exist_ok=True)
    interactions, profiles, items = load_inputs(settings, as_of)
    data = prepare(interactions, profiles, items, epoch_day(end_of_day(as_of)), settings.features.trend_windows)
    config = model_config(data, settings.train.model)
    dataset = build_dataset(data, config, settings.train.seed)
    dataset.save(out / "dataset-loo.pt")
    (out / "settings.json").write_text(settings.model_dump_json(indent=2))
    checkpoints = out / "checkpoints"
    if training_of is None:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        command += [f"--nproc-per-node={settings.train.nproc_per_node}", str(JOB)]
        command += ["--dataset", str(out / "dataset-loo.pt"), "--out", str(checkpoints)]
        command += ["--settings", str(out / "settings.json")]
        started = time.monotonic()
        subprocess.run(command, env=torchrun_env(settings), check=True)
        train_seconds = time.monotonic() - started
    else:  # the same training as another lever's run: only the item-item term differs
        trained_by = out.parents[2] / slug(training_of) / out.parent.name / out.name
        checkpoints = trained_by / "checkpoints"
        if training_settings((trained_by / "settings.json").read_text()) != training_settings(settings.model_dump_json()):
            raise SystemExit(f"{trained_by} was trained with other settings than this lever's: train it (drop --training-of)")
        train_seconds = json.loads((checkpoints / RESULT).read_text())["train_seconds"]

    model = SeqRec(config, dataset.item_content)
    best = load_checkpoint(checkpoints / BEST)
    assert best is not None, f"torchrun left no {BEST} in {checkpoints}"
    state = best["model"]
    if training_of is not None:  # trained with another item-item term's shape: it is refitted below anyway
        state = {k: v for k, v in state.items() if not k.startswith("item_item")}
    missing = model.load_state_dict(state, strict=training_of is None).missing_keys
    assert all(k.startswith("item_item") for k in missing), missing
    item_item = (
        fit_item_item(
            model.eval(), data.split.train, dataset.valid, dataset.trend_table, settings.train, known_before_targets(data, "loo")
        )
        or {}
    )
    bundle = ModelBundle(config, data.prep, model)
    loo = leave_last_out_scored(settings, data)
    metrics = evaluate(seqrec_scorer(bundle, loo, items), loo.case, **loo.context).metrics
    alone = None  # the transformer without its item-item term, on the same users
    if item_item and model.item_item_weight is not None:
        installed = float(model.item_item_weight)
        model.item_item_weight.fill_(0.0)
        alone = evaluate(seqrec_scorer(bundle, loo, items), loo.case, **loo.context).metrics["ndcg@10"]
        model.item_item_weight.fill_(installed)
    trained = json.loads((checkpoints / RESULT).read_text())
    overrides = {k: v for k, v in sorted(os.environ.items()) if k.startswith("RECSYS_") and k != "RECSYS_DATA_ROOT"}
    return {
        "lever": lever,
        "date": as_of.isoformat(),
        "seed": settings.train.seed,
        "overrides": overrides,
        "ndcg@10": round(metrics["ndcg@10"], 5),
        "hitrate@10": round(metrics["hitrate@10"], 5),
        "ndcg@10_transformer_alone": None if alone is None else round(alone, 5),
        "coverage@10": round(metrics.get("coverage@10", float("nan")), 5),
        "users": len(loo.case.rows),
        "best_epoch": trained.get("best_epoch"),
        "epochs_run": trained.get("epochs_run"),
        "best_val_ndcg@10": round(trained.get("best_val_ndcg@10", float("nan")), 5),
        "item_item": item_item,
        "train_seconds": round(train_seconds, 1),
        "training_of": training_of,
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render() -> str:
    runs = [json.loads(line) for line in LINES.read_text().splitlines() if line.strip()]
    by = defaultdict(list)
    for run in runs:
        by[(run["lever"], run["date"])].append(run)
    dates = sorted({run["date"] for run in runs})
    lines = [
        "# Model-quality levers: leave-last-out NDCG@10 on MovieLens-100K",
        "",
        machine_line(),
        "",
        "Each row: the leave-last-out sequence model trained with torchrun as `recsys train` does, with the",
        "lever's RECSYS_* overrides on top of config/recsys.yaml, scored on every user's held-out last item",
        "(full ranking, seen items excluded). Mean over seeds (min-max); the change is against the",
        f"`{DEFAULT}` row of the same date. The standard error of one NDCG@10 over 943 users is about 0.008,",
        "so a single-seed difference under ~0.01 is noise. Reproduce a row with",
        "`<overrides> python benchmarks/quality_levers.py --date D --lever NAME`. Train seconds are wall time",
        "of the torchrun (2 processes); `load` is the 1-minute load average after it (2 cores): above ~2.5 the",
        "machine was shared and the time is pessimistic. NDCG@10 does not depend on the load.",
        "",
        "`transformer alone` is the same model's NDCG@10 without its item-item term (models/item_item.py;",
        "rows with `ITEM_ITEM_RANK=0` and `ITEM_ITEM_TRANSITIONS=false` have no term: the transformer alone).",
        "The term's own levers reuse the `default` rows' trained checkpoints (`--training-of default`: same",
        "seed, same training settings), so only the term differs; their train seconds are those of that training.",
        "",
        (
            "| lever | overrides | date | seeds | NDCG@10 | change | transformer alone | HR@10 | coverage@10 "
            "| best epoch / run | train s | load |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for day in dates:
        base = by.get((DEFAULT, day))
        base_mean = statistics.mean(r["ndcg@10"] for r in base) if base else None
        levers = sorted({lever for lever, d in by if d == day}, key=lambda name: (name != DEFAULT, name))
        for lever in levers:
            group = by[(lever, day)]
            scores = [r["ndcg@10"] for r in group]
            mean = statistics.mean(scores)
            spread = f" ({min(scores):.4f}-{max(scores):.4f})" if len(scores) > 1 else ""
            change = "" if base_mean is None or lever == DEFAULT else f"{(mean / base_mean - 1) * 100:+.1f}%"
            shown = {k: v for k, v in group[0]["overrides"].items() if k != "RECSYS_TRAIN__SEED"}
            overrides = ", ".join(f"`{k.removeprefix('RECSYS_')}={v}`" for k, v in shown.items())
            epochs = ", ".join(f"{r['best_epoch']}/{r['epochs_run']}" for r in group)
            alone = [r.get("ndcg@10_transformer_alone") or r["ndcg@10"] for r in group]
            lines.append(
                f"| {lever} | {overrides or '—'} | {day} | {len(group)} | {mean:.4f}{spread} | {change} | "
                f"{statistics.mean(alone):.4f} | "
                f"{statistics.mean(r['hitrate@10'] for r in group):.4f} | "
                f"{statistics.mean(r['coverage@10'] for r in group):.3f} | "
                f"{epochs} | {statistics.median(r['train_seconds'] for r in group):.0f} | "
                f"{statistics.median(r['load_avg_1m_after'] for r in group):.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--date", type=date.fromisoformat)
    parser.add_argument("--lever", default=DEFAULT, help="the row's name; 'default' is the configuration as shipped")
    parser.add_argument("--table", action="store_true", help="only render quality-levers.md from the recorded runs")
    parser.add_argument(
        "--training-of",
        metavar="LEVER",
        help="reuse that lever's trained checkpoints (same date, seed and training settings): for the item-item term's levers",
    )
    args = parser.parse_args()
    if not args.table:
        if args.date is None:
            parser.error("--date is required to train")
        result = train_and_score(args.date, args.lever, args.training_of)
        print(json.dumps(result), flush=True)
        with LINES.open("a") as f:
            f.write(json.dumps(result) + "\n")
    TABLE.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
