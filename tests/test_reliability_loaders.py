"""Issue 18: the real-data loaders never give a silent wrong answer on hostile or careless files.

Each case is a file a user could have: a NaN coordinate, a duplicate id, a
BOM, an XML entity attack, a 16-bit or EXIF-rotated image... Each must give
the right sample or an error naming the file and the entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_lite.real_data import COCODetection, PennFudanDataset, VOCDetection, load_image


# -- VOC -------------------------------------------------------------------------------
def _voc(root: Path, body: str, *, names=("img1",), split_text=None, size=(20, 30)):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "Annotations" / f"{name}.xml").write_text(body)
        Image.new("RGB", (size[1], size[0])).save(root / "JPEGImages" / f"{name}.jpg")
    text = split_text if split_text is not None else "".join(f"{n}\n" for n in names)
    (root / "ImageSets" / "Main" / "trainval.txt").write_bytes(
        text.encode() if isinstance(text, str) else text)
    return root


def _object(xmin="2", ymin="2", xmax="9", ymax="9", name="dog", difficult="0"):
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            f"</bndbox></object>")


def _annotation(*objects, size=True):
    size_xml = "<size><width>30</width><height>20</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>img1.jpg</filename>{size_xml}{''.join(objects)}</annotation>"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_voc_non_finite_coordinate_is_an_error_naming_the_object(tmp_path, value):
    _voc(tmp_path, _annotation(_object(), _object(xmin=value)))
    with pytest.raises(ValueError, match=r"img1\.xml: object 1 <bndbox> needs a numeric <xmin>"):
        VOCDetection(tmp_path)


def test_voc_split_file_with_a_bom_and_crlf_finds_the_first_image(tmp_path):
    _voc(tmp_path, _annotation(_object()), names=("img1", "img2"),
         split_text="\ufeffimg1\r\nimg2\r\n".encode("utf-8"))
    voc = VOCDetection(tmp_path)
    assert voc.ids == ["img1", "img2"] and voc[0][1]["boxes"].tolist() == [[1, 1, 9, 9]]


def test_voc_split_file_problems(tmp_path):
    _voc(tmp_path, _annotation(_object()), names=("img1",), split_text="img1\nimg1\n")
    with pytest.raises(ValueError, match=r"trainval\.txt lists image 'img1' twice"):
        VOCDetection(tmp_path)
    _voc(tmp_path, _annotation(_object()), split_text="\n")
    with pytest.raises(ValueError, match=r"trainval\.txt lists no images"):
        VOCDetection(tmp_path)
    _voc(tmp_path, _annotation(_object()), split_text=b"\xff\xfeimg1")
    with pytest.raises(ValueError, match=r"trainval\.txt is not UTF-8"):
        VOCDetection(tmp_path)


XXE = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<annotation><filename>&secret;</filename></annotation>"""

LAUGHS = ("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n"
          + "".join(f" <!ENTITY lol{i} \"{('&lol%s;' % (i - 1 if i > 1 else '')) * 10}\">\n"
                    for i in range(1, 10))
          + "]>\n<annotation><filename>&lol9;</filename></annotation>")

SMALL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY dog "dog">]>
<annotation><object><name>&dog;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>
<ymax>5</ymax></bndbox></object></annotation>"""


@pytest.mark.parametrize("xml", [XXE, LAUGHS, SMALL_ENTITY], ids=["xxe", "billion-laughs",
                                                                 "harmless-entity"])
def test_voc_xml_entity_attacks_are_refused(tmp_path, xml):
    _voc(tmp_path, xml)
    with pytest.raises(ValueError, match=r"img1\.xml: the file declares a DOCTYPE or XML "
                                         r"entities.*refused"):
        VOCDetection(tmp_path)


def test_voc_difficult_size_and_classes_must_make_sense(tmp_path):
    _voc(tmp_path, _annotation(_object(difficult="yes")))
    with pytest.raises(ValueError, match=r"object 0 has <difficult>yes</difficult>; VOC uses 0 "
                                         r"or 1"):
        VOCDetection(tmp_path)
    bad_size = _annotation(_object()).replace("<width>30</width>", "<width>-30</width>")
    _voc(tmp_path, bad_size)
    with pytest.raises(ValueError, match=r"<size> needs whole, non-negative"):
        VOCDetection(tmp_path)
    _voc(tmp_path, _annotation(_object()))
    with pytest.raises(TypeError, match=r"classes must be a sequence of class names"):
        VOCDetection(tmp_path, classes="dog")  # would silently become ('d', 'o', 'g')
    _voc(tmp_path, _annotation(_object(name="  ")))
    with pytest.raises(ValueError, match=r"object 0 needs a <name>"):
        VOCDetection(tmp_path)
    _voc(tmp_path, "<html><body><object>404 Not Found</object></body></html>")
    with pytest.raises(ValueError, match=r"img1\.xml: a VOC annotation's root element is "
                                         r"<annotation>, this file's is <html>"):
        VOCDetection(tmp_path)  # not read as an image without objects


# -- COCO ------------------------------------------------------------------------------
def _coco(tmp_path, *, images=None, annotations=(), categories=None, text=None):
    images = images if images is not None else [
        {"id": 7, "file_name": "a.png", "height": 20, "width": 30}]
    (tmp_path / "images").mkdir(exist_ok=True)
    for im in images:
        if isinstance(im, dict) and "file_name" in im:
            Image.new("RGB", (30, 20)).save(tmp_path / "images" / im["file_name"])
    data = {"images": images, "annotations": list(annotations),
            "categories": categories if categories is not None else [{"id": 1, "name": "cat"}]}
    path = tmp_path / "annotations.json"
    path.write_text(text if text is not None else json.dumps(data))
    return path


def _ann(i, bbox, image_id=7, cat=1, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0, **extra}


@pytest.mark.parametrize("bbox", [[float("nan"), 6, 10, 12], [None, 6, 10, 12],
                                  [1, 6, float("inf"), 12], ["1", 6, 10, 12], [1, 6, 10],
                                  [True, 6, 10, 12], None])
def test_coco_bad_bbox_is_an_error_naming_the_annotation(tmp_path, bbox):
    path = _coco(tmp_path, annotations=[_ann(1, [1, 1, 2, 2]), _ann(2, bbox)])
    with pytest.raises(ValueError, match=r"annotation 2 \(image id 7\) needs 'bbox': "
                                         r"\[x, y, w, h\], four finite numbers"):
        COCODetection(path)


def test_coco_nan_literal_in_the_json_file(tmp_path):
    text = ('{"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}], '
            '"annotations": [{"id": 1, "image_id": 7, "category_id": 1, '
            '"bbox": [NaN, 6, 10, 12]}], "categories": [{"id": 1, "name": "cat"}]}')
    path = _coco(tmp_path, text=text)
    with pytest.raises(ValueError, match=r"annotation 1 .*four finite numbers, got \[nan"):
        COCODetection(path)


def test_coco_image_without_size_checks_boxes_against_the_pixels(tmp_path):
    path = _coco(tmp_path, images=[{"id": 7, "file_name": "a.png"}],
                 annotations=[_ann(1, [1, 1, 5, 5]), _ann(2, [25, 2, 10, 5])])  # x2 = 35 > 30
    coco = COCODetection(path)
    with pytest.raises(ValueError, match=r"image id 7 \(a\.png\): annotation 2 has box "
                                         r"\[25\.0, 2\.0, 35\.0, 7\.0\] outside the 30x20 image"):
        coco[0]
    _, target = COCODetection(path, clip_boxes=True)[0]
    assert target["boxes"].tolist() == [[1, 1, 6, 6], [25, 2, 30, 7]]
    assert target["labels"].tolist() == [1, 1] and target["iscrowd"].tolist() == [False, False]
    path = _coco(tmp_path, images=[{"id": 7, "file_name": "a.png", "height": 20}])
    with pytest.raises(ValueError, match=r"image id 7 \(a\.png\) has height 20 and width None"):
        COCODetection(path)


@pytest.mark.parametrize("images, categories, annotations, message", [
    ([{"id": 7, "file_name": "a.png"}, {"id": 7, "file_name": "b.png"}], None, [],
     r"two images entries have id 7"),
    (None, [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}], [],
     r"two categories entries have id 1"),
    (None, [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}], [],
     r"categories 1 and 2 are both named 'cat'"),
    (None, None, [_ann(1, [1, 1, 2, 2]), _ann(1, [3, 3, 2, 2])],
     r"two annotations entries have id 1"),
    (None, None, [_ann(1, [1, 1, 2, 2], image_id=99)],
     r"annotation 1 refers to image_id 99, which is not in 'images'"),
    (None, None, [{"image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}],
     r"annotations entry 0 needs an integer 'id'"),
    ([{"id": "7", "file_name": "a.png"}], None, [], r"images entry 0 needs an integer 'id'"),
    ([{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "a.png"}], None, [],
     r"images 7 and 8 are both 'a\.png'"),
    ([{"id": 7}], None, [], r"image id 7 needs a 'file_name'"),
    (None, [{"id": 1}], [], r"category id 1 needs a 'name'"),
    (None, None, [_ann(1, [1, 1, 2, 2], iscrowd=2)], r"annotation 1 has iscrowd=2"),
    (None, None, [_ann(1, [1, 1, 2, 2], cat=5, iscrowd=1)], r"has category_id 5"),
])
def test_coco_nothing_is_merged_or_ignored(tmp_path, images, categories, annotations, message):
    path = _coco(tmp_path, images=images, categories=categories, annotations=annotations)
    with pytest.raises(ValueError, match=message):
        COCODetection(path)


def test_coco_file_with_a_bom(tmp_path):
    path = _coco(tmp_path, annotations=[_ann(1, [1, 2, 3, 4])])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert COCODetection(path)[0][1]["boxes"].tolist() == [[1, 2, 4, 6]]


# -- images ----------------------------------------------------------------------------
def test_16_bit_png_keeps_its_values(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)  # (1, 4)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.shape == (3, 1, 4) and image.dtype == torch.float32
    want = torch.tensor(values.astype(np.float32) / 65535.0)
    for channel in image:
        torch.testing.assert_close(channel, want)
    assert float(image.max()) == 1.0 and float(image[0, 0, 1]) < 0.02  # not saturated


def test_exif_rotation_is_applied(tmp_path):
    array = np.zeros((2, 3, 3), dtype=np.uint8)  # (H, W, 3): stored 3 wide, 2 high
    array[0, 0] = 255  # top-left pixel white
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "rot.jpg")
    assert image.shape == (3, 3, 2)  # displayed 2 wide, 3 high
    assert float(image[:, 0, 1].mean()) > 0.5  # the white pixel is now top-right


@pytest.mark.parametrize("mode", ["1", "LA", "P+transparency", "RGBX", "YCbCr"])
def test_other_pil_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("RGBX", "YCbCr") else "x.png")
    if mode == "P+transparency":
        im = Image.new("P", (5, 4), 1)
        im.putpalette([10, 20, 30, 200, 100, 50] * 128)
        im.save(path, transparency=0)
    else:
        Image.new("RGB", (5, 4), (200, 100, 50)).convert(mode).save(path)
    image = load_image(path)
    assert image.shape == (3, 4, 5) and 0 <= float(image.min()) <= float(image.max()) <= 1
    if mode not in ("1", "LA"):  # the colour survives (up to YCbCr rounding)
        assert torch.allclose(image[:, 0, 0], torch.tensor([200, 100, 50]) / 255, atol=0.02)


def test_images_of_unknown_range_and_empty_files_are_errors(tmp_path):
    Image.fromarray(np.full((4, 5), 3.5, dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match=r"f\.tif holds floating-point pixels.*convert it"):
        load_image(tmp_path / "f.tif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read image .*empty\.png"):
        load_image(tmp_path / "empty.png")


def test_pennfudan_colour_mask_is_an_error(tmp_path):
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "PNGImages" / "p1.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "PedMasks" / "p1_mask.png")
    with pytest.raises(ValueError, match=r"p1_mask\.png has mode 'RGB'"):
        PennFudanDataset(tmp_path)[0]


# -- downloads and archives ------------------------------------------------------------
def _mirror_pennfudan(tmp_path, monkeypatch, archive):
    from frcnn_lite import downloads
    from frcnn_lite.downloads import Resource

    monkeypatch.setitem(downloads.RESOURCES, "pennfudan",
                        Resource("PennFudanPed.zip", (archive.as_uri(),)))
    return downloads


def test_a_damaged_archive_says_delete_and_retry(tmp_path, monkeypatch):
    from frcnn_lite.downloads import DownloadError

    archive = tmp_path / "mirror" / "PennFudanPed.zip"
    archive.parent.mkdir()
    archive.write_bytes(b"PK\x03\x04 this is not really a zip")
    downloads = _mirror_pennfudan(tmp_path, monkeypatch, archive)
    with pytest.raises(DownloadError, match=r"cannot extract .*PennFudanPed\.zip .*Delete it and "
                                            r"call again"):
        downloads.download_pennfudan(tmp_path / "data", progress=False)
    with pytest.raises(ValueError, match=r"unknown resource 'voc2099'; known: \["):
        downloads.fetch("voc2099", tmp_path)


def test_an_interrupted_extraction_is_redone(tmp_path, monkeypatch):
    import tarfile

    from frcnn_lite import downloads
    from frcnn_lite.downloads import Resource

    source = tmp_path / "src" / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "JPEGImages"):
        (source / sub).mkdir(parents=True)
    (source / "ImageSets" / "Main" / "test.txt").write_text("img1\n")
    (source / "JPEGImages" / "img1.jpg").write_bytes(b"jpeg")
    archive = tmp_path / "mirror" / "VOCtest.tar"
    archive.parent.mkdir()
    with tarfile.open(archive, "w") as tf:
        tf.add(tmp_path / "src" / "VOCdevkit", arcname="VOCdevkit")
    monkeypatch.setitem(downloads.RESOURCES, "voc2007_test",
                        Resource("VOCtest.tar", (archive.as_uri(),)))
    root = tmp_path / "data"
    # a first run killed mid-extraction: the split list is there, the image is not
    (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main").mkdir(parents=True)
    (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("img1\n")
    (root / ".VOCtest.tar.extracting").write_text("")
    voc = downloads.download_voc2007(root, ("test",), progress=False)
    assert (voc / "JPEGImages" / "img1.jpg").read_bytes() == b"jpeg"
    assert not (root / ".VOCtest.tar.extracting").exists()


def test_archive_members_leaving_the_folder_are_refused(tmp_path):
    import io
    import tarfile

    from frcnn_lite.downloads import DownloadError, _extract

    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DownloadError, match=r"cannot extract .*evil\.tar"):
        _extract(archive, tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()
