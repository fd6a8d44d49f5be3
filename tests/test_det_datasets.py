"""Dataset readers: VOC, KITTI, COCO; bad annotations reported with file and line, never a crash."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from mobilenet.detection.datasets import kitti_split, read_coco, read_kitti, read_voc
from tests.conftest import shared_file

VOC_XML = """<annotation>
  <filename>{name}.jpg</filename>
  <size><width>100</width><height>80</height><depth>3</depth></size>
  <object>
    <name>dog</name><difficult>0</difficult>
    <bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>60</ymax></bndbox>
  </object>
  <object>
    <name>cat</name><difficult>1</difficult>
    <bndbox><xmin>60</xmin><ymin>10</ymin><xmax>90</xmax><ymax>70</ymax></bndbox>
  </object>
  <object>
    <name>unicorn</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>
  </object>
  <object>
    <name>dog</name><difficult>0</difficult>
    <bndbox><xmin>40</xmin><ymin>20</ymin><xmax>30</xmax><ymax>60</ymax></bndbox>
  </object>
  <object>
    <name>cat</name><difficult>0</difficult>
    <bndbox><xmin>80</xmin><ymin>50</ymin><xmax>130</xmax><ymax>70</ymax></bndbox>
  </object>
</annotation>
"""


def _voc(tmp_path, ids=("a", "b"), missing_image=("b",)):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        (tmp_path / "Annotations" / f"{i}.xml").write_text(VOC_XML.format(name=i))
        if i not in missing_image:
            Image.new("RGB", (100, 80)).save(tmp_path / "JPEGImages" / f"{i}.jpg")
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return tmp_path


def test_voc_reader_reports_bad_objects_with_file_and_line(tmp_path):
    ds = read_voc(_voc(tmp_path), "trainval", ["cat", "dog"])
    assert len(ds) == 1  # image b is missing
    a = ds.annotations[0]
    assert a.labels.tolist() == [1, 0, 0] and a.difficult.tolist() == [False, True, False]
    assert a.boxes[2].tolist() == [80, 50, 100, 70]  # clipped to the 100 px wide image
    problems = "\n".join(ds.problems)
    assert "a.xml:12: unknown class 'unicorn'" in problems
    assert "a.xml:18: box [40.0, 20.0, 30.0, 60.0] has x2 < x1" in problems
    assert "a.xml:22: box [80.0, 50.0, 130.0, 70.0] extends outside the 100x80 image; clipped" in problems
    assert "b.xml:1: image file" in problems and "missing" in problems
    image, ann = ds[0]
    assert image.size == (100, 80) and ann is a


def test_voc_reader_errors_on_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC folder not found"):
        read_voc(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="split list not found"):
        read_voc(_voc(tmp_path), "test")


def test_unreadable_xml_is_reported(tmp_path):
    root = _voc(tmp_path, ids=("a",), missing_image=())
    (root / "Annotations" / "a.xml").write_text("<annotation>\n<object>\n</annotation>")
    ds = read_voc(root, "trainval", ["dog"])
    assert len(ds) == 0 and "a.xml:3: unreadable XML" in ds.problems[0]


KITTI_LABEL = """Car 0.00 0 -1.5 10.0 20.0 60.0 70.0 1 1 1 1 1 1 1
Van 0.10 1 -1.5 70.0 20.0 90.0 40.0 1 1 1 1 1 1 1
DontCare -1 -1 -10 0.0 0.0 5.0 5.0 -1 -1 -1 -1000 -1000 -1000 -10
Cyclist 0.00 2 -1.5 30.0 10.0 20.0 30.0 1 1 1 1 1 1 1
Spaceship 0 0 0 1 1 2 2 1 1 1 1 1 1 1
Pedestrian nonsense
"""


def test_kitti_reader_dontcare_neighbours_and_problems(tmp_path):
    (tmp_path / "image_2").mkdir()
    (tmp_path / "label_2").mkdir()
    Image.new("RGB", (120, 80)).save(tmp_path / "image_2" / "000000.png")
    (tmp_path / "label_2" / "000000.txt").write_text(KITTI_LABEL)
    (tmp_path / "label_2" / "000001.txt").write_text("Car 0 0 0 1 1 10 10 1 1 1 1 1 1 1\n")
    ds = read_kitti(tmp_path)
    assert len(ds) == 1 and ds.class_names == ["Car", "Pedestrian", "Cyclist"]
    a = ds.annotations[0]
    assert a.labels.tolist() == [0] and a.ignore_boxes.tolist() == [[0, 0, 5, 5]]
    assert [o["type"] for o in a.extra["kitti"]] == ["Car", "Van"]  # Van kept for the metric, not a target
    assert a.extra["kitti"][1]["occlusion"] == 1 and a.extra["kitti"][1]["truncation"] == pytest.approx(0.1)
    problems = "\n".join(ds.problems)
    assert "000000.txt:4: box" in problems and "x2 < x1" in problems
    assert "000000.txt:5: unknown object type 'Spaceship'" in problems
    assert "000000.txt:6: cannot parse" in problems
    assert "000001.txt:1: image file" in problems


def test_kitti_split_is_seeded_and_disjoint():
    ids = [f"{i:06d}" for i in range(50)]
    train, val = kitti_split(ids, 0.2, seed=0)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == ids
    assert kitti_split(ids, 0.2, seed=0) == (train, val) and kitti_split(ids, 0.2, seed=1) != (train, val)


def test_coco_reader(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "x.jpg")
    doc = {"images": [{"id": 7, "file_name": "x.jpg", "width": 64, "height": 48},
                      {"id": 8, "file_name": "gone.jpg", "width": 64, "height": 48}],
           "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 5, 10, 20]},
                           {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1},
                           {"id": 3, "image_id": 7, "category_id": 99, "bbox": [0, 0, 8, 8]}]}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    ds = read_coco(tmp_path / "ann.json")
    assert ds.class_names == ["person", "car"] and len(ds) == 1
    a = ds.annotations[0]
    assert a.boxes.tolist() == [[4, 5, 14, 25]] and a.labels.tolist() == [1] and a.ignore_boxes.shape == (1, 4)
    assert any("annotations[2]: unknown category_id 99" in p for p in ds.problems)
    assert any("gone.jpg is missing" in p for p in ds.problems)


@pytest.mark.realdata
def test_real_voc_and_kitti_samples():
    voc = read_voc(shared_file("detection", "voc", "VOCdevkit"), "trainval")
    assert len(voc) == 8 and not voc.problems
    assert all(a.boxes.shape[0] >= 1 for a in voc.annotations)
    kitti = read_kitti(shared_file("detection", "kitti", "training"))
    assert len(kitti) == 6 and not kitti.problems
    assert sum(a.ignore_boxes.shape[0] for a in kitti.annotations) > 0  # DontCare regions exist in the samples
