"""A folder of your own captioned images.

`--source` is a JSONL or CSV file, or a folder holding `captions.jsonl` or `captions.csv`. Image
paths are relative to that file's folder. One row per (image, caption) pair, any number of
captions per image:

    {"image": "photos/0001.jpg", "caption": "a red bicycle leaning on a wall"}
    {"image": "photos/0001.jpg", "captions": ["a bike by a wall", "red bike"], "split": "test"}

CSV: a header with `image,caption` and optionally `split` and `label` columns. `split` is `train`
or `test`; when no row gives one, a deterministic `test_fraction` of the images (chosen by a hash
of the path) becomes the test split. `label` is an optional integer class id. Image paths are
normalised first (`normalise_image_path`), so two spellings of one image are one image; a file
may start with a UTF-8 byte-order mark (Excel's "CSV UTF-8").
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath

from pipelines import images
from pipelines.source import (DatasetError, NO_CLASS, Problems, RawExample, Source, decode_text, exists, join,
                              json_kind)

NAMES = ("captions.jsonl", "captions.csv")
SPLITS = ("train", "test")


def _find_file(source: str) -> str:
    lower = source.lower()
    if lower.endswith((".jsonl", ".csv")):
        if not exists(source):
            raise DatasetError(f"{source}: caption file not found")
        return source
    for name in NAMES:
        path = join(source, name)
        if exists(path):
            return path
    raise DatasetError(f"{source}: no {' or '.join(NAMES)} in this folder (or pass the file itself)")


def _rows(path: str) -> list[tuple[str, dict]]:
    """(where, row) pairs from a JSONL or CSV file."""
    text = decode_text(images.read_bytes(path), path)  # Excel's "CSV UTF-8" starts with a BOM
    rows = []
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "image" not in reader.fieldnames or "caption" not in reader.fieldnames:
            raise DatasetError(f"{path}: the CSV header must name 'image' and 'caption' columns, got {reader.fieldnames}")
        for row in reader:
            rows.append((f"{path}:{reader.line_num}", row))
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{n}: expected a JSON object")
            rows.append((f"{path}:{n}", row))
    return rows


def normalise_image_path(image: str) -> str:
    """The one spelling of an image path: `/` separators (a CSV written on Windows has `\\`),
    no `.` or empty parts, `..` resolved where it can be. So `./img/a.jpg`, `img//a.jpg` and
    `img\\a.jpg` are all the image `img/a.jpg`."""
    return posixpath.normpath(image.replace("\\", "/"))


def _in_test(image: str, fraction: float) -> bool:
    digest = hashlib.sha1(image.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _row_problem(row: dict) -> str | None:
    """What is wrong with a row's caption, split or label fields (None: nothing)."""
    if "captions" in row:
        caps = row["captions"]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            return f"'captions' must be a non-empty list of strings, got {json_kind(caps)}"
    elif "caption" not in row:
        return "missing 'caption' (a string) or 'captions' (a list)"
    elif not isinstance(row["caption"], str):
        return f"'caption' is {json_kind(row['caption'])}, expected a string"
    split = row.get("split") or None
    if split is not None and split not in SPLITS:
        return f"'split' must be one of {SPLITS}, got {json_kind(split)}"
    label = row.get("label")
    if label not in (None, ""):
        try:
            int(label)
        except (TypeError, ValueError):
            return f"'label' must be an integer, got {json_kind(label)}"
    return None


def read(source: str, problems: Problems, test_fraction: float = 0.1,
         background=images.DEFAULT_BACKGROUND) -> Source:
    """Read and check a captions file. Rows naming the same image (after `normalise_image_path`)
    are one image with all their captions. An image given both splits is reported (skip mode:
    kept in train only, and listed); so is a row whose fields are malformed (a caption that is
    null or not a string, a bad split or label: skip mode leaves that image out and lists it; a
    row naming no image is left out). Raises DatasetError for a file that cannot be read as rows."""
    path = _find_file(source)
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    grouped: dict[str, dict] = {}
    bad: set[str] = set()  # images with a malformed row: reported once, left out
    for where, row in _rows(path):
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            what = "missing 'image' field" if image is None and "image" not in row else \
                f"'image' is {json_kind(image)}, expected a path"
            problems.report(where, what, None)
            continue
        image = normalise_image_path(image.strip())
        entry = grouped.setdefault(image, {"captions": [], "origins": [], "split": None, "label": NO_CLASS,
                                           "split_at": {}})
        if image in bad:
            continue
        problem = _row_problem(row)
        if problem:
            problems.report(where, problem, image)
            bad.add(image)
            continue
        caps = row["captions"] if "captions" in row else [row["caption"]]
        entry["captions"] += [c.strip() for c in caps]
        entry["origins"] += [where] * len(caps)
        split = row.get("split") or None
        if split is not None:
            entry["split_at"].setdefault(split, where)
            entry["split"] = entry["split"] or split
        label = row.get("label")
        if label not in (None, ""):
            entry["label"] = int(label)
    for image in bad:
        grouped.pop(image)

    with_split = sum(1 for e in grouped.values() if e["split"])
    if 0 < with_split < len(grouped):
        raise DatasetError(f"{path}: {with_split} of {len(grouped)} images name a split; name one for all or for none")
    examples = []
    for image, entry in sorted(grouped.items()):
        split = entry["split"] or ("test" if _in_test(image, test_fraction) else "train")
        if len(entry["split_at"]) > 1:
            at = entry["split_at"]
            problems.report(at["test"], f"{image} is in both the train ({at['train']}) and the test split; "
                                        "an image may be in one only (skip: kept in train)", image)
            split = "train"
        image_path = join(base, image)
        if not exists(image_path):
            problems.report(image_path, f"image file missing (listed in {path})", image)
            continue
        examples.append(RawExample(
            key=image,
            split=split,
            captions=entry["captions"],
            caption_origins=entry["origins"],
            image_job=(image_path, None, tuple(background)),
            class_id=entry["label"],
            image_path=image_path,
            listed_in=entry["origins"][0],
        ))
    return Source(
        name="captions",
        source=path,
        examples=examples,
        image_worker=images.prepare_file,
        captions_per_image=None,
        extra={"test_fraction": test_fraction if not with_split else None, "background": list(background)},
    )
