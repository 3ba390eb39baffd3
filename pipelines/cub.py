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
from pipelines.source import (DatasetError, Problems, RawExample, Source, caption_lines, decode_text,
                              exists, join, read_text)

CAPTIONS_PER_IMAGE = 10
SPLITS = ("train", "test")


def _required(path: str) -> bytes:
    try:
        return images.read_bytes(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read required file ({getattr(e, 'strerror', None) or e})") from None


def _table(path: str, columns: int) -> dict[str, list[str]]:
    """A CUB metadata file ("<id> <values...>" per line) -> {id: values}."""
    text = decode_text(_required(path), path)
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


def _describe(obj) -> str:
    """What a pickle held, for a message: type, and length or shape."""
    shape = getattr(obj, "shape", None)
    if shape is not None:
        return f"{type(obj).__module__}.{type(obj).__name__} of shape {tuple(shape)}"
    return f"{type(obj).__name__} of {len(obj)}" if hasattr(obj, "__len__") else type(obj).__name__


def _as_list(obj):
    """A list, tuple or 1-D NumPy array -> list of Python values (NumPy scalars unwrapped); else None."""
    if getattr(obj, "ndim", 1) != 1 or isinstance(obj, (str, bytes, dict)):
        return None
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    return list(obj) if isinstance(obj, (list, tuple)) else None


def _names(obj, path: str) -> list[str]:
    """filenames.pickle -> names. Names saved as bytes (a list re-saved under Python 3 without
    decoding) are UTF-8 decoded."""
    names = _as_list(obj)
    if names is None:
        raise DatasetError(f"{path}: expected a list of names like '001.Black_footed_Albatross/"
                           f"Black_Footed_Albatross_0001_796111', found a {_describe(obj)}")
    out = []
    for i, n in enumerate(names):
        if isinstance(n, bytes):
            try:
                n = n.decode("utf-8")
            except UnicodeDecodeError:
                raise DatasetError(f"{path}: name {i} is not UTF-8 bytes: {n!r}") from None
        if not isinstance(n, str):
            raise DatasetError(f"{path}: name {i} is a {type(n).__name__} ({n!r}), expected a string")
        out.append(n)
    return out


def _classes(obj, path: str, count: int, names_path: str) -> list[int]:
    """class_info.pickle -> one int per name (a list, tuple or NumPy array of integers)."""
    classes = _as_list(obj)
    if classes is None or len(classes) != count:
        raise DatasetError(f"{path}: expected one class number per name in {names_path} ({count} names), "
                           f"found a {_describe(obj)}")
    for i, c in enumerate(classes):
        if isinstance(c, bool) or not isinstance(c, int):
            if isinstance(c, float) and c.is_integer():
                classes[i] = int(c)
                continue
            raise DatasetError(f"{path}: entry {i} is {c!r}, expected an integer class number")
    return [int(c) for c in classes]


def read(root: str, problems: Problems, background=images.DEFAULT_BACKGROUND) -> Source:
    """Read and check the CUB layout. A name listed in both split lists is reported (skip mode:
    kept in train only, and listed). Raises DatasetError for unreadable metadata."""
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
        names = _names(_pickle(names_path), names_path)
        classes = _classes(_pickle(classes_path), classes_path, len(names), names_path)
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
                image_job=(image_path, bbox, tuple(background)),
                class_id=int(class_id),
                image_path=image_path,
                listed_in=names_path,
            ))
    return Source(
        name="cub",
        source=root,
        examples=examples,
        image_worker=images.prepare_file,
        captions_per_image=CAPTIONS_PER_IMAGE,
        extra={"crop": "bounding box, square of 1.5 x max(w, h), as AttnGAN", "background": list(background)},
    )
