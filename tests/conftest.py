"""Shared fixtures. Real data is found through one setting: CCSAM_DATA (default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("CCSAM_DATA", REPO.parent / "shared" / "data")).resolve()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}: set CCSAM_DATA to the folder holding cifar10/ and tinyimagenet_ood/"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA_DIR)


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    return _require(DATA_DIR / "cifar10")


@pytest.fixture(scope="session")
def ood_dir() -> Path:
    return _require(DATA_DIR / "tinyimagenet_ood")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Caches go to a per-session temporary folder, never beside the (read-only) data."""
    cache = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("CCSAM_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))


@pytest.fixture
def one_thread():
    """One torch thread for the test (float-exact comparisons, no oversubscription); restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fresh_accelerate_state():
    """Every test gets its own Accelerator settings (Accelerate keeps them in process-wide singletons)."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# The shipped CPU model: what the loading / hostile-input tests load, and copy to damage. Test modules that
# need another model define their own `clf` / `ckpt`, which take precedence over these.
@pytest.fixture(scope="module")
def clf():
    from ccsam_zoo.hub import from_pretrained
    from ccsam_zoo.hub.registry import ASSETS_DIR

    return from_pretrained(ASSETS_DIR / "ccsam-cifar10-lt-cpu")


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A copy of the shipped CPU checkpoint folder (with prototypes and an open-set threshold) to damage."""
    import shutil

    from ccsam_zoo.hub.registry import ASSETS_DIR

    folder = tmp_path / "stage2"
    shutil.copytree(ASSETS_DIR / "ccsam-cifar10-lt-cpu", folder)
    return folder
