"""Results on disk (atomic, resumable) and the summary table (JSON + Markdown)."""
import json
import math
import os
import statistics
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .io import atomic_write
from .train import stopping_rule

if TYPE_CHECKING:
    from .tasks import Task

# Options that may differ when a sweep is resumed: adding seeds or models extends it.
EXTENDABLE = ("seeds", "seed_list", "models")


# QGFD options added after results were committed, with the value every earlier run had
NEW_OPTION_DEFAULTS = {"learn_hop_weights": False}


class ResultStore:
    """Per-seed records of one sweep in ``<out>/<name>.json``, rewritten after every run.

    A file that already holds finished runs is never replaced silently: ``resume`` keeps its
    runs (and adds to them), ``overwrite`` replaces it, and neither is a ValueError that says
    so before anything is trained."""

    def __init__(self, out: str, name: str, config: Dict[str, Any], resume: bool,
                 task: Optional["Task"] = None, overwrite: bool = False):
        self.task = task
        self.columns = table_columns(task)
        self.json_path = os.path.join(out, f"{name}.json")
        self.md_path = os.path.join(out, f"{name}.md")
        self.config = config
        self.runs: List[Dict[str, Any]] = []
        if not resume and not overwrite:
            held = _held_runs(self.json_path)
            if held:
                raise ValueError(
                    f"{self.json_path} holds {held} finished run{'s' * (held != 1)} of an "
                    f"earlier sweep: --resume keeps them (and adds what is missing), "
                    f"--overwrite replaces them, --out / --name write elsewhere")
        if resume and os.path.exists(self.json_path):
            with open(self.json_path) as f:
                stored = json.load(f)
            old = {k: v for k, v in stored.get("config", {}).items() if k not in EXTENDABLE}
            new = {k: v for k, v in config.items() if k not in EXTENDABLE}
            old_specs, new_specs = old.pop("specs", None) or {}, new.pop("specs", None) or {}
            stale = sorted(m for m in set(old_specs) & set(new_specs)
                           if old_specs[m] != new_specs[m]
                           and any(r["model"] == m for r in stored.get("runs", [])))
            if stale:  # (files written before specs were stored cannot be checked)
                raise ValueError(
                    f"--resume: the stored runs of {', '.join(stale)} in {self.json_path} were "
                    f"trained with other settings ({_spec_change(old_specs, new_specs, stale)}); "
                    f"write to another --out or --name, or run without --resume")
            self.config = {**self.config, "specs": {**old_specs, **new_specs}}
            stored_qgfd = _ran_qgfd(stored.get("runs", []))
            if not stored_qgfd or "qgfd" not in config.get("models", ()):
                # the QGFD options describe QGFD's rows only: baselines run apart from them
                # (before, or after) share the file; the rows kept keep their options
                old.pop("qgfd", None)
                new.pop("qgfd", None)
                if stored_qgfd:
                    self.config = {**self.config, "qgfd": stored["config"]["qgfd"]}
            if isinstance(old.get("qgfd"), dict) and isinstance(new.get("qgfd"), dict):
                # an option added since the file was written, at its default value (the value
                # the stored runs had), does not change what they computed
                added = NEW_OPTION_DEFAULTS.items()
                old["qgfd"] = {**{k: v for k, v in added if k in new["qgfd"]}, **old["qgfd"]}
            if old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ValueError(f"--resume needs the options of the stored sweep "
                                 f"{self.json_path}; these differ: {', '.join(changed)}")
            self.runs = list(stored.get("runs", []))
        self.saved = len(self.runs)  # runs the JSON file on disk holds

    def done(self, model: str, seed: int) -> bool:
        return any(r["model"] == model and r["seed"] == seed for r in self.runs)

    def add(self, record: Dict[str, Any], environment: Dict[str, Any]) -> None:
        self.runs.append(record)
        self.save(environment, complete=False)

    def save(self, environment: Dict[str, Any], complete: bool) -> List[Dict[str, Any]]:
        # every model the file holds: a resumed sweep of some models keeps the others' rows
        models = list(self.config["models"])
        models += [m for m in dict.fromkeys(r["model"] for r in self.runs) if m not in models]
        self.config = {**self.config, "models": models}
        rows = summarize(self.runs, models, [k for k, _ in self.columns])
        payload = {"config": self.config, "environment": environment, "complete": complete,
                   "summary": rows, "runs": self.runs}
        atomic_write(self.json_path, json.dumps(payload, indent=1) + "\n")
        self.saved = len(self.runs)
        protocol = self.task.protocol(self.config, stopping_rule(
            self.config["epochs"], self.config["patience"], self.task.selection(),
            self.task.val_loss)) if self.task is not None else ""
        percent = self.task.percent if self.task is not None else True
        atomic_write(self.md_path, markdown(self.config, environment, rows, complete,
                                            self.columns, percent, protocol))
        return rows


def _held_runs(path: str) -> int:
    """The finished runs a result file holds (0 if there is none; an unreadable file counts
    as one: it is not replaced without a word)."""
    if not os.path.exists(path):
        return 0
    try:
        with open(path) as f:
            return len(json.load(f).get("runs", []))
    except (OSError, ValueError, AttributeError):
        return 1


def _spec_change(old: Dict[str, Any], new: Dict[str, Any], models: Sequence[str]) -> str:
    """``model: name old -> new, ...`` for the settings that differ."""
    parts = []
    for model in models:
        flat_old = {**old[model].get("options", {}),
                    **{k: v for k, v in old[model].items() if k != "options"}}
        flat_new = {**new[model].get("options", {}),
                    **{k: v for k, v in new[model].items() if k != "options"}}
        parts += [f"{model}: {k} {flat_old.get(k)} -> {flat_new.get(k)}"
                  for k in sorted(set(flat_old) | set(flat_new))
                  if flat_old.get(k) != flat_new.get(k)]
    return ", ".join(parts)


def _ran_qgfd(runs: Sequence[Dict[str, Any]]) -> bool:
    return any(r["model"] == "qgfd" for r in runs)


def merge_results(paths: Sequence[str], out: str, name: str, task: "Task") -> ResultStore:
    """One result file ``<out>/<name>.json`` / ``.md`` from sweeps of the same task and options
    that ran apart (e.g. one process per model): their runs together, the models in the order
    of ``paths``. A ValueError if their options differ (beyond models and seeds) or two of them
    hold the same (model, seed). The QGFD options describe the QGFD rows only: they are
    compared between files that both hold QGFD runs, and the merged file keeps those of the
    file with QGFD runs (as ``--resume`` does)."""
    if not paths:
        raise ValueError("nothing to merge")
    stored = []
    for path in paths:
        with open(path) as f:
            stored.append(json.load(f))
    with_qgfd = [p for p in stored if _ran_qgfd(p["runs"])]
    config = dict((with_qgfd or stored)[0]["config"])
    runs: List[Dict[str, Any]] = []
    models: List[str] = []
    for path, payload in zip(paths, stored, strict=True):
        other = payload["config"]
        ignored = set(EXTENDABLE) | {"specs"} | (set() if _ran_qgfd(payload["runs"])
                                                 else {"qgfd"})
        changed = sorted(k for k in set(config) | set(other)
                         if k not in ignored and config.get(k) != other.get(k))
        if changed:
            raise ValueError(f"{path} ran with other options than {paths[0]}: "
                             f"{', '.join(changed)}")
        for run in payload["runs"]:
            if any(r["model"] == run["model"] and r["seed"] == run["seed"] for r in runs):
                raise ValueError(f"{path}: {run['model']} seed {run['seed']} is in two files")
            runs.append(run)
        models += [m for m in other["models"] if m not in models]
    specs = {}
    for payload in stored:  # what each file's models were trained with
        specs.update({m: v for m, v in payload["config"].get("specs", {}).items()
                      if any(r["model"] == m for r in payload["runs"])})
    if specs:
        config["specs"] = specs
    config["seed_list"] = sorted({r["seed"] for r in runs})
    config["models"], config["seeds"] = models, len(config["seed_list"])
    environment = dict(stored[0]["environment"])
    environment["command"] = " ; ".join(dict.fromkeys(p["environment"]["command"]
                                                      for p in stored))
    store = ResultStore(out, name, config, resume=False, task=task, overwrite=True)
    store.runs = runs
    store.save(environment, complete=all(p.get("complete") for p in stored))
    return store


def _mean_std(values: List[float]) -> Dict[str, Optional[float]]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def table_columns(task: Optional["Task"]) -> List[Tuple[str, str]]:
    """The metric columns of ``task``'s table: (record key, header)."""
    if task is None:
        return [("test", "test"), ("val", "val")]
    return [("test", f"test {task.metric}"), ("val", "val"), *task.columns]


def summarize(runs: List[Dict[str, Any]], models: List[str],
              keys: Sequence[str] = ("test", "val", "ece")) -> List[Dict[str, Any]]:
    rows = []
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        if not mine:
            continue
        mems = [r["peak_mem_mb"] for r in mine if r.get("peak_mem_mb") is not None]
        rows.append({
            "model": model, "seeds": len(mine),
            **{key: _mean_std([r.get(key) for r in mine]) for key in keys},
            "params": mine[0]["params"],
            "sec_per_epoch": statistics.median(r["sec_per_epoch"] for r in mine),
            "epochs": statistics.median(r["epochs"] for r in mine),
            "peak_mem_mb": max(mems) if mems else None,
        })
    return rows


def _format(stat: Dict[str, Optional[float]], percent: bool) -> str:
    if stat["mean"] is None:
        return "n/a"
    if percent:
        return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def table(rows: List[Dict[str, Any]], columns: Sequence[Tuple[str, str]] = (),
          percent: bool = True) -> str:
    columns = list(columns) or table_columns(None)
    unit = " (%)" if percent else ""
    heads = [f"{header}{unit}" for _, header in columns]
    lines = ["| model | " + " | ".join(heads) + " | params | s / epoch | epochs (median) | "
             "peak memory (MB) | seeds |",
             "| --- " * (len(columns) + 6) + "|"]
    for r in rows:
        mem = "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        cells = [_format(r.get(key, {"mean": None}), percent) for key, _ in columns]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['params']:,} "
                     f"| {r['sec_per_epoch']:.4f} | {r['epochs']:.0f} | {mem} | {r['seeds']} |")
    return "\n".join(lines)


def markdown(config: Dict[str, Any], environment: Dict[str, Any], rows, complete: bool,
             columns: Sequence[Tuple[str, str]] = (), percent: bool = True,
             protocol: str = "") -> str:
    state = "" if complete else "\n**Incomplete sweep** (interrupted or still running).\n"
    options = ", ".join(f"{k}={v}" for k, v in config.get("qgfd", {}).items())
    rates = ", ".join(f"{m} {s['lr']:g}" for m, s in config.get("specs", {}).items())
    return (f"# {config['task']}: {config['metric']}\n{state}\n"
            f"{table(rows, columns, percent)}\n\n"
            f"Mean ± std over seeds {config['seed_list']}; test metrics with the parameters of "
            f"the best validation epoch; peak memory is "
            f"{environment.get('memory_kind', 'n/a')}.\n\n"
            f"- protocol: {protocol}"
            + (f"; at most {config['max_minutes']:g} minutes of training and validation per "
               f"run (stops after the epoch that passes it)" if config.get("max_minutes")
               else "") + "\n"
            f"- qgfd options: {options}\n"
            + (f"- learning rates: {rates}\n" if rates else "")
            + f"- command: `{environment.get('command', '')}`\n"
            f"- environment: torch {environment.get('torch')}, torch_geometric "
            f"{environment.get('torch_geometric')}, device {environment.get('device')}, "
            f"{environment.get('threads')} threads, {environment.get('date')}"
            + (f"; flow backend: {environment['flow_backend']}"
               if environment.get("flow_backend", "torch") != "torch" else "")
            + (f"; malloc: {environment['malloc']}" if "malloc" in environment else "")
            + "\n")
