"""Runs the shared engine/migrations/env.py (one environment for every store schema)."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "env.py"), run_name="alembic_env")
