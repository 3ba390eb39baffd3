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
from pipelines.source import DatasetError, Problems, RawExample, Source, decode_text, exists, join

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
    for field in ("images", "annotations"):
        if field not in obj:
            raise DatasetError(f"{path}: no '{field}' list (is this a COCO captions file?)")
    return obj


def read(root: str, problems: Problems, background=images.DEFAULT_BACKGROUND) -> Source:
    examples = []
    for split, folder in SPLITS.items():
        ann_path = join(root, "annotations", f"captions_{folder}.json")
        ann = _annotations(ann_path)
        captions: dict[int, list[tuple[int, str]]] = {}
        for a in ann["annotations"]:
            captions.setdefault(a["image_id"], []).append((a["id"], a["caption"]))
        for image in sorted(ann["images"], key=lambda im: im["id"]):
            name = image["file_name"]
            key = f"{folder}/{name.rsplit('.', 1)[0]}"
            image_path = join(root, folder, name)
            caps = [c for _, c in sorted(captions.get(image["id"], []))]
            if len(caps) < CAPTIONS_PER_IMAGE:
                problems.report(ann_path, f"image id {image['id']} ({name}) has {len(caps)} captions, "
                                          f"expected at least {CAPTIONS_PER_IMAGE}", key)
                continue
            if not exists(image_path):
                problems.report(image_path, f"image file missing (listed in {ann_path})", key)
                continue
            caps = [c.strip() for c in caps[:CAPTIONS_PER_IMAGE]]
            examples.append(RawExample(
                key=key,
                split=split,
                captions=caps,
                caption_origins=[f"{ann_path} (image id {image['id']}, caption {i + 1})" for i in range(len(caps))],
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
