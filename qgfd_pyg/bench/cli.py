"""``python -m qgfd_pyg.bench TASK``: every model on one protocol, table + JSON + Markdown."""
import argparse
import shlex
import sys
from dataclasses import fields
from typing import List, Optional

from .models import QGFDOptions
from .runner import Interrupted, RunConfig, default_dir, run_benchmark, summary_text
from .tasks import TASKS, task_names, task_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qgfd_pyg.bench", allow_abbrev=False,
        description="QGFD against GAT, APPNP and the other baselines on one protocol: same "
                    "splits, seeds, optimiser, epoch budget and early stopping for every "
                    "model. Node classification, link prediction and knowledge-graph "
                    "completion tasks (see --list).",
        epilog="Example: python -m qgfd_pyg.bench cora --seeds 10; "
               "python -m qgfd_pyg.bench cora-link; python -m qgfd_pyg.bench wn18rr --quick")
    parser.add_argument("task", nargs="?", help="task name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the tasks and their data")
    parser.add_argument("--dataset",
                        help="for task 'pyg': Class[:name] of torch_geometric.datasets")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of the task's models (default: all; "
                             "see --list)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds 0..N-1 (10)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs per run (node and link tasks: 500; kg: 10)")
    parser.add_argument("--patience", type=int, default=None,
                        help="early-stopping patience in epochs (node and link: 100; kg: 3)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="wall-clock budget per run (training + validation); a run stops "
                             "after the epoch that passes it (default: none)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate of every model run (default: each model's own, "
                             "see --list)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--root", default=default_dir("datasets"), help="data root")
    parser.add_argument("--download", action="store_true",
                        help="download a missing data set (PyG's and OGB's, the filtered "
                             "heterophilous graphs, HotpotQA) instead of failing with where to "
                             "put its files; off by default")
    parser.add_argument("--out", default="results",
                        help="output folder for <name>.json and <name>.md (default: results "
                             "in the working directory; the committed tables: --out "
                             "benchmarks/results)")
    parser.add_argument("--name", default=None, help="output file stem (default: the task)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs of an earlier, interrupted sweep (and "
                             "add other seeds or models to them)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a result file that holds runs (without --resume or "
                             "--overwrite such a file is refused: a run never silently "
                             "replaces results it did not produce)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they are drawn only on a terminal anyway)")
    parser.add_argument("--flow-backend", default="torch",
                        help="how the query-conditioned flows' per-query steps run where "
                             "numba's step does not (GPUs): torch (default; pair gathers and "
                             "CSR products) or triton (Triton kernels; opt-in)")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="CPU: let glibc's malloc return freed tensors' memory to the "
                             "system at once (by default it keeps it for the next tensors: "
                             "large tensors otherwise cost fresh pages on every allocation, "
                             "1.5-1.7x the time of a WN18RR training batch; peak memory then "
                             "includes the memory kept)")
    kinds = parser.add_argument_group("options of the task kinds")
    for option in task_options():  # each kind declares its own (tasks.TaskOption)
        if option.type is None:
            kinds.add_argument(option.flag, dest=option.dest, action="store_true",
                               help=option.help)
        else:
            kinds.add_argument(option.flag, dest=option.dest, type=option.type, default=None,
                               help=option.help)
    qgfd = parser.add_argument_group(
        "QGFD hyper-parameters (model 'qgfd'; defaults are the node tasks', the other kinds "
        "set their own: see --list)")
    for option in fields(QGFDOptions):
        kind = _yes_no if option.type is bool else option.type
        qgfd.add_argument(f"--{option.name.replace('_', '-')}", dest=option.name,
                          type=kind, default=None, choices=option.metadata["choices"],
                          help=f"{option.metadata['help']} ({option.default})")
    return parser


def _yes_no(text: str) -> bool:
    """A boolean option's value: true/false (also yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (got {text!r})")


def config_from_args(args: argparse.Namespace, argv: List[str]) -> RunConfig:
    return RunConfig(
        task=args.task, models=args.models.split(",") if args.models is not None else None,
        seeds=args.seeds, epochs=args.epochs,
        patience=args.patience, device=args.device, threads=args.threads, root=args.root,
        out=args.out, name=args.name, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        dataset=args.dataset, max_minutes=args.max_minutes, download=args.download,
        lr=args.lr, keep_freed_memory=not args.no_keep_freed_memory,
        flow_backend=args.flow_backend,
        extra={o.dest: getattr(args, o.dest) for o in task_options()
               if getattr(args, o.dest) is not None and getattr(args, o.dest) is not False},
        qgfd={o.name: getattr(args, o.name) for o in fields(QGFDOptions)
              if getattr(args, o.name) is not None},
        command="python -m qgfd_pyg.bench " + " ".join(map(shlex.quote, argv)))


def list_tasks() -> str:
    task_names()  # registers every kind's tasks
    lines = []
    kinds = {}  # kind name -> its first Task class (countries share the kg kind's table)
    for entry in TASKS.values():
        kinds.setdefault(entry.kind.kind, entry.kind)
    order = ("node", "link", "kg", "qa")  # then the rest as registered
    kinds = dict(sorted(kinds.items(), key=lambda item: order.index(item[0])
                        if item[0] in order else len(order)))
    for name, kind in kinds.items():
        lines += [f"{name} tasks:"] + [f"  {task:<14} {entry.description}"
                                       for task, entry in TASKS.items()
                                       if entry.kind.kind == name]
        lines += [f"  models ({name}):"] + [
            f"    {model:<12} lr={s.lr}, weight_decay={s.weight_decay}, {s.options} ({s.source})"
            for model, s in kind.models.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_tasks())
        return 0
    if not args.task:
        parser.error("a task is needed (see --list)")
    config = config_from_args(args, argv)
    try:
        results = run_benchmark(config)
    except Interrupted as stop:  # Ctrl-C: the finished runs are kept already
        print(stop, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first run (loading the data)
        print("interrupted before any run started; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, ImportError) as error:  # bad options, unknown task or model,
        # missing data, or an optional package (OGB) that the task needs
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_text(config, results))
    return 0
