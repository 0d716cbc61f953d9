"""Inspect's entry point for emeval: registers the suite tasks in tasks/ as emeval/<name>."""

import importlib.util
import sys

from emeval.backend.provider import emeval_provider  # noqa: F401 - the emeval/ model provider
from emeval.resources import resource_path


def _load_tasks() -> None:
    # tasks/ sits at the repo top level (shipped inside the wheel), so it is loaded by path
    for path in sorted(resource_path("tasks").glob("*.py")):
        name = f"emeval.tasks.{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


_load_tasks()
