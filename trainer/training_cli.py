"""``trainer fit`` and ``trainer test``: Lightning's CLI over ``EmotionModule`` and ``FerDataModule``.

Every option of the module, the data module and Lightning's ``Trainer`` is a flag or a
YAML key (``trainer fit --config trainer/configs/ds_cnn.yaml --print_config`` lists them).
``model.input_size`` is linked to ``data.image_size``, so the images always match the
model. A ``quantization`` section (``trainer.quantization.QuantizationSettings``) is
validated and saved with the run's config, but it does not change training. ``trainer
export --config`` reads it. Unless a config sets them otherwise (``trainer/configs/defaults.yaml``), the run logs to CSV and to W&B (offline unless ``WANDB_MODE`` or
the config sets online), saves the best checkpoint by validation macro-F1 and stops
early when it stalls for 10 epochs.

Multi-GPU and multi-node runs use Lightning's own flags, for example
``--trainer.accelerator gpu --trainer.devices 4 --trainer.strategy ddp --trainer.num_nodes 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from trainer.datamodule import FerDataModule
from trainer.module import EmotionModule
from trainer.quantization import SECTION, QuantizationSettings

#: Loggers, callbacks and seed of every run; see the file for how a --config overrides them.
DEFAULTS_CONFIG = Path(__file__).parent / "configs" / "defaults.yaml"
SUBCOMMANDS = ("fit", "validate", "test")


class EmotionCLI(LightningCLI):
    """Lightning's CLI with the image size linked to the model's input size, and quantization settings."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.input_size", "data.image_size")
        parser.add_argument(
            f"--{SECTION}",
            type=QuantizationSettings,
            default=QuantizationSettings(),
            help="how 'trainer export --config' quantizes this run's checkpoints",
        )


def run(arguments: Sequence[str] | None) -> None:
    """Run a Lightning subcommand (``fit``, ``validate``, ``test``) with its flags; None reads sys.argv."""
    EmotionCLI(
        EmotionModule,
        FerDataModule,
        args=None if arguments is None else list(arguments),
        parser_kwargs={name: {"default_config_files": [str(DEFAULTS_CONFIG)]} for name in SUBCOMMANDS},
        save_config_kwargs={"overwrite": True},
    )
