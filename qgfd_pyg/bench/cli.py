"""``python -m qgfd_pyg.bench TASK``: every model on one protocol, table + JSON + Markdown."""
import argparse
import datetime
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .data import TASKS, load_task
from .models import MODELS
from .report import ResultStore, table
from .train import train_one

_REPO = Path(__file__).resolve().parents[2]


def _default_dir(name: str) -> str:
    """``datasets/`` / ``benchmarks/results`` of the source checkout, else of the cwd."""
    return str(_REPO / name) if (_REPO / "datasets").is_dir() else os.path.join(os.getcwd(), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qgfd_pyg.bench",
        description="QGFD against GAT, APPNP and GCN on one protocol: same splits, seeds, "
                    "optimiser, epoch budget and early stopping for every model.",
        epilog="Example: python -m qgfd_pyg.bench cora --seeds 10; "
               "python -m qgfd_pyg.bench pyg --dataset WebKB:Texas")
    parser.add_argument("task", nargs="?", help="task name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the tasks and their data")
    parser.add_argument("--dataset",
                        help="for task 'pyg': Class[:name] of torch_geometric.datasets")
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds 0..N-1 (10)")
    parser.add_argument("--epochs", type=int, default=500, help="maximum epochs per run (500)")
    parser.add_argument("--patience", type=int, default=100,
                        help="early-stopping patience in epochs (100)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--root", default=_default_dir("datasets"), help="data root")
    parser.add_argument("--out", default=_default_dir(os.path.join("benchmarks", "results")),
                        help="output folder for <name>.json and <name>.md")
    parser.add_argument("--name", default=None, help="output file stem (default: the task)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs of an earlier, interrupted sweep")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    qgfd = parser.add_argument_group("QGFD hyper-parameters (model 'qgfd')")
    defaults = MODELS["qgfd"].options
    qgfd.add_argument("--alpha", type=float, default=defaults["alpha"])
    qgfd.add_argument("--steps", type=int, default=defaults["steps"])
    qgfd.add_argument("--heads", type=int, default=defaults["heads"])
    qgfd.add_argument("--hidden", type=int, default=defaults["hidden"])
    qgfd.add_argument("--transition", choices=["graph", "knn"], default=defaults["transition"])
    qgfd.add_argument("--k", type=int, default=defaults["k"], help="kNN neighbours per key")
    qgfd.add_argument("--dropout", type=float, default=defaults["dropout"])
    qgfd.add_argument("--attn-dropout", type=float, default=defaults["attn_dropout"])
    qgfd.add_argument("--layers", type=int, choices=[1, 2], default=defaults["layers"])
    qgfd.add_argument("--attention", choices=["dot", "additive"], default=defaults["attention"])
    return parser


def list_tasks() -> str:
    lines = ["tasks:"] + [f"  {name:<11} {text}" for name, text in TASKS.items()]
    lines += ["models:"] + [f"  {name:<11} lr={s.lr}, weight_decay={s.weight_decay}, "
                            f"{s.options} ({s.source})" for name, s in MODELS.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if args.seeds < 1 or args.epochs < 1 or args.patience < 1:
        raise ValueError("--seeds, --epochs and --patience must be positive")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    qgfd = {"alpha": args.alpha, "steps": args.steps, "heads": args.heads, "hidden": args.hidden,
            "transition": args.transition, "k": args.k, "dropout": args.dropout,
            "attn_dropout": args.attn_dropout, "layers": args.layers,
            "attention": args.attention}

    task = load_task(args.task, args.root, args.dataset)
    seeds = list(range(args.seeds))
    config = {"task": task.name, "metric": task.metric, "models": models, "seeds": args.seeds,
              "seed_list": seeds, "epochs": args.epochs, "patience": args.patience,
              "device": device.type, "qgfd": qgfd}
    environment = {"command": "python -m qgfd_pyg.bench " + " ".join(map(shlex.quote,
                                                                          sys.argv[1:])),
                   "torch": torch.__version__, "torch_geometric": _pyg_version(),
                   "device": str(device), "threads": torch.get_num_threads(),
                   "date": datetime.date.today().isoformat(),
                   "memory_kind": "the CUDA allocator's peak" if device.type == "cuda"
                   else "the process's peak resident set (includes its ~baseline)"}
    name = args.name or task.name.replace(":", "-")
    store = ResultStore(args.out, name, config, args.resume)
    skipped = sum(store.done(m, s) for m in models for s in seeds)
    if skipped:
        print(f"resuming: {skipped} finished runs kept from {store.json_path}", file=sys.stderr)
    for model in models:
        for seed in seeds:
            if store.done(model, seed):
                continue
            record = train_one(task, model, seed, qgfd if model == "qgfd" else {},
                               args.epochs, args.patience, device, not args.no_progress)
            store.add(record, environment)
            print(f"{model:>6} seed {seed}: test {100 * record['test']:.1f}  "
                  f"val {100 * record['val']:.1f}  epochs {record['epochs']}", file=sys.stderr)
    rows = store.save(environment, complete=True)
    print(f"\n{task.name} ({task.metric}), {len(seeds)} seeds\n")
    print(table(rows, "metric"))
    print(f"\nwritten: {store.json_path}, {store.md_path}")
    return rows


def _pyg_version() -> str:
    import torch_geometric

    return torch_geometric.__version__


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_tasks())
        return 0
    if not args.task:
        parser.error("a task is needed (see --list)")
    try:
        run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
