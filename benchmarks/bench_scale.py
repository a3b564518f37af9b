"""Scale benchmark: the whole chain on one machine at 1M users, 100K items, 20M events.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--resume] [--keep] [--epochs N]
        [--users U --items I --events E]      # another size (e.g. the largest that fits)
    .venv/bin/python benchmarks/bench_scale.py --render-only [--quick]

Stages, each in a fresh process (a new JVM, a new torch), through the library's
own entry points (the same ones bench_features / bench_training / the CLI call):

1. generate: ``generate_logs`` (seeded synthetic log: Zipf item popularity,
   heavy-tailed users, sessions, drifting tastes; 0.1% broken lines, 1% late
   arrivals, 30 arrival days, at most 100k lines per gzipped file);
2. ingest: ``run_ingest`` over all landed days (Spark, local[*]);
3. features: ``run_features`` as of the last day (Spark), text embeddings off
   (MiniLM over 100K item texts on 2 CPUs is a separate, cacheable cost: see
   bench_features' text-embedding figure);
4. train: ``prepare_training``, ``run_torchrun`` (2 processes, gloo, sampled
   softmax with logQ correction, a few epochs, validation after the last one)
   and ``evaluate_and_register`` (full-ranking test metrics; popularity
   baseline only: EASE's dense item-item matrix is 100K x 100K, 80 GB at this
   catalogue; only the served leave-last-out model is trained: the backtest and
   calibration models would each cost the same again);
5. serve: ``run_recommend`` (the nightly job, local engine): top-50 for every
   known user, validated and published with its manifest.

Per stage: wall and CPU seconds and peak RSS of the stage's whole process tree
(common.TreeSampler: Python, the Spark JVM and its workers, torchrun and its
ranks), the machine's lowest available memory, the other processes' CPU share
(the machine may be shared), rows in and out, and the stage's own breakdown
(what dominates). Results go to results/scale.json and scale.md
(``--quick``: scale-quick.*) after every stage; ``--resume`` reuses the
stages an interrupted run finished (checked against the size and settings).
run_all.py skips this benchmark unless ``--only scale``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    RESULTS,
    WORK,
    TreeSampler,
    bench_env,
    machine_info,
    machine_line,
    md_table,
    measure,
    noise_note,
    result_name,
    write_results,
)

NAME = "scale"
SCALE_WORK = WORK / "scale"
STAGES = ("generate", "ingest", "features", "train", "serve")
SIZES = {
    "quick": {"users": 20_000, "items": 5_000, "events": 400_000},
    "full": {"users": 1_000_000, "items": 100_000, "events": 20_000_000},
}
DAYS = 30
START = date(2024, 1, 1)
MAX_LINES_PER_FILE = 100_000
EPOCHS = 2  # bounded (TRAIN): one timed epoch, one with the validation
NPROC = 2
SPARK = {"master": "local[*]", "driver_memory": "6g", "shuffle_partitions": 16}
TRAIN = {
    "batch_size": 512,
    "model": {"loss": "sampled", "n_negatives": 256},
    # Only the served model: the temporal protocols would each train (and evaluate) another one.
    "calibration": {"enabled": False},
    # EASE needs a dense items x items matrix (8 * 100K^2 bytes = 80 GB); ALS a Spark job of its own.
    "baselines": ["popularity"],
    "nproc_per_node": NPROC,
    # A full epoch at 1M users is ~1M windows (about an hour here): epochs are timed from a bounded
    # number of steps, and validation and evaluation rank a seeded sample of users against the whole
    # catalogue. No-ops at the quick size.
    "max_steps_per_epoch": 150,
    "max_validation_users": 20_000,
}
EVAL_USERS = 50_000
# The local engine holds every user's rows and seen items in one process: at 1M users x 100K items
# it peaked at 23.7 GB and was killed on this 24 GB machine. Above this many users the night runs
# on the Spark engine (local[*]), whose tasks each hold one group of users.
LOCAL_SERVE_MAX_USERS = 250_000


def serve_engine(size: dict) -> str:
    return "local" if size["users"] <= LOCAL_SERVE_MAX_USERS else "spark"


# Sizes and settings ---------------------------------------------------------------------------


def spec_for(size: dict):
    from recsys_core.io.datasets.synthetic import SyntheticSpec

    return SyntheticSpec(
        events=size["events"],
        users=size["users"],
        items=size["items"],
        days=DAYS,
        seed=7,
        bad_fraction=0.001,
        late_fraction=0.01,
        files_per_day=max(1, math.ceil(size["events"] / DAYS / MAX_LINES_PER_FILE)),
        start=START,
    )


def as_of() -> date:
    return START + timedelta(days=DAYS - 1)


def bench_settings(root: Path, epochs: int, size: dict | None = None):
    """The settings of every stage; ``size`` picks the nightly engine (None: the local one)."""
    from recsys_core.config import settings_for

    train = {**TRAIN, "epochs": epochs, "eval_every": epochs, "early_stopping_patience": epochs}
    return settings_for(
        data_root=root,
        spark=SPARK,
        features={"text_embeddings": False},
        ingest={"max_reject_rate": 1.0},
        train=train,
        # The whole log is 30 days: a 30-day horizon leaves the backtest no history before its cut,
        # so only the leave-last-out (served) model is trained.
        eval={"backtest_horizon_days": DAYS, "max_users": EVAL_USERS},
        serve={"engine": serve_engine(size) if size else "local", "top_k": 50},
    )


DATA_STAGES = ("generate", "ingest", "features")


def run_key(size: dict, epochs: int) -> str:
    """What the stages' results depend on: a resumed run reuses a stage only under the same key."""
    model = {"epochs": epochs, "train": TRAIN, "eval_users": EVAL_USERS}
    return json.dumps({"spec": repr(spec_for(size)), "spark": SPARK, **model, "serve_engine": serve_engine(size)}, sort_keys=True)


# What each stage's result depends on, of the key's fields.
DEPENDS_ON = dict.fromkeys(DATA_STAGES, ("spec", "spark"))
DEPENDS_ON["train"] = (*DEPENDS_ON["features"], "epochs", "train", "eval_users")
DEPENDS_ON["serve"] = (*DEPENDS_ON["train"], "serve_engine")


def reusable(saved_key: str, key: str, stage: str) -> bool:
    saved, now = json.loads(saved_key), json.loads(key)
    return all(saved.get(k) == now.get(k) for k in DEPENDS_ON[stage])


# Workers (one per stage, each in its own process) -----------------------------------------------


def worker(stage: str, root: Path, epochs: int, size: dict) -> dict:
    settings = bench_settings(root, epochs, size)
    sampler = TreeSampler().start()
    parts: dict[str, dict] = {}
    out: dict = {}
    try:
        if stage == "generate":
            out = _generate(root, size, sampler, parts)
        elif stage in ("ingest", "features"):
            out = _spark_stage(stage, settings, sampler, parts)
        elif stage == "train":
            out = _train(settings, sampler, parts)
        elif stage == "serve":
            out = _serve(settings, sampler, parts)
        else:
            raise ValueError(f"unknown stage {stage!r}")
    finally:
        sampler.stop()
    return {"parts": parts, **out}


def _generate(root: Path, size: dict, sampler: TreeSampler, parts: dict) -> dict:
    from recsys_core.io.datasets.synthetic import generate_logs
    from recsys_core.io.lake import Lake

    lake_dir = root / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)
    spec = spec_for(size)
    with measure(sampler, "generate_logs") as p:
        summary = generate_logs(spec, Lake(str(lake_dir)))
    parts["generate_logs"] = p.to_dict()
    raw = sum(f.stat().st_size for f in (lake_dir / "raw" / "events").rglob("*.gz"))
    return {
        "rows_in": 0,
        "rows_out": summary["events_written"],
        "detail": {
            "users": spec.users,
            "items": spec.items,
            "days": spec.days,
            "files": summary["files"],
            "bad_events": summary["bad_events"],
            "late_events": summary["late_events"],
            "raw_gz_mb": round(raw / 2**20, 1),
        },
    }


def _spark_stage(stage: str, settings, sampler: TreeSampler, parts: dict) -> dict:
    from recsys_core.io.lake import Lake
    from recsys_core.io.spark import spark_session

    with measure(sampler, "spark session start") as p:
        spark = spark_session(settings, f"bench-scale-{stage}")
        spark.range(1).count()
    parts["spark_start"] = p.to_dict()
    try:
        if stage == "ingest":
            from recsys_core.stages.ingest import landed_dates, run_ingest

            days = landed_dates(Lake(settings.lake))
            with measure(sampler, f"run_ingest ({len(days)} days)") as p:
                reports = run_ingest(settings, days, spark=spark)
            parts["run_ingest"] = p.to_dict()
            reasons: dict[str, int] = {}
            for r in reports:
                for k, v in r.reasons.items():
                    reasons[k] = reasons.get(k, 0) + v
            accepted = sum(r.rows_accepted for r in reports)
            quarantined = sum(r.rows_quarantined for r in reports)
            return {
                "rows_in": sum(r.rows_in for r in reports),
                "rows_out": accepted + quarantined,
                "detail": {"days": len(reports), "accepted": accepted, "quarantined": quarantined, "reasons": reasons},
            }
        from recsys_core.stages.features import run_features

        with measure(sampler, "run_features") as p:
            summary = run_features(settings, as_of(), spark=spark)
        parts["run_features"] = p.to_dict()
        return {
            "rows_in": summary["interactions"],
            "rows_out": summary["user_profiles"] + summary["item_features"],
            "detail": {"user_profiles": summary["user_profiles"], "item_features": summary["item_features"]},
        }
    finally:
        spark.stop()


def _train(settings, sampler: TreeSampler, parts: dict) -> dict:
    from recsys_core.stages.train import (
        RESULT,
        RUNS,
        checkpoint_dir,
        dataset_path,
        evaluate_and_register,
        prepare_training,
        run_torchrun,
        workspace,
    )
    from recsys_core.training.dataset import TrainingDataset

    day = as_of()
    with measure(sampler, "prepare_training") as p:
        prepare_training(settings, day)
    parts["prepare"] = p.to_dict()
    ws = workspace(settings, day)
    protocols = json.loads((ws / RUNS).read_text())["protocols"]
    data = TrainingDataset.load(dataset_path(ws, "loo"), mmap=True)
    windows, n_items, d = len(data.train.targets), data.config.n_items, data.config.d_model
    positions = int((data.train.targets > 0).sum())
    users = len(data.valid.targets)
    del data
    with measure(sampler, f"torchrun ({NPROC} processes, {settings.train.epochs} epochs, {'+'.join(protocols)})") as p:
        run_torchrun(settings, day, NPROC)
    parts["torchrun"] = p.to_dict()
    result = json.loads((checkpoint_dir(ws, "loo") / RESULT).read_text())
    history = result["history"]
    pure = [h["epoch_seconds"] for h in history if "val_ndcg@10" not in h]
    last = history[-1]
    # A bounded epoch trains on steps x the global batch of the windows (a seeded shuffle).
    epoch_windows = min(windows, int(last["train_steps"]) * result["effective_batch_size"])
    with measure(sampler, "evaluate_and_register") as p:
        summary = evaluate_and_register(settings, day)
    parts["evaluate_and_register"] = p.to_dict()
    return {
        "rows_in": positions,
        "rows_out": 1,
        "detail": {
            "protocols": protocols,
            "users": users,
            "items": n_items,
            "training_windows": windows,
            "training_positions": positions,
            "epochs": result["epochs_run"],
            "epoch_seconds": [round(h["epoch_seconds"], 1) for h in history],
            "pure_epoch_seconds_median": round(sorted(pure)[len(pure) // 2], 1) if pure else None,
            "last_epoch_with_validation_s": round(last["epoch_seconds"], 1),
            "epoch_windows": epoch_windows,
            "epoch_positions": round(positions * epoch_windows / windows),
            "windows_per_s_pure": round(epoch_windows / (sorted(pure)[len(pure) // 2]), 1) if pure else None,
            "validation_users": int(last.get("validation_users", 0)),
            "evaluated_users": min(users, EVAL_USERS),
            "train_loss": [round(h["train_loss"], 4) for h in history],
            "val_ndcg@10": round(last.get("val_ndcg@10", float("nan")), 5),
            "test_metrics": summary.get("metrics", {}),
            "item_table_mb": round((n_items + 1) * d * 4 / 2**20, 1),
            "model_version": summary.get("model_version"),
            "promoted": summary.get("promoted"),
            "gate": summary.get("gate"),
        },
    }


def _serve(settings, sampler: TreeSampler, parts: dict) -> dict:
    from recsys_core.stages.recommend import run_recommend

    with measure(sampler, f"run_recommend ({settings.serve.engine} engine)") as p:
        summary = run_recommend(settings, as_of())
    parts["run_recommend"] = {**p.to_dict(), "scoring_s": summary["scoring_seconds"]}
    return {
        "rows_in": summary["users"],
        "rows_out": summary["rows"],
        "detail": {
            k: summary.get(k)
            for k in ("engine", "users", "k", "status", "scoring_seconds", "seconds", "fallback_users", "catalogue_coverage")
        },
    }


# Driver ------------------------------------------------------------------------------------------


class MemoryWatch:
    """The machine's lowest available memory while a stage runs (how close it came to the limit)."""

    def __init__(self, interval: float = 1.0):
        self.low = psutil.virtual_memory().available
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.interval = interval

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.low = min(self.low, psutil.virtual_memory().available)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_stage(stage: str, root: Path, epochs: int, size: dict) -> dict:
    """One stage in a fresh process; its whole tree is measured from here."""
    result = root / f"{stage}-worker.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-u", __file__, "--worker", stage, "--root", str(root), "--epochs", str(epochs)]
    cmd += [
        "--users",
        str(size["users"]),
        "--items",
        str(size["items"]),
        "--events",
        str(size["events"]),
        "--result",
        str(result),
    ]
    print(f"\n=== {stage}", flush=True)
    sampler = TreeSampler(interval=0.5).start()
    with MemoryWatch() as watch, measure(sampler, stage) as p:
        completed = subprocess.run(cmd, cwd=REPO)
    sampler.stop()
    phase = p.to_dict()
    phase["min_available_memory_gb"] = round(watch.low / 2**30, 1)
    if completed.returncode != 0 or not result.exists():
        return {"stage": stage, "ok": False, "exit_code": completed.returncode, **phase}
    return {"stage": stage, "ok": True, **phase, **json.loads(result.read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke size {SIZES['quick']}")
    parser.add_argument("--resume", action="store_true", help="reuse the stages an interrupted run finished")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/scale/<size>/ at the end")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--users", type=int)
    parser.add_argument("--items", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--stages", default=",".join(STAGES), help="run only these stages (the others must be done)")
    parser.add_argument("--render-only", action="store_true", help="rewrite scale.md from scale.json")
    parser.add_argument("--worker", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bench_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    size = dict(SIZES["quick" if args.quick else "full"])
    for key in ("users", "items", "events"):
        if getattr(args, key):
            size[key] = getattr(args, key)

    if args.worker:
        out = worker(args.worker, args.root, args.epochs, size)
        args.result.write_text(json.dumps(out, indent=2, default=str))
        return 0
    if args.render_only:
        saved = json.loads((RESULTS / f"{result_name(NAME, args.quick)}.json").read_text())
        (RESULTS / f"{result_name(NAME, args.quick)}.md").write_text(markdown(saved, args.quick, saved["machine"]) + "\n")
        return 0

    label = f"{size['users']}u-{size['items']}i-{size['events']}e"
    root = SCALE_WORK / label
    key = run_key(size, args.epochs)
    done_file = root / "stages.json"
    done: dict = {}
    if args.resume and done_file.exists():
        saved = json.loads(done_file.read_text())
        done = {s: r for s, r in saved["stages"].items() if reusable(r.get("key", saved["key"]), key, s)}
        if done:
            print(f"resuming in {root}: {', '.join(s for s in done if done[s].get('ok')) or 'no stage'} done", flush=True)
        else:
            print(f"not resuming: {done_file} belongs to another size or settings", flush=True)
    if not done:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    wanted = set(args.stages.split(","))
    started = time.perf_counter()
    info = machine_info()
    failed = None
    for stage in STAGES:
        if stage in done and done[stage].get("ok"):
            done[stage]["resumed"] = True
            continue
        if stage not in wanted:
            continue
        done[stage] = {
            **run_stage(stage, root, args.epochs, size),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key": key,
        }
        done_file.write_text(json.dumps({"key": key, "stages": done}, indent=2, default=str))
        figures = {"size": size, "epochs": args.epochs, "spark": SPARK, "train": TRAIN, "stages": done}
        write_results(NAME, args.quick, figures, markdown({**figures, "machine": info}, args.quick, info))
        if not done[stage]["ok"]:
            failed = stage
            print(f"stage {stage} failed (exit code {done[stage]['exit_code']}); later stages not run", flush=True)
            break
    print(f"scale benchmark: {time.perf_counter() - started:.0f}s", flush=True)
    if not args.keep and failed is None and all(done.get(s, {}).get("ok") for s in STAGES):
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


# Report ------------------------------------------------------------------------------------------


def _dominant(stage: dict) -> str:
    parts = stage.get("parts") or {}
    if not parts:
        return ""
    total = sum(p["wall_s"] for p in parts.values()) or 1.0
    name, part = max(parts.items(), key=lambda kv: kv[1]["wall_s"])
    return f"{name} {part['wall_s']:.0f}s ({part['wall_s'] / total:.0%})"


def markdown(r: dict, quick: bool, info: dict) -> str:
    size, stages = r["size"], r["stages"]
    spark, train = r.get("spark", SPARK), r.get("train", TRAIN)
    lines = [
        (
            f"## Scale: the whole chain at {size['users']:,} users, {size['items']:,} items, {size['events']:,} events"
            f"{' (quick)' if quick else ''}"
        ),
        "",
        f"Machine: {machine_line(info)}.",
        "",
        (
            f"Seeded synthetic log over {DAYS} days (Zipf popularity, sessions, drift; 0.1% broken lines, 1% late); Spark "
            f"`{spark['master']}`, driver memory {spark['driver_memory']}, {spark['shuffle_partitions']} shuffle partitions, "
            f"text embeddings off; training: {NPROC} torchrun processes (gloo, CPU), sampled softmax with logQ correction "
            f"({train['model']['n_negatives']} shared negatives per step), batch {train['batch_size']}, {r['epochs']} epochs "
            f"of at most {train.get('max_steps_per_epoch')} steps, validation after the last on at most "
            f"{train.get('max_validation_users'):,} users, test evaluation on at most {EVAL_USERS:,} users (full ranking); "
            f"popularity baseline only; nightly top-50 for every user on the {serve_engine(size)} engine. Each stage "
            "is a fresh process; wall, CPU and peak RSS are of its whole process tree."
        ),
        "",
    ]
    rows = []
    for name in STAGES:
        s = stages.get(name)
        if not s:
            rows.append([name, "not run", "", "", "", "", "", "", ""])
            continue
        if not s.get("ok"):
            rows.append(
                [name, f"FAILED (exit {s.get('exit_code')})", s["wall_s"], s["cpu_s"], s["peak_rss_mb"] / 1024, "", "", "", ""]
            )
            continue
        rows.append(
            [
                name + (" (resumed)" if s.get("resumed") else ""),
                s["wall_s"],
                s["cpu_s"],
                round(s["peak_rss_mb"] / 1024, 1),
                s.get("min_available_memory_gb", ""),
                s.get("rows_in", ""),
                s.get("rows_out", ""),
                _dominant(s),
                f"{s['other_cpu_share']:.0%}{' (disturbed)' if s.get('disturbed') else ''}",
            ]
        )
    lines.append(
        md_table(
            [
                "stage",
                "wall s",
                "CPU s",
                "peak RSS GB",
                "machine's min available GB",
                "rows in",
                "rows out",
                "dominated by",
                "others' CPU",
            ],
            rows,
        )
    )
    lines.append("")
    lines.append(
        "Rows: generate → lines written; ingest → lines read / accepted + quarantined; features → interactions / "
        "user profiles + item features; train → training positions (next-item targets) / one registered model; "
        "serve → users / published rows."
    )
    ok = [stages[s] for s in STAGES if stages.get(s, {}).get("ok")]
    if ok:
        lines += [
            "",
            f"Total of the finished stages: {sum(s['wall_s'] for s in ok):,.0f}s wall, {sum(s['cpu_s'] for s in ok):,.0f} CPU-s.",
        ]
    for name in STAGES:
        s = stages.get(name)
        if s and s.get("ok") and s.get("detail"):
            parts = ", ".join(f"{k} {v['wall_s']:.0f}s / {v['peak_rss_mb'] / 1024:.1f} GB" for k, v in s.get("parts", {}).items())
            detail = ", ".join(
                f"{k} {v}"
                for k, v in s["detail"].items()
                if not isinstance(v, dict | list) or k in ("epoch_seconds", "protocols")
            )
            lines.append(f"- **{name}**: {parts}. {detail}.")
        if name == "train" and s and s.get("ok"):
            tm = s["detail"].get("test_metrics") or {}
            if tm:
                lines.append(f"  Test metrics (leave-last-out, full ranking): {json.dumps(tm)[:400]}")
    phases = [s for s in stages.values() if "other_cpu_share" in s]
    lines += ["", noise_note(phases)]
    if r.get("note"):  # written into the JSON by hand, e.g. the state of a run that is still going
        lines += ["", r["note"]]
    quick_results = RESULTS / f"{result_name(NAME, True)}.json"
    fallback = json.loads(quick_results.read_text()) if not quick and quick_results.exists() else None
    lines += ["", *sizing(r, info, fallback)]
    return "\n".join(lines)


# The target of the sizing derivation, and the node it counts in.
TARGET = {"users": 10_000_000, "items": 1_000_000}
NODE = {"cores": 16, "memory_gb": 64}
SCALES_WITH = {
    "ingest": "events (tasks per input file, output by event day)",
    "features": "events; rows out: users + items (one date partition, shuffled by user / item)",
}
NIGHT_HOURS = 2.0  # the batch window the nightly chain (ingest, features, scoring) must fit in
PARALLEL_EFFICIENCY = 0.7  # share of the node's cores a distributed stage keeps busy


def _features_benchmark(name: str) -> tuple[dict, dict, str] | None:
    """The Spark ``name`` phase at bench_features' largest scale (results/features.json), as a stage of this table."""
    path = RESULTS / "features.json"
    if not path.exists():
        return None
    try:
        scales = json.loads(path.read_text())["scales"]
        label, scale = max(scales.items(), key=lambda kv: kv[1]["data"]["events"])
        phase = scale["spark"]["phases"][name]
        size = {"events": scale["data"]["events"], "users": scale["data"]["users"], "items": scale["data"]["items"]}
    except (KeyError, TypeError, ValueError):
        return None
    return phase, size, f"{name} (bench_features, {label} events)"


def _scoring_kernel() -> dict | None:
    """CPU seconds per billion user-item scores of the local top-K kernel, from results/scoring.json."""
    path = RESULTS / "scoring.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    try:
        shape, local = saved["shape"], saved["local"]
        if "users_per_s" not in local:  # one entry per precision: the one serving uses (the fastest exact one)
            local = local[saved.get("fastest_passing_precision") or "fp32"]
        cpus = saved.get("cpu_count") or saved["machine"]["cpu_count_logical"]
        per_g = cpus / (local["users_per_s"] * shape["items"]) * 1e9
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return {"cpu_s_per_g": per_g, "shape": f"{shape['users']:,} x {shape['items']:,}, d={shape.get('dim')}, idle machine"}


def sizing(r: dict, info: dict, fallback: dict | None = None) -> list[str]:
    """Per-unit costs of the finished stages, projected to TARGET users x items (same events per user).

    A stage this run did not finish is taken, marked so, from bench_features' largest run (ingest and
    features) or else from ``fallback`` (the quick run's results)."""
    chosen: dict[str, tuple[dict, dict, str]] = {}  # stage -> (its figures, the size it ran at, a label)
    for name in STAGES:
        if r["stages"].get(name, {}).get("ok"):
            chosen[name] = (r["stages"][name], r["size"], name)
        elif name in ("ingest", "features") and (largest := _features_benchmark(name)):
            chosen[name] = largest
        elif fallback and fallback["stages"].get(name, {}).get("ok"):
            chosen[name] = (fallback["stages"][name], fallback["size"], f"{name} (quick run)")
    if not chosen:
        return []
    per_user = r["size"]["events"] / r["size"]["users"]
    t_users, t_items = TARGET["users"], TARGET["items"]
    t_events = per_user * t_users
    node_s = NODE["cores"] * 3600 * PARALLEL_EFFICIENCY
    rows: list[list] = []

    def node_hours(cpu_s: float) -> float:
        return cpu_s / node_s

    for name in ("ingest", "features"):
        if name in chosen:
            st, sz, label = chosen[name]
            events = sz["events"]
            cpu = st["cpu_s"] / events * t_events
            gb_per_mev = st["peak_rss_mb"] / 1024 / (events / 1e6)
            rows.append(
                [
                    label,
                    SCALES_WITH[name],
                    f"{st['cpu_s'] / (events / 1e6):,.1f} CPU-s per M events",
                    f"{cpu / 3600:,.1f} CPU-h",
                    f"{node_hours(cpu):,.2f}",
                    (
                        f"peak {st['peak_rss_mb'] / 1024:.1f} GB here ({gb_per_mev:.2f} GB/M events); "
                        "per executor it is bounded by the partition size"
                    ),
                ]
            )
    if "train" in chosen:
        t, sz, label = chosen["train"]
        events = sz["events"]
        parts, detail = t.get("parts", {}), t["detail"]
        positions, epochs = detail["training_positions"], max(detail["epochs"], 1)
        trained = detail.get("epoch_positions", positions)  # per epoch: fewer when epochs are bounded
        torchrun = parts.get("torchrun", {})
        per_epoch = torchrun.get("cpu_s", t["cpu_s"]) / epochs
        t_positions = positions / events * t_events
        cpu = per_epoch / trained * t_positions
        table_gb = (t_items + 1) * 64 * 4 / 2**30
        rows.append(
            [
                f"{label}: torchrun, per epoch",
                "training positions (~events); sampled softmax: not the catalogue",
                f"{per_epoch / (trained / 1e6):,.0f} CPU-s per M positions (validation included)",
                f"{cpu / 3600:,.1f} CPU-h",
                f"{node_hours(cpu):,.2f}",
                (
                    f"item table {table_gb * 1024:.0f} MB, x4 with its gradient and Adam moments, per rank; "
                    f"DDP all-reduces the dense {table_gb * 1024:.0f} MB gradient every step"
                ),
            ]
        )
        prep = parts.get("prepare")
        if prep:
            rows.append(
                [
                    f"{label}: prepare_training",
                    "events (one process: every interaction and window in memory)",
                    (
                        f"{prep['cpu_s'] / (events / 1e6):,.1f} CPU-s, "
                        f"{prep['peak_rss_mb'] / 1024 / (events / 1e6):.2f} GB per M events"
                    ),
                    f"{prep['cpu_s'] / events * t_events / 3600:,.1f} CPU-h",
                    "one process",
                    (
                        f"{prep['peak_rss_mb'] / 1024 / events * t_events:,.0f} GB in one process: must be sharded first"
                        if events >= 5_000_000
                        else f"peak {prep['peak_rss_mb'] / 1024:.1f} GB, mostly fixed at this size: project from a full run"
                    ),
                ]
            )
        ev = parts.get("evaluate_and_register")
        if ev:
            user_items = detail.get("evaluated_users", detail["users"]) * detail["items"]
            rows.append(
                [
                    f"{label}: evaluate_and_register",
                    "evaluated users x items (full ranking)",
                    f"{ev['cpu_s'] / (user_items / 1e9):,.1f} CPU-s per G user-items",
                    f"{ev['cpu_s'] / user_items * t_users * t_items / 3600:,.0f} CPU-h for every user",
                    f"{node_hours(ev['cpu_s'] / user_items * t_users * t_items):,.1f}",
                    f"eval.max_users bounds it: {EVAL_USERS:,} users here",
                ]
            )
    if "serve" in chosen:
        sv, sz, label = chosen["serve"]
        users = sv["detail"]["users"]
        per_user_cpu = sv["cpu_s"] / users  # user encoding, top-K, table, validation, publish: all of the stage
        rows.append(
            [
                f"{label}: nightly top-50, per user",
                "users (the transformer encodes each user; 50 rows out each)",
                f"{per_user_cpu * 1e6:,.0f} CPU-s per M users (at {sz['items']:,} items)",
                f"{per_user_cpu * t_users / 3600:,.0f} CPU-h",
                f"{node_hours(per_user_cpu * t_users):,.1f}",
                (
                    f"peak {sv['peak_rss_mb'] / 1024:.1f} GB for {users:,} users in one process (every user's rows and "
                    "seen items held at once): the Spark engine, by user partition"
                    if sv["detail"].get("engine", "local") == "local"
                    else f"peak {sv['peak_rss_mb'] / 1024:.1f} GB for the Spark driver ({SPARK['driver_memory']}) and one "
                    "Python worker per core, each scoring one group of users at a time: bounded by the group size"
                ),
            ]
        )
    kernel = _scoring_kernel()
    if kernel is not None:
        cpu = kernel["cpu_s_per_g"] * t_users * t_items / 1e9
        rows.append(
            [
                "serve: top-K kernel (bench_scoring)",
                "users x items x d (a GEMM, then top-K)",
                f"{kernel['cpu_s_per_g']:,.1f} CPU-s per G user-items ({kernel['shape']})",
                f"{cpu / 3600:,.0f} CPU-h",
                f"{node_hours(cpu):,.1f}",
                f"item matrix {t_items * 66 * 4 / 2**20:,.0f} MB broadcast to every scoring task",
            ]
        )
    nightly = ("ingest", "features", "serve")  # the rows that recur every night
    night = sum(float(str(row[4]).replace(",", "")) for row in rows if row[0].split(" ")[0].rstrip(":") in nightly)
    out = [
        f"### Sizing for {t_users:,} users x {t_items:,} items (derived from the figures above)",
        "",
        (
            f"Same activity as this run ({per_user:.0f} events per user over {DAYS} days): {t_events / 1e6:,.0f}M events. "
            f"Each stage's CPU cost per unit of what it scales with, measured here, times the target's units; node-hours on "
            f"{NODE['cores']}-core / {NODE['memory_gb']} GB nodes at {PARALLEL_EFFICIENCY:.0%} parallel efficiency. "
            "CPU seconds are less disturbed by a shared machine than wall times, but include its contention (an upper bound). "
            + (
                "A quick run's unit costs carry its fixed costs (JVM start, per-day overheads): project from a full run."
                if any(label.endswith("(quick run)") or r["size"]["events"] < 5_000_000 for _, _, label in chosen.values())
                else ""
            )
        ),
        "",
        md_table(
            [
                "stage",
                "scales with",
                "measured unit cost",
                f"at {t_users // 10**6}M x {t_items // 10**6}M",
                "node-hours",
                "memory",
            ],
            rows,
        ),
        "",
    ]
    if "train" in chosen:
        t, sz, _ = chosen["train"]
        windows_per_event = t["detail"]["training_windows"] / sz["events"]
        # The dataset file every rank memory-maps: 5 int64 tensors [windows, max_len] plus the valid and test
        # inputs (3 int64 tensors [users, max_len] each); max_len 50.
        dataset_gb = (windows_per_event * t_events * 5 * 50 * 8 + t_users * 2 * 3 * 50 * 8) / 2**30
        out += [
            "Memory limits at the target, from the code paths measured above:",
            "",
            (
                f"- **Training dataset**: about {windows_per_event * t_events / 1e6:,.0f}M training windows; every torchrun "
                f"rank memory-maps the whole dataset file (~{dataset_gb:,.0f} GB), so the ranks of a node share one copy "
                "of its pages, read from the node's disk when they do not fit its memory (shard it per node beyond that); "
                "prepare_training builds it in one process from the whole interaction table and must move to Spark."
            ),
            (
                f"- **Item table**: {(t_items + 1) * 64 * 4 / 2**20:,.0f} MB at d=64, about 1 GB per rank with its gradient "
                "and Adam moments; the dense gradient is all-reduced every step (sparse gradients or a sharded table, "
                "e.g. TorchRec, at larger d or catalogues)."
            ),
            (
                f"- **Sampled softmax** keeps the per-step cost independent of the catalogue; a full softmax would need "
                f"[positions per batch x {t_items:,}] logits (up to 512 windows x 50 positions x {t_items:,} x 4 B = "
                f"{25_600 * t_items * 4 / 2**30:,.0f} GB per batch)."
            ),
            (
                f"- **EASE** needs a dense items x items matrix: {8 * t_items**2 / 2**40:,.1f} TB at {t_items:,} items "
                "(80 GB at 100K): off at this size; ALS or the sequence model only."
            ),
            (
                f"- **Full-ranking evaluation** of every user costs users x items ({t_users * t_items / 1e12:,.0f} T scores): "
                "evaluate a sample of users."
            ),
            (
                f"- **Nightly serving**: {t_users * 50 / 1e6:,.0f}M rows out; the local engine holds every user's rows and "
                "seen items in one process (at 1M users x 100K items it reached 23.7 GB and was killed on this 24 GB "
                "machine), so at this size the Spark engine (executors write the partition) scores by user partition, "
                "with the item side broadcast."
            ),
            "",
        ]
    if night:
        out.append(
            f"Nightly chain (ingest + features + scoring) measured: {night:,.1f} node-hours, i.e. "
            f"**{math.ceil(night / NIGHT_HOURS)} node(s)** of {NODE['cores']} cores to fit a {NIGHT_HOURS:.0f}-hour window "
            "(finished stages only; scoring is a GEMM: one GPU does it at ~100x a 2-core CPU's rate)."
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
