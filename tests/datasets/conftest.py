"""Fixtures for the dataset tests: replica folders and a USB-like argument namespace."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from tests.datasets import replicas
from usb_cfsg.datasets import fmnist

#: Debian's Fashion-MNIST files (apt-get install dataset-fashion-mnist), for the tests on the real data
DEBIAN = Path(fmnist.DEBIAN_DIR)
HAVE_DEBIAN = all((DEBIAN / f"{stem}.gz").is_file() or (DEBIAN / stem).is_file() for stem in fmnist.FILES.values())
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Fashion-MNIST not installed in {DEBIAN} (apt-get install dataset-fashion-mnist)"
)


def make_args(**overrides: Any) -> SimpleNamespace:
    """USB-style args with the keys ``build_openset_datasets`` reads (tiny images for speed)."""
    values: dict[str, Any] = {
        "dataset": "cub200",
        "data_dir": None,
        "num_classes": 3,
        "num_labels": 6,
        "include_lb_to_ulb": True,
        "img_size": 16,
        "crop_ratio": 0.875,
        "seed": 0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture
def args_factory() -> Callable[..., SimpleNamespace]:
    """``args_factory(**overrides)`` builds an args namespace."""
    return make_args


@pytest.fixture
def cub_dir(tmp_path: Path) -> Path:
    """A 6-class CUB replica; returns data_dir (the folder containing CUB_200_2011/)."""
    replicas.write_cub_replica(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    """A 4-class image folder with every image-mode quirk; returns its root."""
    return replicas.write_image_folder_replica(tmp_path / "folder")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's downloaders fail as on a machine without network; returns the URLs tried."""
    from urllib.error import URLError

    from torchvision.datasets import utils as tv_utils

    tried: list[str] = []

    def fail(url: str, *args: Any, **kwargs: Any) -> None:
        tried.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fail)
    monkeypatch.setattr(tv_utils, "download_url", fail)
    return tried


@pytest.fixture
def no_debian(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the Fashion-MNIST reader's Debian fallback at an empty folder."""
    empty = tmp_path / "no-debian"
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", str(empty))
    return empty
