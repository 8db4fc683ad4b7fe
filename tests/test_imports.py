"""Importing the library reads no settings: only the composition roots do (CLI, server,
`threadline.studio`). A bad environment variable must not break `import threadline.graph`."""

from __future__ import annotations

import os
import subprocess
import sys

IMPORT_EVERY_MODULE = """
import importlib, pkgutil
import threadline.checkpointers, threadline.graph
for package in (threadline.graph, threadline.checkpointers):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
import threadline.embedding
print("imported")
"""


def test_importing_the_graph_and_the_savers_reads_no_settings() -> None:
    env = {**os.environ, "THREADLINE_MAX_CONTEXT_TOKENS": "abc", "THREADLINE_MODEL": "nonsense"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
