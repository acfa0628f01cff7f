"""Labelled-dataset formats: ImageFolder, COCO (boxes, RLE masks), YOLO (detect, seg), Pascal VOC.

`write_dataset` writes one into a folder; `read_dataset` reads any of them back (used to check
every export and to import an existing dataset for `--expand`). A reader refuses a corrupt dataset
with one message listing its problems: missing images, labels for absent images, unknown class ids.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from vlcurate.base import atomic

FORMATS = ("imagefolder", "coco", "yolo", "voc", "hf")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
Box = tuple[int, int, int, int]


class FormatError(ValueError):
    """A dataset folder that cannot be read as the format it claims."""


@dataclass
class Ann:
    cls: str
    box: Box | None = None
    mask: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Item:
    name: str  # file name, unique across the dataset
    split: str
    width: int
    height: int
    anns: list[Ann] = field(default_factory=list)
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise FormatError(f"{self.name}: no image data")
        return self.path.read_bytes()


@dataclass
class Dataset:
    classes: list[str]
    items: list[Item]

    def splits(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for it in self.items:
            out.setdefault(it.split, []).append(it)
        return out

    def counts(self) -> dict[str, Any]:
        per_class: dict[str, int] = dict.fromkeys(self.classes, 0)
        for it in self.items:
            for a in it.anns:
                per_class[a.cls] = per_class.get(a.cls, 0) + 1
        return {
            "images": len(self.items),
            "annotations": sum(len(it.anns) for it in self.items),
            "masks": sum(1 for it in self.items for a in it.anns if a.mask is not None),
            "per_split": {s: len(v) for s, v in sorted(self.splits().items())},
            "per_class": per_class,
        }


# ---------------------------------------------------------------------------------------------
# masks: COCO RLE (uncompressed and compressed) and polygons


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _decode_compressed(s: str) -> list[int]:
    """COCO's compressed RLE string (pycocotools' rleFrString) to run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = _decode_compressed(counts)
    flat = np.zeros(h * w, dtype=bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape((h, w), order="F")


def polygons_to_mask(polys: list[list[float]], width: int, height: int) -> np.ndarray:
    """Pixels whose centre lies inside any polygon (flat [x1, y1, x2, y2, ...] in pixel-edge coordinates)."""
    from matplotlib.path import Path as MplPath

    mask = np.zeros((height, width), dtype=bool)
    for poly in polys:
        if len(poly) < 6:
            continue
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x0, y0 = (max(0, int(np.floor(v))) for v in pts.min(axis=0))
        x1, y1 = min(width, int(np.ceil(pts[:, 0].max()))), min(height, int(np.ceil(pts[:, 1].max())))
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1]
        centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1)
        inside = MplPath(pts).contains_points(centres).reshape(y1 - y0, x1 - x0)
        mask[y0:y1, x0:x1] |= inside
    return mask


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outlines of a mask along pixel edges, as flat [x1, y1, x2, y2, ...] lists (largest first).

    Marching squares (contourpy) on the mask upsampled 2x runs along the pixels' edges, cutting
    each corner by a quarter pixel, so `polygons_to_mask` gives the same pixels back."""
    import contourpy

    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if not len(ys):
        return []
    y0, x0 = int(ys.min()), int(xs.min())
    sub = m[y0 : int(ys.max()) + 1, x0 : int(xs.max()) + 1].astype(np.float64)
    up = np.pad(np.repeat(np.repeat(sub, 2, axis=0), 2, axis=1), 1)
    polys = []
    for line in contourpy.contour_generator(z=up).lines(0.5):
        arr = np.asarray(line)
        if len(arr) >= 3:
            arr = (arr - 1.0 + 0.5) / 2.0 + np.array([x0, y0])  # upsampled index -> pixel-edge coordinates
            polys.append([round(float(v), 2) for v in arr.reshape(-1)])
    return sorted(polys, key=len, reverse=True)


# ---------------------------------------------------------------------------------------------
# writers


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes_atomic(path, data)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text_atomic(path, text)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(path, data, indent=indent)


def write_dataset(ds: Dataset, fmt: str, out: Path) -> None:
    """Write `ds` in `fmt` under `out` (a fresh folder); every file through the atomic writer."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    writers = {"imagefolder": _write_imagefolder, "coco": _write_coco, "yolo": _write_yolo, "voc": _write_voc}
    {**writers, "hf": _write_hf}[fmt](ds, out)


def _write_imagefolder(ds: Dataset, out: Path) -> None:
    for it in ds.items:
        if len({a.cls for a in it.anns}) != 1:
            raise FormatError(
                f"ImageFolder needs exactly one class per image; {it.name} has {len(it.anns)} labels"
            )
        write_bytes_atomic(out / it.split / it.anns[0].cls.replace("/", "_") / it.name, it.read())
    write_json_atomic(out / "classes.json", ds.classes)


def _write_coco(ds: Dataset, out: Path) -> None:
    cats = [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(ds.classes)]
    for split, items in sorted(ds.splits().items()):
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for img_id, it in enumerate(items, start=1):
            write_bytes_atomic(out / "images" / split / it.name, it.read())
            images.append({"id": img_id, "file_name": it.name, "width": it.width, "height": it.height})
            for a in it.anns:
                ann: dict[str, Any] = {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": ds.classes.index(a.cls) + 1,
                    "iscrowd": 0,
                }
                if a.box is not None:
                    x0, y0, x1, y1 = a.box
                    ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
                    ann["area"] = (x1 - x0) * (y1 - y0)
                if a.mask is not None:
                    ann["segmentation"] = mask_to_rle(a.mask)
                    ann["area"] = int(a.mask.sum())
                anns.append(ann)
        write_json_atomic(
            out / "annotations" / f"instances_{split}.json",
            {"images": images, "annotations": anns, "categories": cats},
            indent=None,
        )


def _write_yolo(ds: Dataset, out: Path) -> None:
    for it in ds.items:
        write_bytes_atomic(out / "images" / it.split / it.name, it.read())
        lines = []
        for a in it.anns:
            c = ds.classes.index(a.cls)
            if a.mask is not None:
                polys = mask_to_polygons(a.mask)
                if polys:
                    poly = max(polys, key=len)
                    coords = " ".join(
                        f"{poly[i] / it.width if i % 2 == 0 else poly[i] / it.height:.6f}"
                        for i in range(len(poly))
                    )
                    lines.append(f"{c} {coords}")
                    continue
            if a.box is None:
                raise FormatError(f"YOLO needs a box per label; {it.name} has a label without one")
            x0, y0, x1, y1 = a.box
            lines.append(
                f"{c} {(x0 + x1) / 2 / it.width:.6f} {(y0 + y1) / 2 / it.height:.6f} "
                f"{(x1 - x0) / it.width:.6f} {(y1 - y0) / it.height:.6f}"
            )
        write_text_atomic(
            out / "labels" / it.split / (Path(it.name).stem + ".txt"), "".join(x + "\n" for x in lines)
        )
    splits = sorted(ds.splits())
    data = {
        "path": ".",
        **{s: f"images/{s}" for s in splits},
        "nc": len(ds.classes),
        "names": dict(enumerate(ds.classes)),
    }
    write_text_atomic(out / "data.yaml", yaml.safe_dump(data, sort_keys=False))


def _write_voc(ds: Dataset, out: Path) -> None:
    for it in ds.items:
        write_bytes_atomic(out / "JPEGImages" / it.name, it.read())
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = it.name
        size = ET.SubElement(root, "size")
        for k, v in (("width", it.width), ("height", it.height), ("depth", 3)):
            ET.SubElement(size, k).text = str(v)
        for a in it.anns:
            if a.box is None:
                raise FormatError(f"Pascal VOC needs a box per label; {it.name} has a label without one")
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = a.cls
            ET.SubElement(obj, "difficult").text = "0"
            bb = ET.SubElement(obj, "bndbox")
            x0, y0, x1, y1 = a.box  # VOC: 1-based, inclusive
            for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bb, k).text = str(v)
        write_text_atomic(
            out / "Annotations" / (Path(it.name).stem + ".xml"), ET.tostring(root, encoding="unicode")
        )
    for split, items in ds.splits().items():
        write_text_atomic(
            out / "ImageSets" / "Main" / f"{split}.txt", "".join(Path(i.name).stem + "\n" for i in items)
        )
    write_text_atomic(out / "labels.txt", "".join(c + "\n" for c in ds.classes))


def _write_hf(ds: Dataset, out: Path) -> None:
    """Hugging Face datasets' Parquet layout (`data/SPLIT-00000-of-00001.parquet`): `image` as
    {bytes, path}, `label` (class index) and `objects` {bbox as COCO [x, y, w, h], category, segmentation
    RLE}; `datasets.load_dataset("parquet", data_dir=...)` or the Hub read it as it is."""
    import pyarrow as pa

    for split, items in sorted(ds.splits().items()):
        rows = []
        for it in items:
            rows.append(
                {
                    "image": {"bytes": it.read(), "path": it.name},
                    "width": it.width,
                    "height": it.height,
                    "label": ds.classes.index(it.anns[0].cls)
                    if len(it.anns) == 1 and it.anns[0].box is None
                    else None,
                    "objects": {
                        "bbox": [
                            [a.box[0], a.box[1], a.box[2] - a.box[0], a.box[3] - a.box[1]] if a.box else None
                            for a in it.anns
                        ],
                        "category": [ds.classes.index(a.cls) for a in it.anns],
                        "segmentation": [
                            json.dumps(mask_to_rle(a.mask)) if a.mask is not None else None for a in it.anns
                        ],
                    },
                }
            )
        path = out / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_parquet_atomic(path, pa.Table.from_pylist(rows))
    write_json_atomic(out / "classes.json", ds.classes)


# ---------------------------------------------------------------------------------------------
# readers


def detect_format(path: Path) -> str:
    if (path / "data").is_dir() and any((path / "data").glob("*.parquet")):
        return "hf"
    if (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir():
        return "voc"
    if (path / "data.yaml").is_file() or ((path / "labels").is_dir() and (path / "images").is_dir()):
        return "yolo"
    if (path / "annotations").is_dir() and any((path / "annotations").glob("instances_*.json")):
        return "coco"
    if any(d.is_dir() for d in path.iterdir()):
        return "imagefolder"
    raise FormatError(f"{path}: not a dataset folder (no ImageFolder, COCO, YOLO or VOC layout found)")


def read_dataset(path: str | Path, fmt: str | None = None, *, masks: bool = True) -> Dataset:
    p = Path(path)
    if not p.is_dir():
        raise FormatError(f"dataset {p} does not exist or is not a folder")
    fmt = fmt or detect_format(p)
    readers = {
        "imagefolder": _read_imagefolder,
        "coco": _read_coco,
        "yolo": _read_yolo,
        "voc": _read_voc,
        "hf": _read_hf,
    }
    if fmt not in readers:
        raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    problems: list[str] = []
    ds = readers[fmt](p, problems, masks)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FormatError(f"{p} ({fmt}) is corrupt: " + "; ".join(problems[:5]) + more)
    return ds


def _size(path: Path, problems: list[str]) -> tuple[int, int] | None:
    if not path.is_file():
        problems.append(f"missing image {path.name}")
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:
        problems.append(f"unreadable image {path.name} ({type(exc).__name__})")
        return None


def _images(folder: Path) -> Iterator[Path]:
    return (f for f in sorted(folder.rglob("*")) if f.suffix.lower() in IMAGE_EXTS and f.is_file())


def _split_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_imagefolder(p: Path, problems: list[str], masks: bool) -> Dataset:
    classes: list[str] = []
    items = []
    split_dirs = _split_dirs(p)
    # either SPLIT/CLASS/img or CLASS/img
    nested = all(any(c.is_dir() for c in d.iterdir()) for d in split_dirs) and split_dirs
    roots = [(d.name, d) for d in split_dirs] if nested else [("train", p)]
    for split, root in roots:
        for cdir in _split_dirs(root):
            if cdir.name not in classes:
                classes.append(cdir.name)
            for f in _images(cdir):
                size = _size(f, problems)
                if size:
                    items.append(Item(f.name, split, size[0], size[1], [Ann(cdir.name)], path=f))
    if (p / "classes.json").is_file():
        listed = json.loads((p / "classes.json").read_text())
        classes = [*listed, *[c for c in classes if c not in listed]]
    return Dataset(classes, items)


def _read_coco(p: Path, problems: list[str], masks: bool) -> Dataset:
    classes: list[str] = []
    items: list[Item] = []
    for ann_file in sorted((p / "annotations").glob("instances_*.json")):
        split = ann_file.stem[len("instances_") :]
        try:
            data = json.loads(ann_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            problems.append(f"{ann_file.name}: not JSON ({exc})")
            continue
        cats = {c["id"]: c["name"] for c in data.get("categories", [])}
        for name in cats.values():
            if name not in classes:
                classes.append(name)
        folder = next(
            (d for d in (p / "images" / split, p / split, p / "images") if d.is_dir()), p / "images" / split
        )
        by_id: dict[Any, Item] = {}
        for im in data.get("images", []):
            f = folder / im["file_name"]
            if not f.is_file():
                problems.append(f"missing image {im['file_name']} ({split})")
                continue
            it = Item(Path(im["file_name"]).name, split, int(im["width"]), int(im["height"]), path=f)
            by_id[im["id"]] = it
            items.append(it)
        known = {im["id"] for im in data.get("images", [])}
        for a in data.get("annotations", []):
            if a["image_id"] not in known:
                problems.append(f"annotation {a.get('id')} is for absent image {a['image_id']} ({split})")
                continue
            if a["category_id"] not in cats:
                problems.append(
                    f"annotation {a.get('id')} has unknown category id {a['category_id']} ({split})"
                )
                continue
            it2 = by_id.get(a["image_id"])
            if it2 is None:
                continue
            box = None
            if a.get("bbox"):
                x, y, w, h = a["bbox"]
                box = (round(x), round(y), round(x + w), round(y + h))
            mask = None
            seg = a.get("segmentation")
            if masks and seg:
                mask = (
                    rle_to_mask(seg)
                    if isinstance(seg, dict)
                    else polygons_to_mask(seg, it2.width, it2.height)
                )
            it2.anns.append(Ann(cats[a["category_id"]], box, mask))
    return Dataset(classes, items)


def _read_yolo(p: Path, problems: list[str], masks: bool) -> Dataset:
    classes: list[str] = []
    if (p / "data.yaml").is_file():
        meta = yaml.safe_load((p / "data.yaml").read_text()) or {}
        names = meta.get("names", [])
        classes = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    items = []
    img_root, lab_root = p / "images", p / "labels"
    splits = [d.name for d in _split_dirs(img_root)] if img_root.is_dir() else []
    for split in splits:
        stems = {}
        for f in _images(img_root / split):
            stems[f.stem] = f
        labels_dir = lab_root / split
        for lf in sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []:
            if lf.stem not in stems:
                problems.append(f"labels {split}/{lf.name} are for an absent image")
        for stem, f in stems.items():
            size = _size(f, problems)
            if not size:
                continue
            w, h = size
            it = Item(f.name, split, w, h, path=f)
            lf = labels_dir / f"{stem}.txt"
            for n, line in enumerate(lf.read_text().splitlines() if lf.is_file() else []):
                parts = line.split()
                if not parts:
                    continue
                try:
                    c, vals = int(parts[0]), [float(v) for v in parts[1:]]
                except ValueError:
                    problems.append(f"{split}/{lf.name}:{n + 1}: not numbers")
                    continue
                if not 0 <= c < len(classes):
                    problems.append(f"{split}/{lf.name}:{n + 1}: unknown class id {c}")
                    continue
                if len(vals) == 4:
                    cx, cy, bw, bh = vals
                    box = (
                        round((cx - bw / 2) * w),
                        round((cy - bh / 2) * h),
                        round((cx + bw / 2) * w),
                        round((cy + bh / 2) * h),
                    )
                    it.anns.append(Ann(classes[c], box))
                elif len(vals) >= 6 and len(vals) % 2 == 0:
                    poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(vals)]
                    xs, ys = poly[0::2], poly[1::2]
                    box = (
                        int(np.floor(min(xs))),
                        int(np.floor(min(ys))),
                        int(np.ceil(max(xs))),
                        int(np.ceil(max(ys))),
                    )
                    it.anns.append(Ann(classes[c], box, polygons_to_mask([poly], w, h) if masks else None))
                else:
                    problems.append(f"{split}/{lf.name}:{n + 1}: expected 4 box values or a polygon")
            items.append(it)
    return Dataset(classes, items)


def _read_voc(p: Path, problems: list[str], masks: bool) -> Dataset:
    classes = (p / "labels.txt").read_text().split("\n") if (p / "labels.txt").is_file() else []
    classes = [c for c in classes if c]
    split_of: dict[str, str] = {}
    for f in sorted((p / "ImageSets" / "Main").glob("*.txt")) if (p / "ImageSets" / "Main").is_dir() else []:
        if "_" not in f.stem:
            for stem in f.read_text().split():
                split_of[stem] = f.stem
    items = []
    for xf in sorted((p / "Annotations").glob("*.xml")):
        try:
            root = ET.parse(xf).getroot()
        except ET.ParseError as exc:
            problems.append(f"{xf.name}: bad XML ({exc})")
            continue
        name = root.findtext("filename") or f"{xf.stem}.jpg"
        f = p / "JPEGImages" / name
        size = _size(f, problems)
        if not size:
            continue
        it = Item(name, split_of.get(xf.stem, "train"), size[0], size[1], path=f)
        for obj in root.findall("object"):
            cls = (obj.findtext("name") or "").strip()
            if classes and cls not in classes:
                problems.append(f"{xf.name}: unknown class {cls!r}")
                continue
            if cls not in classes:
                classes.append(cls)
            bb = obj.find("bndbox")
            if bb is None:
                problems.append(f"{xf.name}: object without bndbox")
                continue
            v = [float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
            it.anns.append(Ann(cls, (int(v[0]) - 1, int(v[1]) - 1, int(v[2]), int(v[3]))))
        items.append(it)
    return Dataset(classes, items)


def _read_hf(p: Path, problems: list[str], masks: bool) -> Dataset:
    import pyarrow.parquet as pq

    classes = json.loads((p / "classes.json").read_text()) if (p / "classes.json").is_file() else []
    items: list[Item] = []
    for f in sorted((p / "data").glob("*.parquet")):
        split = f.stem.split("-")[0]
        for row in pq.read_table(f).to_pylist():
            image = row.get("image") or {}
            if not image.get("bytes"):
                problems.append(f"{f.name}: a row without image bytes")
                continue
            objs = row.get("objects") or {"bbox": [], "category": [], "segmentation": []}
            anns = []
            for k, c in enumerate(objs["category"]):
                if not 0 <= c < len(classes):
                    problems.append(f"{f.name}: unknown class id {c}")
                    continue
                b = objs["bbox"][k]
                seg = objs["segmentation"][k] if objs.get("segmentation") else None
                box = (b[0], b[1], b[0] + b[2], b[1] + b[3]) if b else None
                anns.append(Ann(classes[c], box, rle_to_mask(json.loads(seg)) if masks and seg else None))
            items.append(
                Item(
                    image.get("path") or f"{len(items)}.png",
                    split,
                    row["width"],
                    row["height"],
                    anns,
                    data=image["bytes"],
                )
            )
    return Dataset(classes, items)
