"""Distributed training of the sequence model (one process per rank, launched by torchrun).

The same function runs with gloo on CPUs and NCCL on GPUs; the choice comes
from the config. Global batch size is fixed by the config and split across
ranks and accumulation steps, so the result does not depend on world size.
Per-epoch checkpoints make a killed run resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from recsys_core.config import TrainSettings
from recsys_core.errors import ConfigError
from recsys_core.evaluation.metric_names import metric_key
from recsys_core.evaluation.metrics import metrics_from_ranks, target_ranks
from recsys_core.evaluation.sampling import sample_rows
from recsys_core.models.scorer import Scorer
from recsys_core.models.transformer import SeqRec
from recsys_core.sparse import exclusion_from_lists
from recsys_core.training.checkpoint import load_checkpoint, save_checkpoint
from recsys_core.training.dataset import HeldOutSplit, TrainingDataset, TrainingSteps

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
RESULT = "result.json"


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(settings: TrainSettings) -> DistContext:
    """Join the process group torchrun prepared (or run alone when not under torchrun)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if settings.device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "train.device: cuda, but no CUDA device is visible to this process",
                hint="set RECSYS_TRAIN__DEVICE=cpu and RECSYS_TRAIN__BACKEND=gloo, or run on a GPU node",
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:  # TrainSettings rejects backend nccl without device cuda
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=settings.backend)
    return DistContext(rank, world, local_rank, device)


def _all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def config_fingerprint(settings: TrainSettings, data_meta: dict) -> str:
    payload = json.dumps({"train": settings.model_dump(mode="json"), "data": data_meta}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@torch.no_grad()
def held_out_scorer(model: SeqRec, split: HeldOutSplit, trend_table: torch.Tensor, device, batch: int = 512) -> Scorer:
    """The model's full-catalogue scores of a held-out split's users, by row (``trend_table`` on ``device``)."""
    model.eval()
    catalogue = model.output_vectors()[1:]  # column 0 of the tables is the padding item
    return Scorer(model, split.inputs, catalogue, trend_table[:, 1:], split.trend_rows, batch=batch, device=device)


def held_out_users(model: SeqRec, split: HeldOutSplit, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    """Of ``rows``, those with a target: the rows, their 0-based target items and their seen items (CSR)."""
    targets = split.targets.numpy()
    rows = rows[targets[rows] > 0]
    seen = exclusion_from_lists(split.seen_indptr.numpy(), split.seen_indices.numpy(), model.config.n_items)[rows]
    return rows, targets[rows] - 1, seen


def evaluate_split(
    model: SeqRec, split: HeldOutSplit, rows: np.ndarray, ks, device, trend_table: torch.Tensor, batch: int = 512
) -> dict:
    """Full-ranking metrics of one held-out split on the given user rows (``trend_table`` on ``device``)."""
    rows, targets, seen = held_out_users(model, split, rows)
    if len(rows) == 0:
        return {"users": 0}
    scorer = held_out_scorer(model, split, trend_table, device, batch)
    ranks = []
    for start in range(0, len(rows), batch):
        part = slice(start, start + batch)
        ranks.append(target_ranks(scorer(rows[part]), targets[part], exclude=seen[part]))
    return metrics_from_ranks(np.concatenate(ranks), ks)


def train(dataset_path: Path, out_dir: Path, settings: TrainSettings, mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Train on this rank; rank 0 checkpoints, logs to MLflow and writes ``result.json``."""
    ctx = init_distributed(settings)
    torch.set_num_threads(settings.torch_threads)
    torch.backends.mha.set_fastpath_enabled(False)
    # Memory-mapped: the ranks of a node share one copy of the file's pages instead of one each.
    data = TrainingDataset.load(dataset_path, mmap=True)
    torch.manual_seed(settings.seed)
    model = SeqRec(data.config, data.item_content).to(ctx.device)
    # No buffer changes while training (the content table is data; the item-item term is fitted after),
    # so DDP need not broadcast them, the term's n_items-wide factors included, before every step.
    ddp = (
        DDP(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None, broadcast_buffers=False)
        if ctx.world_size > 1
        else model
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    use_amp = settings.amp and ctx.device.type == "cuda"
    scaler_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    trend_table = data.trend_table.to(ctx.device)  # read by every step: moved to the device once
    # The sampled softmax draws negatives by training frequency and corrects the logits by it (logQ).
    item_log_prob = (
        SeqRec.sampling_log_prob(data.train.targets, data.config.n_items).to(ctx.device)
        if data.config.loss == "sampled"
        else None
    )
    train_rows = torch.arange(len(data.train.targets))
    per_rank = settings.batch_size // (ctx.world_size * settings.grad_accum_steps)
    if per_rank < 1:
        raise ConfigError(
            f"train.batch_size: {settings.batch_size} is smaller than world size x grad_accum_steps "
            f"({ctx.world_size} x {settings.grad_accum_steps})",
            hint="raise train.batch_size, or start fewer processes (--nproc)",
        )
    # A tensor of row numbers serves as the dataset: it has len() and indexing, which is all the sampler and loader use.
    rows_dataset = cast("torch.utils.data.Dataset[torch.Tensor]", train_rows)
    sampler: torch.utils.data.DistributedSampler[torch.Tensor] = torch.utils.data.DistributedSampler(
        rows_dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=settings.seed, drop_last=False
    )
    loader: torch.utils.data.DataLoader[torch.Tensor] = torch.utils.data.DataLoader(
        rows_dataset, batch_size=per_rank, sampler=sampler
    )
    ks = (10, 20, 50)
    with_target = np.flatnonzero(data.valid.targets.numpy() > 0)
    all_rows = sample_rows(with_target, settings.max_validation_users, settings.seed)
    my_rows = all_rows[ctx.rank :: ctx.world_size]
    steps_per_epoch = len(loader) if settings.max_steps_per_epoch is None else min(len(loader), settings.max_steps_per_epoch)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(settings, {"dataset": data.fingerprint})

    state: dict[str, Any] = {"epoch": 0, "best_metric": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    checkpoint = load_checkpoint(out_dir / LAST)
    if checkpoint is not None and checkpoint.get("fingerprint") == fingerprint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = {k: checkpoint[k] for k in state}
        if ctx.is_main:
            log.info("resuming from %s at epoch %d (best val ndcg@10 %.4f)", out_dir / LAST, state["epoch"], state["best_metric"])
    elif checkpoint is not None and ctx.is_main:
        log.warning("ignoring checkpoint %s: it belongs to another config or dataset", out_dir / LAST)

    tracker = _Tracker(mlflow_run_id) if ctx.is_main else None
    started = time.monotonic()
    sequences_seen = 0
    for epoch in range(state["epoch"], settings.epochs):
        epoch_start = time.monotonic()
        # Reseeding per epoch and rank makes a resumed run draw the same dropout masks.
        torch.manual_seed(settings.seed * 100_003 + epoch * 101 + ctx.rank)
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, n_batches = 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for step, rows in zip(range(steps_per_epoch), loader, strict=False):
            last_micro = (step + 1) % settings.grad_accum_steps == 0 or step + 1 == steps_per_epoch
            sync = nullcontext() if last_micro or ctx.world_size == 1 else cast(DDP, ddp).no_sync()
            with sync, scaler_ctx():
                loss = _forward_loss(
                    ddp, data.train, rows, ctx.device, trend_table, settings.recency_half_life_days, item_log_prob
                )
                (loss / settings.grad_accum_steps).backward()
            if last_micro:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += float(loss.detach())
            n_batches += 1
            sequences_seen += len(rows)
        loss_total, batches_total, seqs_total = _all_reduce_sum([loss_sum, n_batches, sequences_seen], ctx)
        record: dict[str, float] = {
            "epoch": epoch + 1,
            "train_loss": loss_total / max(1, batches_total),
            "train_steps": batches_total / ctx.world_size,  # run on each rank
        }
        evaluate_now = (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs
        if evaluate_now:
            local = evaluate_split(model, data.valid, my_rows, ks, ctx.device, trend_table)
            users = local.get("users", 0)
            total = _all_reduce_sum([local.get("ndcg@10", 0.0) * users, local.get("hitrate@10", 0.0) * users, users], ctx)
            record["val_ndcg@10"] = total[0] / max(1, total[2])
            record["val_hitrate@10"] = total[1] / max(1, total[2])
            record["validation_users"] = total[2]
        record["epoch_seconds"] = time.monotonic() - epoch_start
        record["sequences_per_second"] = seqs_total / max(1e-9, time.monotonic() - started)
        state["history"].append(record)
        state["epoch"] = epoch + 1
        improved = evaluate_now and record["val_ndcg@10"] > state["best_metric"]
        if improved:
            state["best_metric"], state["best_epoch"], state["bad_epochs"] = record["val_ndcg@10"], epoch + 1, 0
        elif evaluate_now:
            state["bad_epochs"] += settings.eval_every
        if ctx.is_main:
            if improved:
                save_checkpoint(out_dir / BEST, {"model": model.state_dict(), "epoch": epoch + 1})
            save_checkpoint(
                out_dir / LAST,
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "fingerprint": fingerprint, **state},
            )
            if tracker is not None:
                tracker.log(record, step=epoch + 1)
            log.info(
                "epoch %d/%d loss %.4f%s (%.1fs)",
                epoch + 1,
                settings.epochs,
                record["train_loss"],
                f" val ndcg@10 {record['val_ndcg@10']:.4f}" if evaluate_now else "",
                record["epoch_seconds"],
            )
        if state["bad_epochs"] >= settings.early_stopping_patience:
            if ctx.is_main:
                log.info("early stopping at epoch %d: no improvement for %d epochs", epoch + 1, state["bad_epochs"])
            break

    result = {
        "best_epoch": state["best_epoch"],
        "best_val_ndcg@10": state["best_metric"],
        "epochs_run": state["epoch"],
        "world_size": ctx.world_size,
        "effective_batch_size": per_rank * ctx.world_size * settings.grad_accum_steps,
        "train_seconds": time.monotonic() - started,
        "history": state["history"],
    }
    if ctx.is_main:
        (out_dir / RESULT).write_text(json.dumps(result, indent=2))
    if ctx.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def recency_weights(trend_rows: torch.Tensor, last_row: int, half_life_days: float) -> torch.Tensor | None:
    """Weight of each training step: halved every ``half_life_days`` before the end of the data (None = all equal)."""
    if half_life_days <= 0:
        return None
    return torch.pow(0.5, (last_row - trend_rows).clamp(min=0).float() / half_life_days)


def _forward_loss(
    model,
    steps: TrainingSteps,
    rows: torch.Tensor,
    device: torch.device,
    trend_table: torch.Tensor,
    half_life_days: float,
    item_log_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    inputs = steps.inputs.rows(rows).to(device)
    trend_rows = steps.trend_rows[rows]
    step_weights = recency_weights(trend_rows, len(trend_table) - 1, half_life_days)
    return model(
        inputs.items,
        inputs.gaps,
        inputs.user_feats,
        steps.targets[rows].to(device),
        trend_table=trend_table,
        trend_rows=trend_rows.to(device),
        future=steps.future[rows].to(device) if steps.future is not None else None,
        query_gaps=inputs.query_gaps,
        step_weights=step_weights.to(device) if step_weights is not None else None,
        item_log_prob=item_log_prob,
    )


class _Tracker:
    """Per-epoch MLflow logging from rank 0 into the run the launcher created."""

    def __init__(self, run_id: str | None):
        self.client = None
        self.run_id = run_id
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient()

    def log(self, record: dict, step: int) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_key(k), float(v), now, step) for k, v in record.items() if k != "epoch" and math.isfinite(float(v))
        ]
        self.client.log_batch(self.run_id, metrics=metrics)
