"""Penn-Fudan pedestrians (instance masks), re-exported by :mod:`frcnn_lite.real_data`.

Each pedestrian has an instance mask; its box is tight around the mask's
pixels, ``x2 = last column + 1`` (the book's continuous coordinates).

Built in chapter 12.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from frcnn_lite.annotations import PathLike, load_image, make_target


class PennFudanDataset(torch.utils.data.Dataset):
    """Penn-Fudan pedestrians (170 images, 345 people; Wang et al., 2007).

    ``root`` holds ``PNGImages/<name>.png`` and ``PedMasks/<name>_mask.png``;
    each mask pixel is 0 (background) or the index of a pedestrian. One class,
    ``"pedestrian"`` (label 1); boxes are tight around each instance's pixels.
    ``return_masks=True`` adds ``target["masks"]`` ``(N, H, W)`` bool.
    """

    classes = ("pedestrian",)

    def __init__(self, root: PathLike, *, return_masks: bool = False):
        self.root, self.return_masks = Path(root), return_masks
        images, masks = self.root / "PNGImages", self.root / "PedMasks"
        if not images.is_dir() or not masks.is_dir():
            raise FileNotFoundError(f"{self.root} must hold PNGImages/ and PedMasks/ (the "
                                    f"PennFudanPed folder of PennFudanPed.zip).")
        self.names = sorted(p.stem for p in images.glob("*.png"))
        if not self.names:
            raise FileNotFoundError(f"no .png images in {images}.")
        missing = [n for n in self.names if not (masks / f"{n}_mask.png").is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) have no mask in {masks}, e.g. "
                                    f"{missing[0]}_mask.png; re-extract the dataset.")

    @property
    def num_classes(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.names)

    def _mask(self, path: Path) -> torch.Tensor:
        """The ``(H, W)`` int64 instance indices of a mask file."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16"):
                    raise ValueError(f"mask {path} has mode {im.mode!r}; a Penn-Fudan mask is a "
                                     f"single-channel image of instance indices (mode L or P).")
                return torch.from_numpy(np.array(im, dtype=np.int64))  # (H, W)
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"cannot read mask {path}: {err}; re-extract the dataset.") from err

    def __getitem__(self, index: int):
        name = self.names[index]
        image = load_image(self.root / "PNGImages" / f"{name}.png")
        mask_path = self.root / "PedMasks" / f"{name}_mask.png"
        mask = self._mask(mask_path)
        if mask.dim() != 2 or tuple(mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"mask {mask_path} has shape {tuple(mask.shape)}, but "
                             f"the image is {tuple(image.shape[1:])} (H, W).")
        ids = mask.unique()
        ids = ids[ids != 0]  # (N,) instance indices; 0 is background
        masks = mask[None] == ids[:, None, None]  # (N, H, W)
        rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
        height, width = mask.shape
        ar_h, ar_w = torch.arange(height), torch.arange(width)
        y1 = torch.where(rows, ar_h, height).min(dim=1).values
        y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
        x1 = torch.where(cols, ar_w, width).min(dim=1).values
        x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
        boxes = torch.stack([x1, y1, x2, y2], dim=1).float()  # (N, 4)
        extra = {"masks": masks} if self.return_masks else {}
        n = len(ids)
        target = make_target(boxes.numpy(), [1] * n, index, [False] * n, **extra)
        return image, target

    def __repr__(self) -> str:
        return f"PennFudanDataset(root={str(self.root)!r}, images={len(self)})"
