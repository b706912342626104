"""Peers' real code (OpenRLHF, TRL, veRL) against a real PM server on loopback.

OpenRLHF and veRL are installed without their GPU dependencies (`make install`: `pip install --no-deps`); a test
whose peer module does not import here skips, saying which and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_helpers import ADMIN_KEY, API_KEY


@pytest.fixture(scope="module")
def peer_root(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Path:
    from pm_server.model.base import load_base
    from rigs.pm_packages import make_random_package

    base = load_base(str(tiny_encoder_dir))
    root = tmp_path_factory.mktemp("peer-adapters")
    make_random_package(root, base, "helpfulness", "v1", seed=1)
    make_random_package(root, base, "harmlessness", "v1", seed=2)
    return root


@pytest.fixture(scope="module")
def start_server(module_live_server, tiny_encoder_dir, peer_root):
    def start(**overrides):
        from pm_server.serving.api import create_app
        from pm_server.serving.config import ServerSettings

        settings = ServerSettings(base_model=str(tiny_encoder_dir), adapter_root=peer_root, api_key=API_KEY,
                                  admin_key=ADMIN_KEY, **overrides)  # fmt: skip
        return module_live_server(create_app(settings)).start()

    return start
