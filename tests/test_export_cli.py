"""`ortserve export` as users call it with their own PyTorch files: a module saved from a script, a
state_dict with its class, calibration images for int8; each mistake gets one line naming the fix."""

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from exporters import cli

ORTSERVE = str(Path(sys.executable).parent / "ortserve")

USER_FILE = textwrap.dedent("""\
    import sys
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 5)

        def forward(self, pixel_values):
            return self.head(self.conv(pixel_values).relu().mean(dim=(2, 3)))


    class NeedsWidth(TinyNet):
        def __init__(self, width):
            super().__init__()


    if __name__ == "__main__":
        torch.manual_seed(0)
        model = TinyNet()
        torch.save(model, sys.argv[1])
        torch.save(model.state_dict(), sys.argv[2])
""")


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's script defining its model class, run as `__main__`: a whole module and a state_dict."""
    root = tmp_path_factory.mktemp("user")
    script = root / "train_tiny.py"
    script.write_text(USER_FILE)
    whole, weights = root / "whole.pt", root / "weights.pt"
    subprocess.run([sys.executable, str(script), str(whole), str(weights)], check=True)
    return script, whole, weights


def export(capsys, *arguments) -> tuple[int, str, str]:
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    code = cli.run(parser.parse_args(list(arguments)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_naming(err: str, fragment: str) -> None:
    assert "Traceback" not in err
    failure = [line for line in err.splitlines() if line.startswith("ortserve export:")]
    assert len(failure) == 1 and fragment in failure[0], err


def test_module_and_state_dict_mistakes_get_one_line_naming_the_fix(user_files, tmp_path, capsys):
    script, whole, weights = user_files
    repository = tmp_path / "repository"
    base = ["cnn", "--repository", str(repository), "--name", "tiny", "--image-size", "16"]
    code, _, err = export(capsys, *base, "--checkpoint", str(whole))
    assert code == 1
    assert_one_line_naming(err, "pass the file that defines it with --module")
    code, _, err = export(capsys, *base, "--checkpoint", str(weights))
    assert code == 1
    assert_one_line_naming(err, "holds a state_dict (weights only); pass --model-class module:Class")
    code, _, err = export(capsys, *base, "--checkpoint", str(weights), "--model-class", "nowhere:TinyNet")
    assert_one_line_naming(err, "pass it with --module path/to/file.py")
    code, _, err = export(capsys, *base, "--checkpoint", str(weights), "--module", str(script),
                          "--model-class", "train_tiny:NeedsWidth")
    assert_one_line_naming(err, "cannot be built without arguments")
    code, _, err = export(capsys, *base, "--checkpoint", str(tmp_path / "absent.pt"))
    assert_one_line_naming(err, "is not a file")
    assert not repository.exists()


@pytest.mark.parametrize("how", ["whole module", "state_dict"])
def test_a_user_class_from_the_users_own_file_exports(user_files, tmp_path, capsys, how):
    script, whole, weights = user_files
    repository = tmp_path / "repository"
    source = ["--checkpoint", str(whole)] if how == "whole module" else [
        "--checkpoint", str(weights), "--model-class", "train_tiny:TinyNet"]
    code, out, err = export(capsys, "cnn", *source, "--module", str(script), "--repository", str(repository),
                            "--name", "tiny", "--image-size", "16")
    assert code == 0, err
    assert "tiny" in out and "cosine 1.00000" in out
    assert sorted(p.name for p in repository.iterdir()) == ["tiny"]  # nothing else left behind
    assert sorted(p.name for p in (repository / "tiny").iterdir()) == ["1", "config.pbtxt"]


def test_int8_calibrates_on_a_directory_of_images_and_warns_without_one(user_files, tmp_path, capsys):
    from PIL import Image

    script, whole, _ = user_files
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = rng.integers(0, 255, (20 + index, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    (images / "notes.txt").write_text("not an image")
    base = ["cnn", "--checkpoint", str(whole), "--module", str(script), "--image-size", "16",
            "--variants", "fp32,int8"]
    code, _, err = export(capsys, *base, "--repository", str(tmp_path / "a"), "--name", "calibrated",
                          "--calibration", str(images))
    assert code == 0, err
    assert "calibrating int8 on 6 images" in err and "random noise" not in err
    assert "int8: calibrating: 100%" in err and "2/2 [" in err  # the bar over its batches, with times
    assert (tmp_path / "a" / "calibrated_int8" / "1" / "model.onnx").exists()
    code, _, err = export(capsys, *base, "--repository", str(tmp_path / "b"), "--name", "noise")
    assert code == 0 and "no --calibration given, so static int8 is calibrated on random noise" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = export(capsys, *base, "--repository", str(tmp_path / "c"), "--name", "x",
                          "--calibration", str(empty))
    assert code == 1
    assert_one_line_naming(err, "holds no images")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 1, 16, 16), np.float32))
    code, _, err = export(capsys, *base, "--repository", str(tmp_path / "c"), "--name", "x",
                          "--calibration", str(wrong))
    assert_one_line_naming(err, "has shape [4, 1, 16, 16]; expected [n, 3, 16, 16]")


def test_each_family_help_says_what_its_checkpoint_must_be_and_version_answers():
    def help_of(family):
        done = subprocess.run([ORTSERVE, "export", family, "--help"],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())

    with ThreadPoolExecutor(4) as pool:  # four CLI starts side by side
        version = pool.submit(subprocess.run, [ORTSERVE, "--version"], capture_output=True, text=True)
        cnn, lstm, gpt = pool.map(help_of, ("cnn", "lstm", "gpt"))
        version = version.result()
    assert "state_dict" in cnn and "--calibration" in cnn and "--model-class" in cnn
    assert "nn.LSTM" in lstm and "--streaming" in lstm and "--calibration" not in lstm
    assert "llama" in gpt and "tokenizer" in gpt and "--model-class" not in gpt
    assert version.returncode == 0 and version.stdout.startswith("ortserve ")
