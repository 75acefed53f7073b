"""Files shipped inside installed packages (the corpus, the default teacher), found without
importing those packages: their own dependency pins conflict with ours, so they are
installed with --no-deps and must never be imported."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from compression.errors import DataError


def package_dir(package: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"needs {requirement} installed (make install puts it in)")
    return Path(next(iter(spec.submodule_search_locations)))
