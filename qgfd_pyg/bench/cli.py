"""``python -m qgfd_pyg.bench TASK``: every model on one protocol, table + JSON + Markdown.

Help, the task list and option errors come from the stored catalog (:mod:`.catalog`): nothing
heavy (torch, PyG) is imported until a sweep starts."""
import argparse
import shlex
import sys
from typing import Any, Dict, List, Optional

from . import catalog as _catalog
from .io import default_dir

_TYPES = {"int": int, "float": float, "str": str}


def build_parser(catalog: Optional[Dict[str, Any]] = None, task: Optional[str] = None,
                 add_help: bool = True) -> argparse.ArgumentParser:
    """The command line; with ``task``, only the options of its kind (``TASK --help``)."""
    catalog = _catalog.load() if catalog is None else catalog
    parser = argparse.ArgumentParser(
        prog="python -m qgfd_pyg.bench", allow_abbrev=False, add_help=add_help,
        description="QGFD against GAT, APPNP and the other baselines on one protocol: same "
                    "splits, seeds, optimiser, epoch budget and early stopping for every "
                    "model. Node classification, link prediction and knowledge-graph "
                    "completion tasks (see --list)."
                    + (f" {task}: {catalog['tasks'][task]['description']}." if task else ""),
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
    if task is None:
        flags, title = list(catalog["options"]), "options of the task kinds"
    else:
        flags = catalog["tasks"][task]["options"]
        title = f"options of {task} (the {catalog['tasks'][task]['kind']} kind)"
    kinds = parser.add_argument_group(title)
    for flag in flags:  # each kind declares its own (tasks.TaskOption)
        option = catalog["options"][flag]
        dest = flag.lstrip("-").replace("-", "_")
        if option["type"] is None:
            kinds.add_argument(flag, dest=dest, action="store_true", help=option["help"])
        else:
            kinds.add_argument(flag, dest=dest, type=_TYPES[option["type"]], default=None,
                               help=option["help"])
    qgfd = parser.add_argument_group(
        "QGFD hyper-parameters (model 'qgfd'; defaults are the node tasks', the other kinds "
        "set their own: see --list)")
    for option in catalog["qgfd"]:
        kind = _yes_no if option["type"] == "bool" else _TYPES[option["type"]]
        qgfd.add_argument(f"--{option['name'].replace('_', '-')}", dest=option["name"],
                          type=kind, default=None, choices=option["choices"],
                          help=f"{option['help']} ({option['default']})")
    return parser


def parser_for(argv: List[str], catalog: Optional[Dict[str, Any]] = None
               ) -> argparse.ArgumentParser:
    """The parser of the task ``argv`` names: its kind's options only (every kind's when it
    names no known task)."""
    catalog = _catalog.load() if catalog is None else catalog
    probe, _ = build_parser(catalog, add_help=False).parse_known_args(argv)
    return build_parser(catalog, probe.task if probe.task in catalog["tasks"] else None)


def _yes_no(text: str) -> bool:
    """A boolean option's value: true/false (also yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (got {text!r})")


def config_from_args(args: argparse.Namespace, argv: List[str],
                     catalog: Optional[Dict[str, Any]] = None):
    """The :class:`~qgfd_pyg.bench.runner.RunConfig` of parsed arguments."""
    from .runner import RunConfig

    catalog = _catalog.load() if catalog is None else catalog
    extra = {}
    for flag in catalog["options"]:
        dest = flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest, None)
        if value is not None and value is not False:
            extra[dest] = value
    return RunConfig(
        task=args.task, models=args.models.split(",") if args.models is not None else None,
        seeds=args.seeds, epochs=args.epochs,
        patience=args.patience, device=args.device, threads=args.threads, root=args.root,
        out=args.out, name=args.name, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress,
        dataset=args.dataset, max_minutes=args.max_minutes, download=args.download,
        lr=args.lr, keep_freed_memory=not args.no_keep_freed_memory,
        flow_backend=args.flow_backend, extra=extra,
        qgfd={o["name"]: getattr(args, o["name"]) for o in catalog["qgfd"]
              if getattr(args, o["name"]) is not None},
        command="python -m qgfd_pyg.bench " + " ".join(map(shlex.quote, argv)))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    catalog = _catalog.load()
    parser = parser_for(argv, catalog)
    args = parser.parse_args(argv)  # --help and option errors end here, nothing imported
    if args.list:
        print(catalog["listing"])
        return 0
    if not args.task:
        parser.error("a task is needed (see --list)")
    if args.task not in catalog["tasks"]:
        print(f"error: unknown task {args.task!r}; choose one of "
              f"{', '.join(catalog['tasks'])}", file=sys.stderr)
        return 2
    from .runner import Interrupted, run_benchmark, summary_text

    config = config_from_args(args, argv, catalog)
    try:
        results = run_benchmark(config)
    except Interrupted as stop:  # Ctrl-C: the finished runs are kept already
        print(stop, file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the first run (loading the data)
        print("interrupted before any run started; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, ImportError) as error:  # bad options, unknown model, missing data,
        # or an optional package (OGB) that the task needs
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_text(config, results))
    return 0
