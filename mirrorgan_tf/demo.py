"""python -m mirrorgan_tf.demo (--run-dir R | --model-base-path E | --server HOST:PORT)
       [--port 7860] [--host 127.0.0.1] [--examples FILE] [--model-name mirrorgan] [--timeout S]

A web page to try the model: type a caption, get pictures. Gradio is an optional extra
(`pip install -e ".[demo]"`). Three sources, each what another command of the project reads:

  --run-dir R            a run directory: the EMA generator of its latest gan checkpoint, as
                         `sample` uses it. The page shows the samples at every generator stage
                         (the picture `sample` writes), the final images, the word-attention
                         picture of the first sample, the words ignored as unknown and
                         those cut by the length limit (data.words_num). Same
                         caption, number and seed: the same pictures as `sample`.
  --model-base-path E    a SavedModel export (`python -m mirrorgan_tf.export`; the highest
                         numeric version under E, or E itself when it is a version folder).
  --server HOST:PORT     a running model server's gRPC endpoint (ours or the stock
                         tensorflow_model_server), through the TF Serving API.

"Deterministic" uses the conditioning augmentation's mean (the SavedModel's `generate`
signature). From a SavedModel or a server the seed only applies to deterministic samples: the
other signature, `serving_default`, draws its own noise on every call. A deterministic sample's
noise is the noise `sample` draws for the same seed (evaluation.generator.sample_noise), so the
three sources agree.

The page binds 127.0.0.1 unless --host says otherwise (it has no authentication), and loads
nothing from outside: Gradio's analytics, version check and share link are off, and its fonts
are local. Errors (no known word, an unreachable server) are messages on the page.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mirrorgan_tf.errors import USER_ERRORS, MirrorganError

log = logging.getLogger("mirrorgan_tf.demo")

MAX_SAMPLES = 16
# The images are small (64 px for the default run): show their pixels, not a browser's blur.
PAGE_CSS = "#images img, #stages img, #attention img { image-rendering: pixelated; }"
MAX_CAPTION_CHARS = 500
NUM_EXAMPLES = 8
SERVER_ADDRESS = re.compile(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):\d+")


class DemoError(MirrorganError, ValueError):
    """What the page shows as its message instead of pictures: names the caption, the server or
    the setting that is wrong."""


@dataclass
class Result:
    """What one request draws. `images`: uint8 [N, H, W, 3], the final scale. From a run directory
    also `stages` (uint8 [stages * S, N * S, 3]: a row per generator stage, each upscaled to the
    final size S, exactly the picture `sample` writes), `attention` (uint8, the first sample's word
    attention as `sample` draws it; None for a one-stage generator) and `kept` (the words the
    generator read). `ignored`: the words dropped as unknown; `cut`: the known words past
    data.words_num, cut by the length limit; each None when the source cannot say."""

    images: np.ndarray
    stages: Optional[np.ndarray] = None
    attention: Optional[np.ndarray] = None
    kept: Optional[list] = None
    ignored: Optional[list] = None
    cut: Optional[list] = None
    notes: list = field(default_factory=list)


def _no_known_word(caption: str, ignored: list) -> DemoError:
    return DemoError(f"no word of {caption!r} is in the model's vocabulary, so there is nothing to draw"
                     + (f" (ignored as unknown: {' '.join(ignored)})" if ignored else ""))


def _tf_error_text(error) -> str:
    from mirrorgan_tf.serving.predict import runtime_error_text

    return runtime_error_text(error.message)


class RunSource:
    """A run directory's EMA generator (the latest gan checkpoint), as `sample` uses it."""

    stages_shown = True

    def __init__(self, run_dir: str):
        from mirrorgan_tf import text
        from mirrorgan_tf.evaluation.generator import TrainedGenerator

        self.run_dir = run_dir
        self.generator = TrainedGenerator(run_dir)
        self.cfg = self.generator.cfg
        self.tokenizer = text.Tokenizer(self.generator.vocab_path, drop_unknown=True)
        self.description = f"run directory `{run_dir}` (EMA generator, latest gan checkpoint)"

    def examples(self) -> list[str]:
        return test_captions(self.cfg)

    def generate(self, caption: str, num: int, seed: int, deterministic: bool) -> Result:
        import tensorflow as tf

        from mirrorgan_tf.sample import SampleError, attention_picture, tokenize
        from mirrorgan_tf.images import image_grid

        ignored = self.tokenizer.ignored_words(tf.constant([caption])).numpy()[0].decode().split()
        try:
            ids, lengths, words, _, cut = tokenize([caption], self.generator.vocab_path, self.cfg.data.words_num)
        except SampleError:
            raise _no_known_word(caption, ignored) from None
        # Sample i of the first caption is what `sample` draws as sample i: same (seed, index) noise.
        result = self.generator(np.repeat(ids, num, 0), np.repeat(lengths, num, 0), np.arange(num), seed,
                                mean_condition=deterministic)
        stages = [x.numpy() for x in result["images"]]
        grid = image_grid(stages)
        size = stages[-1].shape[1]
        images = np.stack([grid[-size:, i * size:(i + 1) * size] for i in range(num)])
        attention = None
        if result["word_attention"]:
            maps = [a.numpy()[0] for a in result["word_attention"]]
            attention = attention_picture(stages[-1][0], maps, words[0])
        notes = []
        known = int(self.tokenizer(tf.constant([caption])).row_lengths().numpy()[0])
        if known > len(words[0]):  # as everywhere at inference, an over-long caption keeps its first words
            notes.append(f"only the first {len(words[0])} of its {known} known words are read")
        return Result(images, grid, attention, words[0], ignored, cut[0], notes)


class SavedModelSource:
    """A SavedModel written by `python -m mirrorgan_tf.export`, called through its signatures."""

    stages_shown = False

    def __init__(self, path: str):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the tokenizer's ops before loading)

        self.path = saved_model_version(path)
        self.model = tf.saved_model.load(self.path)
        missing = {"serving_default", "generate"} - set(self.model.signatures)
        if missing:
            raise DemoError(f"--model-base-path {path}: {self.path} has no signature {', '.join(sorted(missing))}; "
                            "was it written by python -m mirrorgan_tf.export?")
        self.z_dim = int(self.model.signatures["generate"].structured_input_signature[1]["noise"].shape[1])
        self.description = f"SavedModel `{self.path}`"

    def examples(self) -> list[str]:
        return []

    def generate(self, caption: str, num: int, seed: int, deterministic: bool) -> Result:
        import tensorflow as tf

        from mirrorgan_tf import client
        from mirrorgan_tf.evaluation.generator import sample_noise

        captions = tf.constant([caption] * num)
        try:
            if deterministic:
                noise = sample_noise(np.arange(num), seed, self.z_dim)
                out = self.model.signatures["generate"](captions=captions, noise=noise)
            else:
                out = self.model.signatures["serving_default"](captions=captions)
        except tf.errors.InvalidArgumentError as e:
            raise DemoError(f"the model refused the caption: {_tf_error_text(e)}") from None
        outputs = {name: value.numpy() for name, value in out.items()}
        ignored = client.ignored_words(outputs, self.path, num)
        cut = client.cut_words(outputs, self.path, num)
        return Result(client.images_of(outputs, self.path, num), ignored=ignored and ignored[0], cut=cut and cut[0])


def saved_model_version(path: str) -> str:
    """The SavedModel folder to load: `path` itself when it holds saved_model.pb, else its highest
    numeric version folder (TF Serving's default policy). Raises FileNotFoundError naming the path."""
    import tensorflow as tf

    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not tf.io.gfile.isdir(path):
        raise FileNotFoundError(f"--model-base-path {path}: no such folder")
    versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(path) if re.fullmatch(r"\d+/?", n)
                and tf.io.gfile.exists(os.path.join(path, n.rstrip("/"), "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"--model-base-path {path}: no saved_model.pb in it nor in a numeric version folder "
                                "under it (write one with python -m mirrorgan_tf.export)")
    return os.path.join(path, str(max(versions)))


class ServerSource:
    """A running model server's gRPC PredictionService (ours or the stock one)."""

    stages_shown = False

    def __init__(self, server: str, model_name: str = "mirrorgan", timeout: float = 60.0):
        if not SERVER_ADDRESS.fullmatch(server):
            raise DemoError(f"--server must be HOST:PORT, got {server!r}")
        self.server, self.model_name, self.timeout = server, model_name, timeout
        self.description = f"model server `{server}`, model `{model_name}`"

    def examples(self) -> list[str]:
        return []

    def generate(self, caption: str, num: int, seed: int, deterministic: bool) -> Result:
        from mirrorgan_tf import client
        from mirrorgan_tf.evaluation.generator import sample_noise

        signature = "generate" if deterministic else "serving_default"
        try:
            outputs, version = client.predict(self.server, [caption] * num, self.model_name, signature, seed,
                                              self.timeout, noise=lambda n, size: sample_noise(np.arange(n), seed, size).numpy())
            images = client.images_of(outputs, self.server, num)
            ignored = client.ignored_words(outputs, self.server, num)
            cut = client.cut_words(outputs, self.server, num)
        except client.ClientError as e:
            raise DemoError(str(e)) from None
        return Result(images, ignored=ignored and ignored[0], cut=cut and cut[0], notes=[f"model version {version}"])


def test_captions(cfg, count: int = NUM_EXAMPLES) -> list[str]:
    """Up to `count` distinct captions of the run's test split (caption 0 of each image first);
    for a dataset with held-out colour-shape pairs (shapes: pairs no training caption names),
    the last of them are one caption of each held-out pair the split holds. [] (with a warning)
    when the split cannot be read."""
    from mirrorgan_tf import data
    from mirrorgan_tf.evaluation.pairs import load_pairs
    from mirrorgan_tf.metrics.attributes import unseen_mask

    try:
        pairs = load_pairs(cfg, "test")
        manifest = data.load_manifest(cfg.data.dir)
    except (FileNotFoundError, ValueError) as e:
        log.warning("no example captions: %s", e)
        return []
    unseen = unseen_mask(manifest, pairs.attributes)  # all False unless the dataset holds pairs out
    names = data.attribute_names(manifest)
    pair_columns = [names.index(n) for n in ("colour", "shape") if n in names]
    held, held_pairs, seen = [], set(), []
    for k in range(len(pairs)):
        caption = str(pairs.text[k])
        if unseen[k]:
            pair = tuple(int(v) for v in pairs.attributes[k][pair_columns])
            if pair not in held_pairs:
                held_pairs.add(pair)
                held.append(caption)
        elif caption not in seen and len(seen) < count:
            seen.append(caption)
    return seen[: max(0, count - len(held))] + held[:count]


def read_examples(path: str) -> list[str]:
    """The captions of a UTF-8 text file, one per line (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            captions = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"--examples {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise DemoError(f"--examples {path}: not UTF-8 text ({e})") from None
    if not captions:
        raise DemoError(f"--examples {path}: no captions in it")
    return captions


def run_request(source, caption, num, seed, deterministic) -> tuple[Optional[Result], str]:
    """One request from the page: (Result or None, the message to show). Bad input and a source's
    errors become the message; so does anything unexpected (its traceback goes to the console,
    never to the page)."""
    caption = (caption or "").strip()
    try:
        if not caption:
            raise DemoError("type a caption first")
        if len(caption) > MAX_CAPTION_CHARS:
            raise DemoError(f"the caption has {len(caption)} characters; at most {MAX_CAPTION_CHARS} are taken")
        try:
            num, seed = int(num), int(seed)
        except (TypeError, ValueError):
            raise DemoError(f"the number of samples and the seed must be whole numbers, got {num!r} and {seed!r}") from None
        if not 1 <= num <= MAX_SAMPLES:
            raise DemoError(f"the number of samples must be between 1 and {MAX_SAMPLES}, got {num}")
        if not 0 <= seed < 2**31:
            raise DemoError(f"the seed must be between 0 and {2**31 - 1}, got {seed}")
        start = time.perf_counter()
        result = source.generate(caption, num, seed, bool(deterministic))
    except USER_ERRORS as e:
        return None, f"**Error:** {e}"
    except Exception as e:  # the page must stay usable and say something; the console gets the details
        log.error("request for %r failed:\n%s", caption, traceback.format_exc())
        return None, f"**Error:** the model failed on this request ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); details are in the demo's console"
    seconds = time.perf_counter() - start
    mode = "deterministic (mean condition)" if deterministic else "random condition"
    parts = [f"{num} sample{'s' if num > 1 else ''} of {caption!r}, seed {seed}, {mode}, {seconds:.2f} s"]
    parts += result.notes
    return result, "; ".join(parts)


def words_text(result: Optional[Result]) -> str:
    if result is None:
        return ""
    lines = []
    if result.kept is not None:
        lines.append("**Words read:** " + " ".join(result.kept))
    if result.ignored is None:
        lines.append("**Ignored as unknown:** (this model does not report them)")
    else:
        lines.append("**Ignored as unknown:** " + (" ".join(result.ignored) if result.ignored else "none"))
    if result.cut:  # only when there are some: most captions fit
        lines.append("**Cut by the length limit:** " + " ".join(result.cut))
    return "  \n".join(lines)


def build_page(source, examples: list[str]):
    """The Gradio Blocks of the page for a source (RunSource, SavedModelSource or ServerSource)."""
    import gradio as gr

    with gr.Blocks(title="MirrorGAN demo", analytics_enabled=False) as page:
        gr.Markdown(f"## MirrorGAN: text to image\nFrom the {source.description}.")
        with gr.Row():
            with gr.Column(scale=3):
                caption = gr.Textbox(label="Caption", lines=1, max_lines=3, elem_id="caption",
                                     placeholder="a small red circle on the left")
                if examples:
                    gr.Examples(examples=[[c] for c in examples], inputs=[caption], label="Captions of the test split")
            with gr.Column(scale=2):
                num = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="Samples", elem_id="num")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                deterministic = gr.Checkbox(value=False, elem_id="deterministic",
                                            label="Deterministic (conditioning augmentation at its mean)")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
        message = gr.Markdown(elem_id="message")
        words = gr.Markdown(elem_id="words")
        images = gr.Gallery(label="Final images", format="png", columns=8, height=300, elem_id="images",
                            interactive=False)
        stages = gr.Image(label="Every generator stage (rows, upscaled to the last; columns: samples)",
                          format="png", type="numpy", interactive=False, visible=source.stages_shown,
                          elem_id="stages")
        attention = gr.Image(label="Word attention of the first sample (a row per attended stage; each word's "
                             "map over the image, the word under it)", format="png", type="numpy",
                             interactive=False, visible=source.stages_shown, elem_id="attention")

        def respond(caption_value, num_value, seed_value, deterministic_value):
            result, text = run_request(source, caption_value, num_value, seed_value, deterministic_value)
            if result is None:
                return text, "", None, None, None
            return (text, words_text(result), list(result.images), result.stages, result.attention)

        outputs = [message, words, images, stages, attention]
        # One request at a time: the model already uses every core.
        button.click(respond, [caption, num, seed, deterministic], outputs, concurrency_limit=1)
        caption.submit(respond, [caption, num, seed, deterministic], outputs, concurrency_limit=1)
    return page


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="a run directory (samples at every stage, word attention)")
    src.add_argument("--model-base-path", help="a SavedModel export: its highest version, or a version folder")
    src.add_argument("--server", help="HOST:PORT of a model server's gRPC endpoint")
    p.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; the page has no authentication")
    p.add_argument("--examples", help="a file of example captions, one a line (default: the run's test captions)")
    p.add_argument("--model-name", default="mirrorgan", help="with --server: the model's name on the server")
    p.add_argument("--timeout", type=float, default=60.0, help="with --server: seconds to wait for an answer")
    a = p.parse_args(argv)
    if not 0 <= a.port < 65536:
        p.error(f"--port must be 0..65535, got {a.port}")
    # Before Gradio is imported: no telemetry, no version check, no Hugging Face Hub telemetry.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up probes of the page
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('error: the demo needs Gradio: pip install -e ".[demo]"', file=sys.stderr)
        return 2
    try:
        examples = read_examples(a.examples) if a.examples else None
        if a.run_dir:
            source = RunSource(a.run_dir)
        elif a.model_base_path:
            source = SavedModelSource(a.model_base_path)
        else:
            source = ServerSource(a.server, a.model_name, a.timeout)
        if examples is None:
            examples = source.examples()
        port = a.port or free_port(a.host)
    except (*USER_ERRORS, OSError) as e:  # bad flags, runs, exports: one line, before the page starts
        print(f"error: {e}", file=sys.stderr)
        return 2
    page = build_page(source, examples)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=a.host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
                    quiet=True, show_error=False, ssr_mode=False, css=PAGE_CSS, enable_monitoring=False, pwa=False,
                    mcp_server=False)
    except OSError as e:
        print(f"error: cannot serve on {a.host}:{port}: {e}", file=sys.stderr)
        return 2
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"demo: serving {source.description.replace('`', '')} on http://{host}:{port}/", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
