"""CUB-200-2011 birds in the AttnGAN / MirrorGAN layout:

    birds/CUB_200_2011/{images.txt, bounding_boxes.txt, images/<class>/<name>.jpg}
    birds/text/<class>/<name>.txt                 ten captions, one per line
    birds/{train,test}/filenames.pickle           the split lists ("<class>/<name>")
    birds/{train,test}/class_info.pickle          class number per listed file

Images are cropped around their bounding box as the original code does (pipelines.images).
The split pickles are the original project's files: only prepare datasets you trust.
"""

from __future__ import annotations

import pickle

from pipelines import images
from pipelines.source import (DatasetError, Problems, RawExample, Source, caption_lines, exists,
                              join, read_text)

CAPTIONS_PER_IMAGE = 10
SPLITS = ("train", "test")


def _required(path: str) -> bytes:
    try:
        return images.read_bytes(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read required file ({getattr(e, 'strerror', None) or e})") from None


def _table(path: str, columns: int) -> dict[str, list[str]]:
    """A CUB metadata file ("<id> <values...>" per line) -> {id: values}."""
    try:
        text = _required(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    rows = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != columns:
            raise DatasetError(f"{path}:{n}: expected {columns} fields, got {len(parts)}: {line!r}")
        rows[parts[0]] = parts[1:]
    return rows


def _pickle(path: str):
    try:
        return pickle.loads(_required(path), encoding="latin1")
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: not a readable pickle ({e})") from None


def read(root: str, problems: Problems) -> Source:
    cub = join(root, "CUB_200_2011")
    id_to_path = {i: v[0] for i, v in _table(join(cub, "images.txt"), 2).items()}
    boxes = _table(join(cub, "bounding_boxes.txt"), 5)
    name_to_bbox = {}
    for i, rel in id_to_path.items():
        if i not in boxes:
            raise DatasetError(f"{join(cub, 'bounding_boxes.txt')}: no bounding box for image id {i} ({rel})")
        name_to_bbox[rel.rsplit(".", 1)[0]] = (rel, [float(v) for v in boxes[i]])

    examples = []
    for split in SPLITS:
        names_path = join(root, split, "filenames.pickle")
        classes_path = join(root, split, "class_info.pickle")
        names = _pickle(names_path)
        classes = _pickle(classes_path)
        if not isinstance(names, list) or not isinstance(classes, list) or len(names) != len(classes):
            raise DatasetError(f"{classes_path}: expected one class per name in {names_path} "
                               f"({len(names) if isinstance(names, list) else '?'} names)")
        for name, class_id in zip(names, classes):
            if name not in name_to_bbox:
                problems.report(names_path, f"lists {name!r}, which {join(cub, 'images.txt')} does not", name)
                continue
            rel, bbox = name_to_bbox[name]
            image_path = join(cub, "images", rel)
            if not exists(image_path):
                problems.report(image_path, f"image file missing (listed in {names_path})", name)
                continue
            text_path = join(root, "text", name + ".txt")
            text = read_text(text_path, problems, name)
            if text is None:
                continue
            captions, origins = caption_lines(text, text_path)
            if len(captions) != CAPTIONS_PER_IMAGE:
                problems.report(text_path, f"expected {CAPTIONS_PER_IMAGE} caption lines, found {len(captions)}", name)
                continue
            examples.append(RawExample(
                key=name,
                split=split,
                captions=captions,
                caption_origins=origins,
                image_job=(image_path, bbox),
                class_id=int(class_id),
            ))
    return Source(
        name="cub",
        source=root,
        examples=examples,
        image_worker=images.prepare_file,
        captions_per_image=CAPTIONS_PER_IMAGE,
        extra={"crop": "bounding box, square of 1.5 x max(w, h), as AttnGAN"},
    )
