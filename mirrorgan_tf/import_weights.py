"""Import released or user-trained PyTorch weights (AttnGAN / MirrorGAN / STREAM state dicts) into a
run directory whose stages are finished, usable everywhere a trained run is (sampling, evaluation,
export, or as `damsm.checkpoint` / `stream.checkpoint` of a new run).

  python -m mirrorgan_tf.import_weights attngan-damsm --text-encoder text_encoder200.pth \\
      [--image-encoder image_encoder200.pth] --captions-pickle captions.pickle --config C --out RUN
  python -m mirrorgan_tf.import_weights mirrorgan-gan --generator netG_epoch_600.pth \\
      [--discriminators netD0.pth netD1.pth netD2.pth] --damsm-run RUN_OF_THE_DAMSM [--stream-run RUN] \\
      --config C --out RUN
  python -m mirrorgan_tf.import_weights stream --encoder encoder.ckpt --decoder decoder.ckpt \\
      --damsm-run RUN_OF_THE_DAMSM --config C --out RUN

Files saved by PyTorch 0.3/0.4 (the legacy, non-zip format of the released files) and by newer
PyTorch are both read. Network sizes are read from the files and must agree with the config (an
error names the config key and both values; fix it with --set). The switches that make our
networks compute the original's function are set in the run's config.yaml, and printed:
- the generator: model.global_attention_softmax=channels (the released `nn.Softmax()` on a 4-D
  tensor), model.global_attention_input=condition, model.text_norm=none;
- STREAM: stream.imagenet_normalize=false (the released code feeds [-1, 1] images as they are).

The run gets RUN/vocab.txt: for attngan-damsm the vocabulary of captions.pickle (id 0 '<end>',
words from 1, no unknown-word token), the ids the weights know; the other kinds copy the DAMSM
run's. Prepare the dataset with that vocabulary (`python -m pipelines.prepare ... --vocab
RUN/vocab.txt`): captions tokenised with any other vocabulary would give the weights other words.
The run is written into RUN.tmp-<pid> and renamed to RUN only when complete; RUN must not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from mirrorgan_tf.errors import MirrorganError, run_cli

VOCAB_FILE = "vocab.txt"


class ImportArgumentError(MirrorganError, ValueError):
    """Bad arguments or files for an import (the message names the argument or file)."""


def _need_file(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise ImportArgumentError(f"{flag} {path}: file not found")
    return path


def _need_run(path: str, flag: str, stage: str) -> str:
    stages_file = os.path.join(path, "stages.json")
    if not os.path.isfile(os.path.join(path, "config.yaml")) or not os.path.isfile(stages_file):
        raise ImportArgumentError(f"{flag} {path}: not a run directory (no config.yaml / stages.json)")
    with open(stages_file, encoding="utf-8") as f:
        if not json.load(f).get(stage, {}).get("done"):
            raise ImportArgumentError(f"{flag} {path}: its '{stage}' stage has not finished")
    return path


def _get(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _set(cfg, key: str, value) -> None:
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)


def _require(cfg, key: str, value, source: str) -> None:
    """The config must already say `key: value` for the file `source` (a size read from it)."""
    if _get(cfg, key) != value:
        raise ImportArgumentError(f"{source} was trained with {key}={value}, the config says "
                                  f"{_get(cfg, key)} (use --set {key}={value})")


def _apply_settings(cfg, settings: dict, why: str, overrides=()) -> None:
    """Set `settings` in the config, printing each with the reason; a key the user gave with
    --set is left as the user set it (and said so)."""
    for key, value in settings.items():
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            print(f"import: {key}={_get(cfg, key)} as --set says (the import would set {value}: {why})", flush=True)
            continue
        old = _get(cfg, key)
        _set(cfg, key, value)
        note = "" if old == value else f" (config said {old})"
        print(f"import: {key}={value}{note}: {why}", flush=True)


def _save_stage(run, stage: str, info: dict, **objects) -> str:
    import tensorflow as tf

    checkpoint = tf.train.Checkpoint(**objects)
    manager = tf.train.CheckpointManager(checkpoint, run.checkpoints(stage), max_to_keep=1)
    path = manager.save(checkpoint_number=0)
    run.mark_done(stage, {"steps": 0, "checkpoint": os.path.relpath(path, run.root), "imported": info})
    return path


def _copy_stage(src_run: str, run, stage: str) -> None:
    """Copy a finished stage (its folder and stages.json entry) from another run. Its checkpoint
    holds every weight, frozen backbones included, so no weights file travels with it."""
    with open(os.path.join(src_run, "stages.json"), encoding="utf-8") as f:
        info = json.load(f)[stage]
    shutil.copytree(os.path.join(src_run, stage), run.path(stage))
    # The source's checkpoint path named the source run; the copy is found under RUN/<stage>.
    kept = {k: v for k, v in info.items() if k not in ("done", "checkpoint")}
    run.mark_done(stage, kept | {"copied_from": os.path.abspath(src_run)})


def _load_base_config(a, damsm_run: str | None):
    from mirrorgan_tf.config import load_config

    cfg = load_config(a.config, a.overrides)
    if damsm_run:
        # What the imported STEM was built with is the DAMSM run's, whatever the config says.
        damsm_cfg = load_config(os.path.join(damsm_run, "config.yaml"))
        for key in ("data.vocab_size", "model.embedding_dim", "model.word_embedding_dim"):
            if _get(cfg, key) not in (0, _get(damsm_cfg, key)):
                raise ImportArgumentError(f"--damsm-run {damsm_run} has {key}={_get(damsm_cfg, key)}, "
                                          f"the config says {_get(cfg, key)}")
            _set(cfg, key, _get(damsm_cfg, key))
        cfg.damsm = damsm_cfg.damsm
    return cfg


def import_attngan_damsm(a, run) -> dict:
    from mirrorgan_tf.models import networks
    from mirrorgan_tf.weights import attngan, read_state_dict

    words = attngan.read_captions_pickle(a.captions_pickle)
    text_state = read_state_dict(a.text_encoder, "--text-encoder")
    sizes = attngan.text_encoder_sizes(text_state, a.text_encoder)
    if sizes["vocab_size"] != len(words):
        raise ImportArgumentError(f"--text-encoder {a.text_encoder} knows {sizes['vocab_size']} words, --captions-pickle "
                           f"{a.captions_pickle} has {len(words)}: not the pickle these weights were trained with")
    cfg = a.cfg
    for key in ("embedding_dim", "word_embedding_dim"):
        _require(cfg, f"model.{key}", sizes[key], a.text_encoder)
    cfg.data.vocab_size = len(words)
    stem = networks.build_stem(cfg, len(words))
    attngan.load_stem(stem, text_state, a.text_encoder)
    objects = {"stem": stem}
    if a.image_encoder:
        # The encoder's backbone is built from its own file (torchvision's layout) and saved whole in
        # the run's checkpoint; the config names the file as the weights' origin (its suffix says
        # the layout, runs.for_restore), and nothing later reads it: the run may move.
        image_state = read_state_dict(a.image_encoder, "--image-encoder")
        _require(cfg, "model.embedding_dim", attngan.image_encoder_embedding_dim(image_state, a.image_encoder),
                 a.image_encoder)
        _apply_settings(cfg, {"damsm.backbone": "inception_v3"}, "the released image encoder holds Inception-v3",
                        a.overrides)
        _apply_settings(cfg, {"damsm.resize_align_corners": True},
                        "PyTorch 0.3 (the released DAMSM) resized with corners aligned; "
                        "--set damsm.resize_align_corners=false for an encoder trained with PyTorch >= 0.4",
                        a.overrides)
        cfg.damsm.backbone_weights = os.path.abspath(a.image_encoder)
        encoder = networks.build_damsm_image_encoder(cfg)
        attngan.load_damsm_image_encoder(encoder, image_state, a.image_encoder)
        objects["image_encoder"] = encoder
    attngan.write_vocabulary_file(words, run.path(VOCAB_FILE))
    info = {"text_encoder": os.path.abspath(a.text_encoder), "captions_pickle": os.path.abspath(a.captions_pickle),
            "image_encoder": os.path.abspath(a.image_encoder) if a.image_encoder else None}
    _save_stage(run, "damsm", info, **objects)
    if not a.image_encoder:
        print("import: no --image-encoder: the run's DAMSM has STEM only (enough for GAN training and "
              "sampling; R-precision and train.damsm_weight > 0 need the image encoder)", flush=True)
    return cfg


def import_mirrorgan_gan(a, run):
    from mirrorgan_tf.config import load_config
    from mirrorgan_tf.models import networks
    from mirrorgan_tf.weights import mirrorgan, read_state_dict

    cfg = a.cfg
    g_state = read_state_dict(a.generator, "--generator")
    sizes = mirrorgan.generator_sizes(g_state, a.generator)
    for key in ("stages", "base_size", "gf_dim", "z_dim", "condition_dim", "r_num", "embedding_dim"):
        _require(cfg, f"model.{key}", sizes[key], a.generator)
    if a.discriminators and len(a.discriminators) != cfg.model.stages:
        raise ImportArgumentError(f"--discriminators: {len(a.discriminators)} files for a {cfg.model.stages}-stage "
                           "generator (one per stage: netD0.pth netD1.pth ...)")
    d_states = [read_state_dict(_need_file(p, "--discriminators"), "--discriminators") for p in a.discriminators or []]
    for path, state in zip(a.discriminators or [], d_states):
        d_sizes = mirrorgan.discriminator_sizes(state, path)
        _require(cfg, "model.df_dim", d_sizes["df_dim"], path)
        _require(cfg, "model.embedding_dim", d_sizes["embedding_dim"], path)
    _apply_settings(cfg, mirrorgan.GENERATOR_SETTINGS, "the released generator computes this", a.overrides)
    _copy_stage(a.damsm_run, run, "damsm")
    shutil.copy(os.path.join(a.damsm_run, VOCAB_FILE), run.path(VOCAB_FILE))
    glams = []
    for _ in range(2):  # the released netG holds the averaged (EMA) weights: both get them
        g = networks.build_glam(cfg, seed=cfg.train.seed)
        mirrorgan.load_glam(g, g_state, a.generator)
        glams.append(g)
    objects = {"glam": glams[0], "glam_ema": glams[1]}
    if d_states:
        discriminators = networks.build_discriminators(cfg)
        for i, (d, state, path) in enumerate(zip(discriminators, d_states, a.discriminators)):
            mirrorgan.load_discriminator(d, i, state, path)
            objects[f"d{i}"] = d
    if a.stream_run:
        stream_cfg = load_config(os.path.join(a.stream_run, "config.yaml"))
        cfg.stream = stream_cfg.stream  # how the imported or trained captioner was built
        _copy_stage(_need_run(a.stream_run, "--stream-run", "stream"), run, "stream")
    info = {"generator": os.path.abspath(a.generator),
            "discriminators": [os.path.abspath(p) for p in a.discriminators or []]}
    _save_stage(run, "gan", info, **objects)
    return cfg


def import_stream(a, run):
    from mirrorgan_tf.models import networks
    from mirrorgan_tf.weights import read_state_dict, stream

    cfg = a.cfg
    dec_state = read_state_dict(a.decoder, "--decoder")
    enc_state = read_state_dict(a.encoder, "--encoder")
    sizes = stream.decoder_sizes(dec_state, a.decoder)
    if sizes["vocab_size"] != cfg.data.vocab_size:
        raise ImportArgumentError(f"--decoder {a.decoder} predicts {sizes['vocab_size']} words, the DAMSM run "
                           f"{a.damsm_run} has {cfg.data.vocab_size}: STREAM must share STEM's vocabulary")
    _require(cfg, "stream.embedding_dim", sizes["embedding_dim"], a.decoder)
    _require(cfg, "stream.hidden_dim", sizes["hidden_dim"], a.decoder)
    _require(cfg, "stream.embedding_dim", stream.encoder_embedding_dim(enc_state, a.encoder), a.encoder)
    _apply_settings(cfg, stream.ENCODER_SETTINGS, "the released code captions [-1, 1] images as they are",
                    a.overrides)
    _apply_settings(cfg, {"stream.backbone": "resnet152"}, "the encoder holds ResNet-152", a.overrides)
    _copy_stage(a.damsm_run, run, "damsm")
    shutil.copy(os.path.join(a.damsm_run, VOCAB_FILE), run.path(VOCAB_FILE))
    cfg.stream.backbone_weights = os.path.abspath(a.encoder)  # the origin; the checkpoint holds the weights
    encoder, decoder = networks.build_stream(cfg, cfg.data.vocab_size)
    stream.load_stream_encoder(encoder, enc_state, a.encoder)
    stream.load_stream_decoder(decoder, dec_state, a.decoder)
    _save_stage(run, "stream", {"encoder": os.path.abspath(a.encoder), "decoder": os.path.abspath(a.decoder)},
                encoder=encoder, decoder=decoder)
    return cfg


KINDS = {"attngan-damsm": import_attngan_damsm, "mirrorgan-gan": import_mirrorgan_gan, "stream": import_stream}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.import_weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)

    def common(q):
        q.add_argument("--config", required=True, help="the run's config (e.g. configs/cub.yaml)")
        q.add_argument("--out", required=True, help="the run directory to create (must not exist)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    q = sub.add_parser("attngan-damsm", help="AttnGAN's DAMSM: text encoder (+ image encoder) and captions.pickle")
    q.add_argument("--text-encoder", required=True, help="RNN_ENCODER state dict (text_encoder*.pth)")
    q.add_argument("--image-encoder", help="CNN_ENCODER state dict (image_encoder*.pth)")
    q.add_argument("--captions-pickle", required=True, help="the captions.pickle the encoders were trained with")
    common(q)
    q = sub.add_parser("mirrorgan-gan", help="a generator (and discriminators) trained with the original code")
    q.add_argument("--generator", required=True, help="G_NET state dict (netG_epoch_N.pth)")
    q.add_argument("--discriminators", nargs="+", help="netD0.pth netD1.pth ... one per stage, smallest first")
    q.add_argument("--damsm-run", required=True, help="a run with the DAMSM the generator was trained with")
    q.add_argument("--stream-run", help="a run with the STREAM captioner, copied into the new run")
    common(q)
    q = sub.add_parser("stream", help="a show-and-tell STREAM captioner (EncoderCNN + DecoderRNN)")
    q.add_argument("--encoder", required=True, help="EncoderCNN state dict (ResNet-152 + linear + bn)")
    q.add_argument("--decoder", required=True, help="DecoderRNN state dict (embed + lstm + linear)")
    q.add_argument("--damsm-run", required=True, help="a run with the DAMSM whose vocabulary STREAM shares")
    common(q)
    return p


def _check_arguments(a) -> None:
    """Everything that can be checked before any weight is read."""
    if os.path.exists(a.out):
        raise ImportArgumentError(f"--out {a.out}: already exists; the import creates a new run directory")
    if not os.path.isfile(a.config):
        raise ImportArgumentError(f"--config {a.config}: file not found")
    if a.kind == "attngan-damsm":
        _need_file(a.text_encoder, "--text-encoder")
        _need_file(a.captions_pickle, "--captions-pickle")
        if a.image_encoder:
            _need_file(a.image_encoder, "--image-encoder")
    elif a.kind == "mirrorgan-gan":
        _need_file(a.generator, "--generator")
        for path in a.discriminators or []:
            _need_file(path, "--discriminators")
        if a.stream_run:
            _need_run(a.stream_run, "--stream-run", "stream")
    else:
        _need_file(a.encoder, "--encoder")
        _need_file(a.decoder, "--decoder")
    if getattr(a, "damsm_run", None):
        _need_run(a.damsm_run, "--damsm-run", "damsm")
        _need_file(os.path.join(a.damsm_run, VOCAB_FILE), "--damsm-run (its vocabulary)")
        if getattr(a, "stream_run", None):
            # A STREAM predicts word ids: it must have been trained with the DAMSM's words.
            from mirrorgan_tf.runs import RunIntegrityError, check_same_vocabulary, pinned_vocabulary

            try:
                check_same_vocabulary(os.path.join(a.damsm_run, VOCAB_FILE), pinned_vocabulary(a.stream_run),
                                      f"--stream-run {a.stream_run}")
            except RunIntegrityError as e:
                raise ImportArgumentError(str(e)) from None


def run_import(argv=None) -> str:
    """Parse arguments and import; returns the run directory. Raises ImportArgumentError (bad arguments or
    files), WeightImportError (a file that does not fit), ConfigError, FileNotFoundError, ImportError
    (torch missing)."""
    a = parser().parse_args(argv)
    _check_arguments(a)
    a.cfg = _load_base_config(a, getattr(a, "damsm_run", None))
    from mirrorgan_tf import config as config_lib
    from mirrorgan_tf.runs import RunDir

    out = os.path.abspath(a.out)
    tmp = f"{out}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    try:
        run = RunDir(tmp)
        cfg = KINDS[a.kind](a, run)
        config_lib.save_config(cfg, os.path.join(tmp, "config.yaml"))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"import: {a.kind} -> {out}", flush=True)
    print(f"import: prepare data with this vocabulary: python -m pipelines.prepare ... --vocab "
          f"{os.path.join(out, VOCAB_FILE)} --out {cfg.data.dir}", flush=True)
    return out


def main(argv=None) -> int:
    def body() -> int:
        run_import(argv)
        return 0

    # Bad arguments, files that do not fit, an unreadable .pth or torch missing are MirrorganErrors
    # (ImportArgumentError, WeightImportError, TorchFileError, ConfigError): `error: ...`, exit 2.
    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
