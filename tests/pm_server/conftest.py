from __future__ import annotations

from pathlib import Path

import pytest

from morlaif.protocol import Calibration


@pytest.fixture(scope="session")
def encoder_base(tiny_encoder_dir: Path):
    from pm_server.model.base import load_base

    return load_base(str(tiny_encoder_dir))


@pytest.fixture(scope="session")
def decoder_base(tiny_decoder_dir: Path):
    from pm_server.model.base import load_base

    return load_base(str(tiny_decoder_dir))


@pytest.fixture(scope="session")
def encoder_root(tmp_path_factory: pytest.TempPathFactory, encoder_base) -> Path:
    """helpfulness v1 and v2, harmlessness v1 and factuality v1 for the tiny encoder."""
    from rigs.pm_packages import make_random_package

    root = tmp_path_factory.mktemp("adapters")
    make_random_package(root, encoder_base, "helpfulness", "v1", seed=1, calibration=Calibration(mean=0.5, std=2.0))
    make_random_package(root, encoder_base, "harmlessness", "v1", seed=2)
    make_random_package(root, encoder_base, "factuality", "v1", seed=3, layers_to_transform=[1])
    # v2 is kept out of the way of start-up loading (which takes the newest) in a sibling root
    return root


@pytest.fixture(scope="session")
def encoder_v2_root(tmp_path_factory: pytest.TempPathFactory, encoder_base) -> Path:
    from rigs.pm_packages import make_random_package

    root = tmp_path_factory.mktemp("adapters-v2")
    make_random_package(root, encoder_base, "helpfulness", "v2", seed=11)
    return root
