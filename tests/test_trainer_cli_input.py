"""Bad input to the trainer's command line: one message with the fix, no traceback."""

from __future__ import annotations

import importlib.util

from trainer.cli import main


def test_missing_torch_names_the_install(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "torch" else real_find_spec(name, *args)
    )
    assert main(["--help"]) == 2
    assert "PyTorch is not installed in this environment: run 'make install-all'" in capsys.readouterr().err


def test_export_of_a_file_that_is_no_checkpoint(tmp_path, capsys):
    data = tmp_path / "fer2013.csv"
    data.write_text("emotion,pixels,Usage\n")
    assert main(["export", str(data), "--out", str(tmp_path / "x.tflite")]) != 0
    assert "has suffix '.csv': pass a .ckpt of 'trainer fit'" in capsys.readouterr().err


def test_export_of_a_damaged_lightning_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "bad.ckpt"
    checkpoint.write_text("garbage\n")
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.tflite")]) != 0
    assert "it is damaged or not a checkpoint; pass a .ckpt written by 'trainer fit'" in capsys.readouterr().err
