"""What every dataset reader hands to the writer, and how bad input is reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from mirrorgan_tf.errors import MirrorganError

NO_CLASS = -1  # same value as mirrorgan_tf.records.NO_CLASS; kept here so readers stay TF-free


class DatasetError(MirrorganError, ValueError):
    """Bad input: the message names the file and the problem."""


@dataclass
class RawExample:
    key: str
    split: str  # "train" | "test"
    captions: list[str]
    # Where each caption came from ("path:line"), for error messages.
    caption_origins: list[str]
    # How the image is made: a job for `image_worker` (a picklable, TF-free function).
    image_job: Any
    class_id: int = NO_CLASS
    attributes: list[int] = field(default_factory=list)
    # The image file, where there is one (rendered datasets have none): for overlap checks.
    image_path: Optional[str] = None
    # Where the source lists this example ("path" or "path:line"), for error messages.
    listed_in: str = ""


@dataclass
class Source:
    """A raw dataset, read and checked but with no image decoded yet."""

    name: str
    source: str
    examples: list[RawExample]
    # Top-level function run in worker processes: image_job -> ("ok", bytes, fmt, h, w) | ("error", why)
    image_worker: Callable
    captions_per_image: Optional[int]  # None: varies per image
    attributes: dict[str, list[str]] = field(default_factory=dict)  # name -> value names
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific facts for the manifest


class Problems:
    """Collects bad input. With on_error="raise" the first problem stops preparation; with "skip"
    the example is dropped and listed in the manifest."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"--on-error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[dict] = []

    def report(self, path: str, problem: str, key: Optional[str] = None) -> None:
        if self.on_error == "raise":
            raise DatasetError(f"{path}: {problem}")
        self.skipped.append({"key": key, "file": path, "problem": problem})


def json_kind(value) -> str:
    """A value read from JSON, for a message: None -> "null", 3 -> "the number 3", [1] -> "a list
    [1]" (the value's repr cut to 40 characters)."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "the number", float: "the number", str: "the string", list: "a list",
             dict: "an object"}
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{names.get(type(value), type(value).__name__)} {shown}"


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def decode_text(data: bytes, path: str) -> str:
    """UTF-8 bytes -> text, without the byte-order mark Excel and Notepad put in front ("CSV
    UTF-8"). Raises DatasetError naming the file and the byte for anything else, and says so when
    the file is UTF-16 (Excel's "Unicode Text")."""
    if data.startswith(_UTF16_BOMS):
        raise DatasetError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}: not valid UTF-8 (byte {e.start}, line {line}: {data[e.start:e.start + 4]!r})") from None


def read_text(path: str, problems: Problems, key: Optional[str] = None,
              opener: Optional[Callable[[str], bytes]] = None) -> Optional[str]:
    """Read a UTF-8 text file (a leading byte-order mark is dropped); report a missing file or
    bytes that are not UTF-8."""
    from pipelines.images import read_bytes

    try:
        data = (opener or read_bytes)(path)
    except (OSError, FileNotFoundError) as e:
        problems.report(path, f"cannot read file ({getattr(e, 'strerror', None) or e})", key)
        return None
    except Exception as e:  # gfile raises its own NotFoundError
        problems.report(path, f"cannot read file ({e})", key)
        return None
    try:
        return decode_text(data, path)
    except DatasetError as e:
        problems.report(path, str(e)[len(path) + 2:], key)
        return None


def caption_lines(text: str, path: str) -> tuple[list[str], list[str]]:
    """Split a caption file into captions, one per line, ignoring only trailing blank lines.
    A blank line between captions is returned as an empty caption (so it is reported)."""
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return [l.strip() for l in lines], [f"{path}:{i + 1}" for i in range(len(lines))]


def exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    import os

    return os.path.exists(path)


def join(*parts: str) -> str:
    if "://" in parts[0]:
        return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))
    import os

    return os.path.join(*parts)
