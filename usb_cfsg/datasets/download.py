"""Downloading datasets from their publishers, with checksums where the publisher's are known.

Every download goes through :func:`fetch_all`, which uses torchvision's
``download_url``/``download_and_extract_archive`` and turns any failure (offline machine, moved
URL, checksum mismatch) into a :class:`~usb_cfsg.errors.DatasetError` that says where to get the
files by hand and where to unpack them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Remote:
    """One file a publisher serves.

    Attributes:
        url: Where to download it.
        md5: Its MD5 checksum, or ``None`` when the publisher gives none we can rely on.
        extract: Whether it is an archive to unpack after downloading.
    """

    url: str
    md5: Optional[str] = None
    extract: bool = True

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def fetch_all(name: str, remotes: Sequence[Remote], dest: Path, manual: str) -> None:
    """Download (and unpack) ``remotes`` into ``dest``.

    Args:
        name: Registry name of the dataset, for messages.
        remotes: The files to fetch.
        dest: The folder to download into and unpack in.
        manual: What a person should do instead (page to visit, where to unpack), used in the
            error when downloading fails.

    Raises:
        DatasetError: When any download or extraction fails.
    """
    from torchvision.datasets import utils as tv_utils

    dest.mkdir(parents=True, exist_ok=True)
    for remote in remotes:
        logger.info("%s: downloading %s into %s", name, remote.url, dest)
        try:
            if remote.extract:
                tv_utils.download_and_extract_archive(
                    remote.url, download_root=str(dest), filename=remote.filename, md5=remote.md5
                )
            else:
                tv_utils.download_url(remote.url, str(dest), filename=remote.filename, md5=remote.md5)
        except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError (checksum), tarfile errors
            raise DatasetError(
                f"{name}: download of {remote.url} failed ({type(exc).__name__}: {exc}).\n{manual}"
            ) from exc
