"""What the real-data loaders share: reading images, checking boxes, building targets.

:mod:`frcnn_lite.voc`, :mod:`frcnn_lite.coco` and :mod:`frcnn_lite.pennfudan`
use these; :mod:`frcnn_lite.real_data` re-exports :func:`load_image`.

- :func:`load_image` reads any image file as ``(3, H, W)`` float in [0, 1]
  RGB: 8-bit, 16-bit (scaled by 65535, not clipped), grayscale, palette,
  RGBA (alpha dropped) and CMYK files; the EXIF orientation is applied, as
  image viewers and annotation tools (CVAT, LabelImg, labelme) show the image.
- :func:`check_or_clip` checks boxes ``(N, 4)`` against an image size, or
  clips them when the caller asked for it (``clip_boxes=True``).
- :func:`safe_xml_root` parses XML refusing DOCTYPE and entity declarations
  (the XXE and "billion laughs" attacks), which annotation files never need.

Built in chapter 12.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union
from xml.etree import ElementTree as ET

import numpy as np
import torch

PathLike = Union[str, Path]


def load_image(path: PathLike, listed_in: Optional[PathLike] = None) -> torch.Tensor:
    """Read an image file as a ``(3, H, W)`` float tensor in [0, 1], RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    if not path.is_file():
        raise FileNotFoundError(f"image file {path}{where} is missing; put the image there or "
                                f"remove it from the annotations / image list.")
    try:
        with Image.open(path) as im:
            file_format = im.format
            im = ImageOps.exif_transpose(im)  # the orientation every viewer shows
            array = _rgb_array(im, file_format, path, where)  # (H, W, 3) float32 in [0, 1]
    except Image.DecompressionBombError as err:
        raise ValueError(f"image {path}{where} is too large to read safely ({err}). If you "
                         f"trust it, raise PIL.Image.MAX_IMAGE_PIXELS.") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}{where}: {err}. Is it a truncated download?"
                         ) from err
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image {path}{where} has no pixels ({array.shape[1]}x{array.shape[0]}); "
                         f"replace it or remove it from the annotations.")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (3, H, W)


def _rgb_array(im, file_format: Optional[str], path: Path, where: str) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` float32 in [0, 1], without saturating 16-bit data."""
    if im.mode.startswith("I;16") or (im.mode == "I" and file_format == "PNG"):
        gray = np.asarray(im, dtype=np.float32) / 65535.0  # 16-bit grayscale PNG
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise ValueError(f"image {path}{where} holds {kind} pixels, whose range is unknown; "
                         f"convert it to an 8-bit or 16-bit PNG or JPEG first.")
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # L, P, RGBA, CMYK -> RGB


def safe_xml_root(path: Path, data: bytes) -> ET.Element:
    """Parse ``data`` (the bytes of ``path``), refusing DOCTYPE and entity declarations."""
    from xml.parsers import expat

    def refuse(*_):
        raise ValueError(f"{path}: the file declares a DOCTYPE or XML entities, which "
                         f"annotation files never need and which can make a parser read other "
                         f"files or exhaust memory (XXE, 'billion laughs'); refused. Remove the "
                         f"<!DOCTYPE ...> block.")

    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = refuse
    scanner.EntityDeclHandler = refuse
    try:
        scanner.Parse(data, True)
        return ET.fromstring(data)
    except (expat.ExpatError, ET.ParseError) as err:
        raise ValueError(f"{path}: malformed XML ({err}); re-extract the annotation or delete "
                         f"the image from the split's ImageSets list.") from err


def finite_number(text, what: str) -> float:
    """``float(text)``, raising ``ValueError`` naming ``what`` unless it is a finite number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what}, got {text!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}, got {text!r}; fix or delete that annotation.")
    return value


def check_or_clip(boxes: np.ndarray, size: Tuple[int, int], clip: bool, what: str, source: str,
                  ids: Sequence) -> np.ndarray:
    """Boxes ``(N, 4)`` inside ``[0, W] x [0, H]``: raise naming ``source``, or clip.

    ``ids`` (N,) name the boxes in messages (their place in the file). Returns
    a ``(N,)`` bool mask of the boxes to keep (all True unless clipping emptied
    some). Clips ``boxes`` in place. NaN or infinite coordinates always raise.
    """
    height, width = size
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{source}: {what} {ids[i]} has a NaN or infinite coordinate "
                         f"{boxes[i].tolist()}; fix or delete that annotation.")
    inverted = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if inverted.any():
        i = int(np.flatnonzero(inverted)[0])
        raise ValueError(f"{source}: {what} {ids[i]} has an empty or inverted box {boxes[i].tolist()} "
                         f"(x1, y1, x2, y2); fix or delete that annotation.")
    outside = ((boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width)
               | (boxes[:, 3] > height))
    if outside.any() and not clip:
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{source}: {what} {ids[i]} has box {boxes[i].tolist()} outside the "
                         f"{width}x{height} image (W x H); fix the annotation, or pass "
                         f"clip_boxes=True to clip boxes to the image.")
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def make_target(boxes: np.ndarray, labels: Sequence[int], image_id, difficult: Sequence[bool],
                **extra) -> Dict[str, object]:
    """The detection target dict of :mod:`frcnn_lite.real_data`'s docstring."""
    target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1),
              "image_id": image_id,
              "difficult": torch.as_tensor(np.asarray(difficult, dtype=bool)).reshape(-1)}
    target.update(extra)
    return target


def size_mismatch(source: str, listed: Tuple[int, int], image_path: Path,
                  actual: Tuple[int, int]) -> ValueError:
    """The error for an annotation whose image size (H, W) is not the file's."""
    return ValueError(f"{source} says the image is {listed[1]}x{listed[0]} (W x H) but "
                      f"{image_path} is {actual[1]}x{actual[0]}; the annotation does not belong "
                      f"to this image (frcnn_lite applies the file's EXIF rotation, as viewers "
                      f"and annotation tools do).")
