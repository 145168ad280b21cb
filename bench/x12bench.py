"""What the X12 benchmarks share: the fixture generator, and one sample channel as a config."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def generator() -> ModuleType:
    """tests/fixtures/x12/_generate.py, loaded by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("x12_generate", ROOT / "tests/fixtures/x12/_generate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def channel_config(folder: Path, channel: str) -> Path:
    """config/channels.yaml with the sample ``channel`` alone, as written there, in ``folder``."""
    text = (ROOT / "config/channels.yaml").read_text()
    head = text[: text.index("channels:")].replace("mappings_dir: ../mappings", f"mappings_dir: {ROOT / 'mappings'}")
    start = text.index(f"  - name: {channel}")
    end = text.find("\n  - name:", start + 1)
    path = folder / "channels.yaml"
    path.write_text(head + "channels:\n" + text[start : end if end >= 0 else len(text)] + "\n")
    return path


def engine_folder(prefix: str) -> Path:
    """A temporary folder for the embedded engine's SQLite stores and X12 folders, named to the
    sample config through its environment variables; inboxes polled every 50 ms, files taken at once."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    for store in ("MESSAGE", "CLINICAL", "PM"):
        os.environ[f"ENGINE_{store}_STORE_URL"] = f"sqlite:///{folder}/{store.lower()}.db"
    os.environ.update(ENGINE_X12_DIR=str(folder / "x12"), ENGINE_X12_POLL_SECONDS="0.05", ENGINE_X12_STABLE_SECONDS="0")
    return folder
