"""Miniature replicas of every dataset layout the readers support, for tests and benchmarks.

Each ``write_*_replica`` function writes a few classes of tiny images in the publisher's layout
(same file names, annotation formats and .mat structures) and returns the dataset folder. Image
content depends only on (class, image number), never on ``shuffle_seed``, so two replicas written
with different shuffles hold the same images under the same names; only annotation order (and,
where the format has them, image ids) differ. Each class has its own colour, so tiny models can
learn them.

Import them from other tests as ``from tests.datasets.replicas import write_cub_replica``.
"""

from __future__ import annotations

import colorsys
import gzip
import random
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

Size = Union[int, tuple[int, int]]

#: Image kinds :func:`write_image` can produce.
KINDS = ("rgb", "gray", "cmyk", "rgba", "la", "palette", "palette_transparent", "i16", "corrupt", "truncated")

CUB_NAMES = [
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
    "005.Crested_Auklet",
    "006.Least_Auklet",
    "007.Parakeet_Auklet",
    "008.Rhinoceros_Auklet",
    "009.Brewer_Blackbird",
    "010.Red_winged_Blackbird",
]
CAR_NAMES = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Acura TL Sedan 2012",
    "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012",
    "Acura Integra Type R 2001",
]
AIRCRAFT_NAMES = ["707-320", "727-200", "A300B4", "Cessna 172", "F/A-18", "DH-82", "737-800", "Tu-134"]
DOG_FOLDERS = [
    "n02085620-Chihuahua",
    "n02085782-Japanese_spaniel",
    "n02085936-Maltese_dog",
    "n02086079-Pekinese",
    "n02086240-Shih-Tzu",
    "n02086646-Blenheim_spaniel",
]
FOLDER_NAMES = ["apple", "banana", "cherry", "date", "elderberry", "fig", "grape", "honeydew"]


def _size(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _names(base: Sequence[str], count: int, fallback: str) -> list[str]:
    return [base[i] if i < len(base) else fallback.format(i=i + 1) for i in range(count)]


def class_pixels(cls: int, num_classes: int, index: int, size: Size = 16) -> np.ndarray:
    """A deterministic HxWx3 uint8 image: the class's hue, a gradient, and per-image noise."""
    width, height = _size(size)
    r, g, b = colorsys.hsv_to_rgb(cls / max(num_classes, 1), 0.8, 0.9)
    base = np.array([r, g, b]) * 200.0
    yy, xx = np.mgrid[0:height, 0:width]
    shade = (xx / max(width - 1, 1) + yy / max(height - 1, 1))[..., None] * 25.0
    noise = np.random.default_rng([cls, index]).normal(0.0, 12.0, size=(height, width, 3))
    return np.clip(base + shade + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, pixels: np.ndarray, kind: str = "rgb") -> Path:
    """Write ``pixels`` (HxWx3 uint8) to ``path`` as one of :data:`KINDS`.

    The file format follows the suffix for "rgb" and "gray"; "cmyk" is always JPEG data, the
    alpha, palette and 16-bit kinds are always PNG data (whatever the suffix), "corrupt" is bytes
    that are no image and "truncated" a JPEG cut in half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels, mode="RGB")
    if kind == "rgb":
        img.save(path, quality=90) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)
    elif kind == "gray":
        img.convert("L").save(path)
    elif kind == "cmyk":
        img.convert("CMYK").save(path, format="JPEG", quality=90)
    elif kind == "rgba":
        rgba = img.convert("RGBA")
        alpha = np.full(pixels.shape[:2], 255, dtype=np.uint8)
        alpha[: pixels.shape[0] // 2] = 0  # top half fully transparent
        rgba.putalpha(Image.fromarray(alpha, mode="L"))
        rgba.save(path, format="PNG")
    elif kind == "la":
        la = img.convert("LA")
        la.putalpha(128)
        la.save(path, format="PNG")
    elif kind == "palette":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="PNG")
    elif kind == "palette_transparent":
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        pal.save(path, format="PNG", transparency=0)
    elif kind == "i16":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path, format="PNG")
    elif kind == "corrupt":
        path.write_bytes(b"this is not an image\x00\x01\x02" * 8)
    elif kind == "truncated":
        img.save(path, format="JPEG", quality=90)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(f"unknown image kind {kind!r}; use one of {KINDS}")
    return path


def _jpeg_kind(cls: int, index: int, quirks: bool) -> str:
    """Grayscale and CMYK JPEGs, as in CUB and Stanford Cars, on two fixed images."""
    if quirks and cls == 0 and index == 0:
        return "gray"
    if quirks and cls == 1 and index == 1:
        return "cmyk"
    return "rgb"


def _order(count: int, shuffle_seed: Optional[int]) -> list[int]:
    order = list(range(count))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    return order


def _plan(num_classes: int, per_train: int, per_test: int) -> list[tuple[int, int, bool]]:
    """(class, image number within class, is_train) of every image, classes in order."""
    return [(c, i, i < per_train) for c in range(num_classes) for i in range(per_train + per_test)]


def write_cub_replica(
    root: Union[str, Path],
    num_classes: int = 6,
    per_class_train: int = 4,
    per_class_test: int = 2,
    image_size: Size = 16,
    quirks: bool = True,
    shuffle_seed: Optional[int] = None,
) -> Path:
    """Write ``root/CUB_200_2011/`` and return it.

    With ``shuffle_seed`` the image ids are assigned in a shuffled order and every annotation
    file lists them in a (differently) shuffled order.
    """
    base = Path(root) / "CUB_200_2011"
    folders = _names(CUB_NAMES, num_classes, "{i:03d}.Synthetic_bird_{i}")
    plan = _plan(num_classes, per_class_train, per_class_test)
    ids = {p: n + 1 for n, p in enumerate(plan[i] for i in _order(len(plan), shuffle_seed))}
    rels = {}
    for cls, idx, _ in plan:
        species = folders[cls].split(".", 1)[1].title()
        rels[(cls, idx)] = f"{folders[cls]}/{species}_{idx + 1:04d}_{cls * 1000 + idx}.jpg"
        pixels = class_pixels(cls, num_classes, idx, image_size)
        write_image(base / "images" / rels[(cls, idx)], pixels, _jpeg_kind(cls, idx, quirks))
    line_order = [plan[i] for i in _order(len(plan), None if shuffle_seed is None else shuffle_seed + 1)]
    (base / "classes.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(folders)))
    (base / "images.txt").write_text("".join(f"{ids[p]} {rels[p[:2]]}\n" for p in line_order))
    (base / "image_class_labels.txt").write_text("".join(f"{ids[p]} {p[0] + 1}\n" for p in line_order))
    (base / "train_test_split.txt").write_text("".join(f"{ids[p]} {int(p[2])}\n" for p in line_order))
    return base


def _cars_struct(records: list[tuple[str, int]], size: tuple[int, int]) -> np.ndarray:
    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    arr = np.zeros((1, len(records)), dtype=dtype)
    for j, (fname, label) in enumerate(records):
        arr[0, j] = (
            np.array([[1]], dtype=np.uint8),
            np.array([[1]], dtype=np.uint8),
            np.array([[size[0]]], dtype=np.uint16),
            np.array([[size[1]]], dtype=np.uint16),
            np.array([[label]], dtype=np.uint8),
            np.array([fname]),
        )
    return arr


def write_cars_replica(
    root: Union[str, Path],
    num_classes: int = 5,
    per_class_train: int = 3,
    per_class_test: int = 2,
    image_size: Size = 16,
    layout: str = "devkit",
    quirks: bool = True,
    shuffle_seed: Optional[int] = None,
) -> Path:
    """Write Stanford Cars in the devkit layout (into ``root``) or torchvision's
    (``root/stanford_cars/``), with .mat files structured like the real ones; return the folder.
    """
    import scipy.io

    if layout not in ("devkit", "torchvision"):
        raise ValueError("layout must be 'devkit' or 'torchvision'")
    base = Path(root) / "stanford_cars" if layout == "torchvision" else Path(root)
    names = _names(CAR_NAMES, num_classes, "Synthetic Car {i} 2020")
    plan = _plan(num_classes, per_class_train, per_class_test)
    records: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    for n, (cls, idx, is_train) in enumerate(plan):
        fname = f"{n + 1:05d}.jpg"
        folder = base / ("cars_train" if is_train else "cars_test")
        write_image(folder / fname, class_pixels(cls, num_classes, idx, image_size), _jpeg_kind(cls, idx, quirks))
        records[is_train].append((fname, cls + 1))
    for is_train in (True, False):
        recs = records[is_train]
        records[is_train] = [recs[i] for i in _order(len(recs), shuffle_seed)]
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    meta = np.empty((1, num_classes), dtype=object)
    meta[0, :] = names
    scipy.io.savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": meta})
    size = _size(image_size)
    scipy.io.savemat(str(base / "devkit" / "cars_train_annos.mat"), {"annotations": _cars_struct(records[True], size)})
    scipy.io.savemat(str(base / "cars_test_annos_withlabels.mat"), {"annotations": _cars_struct(records[False], size)})
    return base


def write_aircraft_replica(
    root: Union[str, Path],
    num_classes: int = 5,
    per_class_train: int = 3,
    per_class_test: int = 2,
    image_size: Size = 16,
    quirks: bool = True,
    shuffle_seed: Optional[int] = None,
) -> Path:
    """Write ``root/fgvc-aircraft-2013b/data/`` and return it."""
    base = Path(root) / "fgvc-aircraft-2013b" / "data"
    names = _names(AIRCRAFT_NAMES, num_classes, "Synthetic-{i}")
    lines: dict[bool, list[str]] = {True: [], False: []}
    for cls, idx, is_train in _plan(num_classes, per_class_train, per_class_test):
        image_id = f"{1000000 + cls * 1000 + idx:07d}"
        write_image(
            base / "images" / f"{image_id}.jpg",
            class_pixels(cls, num_classes, idx, image_size),
            _jpeg_kind(cls, idx, quirks),
        )
        lines[is_train].append(f"{image_id} {names[cls]}\n")
    (base / "variants.txt").write_text("".join(f"{n}\n" for n in names))
    for is_train, fname in ((True, "images_variant_trainval.txt"), (False, "images_variant_test.txt")):
        order = _order(len(lines[is_train]), shuffle_seed)
        (base / fname).write_text("".join(lines[is_train][i] for i in order))
    return base


def write_flowers_replica(
    root: Union[str, Path],
    num_classes: int = 4,
    per_class_train: int = 4,
    per_class_test: int = 2,
    image_size: Size = 16,
    quirks: bool = True,
    shuffle_seed: Optional[int] = None,
) -> Path:
    """Write ``root/flowers-102/`` (jpg/, imagelabels.mat, setid.mat) and return it.

    The first half of each class's training images go to ``trnid``, the rest to ``valid``.
    """
    import scipy.io

    base = Path(root) / "flowers-102"
    plan = _plan(num_classes, per_class_train, per_class_test)
    labels = np.zeros((1, len(plan)), dtype=np.uint8)
    sets: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for n, (cls, idx, is_train) in enumerate(plan):
        number = n + 1
        write_image(
            base / "jpg" / f"image_{number:05d}.jpg",
            class_pixels(cls, num_classes, idx, image_size),
            _jpeg_kind(cls, idx, quirks),
        )
        labels[0, n] = cls + 1
        key = ("trnid" if idx < (per_class_train + 1) // 2 else "valid") if is_train else "tstid"
        sets[key].append(number)
    scipy.io.savemat(str(base / "imagelabels.mat"), {"labels": labels})
    shuffled = {k: [v[i] for i in _order(len(v), shuffle_seed)] for k, v in sets.items()}
    scipy.io.savemat(str(base / "setid.mat"), {k: np.asarray([v], dtype=np.uint16) for k, v in shuffled.items()})
    return base


def write_dogs_replica(
    root: Union[str, Path],
    num_classes: int = 4,
    per_class_train: int = 3,
    per_class_test: int = 2,
    image_size: Size = 16,
    quirks: bool = True,
    shuffle_seed: Optional[int] = None,
    lists_in_subfolder: bool = True,
) -> Path:
    """Write ``root/stanford_dogs/`` (Images/, lists/*.mat) and return it.

    ``lists_in_subfolder=False`` puts the .mat files next to Images/, as lists.tar unpacks them.
    """
    import scipy.io

    base = Path(root) / "stanford_dogs"
    folders = _names(DOG_FOLDERS, num_classes, "n0999{i:04d}-Synthetic_dog_{i}")
    entries: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
    for cls, idx, is_train in _plan(num_classes, per_class_train, per_class_test):
        synset = folders[cls].split("-", 1)[0]
        rel = f"{folders[cls]}/{synset}_{1000 + idx}.jpg"
        write_image(
            base / "Images" / rel, class_pixels(cls, num_classes, idx, image_size), _jpeg_kind(cls, idx, quirks)
        )
        entries[is_train].append((rel, cls + 1))
    lists_dir = base / "lists" if lists_in_subfolder else base
    lists_dir.mkdir(parents=True, exist_ok=True)
    for is_train, stem in ((True, "train_list"), (False, "test_list")):
        rows = [entries[is_train][i] for i in _order(len(entries[is_train]), shuffle_seed)]
        files = np.empty((len(rows), 1), dtype=object)
        annos = np.empty((len(rows), 1), dtype=object)
        for j, (rel, _) in enumerate(rows):
            files[j, 0] = np.array([rel])
            annos[j, 0] = np.array([rel[:-4]])
        labels = np.asarray([[lab] for _, lab in rows], dtype=np.float64)
        scipy.io.savemat(
            str(lists_dir / f"{stem}.mat"), {"file_list": files, "annotation_list": annos, "labels": labels}
        )
    return base


#: Image kinds and file suffixes cycled through by :func:`write_image_folder_replica` with quirks.
FOLDER_QUIRKS = (
    ("rgb", ".jpg"),
    ("gray", ".jpg"),
    ("cmyk", ".jpg"),
    ("rgba", ".png"),
    ("la", ".png"),
    ("palette", ".png"),
    ("palette_transparent", ".png"),
    ("i16", ".png"),
    ("rgb", ".bmp"),
    ("rgb", ".webp"),
)


def write_image_folder_replica(
    root: Union[str, Path],
    num_classes: int = 4,
    per_class_train: int = 3,
    per_class_test: int = 2,
    image_size: Size = 16,
    quirks: bool = True,
    class_names: Optional[Sequence[str]] = None,
) -> Path:
    """Write ``root/train/<class>/`` and ``root/test/<class>/`` and return ``root``.

    With ``quirks`` the images cycle through every mode and format of :data:`FOLDER_QUIRKS`, and
    each split also holds a stray ``README.txt`` and a hidden ``.DS_Store`` the reader must ignore.
    """
    base = Path(root)
    names = list(class_names) if class_names is not None else _names(FOLDER_NAMES, num_classes, "class_{i}")
    counter = 0
    for cls, idx, is_train in _plan(len(names), per_class_train, per_class_test):
        kind, suffix = FOLDER_QUIRKS[counter % len(FOLDER_QUIRKS)] if quirks else ("rgb", ".jpg")
        counter += 1
        split = "train" if is_train else "test"
        write_image(
            base / split / names[cls] / f"img_{idx:03d}{suffix}", class_pixels(cls, len(names), idx, image_size), kind
        )
    if quirks:
        for split in ("train", "test"):
            (base / split / "README.txt").write_text("not a class\n")
            (base / split / names[0] / ".DS_Store").write_bytes(b"\x00\x00")
            (base / split / names[0] / "notes.txt").write_text("not an image\n")
    return base


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fmnist_replica(
    root: Union[str, Path],
    num_train: int = 60,
    num_test: int = 20,
    gz: bool = True,
) -> Path:
    """Write the four Fashion-MNIST IDX files (labels cycle 0..9) into ``root`` and return it."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = (
            np.stack([class_pixels(int(lab), 10, i, 28)[:, :, 0] for i, lab in enumerate(labels)])
            if count
            else np.zeros((0, 28, 28), dtype=np.uint8)
        )
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(array)
            if gz:
                (base / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (base / stem).write_bytes(data)
    return base
