"""What the runner's command line knows before it imports anything heavy.

``python -m qgfd_pyg.bench --help``, ``--list``, ``TASK --help`` and option errors are answered
from ``catalog.json`` (the tasks, their kinds' options, the QGFD options and the task list),
without importing torch or PyG (about 5 s). The file is written from the live registry by
``python -m qgfd_pyg.bench.catalog`` (:func:`live` imports every kind); a test fails when it
no longer matches. Where another package adds task kinds (entry point group
``qgfd_pyg.bench.kinds``), or the file is missing, the command line uses :func:`live`.
"""
import json
import os
from typing import Any, Dict

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog.json")
TYPES = {None: None, int: "int", float: "float", str: "str", bool: "bool"}


def live() -> Dict[str, Any]:
    """The catalog of the registry as it is (imports every task kind)."""
    from dataclasses import fields

    from .models import QGFDOptions
    from .tasks import TASKS, kinds, task_names

    task_names()
    options = {}
    for kind in kinds():
        for option in kind.options:
            if option.type not in TYPES:
                raise ValueError(f"option {option.flag} of the {kind.kind} kind has type "
                                 f"{option.type!r}; the command line knows {list(TYPES)}")
            options[option.flag] = {"help": option.help, "type": TYPES[option.type]}
    return {
        "tasks": {task: {"kind": entry.kind.kind, "description": entry.description,
                         "options": [option.flag for option in entry.kind.options]}
                  for task, entry in TASKS.items()},
        "options": options,
        "qgfd": [{"name": f.name, "type": TYPES[f.type],
                  "default": f.default, "choices": f.metadata["choices"],
                  "help": f.metadata["help"]} for f in fields(QGFDOptions)],
        "listing": list_tasks(),
    }


def list_tasks() -> str:
    """The text of ``--list``: each kind's tasks and models (imports every kind)."""
    from .tasks import TASKS, task_names

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


def _other_kinds() -> bool:
    """Whether an installed package declares task kinds (they are not in the stored file)."""
    import importlib.metadata

    return bool(list(importlib.metadata.entry_points(group="qgfd_pyg.bench.kinds")))


def load() -> Dict[str, Any]:
    """The stored catalog, or the live one where other packages add kinds or it is missing."""
    if not os.path.exists(PATH) or _other_kinds():
        return live()
    with open(PATH) as f:
        return json.load(f)


def text(catalog: Dict[str, Any]) -> str:
    return json.dumps(catalog, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m qgfd_pyg.bench.catalog: rewrite the stored file
    with open(PATH, "w") as f:
        f.write(text(live()))
    print(f"written: {PATH}")
