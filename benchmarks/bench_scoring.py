"""Nightly scoring throughput: the local torch engine and the Spark engine, against this machine's GEMM rate.

    .venv/bin/python benchmarks/bench_scoring.py [--users 100000 --items 20000 --dim 64 --k 50]

Random user vectors and item matrix (float32), a few seen items per user
(masked), top-K per user. Measures:

- the machine's torch GEMM rate for the scoring shapes ([batch, d] x [d, items],
  repeated into a preallocated output), in FLOP/s;
- (a) ``recsys_core.serving.score.score_top_k`` (the local engine), users/s and
  its effective FLOP/s (2 * users * items * d / time) as a fraction of the GEMM rate;
- the implementation before the optimisation (COO mask per batch, one topk over
  the row), same inputs, for reference;
- (b) the Spark engine on local[*] as the nightly job runs it, end to end: the
  inputs written as one Parquet file per user bucket, tasks score them
  (``spark_write_top_k``: mapInArrow, item matrix broadcast) and write the rows,
  then each file is read back for its digest; users/s;
- agreement of (a) and (b): same top-K lists, same order, max score difference.

Figures go to benchmarks/results/scoring.json and scoring.md (``--quick``: a
small smoke run, scoring-quick.*), with the machine info and, per phase, the
share of the CPUs other processes used (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TreeSampler, bench_env, measure, noise_note, write_results

from recsys_core.serving.score import score_top_k

QUICK = {"users": 5_000, "items": 5_000}


def make_inputs(users: int, items: int, dim: int, seen: int, seed: int):
    rng = np.random.default_rng(seed)
    user_vectors = rng.standard_normal((users, dim), dtype=np.float32)
    item_matrix = rng.standard_normal((items, dim), dtype=np.float32)
    counts = rng.poisson(seen, size=users).clip(0, items // 2)
    rows = np.repeat(np.arange(users), counts)
    cols = rng.integers(0, items, size=int(counts.sum()))
    exclude = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    exclude.sum_duplicates()
    return torch.from_numpy(user_vectors), torch.from_numpy(item_matrix), exclude


def gemm_rate(batch: int, items: int, dim: int, seconds: float = 3.0) -> float:
    """FLOP/s of torch.mm([batch, dim] x [dim, items]) into a preallocated output, best of 3 timed rounds."""
    a = torch.randn(batch, dim)
    b = torch.randn(dim, items)
    out = torch.empty(batch, items)
    torch.mm(a, b, out=out)
    reps = max(3, int(seconds / 3 / max(2 * batch * dim * items / 1e11, 1e-4)))
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        best = max(best, 2 * batch * dim * items * reps / (time.perf_counter() - started))
    return best


def gemm_pass(user_vectors, item_matrix, batch: int) -> float:
    """Seconds of torch.mm([batch, d] x [d, items]) over all users into a preallocated output: the GEMM floor."""
    item_t = item_matrix.T.contiguous()
    out = torch.empty(batch, item_matrix.shape[0])
    started = time.perf_counter()
    for start in range(0, user_vectors.shape[0], batch):
        stop = min(start + batch, user_vectors.shape[0])
        torch.mm(user_vectors[start:stop], item_t, out=out[: stop - start])
    return time.perf_counter() - started


def score_before(user_vectors, item_matrix, k, exclude, batch_users):
    """The pre-optimisation score_top_k (kept here as the baseline figure)."""
    n_users = user_vectors.shape[0]
    items_out = np.empty((n_users, k), dtype=np.int64)
    scores_out = np.empty((n_users, k), dtype=np.float32)
    item_t = item_matrix.T.contiguous()
    with torch.no_grad():
        for start in range(0, n_users, batch_users):
            stop = min(start + batch_users, n_users)
            scores = user_vectors[start:stop] @ item_t
            block = exclude[start:stop].tocoo()
            scores[torch.as_tensor(block.row, dtype=torch.long), torch.as_tensor(block.col, dtype=torch.long)] = float("-inf")
            values, indices = torch.topk(scores, k, dim=1, sorted=True)
            items_out[start:stop] = indices.numpy()
            scores_out[start:stop] = values.numpy()
    return items_out, scores_out


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return result, times


def agreement(a_items, a_scores, b_items, b_scores) -> dict:
    same_order = (a_items == b_items).all(axis=1)
    same_set = np.array([set(x) == set(y) for x, y in zip(a_items.tolist(), b_items.tolist())])
    return {
        "users_same_list_and_order": float(same_order.mean()),
        "users_same_item_set": float(same_set.mean()),
        "max_abs_score_diff": float(np.abs(a_scores - b_scores).max()),
    }


def spark_path(args, user_vectors, item_matrix, exclude):
    """The Spark engine as the nightly job runs it: inputs written as files, executors score and write, digests read back."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from recsys_core.config import settings_for
    from recsys_core.contracts import RECOMMENDATIONS
    from recsys_core.io.spark import spark_session
    from recsys_core.serving.spark_score import rows_to_matrices, spark_write_top_k, write_score_inputs

    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    settings = settings_for(data_root=work, spark={"master": args.spark_master, "driver_memory": "6g", "shuffle_partitions": 4})
    started = time.perf_counter()
    spark = spark_session(settings, "bench-scoring")
    startup = time.perf_counter() - started
    user_ids = [f"u{i:07d}" for i in range(user_vectors.shape[0])]
    item_ids = [f"i{j:06d}" for j in range(item_matrix.shape[0])]
    vectors, matrix = user_vectors.numpy(), item_matrix.numpy()
    constants = {"model_name": "bench", "model_version": "1", "generated_at": datetime.now(UTC).replace(microsecond=0)}
    trending = np.zeros(len(item_ids), np.float32)

    def night(n: int) -> None:
        inputs = str(work / f"inputs-{n}")
        pafs.LocalFileSystem().delete_dir_contents(inputs, missing_dir_ok=True)
        write_score_inputs(pafs.LocalFileSystem(), inputs, user_ids[:n], vectors[:n], np.ones(n, bool), exclude[:n])
        spark_write_top_k(
            spark,
            inputs,
            str(work / "night"),
            item_ids,
            matrix,
            args.k,
            trending,
            RECOMMENDATIONS,
            constants,
            batch_users=args.batch,
        )

    try:
        night(2000)  # warm-up: Python workers started, torch imported in them
        _, times = timed(lambda: night(len(user_ids)), args.spark_repeats)
        rows = pq.read_table(str(work / "night"), columns=["user_id", "rank", "item_id", "score"])
        items, scores = rows_to_matrices(rows, user_ids, item_ids, args.k)
        parallelism = spark.sparkContext.defaultParallelism
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return items, scores, times, startup, parallelism


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--seen", type=int, default=20, help="mean seen items per user (Poisson)")
    parser.add_argument("--batch", type=int, default=1024, help="users per GEMM batch (serve.score_batch_users)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--spark-repeats", type=int, default=1)
    parser.add_argument("--spark-master", default="local[*]")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--skip-before", action="store_true", help="skip the pre-optimisation baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK['users']:,} users x {QUICK['items']:,} items")
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.repeats = min(args.users, QUICK["users"]), min(args.items, QUICK["items"]), 2
    bench_env()
    sampler = TreeSampler().start()
    phases: dict[str, dict] = {}
    began = time.perf_counter()

    user_vectors, item_matrix, exclude = make_inputs(args.users, args.items, args.dim, args.seen, args.seed)
    flops = 2.0 * args.users * args.items * args.dim
    print(
        f"{args.users:,} users x {args.items:,} items, d={args.dim}, top-{args.k}, {exclude.nnz:,} seen entries; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    gemm = {b: gemm_rate(b, args.items, args.dim) for b in sorted({256, 512, args.batch, 2048})}
    gemm_batch = gemm[args.batch]
    gemm_best = max(gemm.values())
    print("GEMM GFLOP/s by batch: " + ", ".join(f"{b}: {r / 1e9:.1f}" for b, r in gemm.items()), flush=True)

    # Interleaved rounds: a GEMM-only pass over the same users and batches, then the scoring,
    # so that both see the same machine load (the machine may be shared); ratio per round.
    gemm_times, local_times = [], []
    with measure(sampler, "local engine (interleaved with GEMM passes)") as phase:
        for _ in range(args.repeats):
            gemm_times.append(gemm_pass(user_vectors, item_matrix, args.batch))
            started = time.perf_counter()
            local_items, local_scores = score_top_k(user_vectors, item_matrix, args.k, exclude=exclude, batch_users=args.batch)
            local_times.append(time.perf_counter() - started)
    phases["local"] = phase.to_dict()
    ratios = [g / t for g, t in zip(gemm_times, local_times)]
    local_best = min(local_times)
    local = {
        "seconds": [round(t, 3) for t in local_times],
        "gemm_pass_seconds": [round(t, 3) for t in gemm_times],
        "users_per_s": args.users / local_best,
        "users_per_s_median": args.users / statistics.median(local_times),
        "effective_flop_per_s": flops / local_best,
        "gemm_pass_flop_per_s": flops / min(gemm_times),
        "fraction_of_gemm_same_batch": statistics.median(ratios),
        "fraction_of_gemm_per_round": [round(r, 3) for r in ratios],
        "fraction_of_best_gemm": flops / local_best / max(gemm_best, flops / min(gemm_times)),
    }
    gemm_after = flops / min(gemm_times)
    print(
        f"(a) local: {local['users_per_s']:,.0f} users/s, {local['effective_flop_per_s'] / 1e9:.1f} GFLOP/s effective, "
        f"{100 * local['fraction_of_gemm_same_batch']:.0f}% of GEMM (batch {args.batch}, median of interleaved rounds), "
        f"{100 * local['fraction_of_best_gemm']:.0f}% of the best GEMM rate",
        flush=True,
    )

    before = None
    if not args.skip_before:
        b_gemm, b_times = [], []
        with measure(sampler, "before the optimisation (interleaved with GEMM passes)") as phase:
            for _ in range(max(1, args.repeats - 1)):
                b_gemm.append(gemm_pass(user_vectors, item_matrix, args.batch))
                started = time.perf_counter()
                b_items, b_scores = score_before(user_vectors, item_matrix, args.k, exclude, args.batch)
                b_times.append(time.perf_counter() - started)
        phases["before"] = phase.to_dict()
        before = {
            "seconds": [round(t, 3) for t in b_times],
            "users_per_s": args.users / min(b_times),
            "fraction_of_gemm_same_batch": statistics.median([g / t for g, t in zip(b_gemm, b_times)]),
            "agreement_with_local": agreement(local_items, local_scores, b_items, b_scores),
        }
        print(
            f"    before the optimisation: {before['users_per_s']:,.0f} users/s "
            f"({100 * before['fraction_of_gemm_same_batch']:.0f}% of GEMM)",
            flush=True,
        )

    spark = None
    if not args.skip_spark:
        with measure(sampler, "spark engine (session start, warm-up, timed runs)") as phase:
            s_items, s_scores, s_times, startup, parallelism = spark_path(args, user_vectors, item_matrix, exclude)
        phases["spark"] = phase.to_dict()
        spark = {
            "master": args.spark_master,
            "default_parallelism": parallelism,
            "session_startup_seconds": round(startup, 2),
            "seconds": [round(t, 3) for t in s_times],
            "users_per_s": args.users / min(s_times),
            "effective_flop_per_s": flops / min(s_times),
            "fraction_of_gemm_same_batch": flops / min(s_times) / max(gemm_batch, gemm_after),  # of the 2-thread GEMM
            "agreement_with_local": agreement(local_items, local_scores, s_items, s_scores),
        }
        print(
            f"(b) spark {args.spark_master}: {spark['users_per_s']:,.0f} users/s end to end "
            f"(session start {startup:.1f}s not counted); agreement {spark['agreement_with_local']}",
            flush=True,
        )

    sampler.stop()
    result = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_threads": torch.get_num_threads(),
        "shape": {
            "users": args.users,
            "items": args.items,
            "dim": args.dim,
            "k": args.k,
            "seen_entries": int(exclude.nnz),
            "batch_users": args.batch,
        },
        "gemm_flop_per_s": {str(b): r for b, r in gemm.items()} | {f"{args.batch}_interleaved_pass": gemm_after},
        "local": local,
        "local_before_optimisation": before,
        "spark": spark,
        "phases": phases,
        "target_fraction_local": 0.5,
        "meets_target": local["fraction_of_gemm_same_batch"] >= 0.5,
        "total_seconds": round(time.perf_counter() - began, 1),
    }
    result["cpu_count"] = os.cpu_count()
    result["quick_run"] = args.quick
    write_results("scoring", args.quick, result, markdown(result))
    print(f"done in {result['total_seconds']}s")
    return 0


def markdown(r: dict) -> str:
    s, loc = r["shape"], r["local"]
    g = r["gemm_flop_per_s"]
    lines = [
        "# Nightly scoring benchmark",
        "",
        (
            f"{s['users']:,} users x {s['items']:,} items, d={s['dim']}, top-{s['k']}, {s['seen_entries']:,} seen items masked; "
            f"{r['cpu_count']} CPUs, torch {torch.__version__} ({r['torch_threads']} threads); {r['created_at']}."
        ),
        "",
        "| path | users/s | effective GFLOP/s | share of GEMM rate |",
        "| --- | ---: | ---: | ---: |",
        (
            f"| (a) local engine, `score_top_k` (batch {s['batch_users']}) | {loc['users_per_s']:,.0f} | "
            f"{loc['effective_flop_per_s'] / 1e9:.1f} | "
            f"{100 * loc['fraction_of_gemm_same_batch']:.0f}% (best-batch GEMM: {100 * loc['fraction_of_best_gemm']:.0f}%) |"
        ),
    ]
    if r["local_before_optimisation"]:
        b = r["local_before_optimisation"]
        lines.append(
            f"| before the optimisation (COO mask, one topk) | {b['users_per_s']:,.0f} | | "
            f"{100 * b['fraction_of_gemm_same_batch']:.0f}% |"
        )
    if r["spark"]:
        sp_ = r["spark"]
        lines.append(
            f"| (b) Spark engine, {sp_['master']} ({sp_['default_parallelism']} cores), end to end | {sp_['users_per_s']:,.0f} | "
            f"{sp_['effective_flop_per_s'] / 1e9:.1f} | {100 * sp_['fraction_of_gemm_same_batch']:.0f}% |"
        )
    lines += [
        "",
        "GEMM rate (torch.mm [batch, d] x [d, items] into a preallocated output, best of 3 rounds; "
        "`interleaved_pass`: the best GEMM-only pass over all users, run alternately with the scoring): "
        + ", ".join(f"batch {b.replace('_', ' ')}: {v / 1e9:.1f} GFLOP/s" for b, v in g.items())
        + ".",
        "Share of GEMM rate for (a): median over rounds of (GEMM-only pass time / scoring time), each round run",
        "back to back on the same users and batches, so both see the same machine load.",
        "",
        f"Target: local scoring >= 50% of the GEMM rate: {'met' if r['meets_target'] else 'NOT met'}"
        + (" (quick smoke run: small shapes, not what the target is about)." if r["quick_run"] else "."),
    ]
    if r["spark"]:
        a = r["spark"]["agreement_with_local"]
        lines.append(
            f"Agreement Spark vs local: {100 * a['users_same_item_set']:.3f}% of users same top-{s['k']} set, "
            f"{100 * a['users_same_list_and_order']:.3f}% same order, max score difference {a['max_abs_score_diff']:.2e}."
        )
    lines += [
        "",
        "Effective FLOP/s = 2 x users x items x d / wall time of the whole scoring (GEMM, masking, top-K, copies out).",
        "The Spark figure includes building the input DataFrame from Arrow, the tasks, and collecting",
        "the (user_id, rank, item_id, score) rows back to the driver; the session start is not counted.",
        noise_note(list(r["phases"].values())),
        "",
        f"Total benchmark time {r['total_seconds']}s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
