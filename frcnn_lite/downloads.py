"""Downloading the real datasets: checksums, resumable transfers, and fast offline failure.

``download(url, dest, md5=..., sha1=...)`` writes to ``dest.part`` and, when a
previous attempt was interrupted, asks the server for the missing bytes only
(an HTTP ``Range`` request); the file is renamed to ``dest`` once its checksum
matches. With no network it fails within seconds (name resolution and connect
are both bounded by ``timeout``) and says where to put the file by hand: a
file already at ``dest`` is verified and used without touching the network.

Checksums: VOC 2007's and 2012's MD5s are the ones torchvision's VOC loader verifies;
COCO 2017's SHA-1s are the ones GluonCV's COCO download script verifies.
Penn-Fudan publishes none, so it is checked by content after extraction
(170 images and 170 masks).

Built in chapter 12.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

__all__ = ["DownloadError", "Resource", "RESOURCES", "download", "fetch", "network_available",
           "download_voc2007", "download_voc2012", "download_coco_val2017", "download_pennfudan"]

PathLike = Union[str, Path]


class DownloadError(RuntimeError):
    """A download failed (no network, interrupted, wrong checksum); the message says what next."""


@dataclass(frozen=True)
class Resource:
    """One archive: its file name, mirror URLs (tried in order) and checksum, if known."""

    filename: str
    urls: Tuple[str, ...]
    md5: Optional[str] = None
    sha1: Optional[str] = None
    note: str = ""
    images: Optional[int] = None  # images in the archive, where known
    megabytes: Optional[float] = None  # approximate archive size (MiB)


_VOC = "pascal/VOC/voc2007/"
PENNFUDAN_IMAGES = 170  # and as many masks: the content check of download_pennfudan
RESOURCES = {
    "voc2007_trainval": Resource("VOCtrainval_06-Nov-2007.tar", (
        f"https://thor.robots.ox.ac.uk/{_VOC}VOCtrainval_06-Nov-2007.tar",
        f"http://host.robots.ox.ac.uk/{_VOC}VOCtrainval_06-Nov-2007.tar"),
        md5="c52e279531787c972589f7e41ab4ae64", note="VOC 2007 trainval",
        images=5011, megabytes=439),
    "voc2007_test": Resource("VOCtest_06-Nov-2007.tar", (
        f"https://thor.robots.ox.ac.uk/{_VOC}VOCtest_06-Nov-2007.tar",
        f"http://host.robots.ox.ac.uk/{_VOC}VOCtest_06-Nov-2007.tar"),
        md5="b6e924de25625d8de591ea690078ad9f", note="VOC 2007 test",
        images=4952, megabytes=430),
    "voc2012_trainval": Resource("VOCtrainval_11-May-2012.tar", (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"),
        md5="6cd6e144f989b92b3379bac3b3de84fd", note="VOC 2012 trainval",
        images=11540, megabytes=1907),
    "coco_val2017": Resource("val2017.zip", ("http://images.cocodataset.org/zips/val2017.zip",),
                             sha1="4950dc9d00dbe1c933ee0170f5797584351d2a41",
                             note="COCO val2017 images",
                             images=5000, megabytes=778),
    "coco_annotations2017": Resource(
        "annotations_trainval2017.zip",
        ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",),
        sha1="8551ee4bb5860311e79dace7e79cb91e432e78b3", note="COCO 2017 annotations",
        megabytes=241),
    "pennfudan": Resource("PennFudanPed.zip",
                          ("https://www.cis.upenn.edu/~jshi/ped_html/PennFudanPed.zip",),
                          note="Penn-Fudan; no published checksum (checked by content)",
                          images=PENNFUDAN_IMAGES, megabytes=54),
}


def _resolves(host: str, port: int, timeout: float) -> Optional[str]:
    """None if ``host`` resolves within ``timeout`` s, else the reason (DNS can hang offline)."""
    result = {}

    def work():
        try:
            socket.getaddrinfo(host, port)
            result["ok"] = True
        except OSError as err:
            result["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"resolving {host} took more than {timeout:g} s"
    return None if result.get("ok") else f"cannot resolve {host}: {result.get('error')}"


def network_available(url: str = "http://images.cocodataset.org", timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.hostname is None or _resolves(parts.hostname, port, timeout) is not None:
        return False
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _checksum(path: Path, md5: Optional[str], sha1: Optional[str]) -> Optional[str]:
    """None when ``path`` matches the given digest (or none is given), else the problem."""
    for algorithm, expected in (("md5", md5), ("sha1", sha1)):
        if expected:
            digest = hashlib.new(algorithm)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != expected.lower():
                return f"{algorithm} {digest.hexdigest()} != expected {expected}"
    return None


def _by_hand(url: str, dest: Path, md5: Optional[str], sha1: Optional[str]) -> str:
    digest = f" (md5 {md5})" if md5 else f" (sha1 {sha1})" if sha1 else ""
    return (f"Without network: download {url}{digest} on another machine and copy it to {dest}; "
            f"running this again then verifies and uses it without the network.")


def download(url: str, dest: PathLike, *, md5: Optional[str] = None, sha1: Optional[str] = None,
             timeout: float = 5.0, progress: bool = True, chunk_size: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest``, resuming an interrupted ``dest.part``; verify; return ``dest``.

    Raises :class:`DownloadError` (fast: ``timeout`` bounds name resolution,
    connect and each read) when the host cannot be reached, the transfer stops
    early (the ``.part`` file is kept: call again to resume) or the checksum
    does not match (the ``.part`` file is deleted).
    """
    dest = Path(dest)
    if dest.is_file():
        problem = _checksum(dest, md5, sha1)
        if problem:
            raise DownloadError(f"{dest} exists but is corrupt ({problem}); delete it and retry.")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
        port = parts.port or (443 if parts.scheme == "https" else 80)
        reason = _resolves(parts.hostname or "", port, timeout)
        if reason:
            raise DownloadError(f"cannot download {url}: {reason}. "
                                + _by_hand(url, dest, md5, sha1))
    headers = {"User-Agent": "frcnn-lite", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the .part file is complete
            return _finish(part, dest, url, md5, sha1)
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}. "
                            + _by_hand(url, dest, md5, sha1)) from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot download {url}: {getattr(err, 'reason', err)}. "
                            + _by_hand(url, dest, md5, sha1)) from err
    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server ignored the Range header: start again from byte 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                   disable=not progress)
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    block = response.read(chunk_size)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:  # IncompleteRead, timeouts, resets
            raise DownloadError(f"download of {url} stopped after {done} bytes ({err!r}); the "
                                f"partial file {part} is kept: call again to resume.") from err
        finally:
            bar.close()
    if total is not None and done < total:
        raise DownloadError(f"download of {url} stopped after {done} of {total} bytes; the "
                            f"partial file {part} is kept: call again to resume.")
    return _finish(part, dest, url, md5, sha1)


def _finish(part: Path, dest: Path, url: str, md5: Optional[str], sha1: Optional[str]) -> Path:
    problem = _checksum(part, md5, sha1)
    if problem:
        part.unlink()
        raise DownloadError(f"{url} downloaded, but the file is corrupt ({problem}); it was "
                            f"deleted, try again. " + _by_hand(url, dest, md5, sha1))
    part.replace(dest)
    return dest


def fetch(name: str, folder: PathLike, *, timeout: float = 5.0, progress: bool = True) -> Path:
    """Download :data:`RESOURCES` ``[name]`` into ``folder``, trying each mirror in turn."""
    if name not in RESOURCES:
        raise ValueError(f"unknown resource {name!r}; known: {sorted(RESOURCES)}.")
    resource = RESOURCES[name]
    errors = []
    for url in resource.urls:
        try:
            return download(url, Path(folder) / resource.filename, md5=resource.md5,
                            sha1=resource.sha1, timeout=timeout, progress=progress)
        except DownloadError as err:
            errors.append(str(err))
    raise DownloadError("\n".join(errors))


def _extracting_marker(archive: Path, into: Path) -> Path:
    return into / f".{archive.name}.extracting"


def _interrupted(archive_name: str, into: Path) -> bool:
    """Whether an extraction of ``archive_name`` into ``into`` was cut off (killed, full disk)."""
    return (Path(into) / f".{archive_name}.extracting").exists()


def _extract(archive: Path, into: Path) -> None:
    """Unpack ``archive`` into ``into``, refusing members that would land outside it.

    A marker file exists while the extraction runs, so that one cut off (kill,
    full disk) is redone by the next call instead of passing for complete.
    """
    into.mkdir(parents=True, exist_ok=True)
    marker = _extracting_marker(archive, into)
    marker.write_text("extraction started; it is redone while this file exists\n")
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(into)  # ZipFile drops absolute paths and ".." components
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):  # refuse links and paths leaving ``into``
                    tf.extractall(into, filter="data")
                else:
                    root = into.resolve()
                    for member in tf.getmembers():
                        target = (into / member.name).resolve()
                        if (member.issym() or member.islnk() or not member.isreg() and not
                                member.isdir() or root not in (target, *target.parents)):
                            raise tarfile.TarError(f"unsafe member {member.name!r}")
                    tf.extractall(into)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"cannot extract {archive} ({type(err).__name__}: {err}); the "
                            f"file is damaged or not the expected archive. Delete it and call "
                            f"again to download it afresh.") from err
    marker.unlink()


def download_voc2007(root: PathLike, splits: Tuple[str, ...] = ("trainval", "test"), *,
                     timeout: float = 5.0, progress: bool = True) -> Path:
    """Fetch and extract VOC 2007 into ``root``; return ``root/VOCdevkit/VOC2007``.

    Skips the network when the split lists are already there.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for split in splits:
        if split not in ("trainval", "test"):
            raise ValueError(f"VOC 2007 archives hold 'trainval' and 'test', got {split!r}.")
        archive_name = RESOURCES[f"voc2007_{split}"].filename
        if (not (voc / "ImageSets" / "Main" / f"{split}.txt").is_file()
                or _interrupted(archive_name, Path(root))):
            archive = fetch(f"voc2007_{split}", root, timeout=timeout, progress=progress)
            _extract(archive, Path(root))
    return voc


def download_voc2012(root: PathLike, *, timeout: float = 5.0, progress: bool = True) -> Path:
    """Fetch and extract VOC 2012 trainval into ``root``; return ``root/VOCdevkit/VOC2012``.

    The paper's "07+12" training set is VOC 2007 trainval plus this (Table 3).
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    if (not (voc / "ImageSets" / "Main" / "trainval.txt").is_file()
            or _interrupted(RESOURCES["voc2012_trainval"].filename, Path(root))):
        _extract(fetch("voc2012_trainval", root, timeout=timeout, progress=progress), Path(root))
    return voc


def download_coco_val2017(root: PathLike, *, timeout: float = 5.0, progress: bool = True
                          ) -> Tuple[Path, Path]:
    """Fetch COCO val2017 (images + annotations) into ``root``.

    Returns ``(ann_file, images_dir)`` for :class:`frcnn_lite.real_data.COCODetection`.
    """
    root = Path(root)
    ann_file, images = root / "annotations" / "instances_val2017.json", root / "val2017"
    if not ann_file.is_file() or _interrupted(RESOURCES["coco_annotations2017"].filename, root):
        _extract(fetch("coco_annotations2017", root, timeout=timeout, progress=progress), root)
    if not images.is_dir() or _interrupted(RESOURCES["coco_val2017"].filename, root):
        _extract(fetch("coco_val2017", root, timeout=timeout, progress=progress), root)
    return ann_file, images


def download_pennfudan(root: PathLike, *, timeout: float = 5.0, progress: bool = True) -> Path:
    """Fetch Penn-Fudan into ``root``; return ``root/PennFudanPed``, checked by content."""
    folder = Path(root) / "PennFudanPed"
    count = PENNFUDAN_IMAGES

    def complete() -> bool:
        return (len(list((folder / "PNGImages").glob("*.png"))) == count
                and len(list((folder / "PedMasks").glob("*_mask.png"))) == count)

    if not complete():
        _extract(fetch("pennfudan", root, timeout=timeout, progress=progress), Path(root))
        if not complete():
            raise DownloadError(f"{folder} should hold {count} images and {count} masks after "
                                f"extraction; delete {Path(root) / 'PennFudanPed.zip'} and retry.")
    return folder
