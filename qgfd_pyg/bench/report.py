"""Results on disk (atomic, resumable) and the summary table (JSON + Markdown)."""
import json
import math
import os
import statistics
import tempfile
from typing import Any, Dict, List, Optional

# Options that may differ when a sweep is resumed: adding seeds or models extends it.
EXTENDABLE = ("seeds", "seed_list", "models")


def atomic_write(path: str, text: str) -> None:
    """Writes through a temporary file and a rename, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResultStore:
    """Per-seed records of one sweep in ``<out>/<name>.json``, rewritten after every run."""

    def __init__(self, out: str, name: str, config: Dict[str, Any], resume: bool):
        self.json_path = os.path.join(out, f"{name}.json")
        self.md_path = os.path.join(out, f"{name}.md")
        self.config = config
        self.runs: List[Dict[str, Any]] = []
        if resume and os.path.exists(self.json_path):
            with open(self.json_path) as f:
                stored = json.load(f)
            old = {k: v for k, v in stored.get("config", {}).items() if k not in EXTENDABLE}
            new = {k: v for k, v in config.items() if k not in EXTENDABLE}
            if old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(f"--resume needs the options of the stored sweep "
                                 f"{self.json_path}; these differ: {', '.join(changed)}")
            self.runs = list(stored.get("runs", []))

    def done(self, model: str, seed: int) -> bool:
        return any(r["model"] == model and r["seed"] == seed for r in self.runs)

    def add(self, record: Dict[str, Any], environment: Dict[str, Any]) -> None:
        self.runs.append(record)
        self.save(environment, complete=False)

    def save(self, environment: Dict[str, Any], complete: bool) -> List[Dict[str, Any]]:
        rows = summarize(self.runs, self.config["models"])
        payload = {"config": self.config, "environment": environment, "complete": complete,
                   "summary": rows, "runs": self.runs}
        atomic_write(self.json_path, json.dumps(payload, indent=1) + "\n")
        atomic_write(self.md_path, markdown(self.config, environment, rows, complete))
        return rows


def _mean_std(values: List[float]) -> Dict[str, Optional[float]]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: List[Dict[str, Any]], models: List[str]) -> List[Dict[str, Any]]:
    rows = []
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        mems = [r["peak_mem_mb"] for r in mine if r.get("peak_mem_mb") is not None]
        rows.append({
            "model": model, "seeds": len(mine),
            "test": _mean_std([r["test"] for r in mine]),
            "val": _mean_std([r["val"] for r in mine]),
            "ece": _mean_std([r["ece"] for r in mine]),
            "params": mine[0]["params"],
            "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in mine),
            "epochs": statistics.median(r["epochs"] for r in mine),
            "peak_mem_mb": max(mems) if mems else None,
        })
    return rows


def _pct(stat: Dict[str, Optional[float]]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def table(rows: List[Dict[str, Any]], metric: str) -> str:
    lines = [f"| model | test {metric} (%) | val (%) | ECE (%) | params | s / epoch | "
             f"epochs (median) | peak memory (MB) | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"| {r['model']} | {_pct(r['test'])} | {_pct(r['val'])} | {_pct(r['ece'])} "
                     f"| {r['params']:,} | {r['sec_per_epoch']:.4f} | {r['epochs']:.0f} | {mem} "
                     f"| {r['seeds']} |")
    return "\n".join(lines)


def markdown(config: Dict[str, Any], environment: Dict[str, Any], rows, complete: bool) -> str:
    state = "" if complete else "\n**Incomplete sweep** (interrupted or still running).\n"
    options = ", ".join(f"{k}={v}" for k, v in config.get("qgfd", {}).items())
    return (f"# {config['task']}: {config['metric']}\n{state}\n"
            f"{table(rows, 'metric')}\n\n"
            f"Mean ± std over seeds {config['seed_list']}; test metric at the best validation "
            f"epoch; ECE over 15 bins on the test predictions; peak memory is "
            f"{environment.get('memory_kind', 'n/a')}.\n\n"
            f"- protocol: Adam, up to {config['epochs']} epochs, early stopping after "
            f"{config['patience']} epochs in which neither validation accuracy nor validation "
            f"loss improved\n"
            f"- qgfd options: {options}\n"
            f"- command: `{environment.get('command', '')}`\n"
            f"- environment: torch {environment.get('torch')}, torch_geometric "
            f"{environment.get('torch_geometric')}, device {environment.get('device')}, "
            f"{environment.get('threads')} threads, {environment.get('date')}\n")
