"""What produced a result: code version, configuration and input partitions."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from recsys_core import __version__
from recsys_core.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def config_digest(settings: Settings) -> str:
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def code_version() -> dict[str, str]:
    return {"git_commit": git_commit(), "package_version": __version__}


def flat_params(prefix: str, value) -> dict[str, str]:
    """A nested config as flat MLflow params (``train.model.d_model`` = ``64``)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flat_params(f"{prefix}.{key}" if prefix else key, item))
        return out
    text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return {prefix: text[:500]}
