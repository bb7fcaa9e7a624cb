"""Merges result files of one task that ran apart (one process or machine per model) into
``<out>/<name>.json`` / ``.md``, as one sweep would have written them.

    python benchmarks/merge_results.py wn18rr RUN_DIR/wn18rr-*/wn18rr.json
    python benchmarks/merge_results.py path-qa --kg umls --name path-qa-umls DIR/*/path-qa-umls.json
"""
import argparse
import sys

from qgfd_pyg.bench.report import merge_results
from qgfd_pyg.bench.runner import default_dir
from qgfd_pyg.bench.tasks import load_task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="the task the files are results of (see --list)")
    parser.add_argument("files", nargs="+", help="result JSON files, models in this order")
    parser.add_argument("--kg", default=None, help="path-qa: the knowledge graph")
    parser.add_argument("--root", default=default_dir("datasets"))
    parser.add_argument("--out", default=default_dir("benchmarks/results"))
    parser.add_argument("--name", default=None, help="output file stem (default: the task)")
    args = parser.parse_args()
    try:
        task = load_task(args.task, args.root, None, {"kg": args.kg} if args.kg else {})
        store = merge_results(args.files, args.out, args.name or args.task, task)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"written: {store.json_path}, {store.md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
