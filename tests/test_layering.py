"""Dependencies inside recsys_core point one way: contracts/config ← pure logic ← io ← stages."""

from __future__ import annotations

import ast
from pathlib import Path

import recsys_core

ROOT = Path(recsys_core.__file__).parent
BASE = {"__version__", "config", "contracts", "errors", "sparkconf", "sparse", "timeutil", "windows"}

# Each top-level module or package of recsys_core → the others it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    **dict.fromkeys(BASE, BASE),
    "config": BASE | {"evaluation"},  # deliberate: the metric registry checks eval.ks and gate_metric at load
    "evaluation": BASE,
    "features": BASE,
    "models": BASE,
    "serving": BASE | {"models"},
    "training": BASE | {"models", "evaluation"},
    "io": BASE | {"evaluation", "features", "models", "serving", "training"},
    "stages": BASE | {"evaluation", "features", "models", "serving", "training", "io"},
    "cli": BASE | {"evaluation", "features", "models", "serving", "training", "io", "stages"},
}


def imported(path: Path) -> set[str]:
    """The top-level recsys_core modules a file imports (anywhere in it, lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "recsys_core":
                names = [f"recsys_core.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out |= {n.split(".")[1] for n in names if n.startswith("recsys_core.")}
    return out


def test_every_import_points_the_allowed_way():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts == ("__init__",):
            continue
        layer = parts[0]
        assert layer in ALLOWED, f"{path}: add recsys_core.{layer} to the layering table"
        for target in imported(path) - {layer} - ALLOWED[layer]:
            violations.append(f"{path.relative_to(ROOT.parent)} imports recsys_core.{target}")
    assert not violations, "\n".join(violations)
