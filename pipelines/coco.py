"""MS-COCO 2014 captions, as AttnGAN / MirrorGAN use them: train2014 for training, val2014 as the
test split, five captions per image.

    coco/annotations/captions_train2014.json
    coco/annotations/captions_val2014.json
    coco/train2014/*.jpg   coco/val2014/*.jpg

Some images carry six or seven captions: the first five by annotation id are kept, so every image
has the same number (as the original's fixed captions-per-image indexing expects).
"""

from __future__ import annotations

import json

from pipelines import images
from pipelines.source import DatasetError, Problems, RawExample, Source, decode_text, exists, join, json_kind

CAPTIONS_PER_IMAGE = 5
SPLITS = {"train": "train2014", "test": "val2014"}


def _annotations(path: str) -> dict:
    try:
        data = images.read_bytes(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read annotation file ({getattr(e, 'strerror', None) or e})") from None
    try:
        obj = json.loads(decode_text(data, path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: holds {json_kind(obj)}, expected an object with 'images' and 'annotations' "
                           "lists (is this a COCO captions file?)")
    for field in ("images", "annotations"):
        if not isinstance(obj.get(field), list):
            raise DatasetError(f"{path}: no '{field}' list (is this a COCO captions file?)")
    return obj


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _images(ann: dict, ann_path: str, folder: str, problems: Problems) -> tuple[dict[int, str], set]:
    """The 'images' list -> ({image id: file name}, the ids of entries reported). An entry without
    an integer 'id' or a non-empty 'file_name', or an id listed twice, is reported (skip: left
    out and listed; its annotations are left out with it, not reported again)."""
    out: dict[int, str] = {}
    rejected: set = set()
    for i, image in enumerate(ann["images"]):
        if not isinstance(image, dict):
            problems.report(ann_path, f"images[{i}] is {json_kind(image)}, expected an object", None)
            continue
        image_id, name = image.get("id"), image.get("file_name")
        key = f"{folder}/{name.rsplit('.', 1)[0]}" if isinstance(name, str) and name.strip() else None
        if image_id is not None and not isinstance(image_id, (dict, list)):
            rejected.add(image_id)  # its annotations go with it, unless the id is also a good entry's
            if isinstance(image_id, str) and image_id.strip().isdigit():
                rejected.add(int(image_id))  # an id written as a string: its annotations may use the number
        if not _is_id(image_id):
            problems.report(ann_path, f"images[{i}] ({name!r}): 'id' is {json_kind(image_id)}, expected an integer", key)
        elif key is None:
            problems.report(ann_path, f"images[{i}] (image id {image_id}): 'file_name' is {json_kind(name)}, "
                                      "expected a file name", f"{folder}/image id {image_id}")
        elif image_id in out:
            problems.report(ann_path, f"images[{i}]: image id {image_id} ({name}) is already listed, for "
                                      f"{out[image_id]}", key)
        else:
            out[image_id] = name.strip()
    return out, rejected - set(out)


def _captions(ann: dict, ann_path: str, folder: str, names: dict[int, str], rejected: set, problems: Problems
              ) -> dict[int, list[tuple[int, str]]]:
    """The 'annotations' list -> {image id: [(annotation id, caption)]}, only for images all of
    whose annotations are well formed: an integer 'id', an 'image_id' in the 'images' list, a
    string 'caption'. Anything else is reported naming the annotation (skip: its image, when it
    names one, is left out and listed; an annotation naming no listed image is left out)."""
    captions: dict[int, list[tuple[int, str]]] = {}
    bad: set[int] = set()
    for i, a in enumerate(ann["annotations"]):
        if not isinstance(a, dict):
            problems.report(ann_path, f"annotations[{i}] is {json_kind(a)}, expected an object", None)
            continue
        ann_id, image_id, caption = a.get("id"), a.get("image_id"), a.get("caption")
        label = f"annotation id {ann_id}" if _is_id(ann_id) else f"annotations[{i}]"
        if not _is_id(image_id):
            problems.report(ann_path, f"{label}: 'image_id' is {json_kind(image_id)}, expected an integer", None)
            continue
        if image_id in rejected:  # its image entry is reported already
            continue
        if image_id not in names:
            problems.report(ann_path, f"{label}: image id {image_id} is not in the 'images' list", None)
            continue
        if image_id in bad:  # its image is already reported
            continue
        key = f"{folder}/{names[image_id].rsplit('.', 1)[0]}"
        problem = None
        if not _is_id(ann_id):
            problem = f"'id' is {json_kind(ann_id)}, expected an integer"
        elif not isinstance(caption, str):
            problem = f"'caption' is {json_kind(caption)}, expected a string"
        if problem:
            problems.report(ann_path, f"{label} (image id {image_id}, {names[image_id]}): {problem}", key)
            bad.add(image_id)
            captions.pop(image_id, None)
            continue
        captions.setdefault(image_id, []).append((ann_id, caption))
    for image_id in bad:
        names.pop(image_id)
    return captions


def read(root: str, problems: Problems, background=images.DEFAULT_BACKGROUND) -> Source:
    """Read and check the COCO layout. Raises DatasetError for an unreadable annotation file; a
    malformed image entry or annotation is reported naming the file and the annotation id (skip:
    that image is left out and listed)."""
    examples = []
    for split, folder in SPLITS.items():
        ann_path = join(root, "annotations", f"captions_{folder}.json")
        ann = _annotations(ann_path)
        names, rejected = _images(ann, ann_path, folder, problems)
        captions = _captions(ann, ann_path, folder, names, rejected, problems)
        for image_id, name in sorted(names.items()):
            key = f"{folder}/{name.rsplit('.', 1)[0]}"
            image_path = join(root, folder, name)
            caps = sorted(captions.get(image_id, []))
            if len(caps) < CAPTIONS_PER_IMAGE:
                problems.report(ann_path, f"image id {image_id} ({name}) has {len(caps)} captions, "
                                          f"expected at least {CAPTIONS_PER_IMAGE}", key)
                continue
            if not exists(image_path):
                problems.report(image_path, f"image file missing (listed in {ann_path})", key)
                continue
            caps = caps[:CAPTIONS_PER_IMAGE]
            examples.append(RawExample(
                key=key,
                split=split,
                captions=[c.strip() for _, c in caps],
                caption_origins=[f"{ann_path} (image id {image_id}, annotation id {ann_id})" for ann_id, _ in caps],
                image_job=(image_path, None, tuple(background)),
                image_path=image_path,
                listed_in=ann_path,
            ))
    return Source(
        name="coco",
        source=root,
        examples=examples,
        image_worker=images.prepare_file,
        captions_per_image=CAPTIONS_PER_IMAGE,
        extra={"background": list(background)},
    )
