"""Shared helpers of the benchmarks: machine info, resource sampling, result files.

Every benchmark ``benchmarks/bench_<name>.py`` writes
``benchmarks/results/<name>.json`` (figures plus machine info) and
``benchmarks/results/<name>.md`` (a short Markdown summary that ``run_all.py``
collects into ``SUMMARY.md``). A ``--quick`` run writes ``<name>-quick.*``
instead, so a smoke test never overwrites the figures of a full run.

The machine may be shared (other people's tests and trainings), so every
measured phase also records how busy the rest of the machine was: the CPU
time used by processes outside the benchmark's own process tree, as a share
of the machine's capacity. Above ``DISTURBED_SHARE`` a phase is flagged as
disturbed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
WORK = BENCH_DIR / "work"  # git-ignored scratch space
DOWNLOADS = WORK / "downloads"  # kept across runs (the MovieLens wheel)

# Other processes using more than this share of all cores during a phase make it "disturbed".
DISTURBED_SHARE = 0.25

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def bench_env() -> None:
    """The environment the Makefile exports for every command (offline models, loopback Spark)."""
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYARROW_IGNORE_TIMEZONE": "1",
    }.items():
        os.environ.setdefault(key, value)
    # Settings are built from explicit overrides; a user's RECSYS_* variables must not leak in.
    for key in [k for k in os.environ if k.startswith("RECSYS_")]:
        del os.environ[key]
    os.chdir(REPO)  # config/recsys.yaml is read relative to the working directory


def _version(distribution: str) -> str | None:
    """The installed version, read from package metadata (importing torch or pyspark takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:  # an optional engine missing is information, not an error
        return None


def java_version() -> str | None:
    java = shutil.which("java")
    if not java:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        return (out.stderr or out.stdout).splitlines()[0].strip()
    except Exception:  # noqa: BLE001
        return None


def code_version() -> dict:
    """Which library code was measured: HEAD, the uncommitted library files, a digest of recsys_core/ (read-only git)."""
    import hashlib

    out: dict = {}
    try:
        out["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "recsys_core", "jobs"], cwd=REPO, capture_output=True, text=True, timeout=30
        ).stdout
        out["uncommitted_library_files"] = sorted(line[3:] for line in status.splitlines() if line.strip())
    except Exception:  # noqa: BLE001 - not a git checkout
        pass
    digest = hashlib.sha256()
    for path in sorted((REPO / "recsys_core").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    out["recsys_core_sha256"] = digest.hexdigest()[:16]
    return out


def machine_info() -> dict:
    vm = psutil.virtual_memory()
    return {
        "code": code_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_total_gb": round(vm.total / 2**30, 1),
        "memory_available_gb_at_start": round(vm.available / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {
            "torch": _version("torch"),
            "pyspark": _version("pyspark"),
            "duckdb": _version("duckdb"),
            "pyarrow": _version("pyarrow"),
            "numpy": _version("numpy"),
            "mlflow": _version("mlflow"),
            "java": java_version(),
        },
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# Resource sampling ---------------------------------------------------------------------------


class TreeSampler:
    """Samples, in a background thread, the RSS of a process tree and the machine's CPU use.

    The tree is the root process (this one by default) and all its descendants:
    for Spark that is the Python driver, the JVM it launched and the JVM's
    Python workers; for torchrun the launcher and its ranks. RSS is summed over
    the tree, so pages shared between processes count more than once (an upper
    bound of the real footprint).

    CPU: the tree's own CPU seconds are tracked per pid (a process that exits
    keeps the CPU time last seen), and the machine's busy time comes from
    ``psutil.cpu_times``; the difference is what other processes used.
    """

    def __init__(self, interval: float = 0.2, root: int | None = None):
        self.interval = interval
        self.root = psutil.Process(root or os.getpid())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cpu_seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds
        self._phase_peak = 0
        self._phase_peaks_by_kind: dict[str, int] = {}
        self.peak_rss = 0
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample(self) -> None:
        rss_total = 0
        by_kind: dict[str, int] = {}
        for proc in self._procs():
            try:
                with proc.oneshot():
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
                    key = (proc.pid, proc.create_time())
                    name = proc.name()
            except psutil.Error:
                continue
            rss_total += rss
            kind = "jvm" if name.startswith("java") else "python"
            by_kind[kind] = by_kind.get(kind, 0) + rss
            with self._lock:
                self._cpu_seen[key] = cpu.user + cpu.system
        with self._lock:
            self.peak_rss = max(self.peak_rss, rss_total)
            self._phase_peak = max(self._phase_peak, rss_total)
            for kind, value in by_kind.items():
                self._phase_peaks_by_kind[kind] = max(self._phase_peaks_by_kind.get(kind, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def tree_cpu_seconds(self) -> float:
        self._sample()
        with self._lock:
            return sum(self._cpu_seen.values())

    def reset_phase(self) -> None:
        self._sample()
        with self._lock:
            self._phase_peak = 0
            self._phase_peaks_by_kind = {}
        self._sample()

    def phase_peak(self) -> tuple[int, dict[str, int]]:
        self._sample()
        with self._lock:
            return self._phase_peak, dict(self._phase_peaks_by_kind)


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class Phase:
    """The figures of one measured phase (filled in when its ``with`` block ends)."""

    def __init__(self, name: str):
        self.name = name
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0
        self.peak_rss_by_kind_mb: dict[str, float] = {}
        self.other_cpu_share = 0.0
        self.load_avg_1m = 0.0
        self.extra: dict = {}

    @property
    def disturbed(self) -> bool:
        return self.other_cpu_share > DISTURBED_SHARE

    def to_dict(self) -> dict:
        return {
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_utilisation": round(self.cpu_s / max(self.wall_s, 1e-9) / (psutil.cpu_count() or 1), 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_rss_by_kind_mb": {k: round(v, 1) for k, v in self.peak_rss_by_kind_mb.items()},
            "other_cpu_share": round(self.other_cpu_share, 3),
            "load_avg_1m_end": round(self.load_avg_1m, 2),
            "disturbed": self.disturbed,
            **self.extra,
        }


@contextmanager
def measure(sampler: TreeSampler, name: str):
    """Wall time, the tree's CPU time and peak RSS, and the other processes' CPU share of one phase."""
    phase = Phase(name)
    sampler.reset_phase()
    cpu0, busy0 = sampler.tree_cpu_seconds(), _busy_seconds()
    t0 = time.perf_counter()
    try:
        yield phase
    finally:
        phase.wall_s = time.perf_counter() - t0
        phase.cpu_s = sampler.tree_cpu_seconds() - cpu0
        busy = _busy_seconds() - busy0
        capacity = phase.wall_s * (psutil.cpu_count() or 1)
        phase.other_cpu_share = max(0.0, min(1.0, (busy - phase.cpu_s) / max(capacity, 1e-9)))
        peak, by_kind = sampler.phase_peak()
        phase.peak_rss_mb = peak / 2**20
        phase.peak_rss_by_kind_mb = {k: v / 2**20 for k, v in by_kind.items()}
        phase.load_avg_1m = os.getloadavg()[0]
        print(
            f"  [{name}] {phase.wall_s:.1f}s wall, {phase.cpu_s:.1f}s CPU, peak RSS {phase.peak_rss_mb:.0f} MB, "
            f"other processes {phase.other_cpu_share:.0%} of the CPUs{' (DISTURBED)' if phase.disturbed else ''}",
            flush=True,
        )


# Results --------------------------------------------------------------------------------------


def result_name(name: str, quick: bool) -> str:
    return f"{name}-quick" if quick else name


def write_results(name: str, quick: bool, figures: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = result_name(name, quick)
    payload = {"benchmark": name, "quick": quick, "machine": machine_info(), **figures}
    json_path = RESULTS / f"{stem}.json"
    md_path = RESULTS / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(f"wrote {json_path.relative_to(REPO)} and {md_path.relative_to(REPO)}", flush=True)
    return json_path, md_path


def machine_line(info: dict | None = None) -> str:
    info = info or machine_info()
    v = info["versions"]
    return (
        f"{info['cpu_count_logical']} CPUs ({info['cpu_model']}), {info['memory_total_gb']} GB RAM; "
        f"torch {v['torch']}, pyspark {v['pyspark']}, duckdb {v['duckdb']}, pyarrow {v['pyarrow']}; {info['date']}"
    )


def md_table(headers: list[str], rows: list[list]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        if isinstance(x, int):
            return f"{x:,}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def noise_note(phases: list[dict]) -> str:
    """One line on how busy the rest of the machine was during the measured phases."""
    shares = [p["other_cpu_share"] for p in phases if "other_cpu_share" in p]
    if not shares:
        return ""
    disturbed = sum(1 for p in phases if p.get("disturbed"))
    return (
        f"Noise: other processes used {min(shares):.0%}-{max(shares):.0%} of the machine's CPUs during the "
        f"measured phases ({disturbed} of {len(shares)} above {DISTURBED_SHARE:.0%}, marked *disturbed*); "
        "wall times of disturbed phases are pessimistic, CPU seconds are less affected."
    )


def rerender(name: str, quick: bool, markdown) -> int:
    """Rewrite a benchmark's Markdown summary from its saved JSON (no measuring)."""
    stem = result_name(name, quick)
    saved = json.loads((RESULTS / f"{stem}.json").read_text())
    (RESULTS / f"{stem}.md").write_text(markdown(saved, quick, saved["machine"]).rstrip() + "\n")
    print(f"rewrote {RESULTS / f'{stem}.md'}")
    return 0
