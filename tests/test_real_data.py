"""Tests for frcnn_lite.real_data and frcnn_lite.downloads (chapter 12).

Oracles: the shapes generator (its VOC and COCO exports must read back to the
exact boxes and labels it drew), hand-written annotation files with known
answers, torchvision.ops.masks_to_boxes, and a loopback HTTP server for the
downloads (127.0.0.1 only; nothing leaves the machine).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from frcnn_lite import downloads
from frcnn_lite.datasets import ShapesDataset, export_coco, export_voc
from frcnn_lite.downloads import DownloadError, Resource, download
from frcnn_lite.real_data import (VOC_CLASSES, COCODetection, PennFudanDataset, VOCDetection,
                                  load_image, parse_voc_xml)

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset("val", num_images=5, image_size=(64, 96), seed=3)


# -- the acceptance check: exports read back exactly ------------------------------------
def test_voc_reads_back_the_shapes_export(shapes, tmp_path):
    export_voc(shapes, tmp_path)
    voc = VOCDetection(tmp_path, "val", classes=shapes.classes)
    assert len(voc) == len(shapes) and voc.num_classes == 5
    for i in range(len(shapes)):
        image, target = voc[i]
        want_image, want = shapes[i]
        assert image.shape == want_image.shape and image.dtype == torch.float32
        assert float((image - want_image).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit PNG
        assert torch.equal(target["boxes"], want["boxes"])
        assert torch.equal(target["labels"], want["labels"])
        assert target["difficult"].dtype == torch.bool and not target["difficult"].any()
        assert target["image_id"] == i


def test_coco_reads_back_the_shapes_export(shapes, tmp_path):
    ann = export_coco(shapes, tmp_path)
    coco = COCODetection(ann)  # images/ beside the JSON by default
    assert coco.classes == shapes.classes and coco.cat_id_to_label == {k: k for k in range(1, 6)}
    assert len(coco) == len(shapes)
    for i in range(len(shapes)):
        image, target = coco[i]
        want_image, want = shapes[i]
        assert float((image - want_image).abs().max()) <= 0.5 / 255 + 1e-6
        assert torch.equal(target["boxes"], want["boxes"])
        assert torch.equal(target["labels"], want["labels"])
        assert target["image_id"] == i and not target["iscrowd"].any()
    assert len(COCODetection(tmp_path)) == len(shapes)  # a folder holding annotations.json


# -- VOC by hand ---------------------------------------------------------------------------
def _voc(root: Path, objects, name="img1", size=(20, 30), image_size=None, xml=None,
         image_mode="RGB", write_image=True, split="trainval"):
    """A one-image VOC folder; objects = [(name, difficult, xmin, ymin, xmax, ymax)]."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    if xml is None:
        objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}"
                       f"</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
                       for n, d, a, b, c, e in objects)
        xml = (f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}"
               f"</height><depth>3</depth></size>{objs}</annotation>")
    (root / "Annotations" / f"{name}.xml").write_text(xml)
    if write_image:
        ih, iw = image_size or size
        Image.new(image_mode, (iw, ih)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{name}\n")
    return root


def test_voc_coordinates_and_difficult(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 1, 10, 5), ("cat", 1, 5, 6, 5, 20), ("person", 0, 2, 3, 30, 20)])
    image, t = VOCDetection(tmp_path)[0]
    assert image.shape == (3, 20, 30)
    # 1-based inclusive -> continuous: x1 = xmin - 1, x2 = xmax; a 1-pixel-wide box has width 1
    assert t["boxes"].tolist() == [[0, 0, 10, 5], [4, 5, 5, 20], [1, 2, 30, 20]]
    assert t["labels"].tolist() == [VOC_CLASSES.index(c) + 1 for c in ("dog", "cat", "person")]
    assert t["difficult"].tolist() == [False, True, False]
    _, t = VOCDetection(tmp_path, keep_difficult=False)[0]
    assert t["labels"].tolist() == [12, 15] and not t["difficult"].any()


def test_voc_parse_keeps_raw_coordinates(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 2, 3, 4)])
    parsed = parse_voc_xml(tmp_path / "Annotations" / "img1.xml")
    assert parsed["size"] == (20, 30) and parsed["filename"] == "img1.jpg"
    assert parsed["objects"] == [{"name": "dog", "difficult": False, "bndbox": (1, 2, 3, 4)}]


def test_voc_malformed_xml(tmp_path):
    _voc(tmp_path, [], xml="<annotation><object><name>dog</name></annot")
    with pytest.raises(ValueError, match=r"img1\.xml: malformed XML"):
        VOCDetection(tmp_path)
    _voc(tmp_path, [], xml="<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(ValueError, match=r"img1\.xml: object 0 needs a <name> and a <bndbox>"):
        VOCDetection(tmp_path)
    _voc(tmp_path, [("dog", 0, "ten", 1, 5, 5)])
    with pytest.raises(ValueError, match=r"numeric <xmin>, got 'ten'"):
        VOCDetection(tmp_path)


def test_voc_missing_image_and_annotation(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 1, 5, 5)], write_image=False)
    voc = VOCDetection(tmp_path)  # annotations are fine; the image is read lazily
    with pytest.raises(FileNotFoundError, match=r"img1\.jpg.*listed in.*img1\.xml.*missing"):
        voc[0]
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("img1\nimg2\n")
    with pytest.raises(FileNotFoundError, match=r"img2\.xml \(listed in trainval\.txt\)"):
        VOCDetection(tmp_path)


def test_voc_wrong_root_and_split(tmp_path):
    _voc(tmp_path / "VOCdevkit" / "VOC2007", [])
    with pytest.raises(FileNotFoundError, match=r"Did you mean root=.*VOC2007"):
        VOCDetection(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"available: \['trainval'\]"):
        VOCDetection(tmp_path / "VOCdevkit" / "VOC2007", "test")


def test_voc_box_outside_image(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 1, 10, 5), ("cat", 0, 25, 10, 35, 21)])
    with pytest.raises(ValueError, match=r"img1\.xml: object 1 .* outside the 30x20 image"
                                         r".*clip_boxes=True"):
        VOCDetection(tmp_path)
    _, t = VOCDetection(tmp_path, clip_boxes=True)[0]
    assert t["boxes"].tolist() == [[0, 0, 10, 5], [24, 9, 30, 20]]
    _voc(tmp_path, [("dog", 0, 40, 1, 50, 5), ("cat", 0, 1, 1, 2, 2)])  # wholly outside
    _, t = VOCDetection(tmp_path, clip_boxes=True)[0]
    assert t["boxes"].tolist() == [[0, 0, 2, 2]] and t["labels"].tolist() == [8]
    _voc(tmp_path, [("cat", 1, 1, 1, 2, 2), ("dog", 0, 1, 1, 5, 25)])  # after a dropped object
    with pytest.raises(ValueError, match=r"object 1 has box \[0.0, 0.0, 5.0, 25.0\] outside"):
        VOCDetection(tmp_path, keep_difficult=False)
    _voc(tmp_path, [("dog", 0, 9, 1, 3, 5)])  # inverted: an error even when clipping
    with pytest.raises(ValueError, match=r"object 0 has an empty or inverted box"):
        VOCDetection(tmp_path, clip_boxes=True)


def test_voc_image_size_mismatch(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 1, 5, 5)], image_size=(21, 30))
    with pytest.raises(ValueError, match=r"says the image is 30x20 .* is 30x21"):
        VOCDetection(tmp_path)[0]


def test_voc_unknown_class(tmp_path):
    _voc(tmp_path, [("dog", 0, 1, 1, 5, 5), ("unicorn", 0, 2, 2, 6, 6)])
    with pytest.raises(ValueError, match=r"object 1 has class 'unicorn'.*unknown_classes='skip'"):
        VOCDetection(tmp_path)
    _, t = VOCDetection(tmp_path, unknown_classes="skip")[0]
    assert t["labels"].tolist() == [12]
    _, t = VOCDetection(tmp_path, classes=("unicorn",), unknown_classes="skip")[0]
    assert t["labels"].tolist() == [1] and t["boxes"].tolist() == [[1, 1, 6, 6]]
    assert len(VOCDetection(tmp_path, classes=("cow",), unknown_classes="skip",
                            skip_empty=True)) == 0
    with pytest.raises(ValueError, match="unknown_classes must be"):
        VOCDetection(tmp_path, unknown_classes="ignore")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_images_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    Image.new(mode, (7, 5)).save(path)
    image = load_image(path)
    assert image.shape == (3, 5, 7) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


def test_corrupt_image(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.jpg"):
        load_image(tmp_path / "bad.jpg")


# -- COCO by hand ---------------------------------------------------------------------------
def _coco(tmp_path, annotations, images=None, categories=None, drop=None):
    images = images or [{"id": 7, "file_name": "a.png", "height": 20, "width": 30},
                        {"id": 9, "file_name": "b.png", "height": 20, "width": 30}]
    (tmp_path / "images").mkdir(exist_ok=True)
    for im in images:
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / "images" / im["file_name"])
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 3, "name": "cat"}, {"id": 90, "name": "dog"},
                                         {"id": 17, "name": "cow"}]}
    if drop:
        del data[drop]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd,
            "area": bbox[2] * bbox[3]}


def test_coco_categories_crowd_and_empty_images(tmp_path):
    path = _coco(tmp_path, [_ann(1, 7, 90, [1.5, 2, 10, 5]), _ann(2, 7, 3, [0, 0, 30, 20], 1),
                            _ann(3, 7, 17, [4, 4, 2, 2])])
    coco = COCODetection(path)
    # sorted category ids 3, 17, 90 -> contiguous labels 1, 2, 3, mapping kept both ways
    assert coco.classes == ("cat", "cow", "dog") and coco.cat_ids == [3, 17, 90]
    assert coco.cat_id_to_label == {3: 1, 17: 2, 90: 3}
    assert coco.label_to_cat_id == {1: 3, 2: 17, 3: 90}
    image, t = coco[0]
    assert image.shape == (3, 20, 30) and t["image_id"] == 7
    assert t["boxes"].tolist() == [[1.5, 2, 11.5, 7], [4, 4, 6, 6]]  # crowd left out
    assert t["labels"].tolist() == [3, 2]
    _, t = coco[1]  # image 9 has no annotations: a valid empty target
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["image_id"] == 9
    assert t["labels"].dtype == torch.int64 and t["boxes"].dtype == torch.float32
    assert [r["id"] for r in COCODetection(path, skip_empty=True).records] == [7]
    _, t = COCODetection(path, include_crowd=True)[0]
    assert t["labels"].tolist() == [3, 1, 2]
    assert t["iscrowd"].tolist() == [False, True, False] == t["difficult"].tolist()


def test_coco_file_without_annotations(tmp_path):
    coco = COCODetection(_coco(tmp_path, [], drop="annotations"))
    assert len(coco) == 2 and all(coco[i][1]["boxes"].shape == (0, 4) for i in range(2))
    assert len(COCODetection(tmp_path / "annotations.json", skip_empty=True)) == 0


def test_coco_bad_files(tmp_path):
    (tmp_path / "annotations.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"annotations\.json: malformed JSON"):
        COCODetection(tmp_path / "annotations.json")
    path = _coco(tmp_path, [], drop="categories")
    with pytest.raises(ValueError, match=r"needs 'images' and 'categories'"):
        COCODetection(path)
    with pytest.raises(FileNotFoundError, match=r"nope\.json is missing"):
        COCODetection(tmp_path / "nope.json")


def test_coco_unknown_category_and_boxes_outside(tmp_path):
    path = _coco(tmp_path, [_ann(1, 7, 5, [1, 2, 3, 4])])
    with pytest.raises(ValueError, match=r"image id 7 .*annotation 1 has category_id 5"):
        COCODetection(path)
    path = _coco(tmp_path, [_ann(1, 7, 3, [1, 2, 3, 4]), _ann(2, 7, 3, [25, 15, 10, 10])])
    with pytest.raises(ValueError, match=r"image id 7 \(a\.png\): annotation 2 has box .* "
                                         r"outside the 30x20 image"):
        COCODetection(path)
    _, t = COCODetection(path, clip_boxes=True)[0]
    assert t["boxes"].tolist() == [[1, 2, 4, 6], [25, 15, 30, 20]]
    path = _coco(tmp_path, [_ann(1, 7, 3, [1, 2, 0, 4])])
    with pytest.raises(ValueError, match=r"annotation 1 has an empty or inverted box"):
        COCODetection(path)


def test_coco_missing_image(tmp_path):
    path = _coco(tmp_path, [_ann(1, 7, 3, [1, 2, 3, 4])])
    (tmp_path / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png \(listed in .*annotations\.json\)"):
        COCODetection(path)[0]


# -- Penn-Fudan -------------------------------------------------------------------------------
def test_pennfudan_fixture_boxes():
    data = PennFudanDataset(FIXTURES / "pennfudan_tiny", return_masks=True)
    assert len(data) == 3 and data.classes == ("pedestrian",)
    want = [[[3, 5, 13, 25], [20, 8, 30, 36]], [[20, 10, 31, 30]], []]
    for i, boxes in enumerate(want):
        image, t = data[i]  # RGB, grayscale and RGBA files, all (3, H, W) RGB
        assert image.shape == (3, 40, 48) and 0 <= float(image.min()) <= float(image.max()) <= 1
        assert t["boxes"].reshape(-1, 4).tolist() == boxes
        assert t["labels"].tolist() == [1] * len(boxes) and t["labels"].dtype == torch.int64
        if boxes:  # oracle: torchvision's masks_to_boxes gives inclusive pixel indices
            oracle = torchvision.ops.masks_to_boxes(t["masks"])
            assert torch.equal(t["boxes"], oracle + torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_pennfudan_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="must hold PNGImages/ and PedMasks/"):
        PennFudanDataset(tmp_path)
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "PNGImages" / "p1.png")
    with pytest.raises(FileNotFoundError, match=r"no mask .*p1_mask\.png"):
        PennFudanDataset(tmp_path)
    Image.new("L", (5, 4)).save(tmp_path / "PedMasks" / "p1_mask.png")
    with pytest.raises(ValueError, match=r"has shape \(4, 5\), but the image is \(4, 4\)"):
        PennFudanDataset(tmp_path)[0]


# -- downloads over loopback ------------------------------------------------------------------
PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; ``server.cut`` stops the first reply halfway."""

    def do_GET(self):  # noqa: N802
        self.server.ranges.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range") and self.server.honour_range:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut:
            self.server.cut = False
            self.wfile.write(body[:len(body) // 2])  # then hang up: an interrupted transfer
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.ranges, httpd.cut, httpd.honour_range = [], False, True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


def test_download_resumes_after_interruption(server, tmp_path):
    httpd, url = server
    httpd.cut = True
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=r"stopped after 51200 .*kept: call again to resume"):
        download(url, dest, md5=MD5, progress=False, chunk_size=4096)
    part = tmp_path / "file.bin.part"
    assert part.stat().st_size == len(PAYLOAD) // 2 and not dest.exists()
    assert download(url, dest, md5=MD5, sha1=SHA1, progress=False) == dest
    assert httpd.ranges == [None, "bytes=51200-"]  # the second request asked for the rest only
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert download("http://127.0.0.1:9/never", dest, md5=MD5) == dest  # present: no network


def test_download_restarts_when_range_is_ignored(server, tmp_path):
    httpd, url = server
    httpd.honour_range = False
    (tmp_path / "file.bin.part").write_bytes(b"garbage!" * 10)
    download(url, tmp_path / "file.bin", sha1=SHA1, progress=False)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_download_checksum_mismatch(server, tmp_path):
    _, url = server
    with pytest.raises(DownloadError, match=r"corrupt \(md5 .* != expected 0+\); it was deleted"):
        download(url, tmp_path / "file.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "file.bin.part").exists() and not (tmp_path / "file.bin").exists()
    (tmp_path / "file.bin").write_bytes(b"old")
    with pytest.raises(DownloadError, match=r"exists but is corrupt"):
        download(url, tmp_path / "file.bin", md5=MD5)


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_fails_fast_offline(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/VOCtrainval_06-Nov-2007.tar"
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=r"cannot download .*copy it to .*VOCtrainval"):
        download(url, tmp_path / "VOCtrainval_06-Nov-2007.tar", md5=MD5, timeout=2.0)
    assert time.perf_counter() - start < 3.0
    assert not downloads.network_available(url, timeout=1.0)


def test_dataset_helpers_with_a_local_mirror(tmp_path, monkeypatch):
    archive = tmp_path / "mirror" / "PennFudanPed.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(170):
            zf.writestr(f"PennFudanPed/PNGImages/P{i:05d}.png", b"")
            zf.writestr(f"PennFudanPed/PedMasks/P{i:05d}_mask.png", b"")
    monkeypatch.setitem(downloads.RESOURCES, "pennfudan",
                        Resource("PennFudanPed.zip", (archive.as_uri(),)))
    folder = downloads.download_pennfudan(tmp_path / "data", progress=False)
    assert folder == tmp_path / "data" / "PennFudanPed"
    assert len(list((folder / "PNGImages").glob("*.png"))) == 170
    # VOC: already extracted -> no network at all
    _voc(tmp_path / "voc" / "VOCdevkit" / "VOC2007", [], split="test")
    monkeypatch.setitem(downloads.RESOURCES, "voc2007_test",
                        Resource("x.tar", (f"http://127.0.0.1:{_closed_port()}/x.tar",)))
    assert downloads.download_voc2007(tmp_path / "voc", ("test",)).name == "VOC2007"
    with pytest.raises(DownloadError, match="cannot download"):
        downloads.download_voc2007(tmp_path / "voc2", ("test",), timeout=1.0)
    with pytest.raises(ValueError, match="'trainval' and 'test'"):
        downloads.download_voc2007(tmp_path / "voc", ("val",))


def test_horizontal_flips():
    from frcnn_lite.real_data import HorizontalFlips

    data = HorizontalFlips(PennFudanDataset(FIXTURES / "pennfudan_tiny", return_masks=True))
    assert len(data) == 6 and data.classes == ("pedestrian",) and data.num_classes == 1
    image, t = data[0]
    flipped, ft = data[3]  # the mirror of sample 0 (width 48)
    assert torch.equal(flipped, image.flip(-1))
    assert ft["boxes"].tolist() == [[35, 5, 45, 25], [18, 8, 28, 36]]
    # oracle: boxes of the flipped masks
    oracle = torchvision.ops.masks_to_boxes(ft["masks"]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.equal(ft["boxes"], oracle)
    assert torch.equal(data[4][1]["boxes"], torch.tensor([[17.0, 10.0, 28.0, 30.0]]))
    assert data[5][1]["boxes"].shape == (0, 4)
    with pytest.raises(IndexError, match="out of range for 6"):
        data[6]


def test_voc_real_world_xml(tmp_path):
    """The devkit's full layout: source/owner blocks, pose/truncated, person parts, floats."""
    xml = """<annotation><folder>VOC2007</folder><filename>000009.jpg</filename>
      <source><database>The VOC2007 Database</database></source>
      <size><width>50</width><height>40</height><depth>3</depth></size><segmented>0</segmented>
      <object><name>person</name><pose>Left</pose><truncated>1</truncated>
        <bndbox><xmin>10</xmin><ymin>5.0</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>
        <part><name>head</name><bndbox><xmin>12</xmin><ymin>6</ymin><xmax>18</xmax>
          <ymax>12</ymax></bndbox></part></object>
      <object><name> horse </name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>50</xmax>
        <ymax>40</ymax></bndbox></object></annotation>"""
    _voc(tmp_path, [], name="000009", size=(40, 50), xml=xml)
    _, t = VOCDetection(tmp_path)[0]
    assert t["boxes"].tolist() == [[9, 4, 30, 40], [0, 0, 50, 40]]  # parts are not objects
    assert t["labels"].tolist() == [15, 13] and t["difficult"].tolist() == [False, False]


def test_voc_without_size_checks_boxes_against_the_pixels(tmp_path):
    xml = ("<annotation><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
           "<xmax>31</xmax><ymax>5</ymax></bndbox></object></annotation>")
    _voc(tmp_path, [], size=(20, 30), xml=xml)
    voc = VOCDetection(tmp_path)  # no <size>: nothing to check until the image is read
    with pytest.raises(ValueError, match=r"object 0 has box .* outside the 30x20 image"):
        voc[0]
    _, t = VOCDetection(tmp_path, clip_boxes=True)[0]
    assert t["boxes"].tolist() == [[0, 0, 30, 5]] and t["labels"].tolist() == [12]
