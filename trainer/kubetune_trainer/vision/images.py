"""Read a row's images safely: relative paths stay inside the dataset's directory.

A path that is absolute or climbs out with ``..`` (also through a symlink) is refused:
a dataset must not make the trainer read arbitrary files of the pod (service account
tokens, other mounts). Every image is decoded fully here, during validation, so a
truncated or corrupt file fails with its row's file:line before training starts.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune_trainer.data.formats import ImageRef, RowError


def resolve_image_path(ref: str, base_dir: Path | None) -> Path:
    """The file a relative image path names, or RowError when it leaves ``base_dir``."""
    pure = PurePosixPath(ref.replace("\\", "/"))
    if pure.is_absolute() or ref.startswith(("/", "\\")) or (len(ref) > 1 and ref[1] == ":"):
        raise RowError(f"image path {ref!r} is absolute: paths are relative to the dataset file")
    if ".." in pure.parts:
        raise RowError(f"image path {ref!r} escapes the dataset directory ('..')")
    if "://" in ref:
        raise RowError(f"image path {ref!r} is a URL: images must be files next to the dataset")
    if base_dir is None:
        raise RowError(f"image path {ref!r} has no dataset directory to be relative to")
    root = base_dir.resolve()
    path = (root / pure).resolve()
    if not path.is_relative_to(root):
        raise RowError(f"image path {ref!r} escapes the dataset directory (through a link)")
    if not path.is_file():
        raise RowError(f"image file {ref!r} not found (looked in {root})")
    return path


def load_image(ref: ImageRef, base_dir: Path | None) -> Any:
    """The decoded RGB image (PIL) of a path or bytes; RowError when unreadable."""
    from PIL import Image, UnidentifiedImageError

    what = f"image {ref!r}" if isinstance(ref, str) else f"image bytes ({len(ref)} B)"
    try:
        if isinstance(ref, str):
            image = Image.open(resolve_image_path(ref, base_dir))
        else:
            image = Image.open(io.BytesIO(ref))
        image.load()  # decode now: a truncated file fails here, not mid-training
        return image.convert("RGB")
    except RowError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RowError(f"{what} is not a readable image: {exc}") from exc
