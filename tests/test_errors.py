"""One error type for bad input: every command prints `error: ...` and exits 2 for it, and lets
any other exception (a bug, ours or TensorFlow's) show its traceback."""

import pytest
import yaml

from mirrorgan_tf import errors
from mirrorgan_tf.errors import MirrorganError, run_cli
from tests.conftest import CONFIGS


def test_every_bad_input_error_shares_the_base():
    from mirrorgan_tf.client import ClientError
    from mirrorgan_tf.config import ConfigError
    from mirrorgan_tf.data import DataError
    from mirrorgan_tf.metrics import EvalError
    from mirrorgan_tf.sample import SampleError
    from pipelines.source import DatasetError

    for cls in (ConfigError, DataError, EvalError, SampleError, DatasetError, ClientError):
        assert issubclass(cls, MirrorganError), cls
    for cls in (ConfigError, DataError, EvalError, SampleError, DatasetError):
        assert issubclass(cls, ValueError), cls  # code that caught ValueError still does


def test_run_cli_reports_bad_input_and_lets_bugs_through(capsys):
    def raising(e):
        def body():
            raise e
        return body

    assert run_cli(lambda: 0) == 0
    assert run_cli(raising(MirrorganError("data.dir: no such folder"))) == 2
    assert capsys.readouterr().err == "error: data.dir: no such folder\n"
    assert run_cli(raising(FileNotFoundError("runs/x: no gan checkpoint"))) == 2
    assert capsys.readouterr().err == "error: runs/x: no gan checkpoint\n"

    class Odd(MirrorganError):
        exit_code = 5

    assert run_cli(raising(Odd("odd"))) == 5
    for bug in (ValueError("Keras: shapes do not match"), TypeError("bad call"), KeyError("k")):
        with pytest.raises(type(bug)):
            run_cli(raising(bug))
    assert errors.USER_ERRORS == (MirrorganError, FileNotFoundError, FileExistsError)


def test_train_lets_a_bug_show_its_traceback(monkeypatch, tmp_path):
    from mirrorgan_tf import train

    def bug(*args, **kwargs):
        raise ValueError("Tensor shapes (4, 3) and (4, 2) are incompatible")  # what a Keras bug raises

    monkeypatch.setattr(train, "train", bug)
    with pytest.raises(ValueError, match="incompatible"):  # before: one line "error: ..." and exit 2
        train.main(["--config", str(CONFIGS / "shapes_smoke.yaml"), "--run-dir", str(tmp_path / "r")])


def test_train_exit_codes_for_bad_input_and_non_finite_loss(monkeypatch, tmp_path, capsys):
    from mirrorgan_tf import train
    from mirrorgan_tf.training.loop import NonFiniteLoss

    args = ["--config", str(CONFIGS / "shapes_smoke.yaml"), "--run-dir", str(tmp_path / "r")]
    assert train.main([*args, "--set", "damsm.batch_size=1"]) == 2
    assert "error: damsm.batch_size must be >= 2" in capsys.readouterr().err

    def stop(*a, **k):
        raise NonFiniteLoss("stage 'gan', step 3: loss g is nan")

    monkeypatch.setattr(train, "train", stop)
    assert train.main(args) == 3
    assert "error: stage 'gan', step 3: loss g is nan" in capsys.readouterr().err

    def missing(*a, **k):
        raise FileNotFoundError(f"{tmp_path}/r: stage 'damsm' has not finished")

    monkeypatch.setattr(train, "train", missing)
    assert train.main(args) == 2
    assert "stage 'damsm' has not finished" in capsys.readouterr().err


def test_print_config_shows_the_resolved_whole_and_trains_nothing(tmp_path, capsys):
    from mirrorgan_tf import train
    from mirrorgan_tf.config import Config, load_config, to_dict

    run_dir = tmp_path / "r"
    assert train.main(["--config", str(CONFIGS / "shapes_smoke.yaml"), "--run-dir", str(run_dir),
                       "--set", "train.max_steps=7", "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert {s: set(v) for s, v in values.items()} == {s: set(v) for s, v in to_dict(Config()).items()}
    assert values["train"]["max_steps"] == 7 and values["model"]["gf_dim"] == 4  # --set, and the file
    assert values["model"]["text_norm"] == "rms"  # from the base, shapes.yaml
    (tmp_path / "printed.yaml").write_text(printed)
    assert load_config(tmp_path / "printed.yaml") == load_config(CONFIGS / "shapes_smoke.yaml", ["train.max_steps=7"])
    assert not run_dir.exists()
    assert train.main(["--config", str(tmp_path / "none.yaml"), "--print-config"]) == 2
    assert "none.yaml: cannot read config" in capsys.readouterr().err
