"""AutoencoderCLI: LightningCLI with the model picked by `class_path` and fitted to the data; each of its
hooks hands its job to the module that does it."""

import inspect
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import ae_lightning.data
import ae_lightning.models
from ae_lightning.callbacks import HeatMapWriter, NonFiniteLossCheck, StepWatchdog
from ae_lightning.cli.parser import ArgumentParser
from ae_lightning.cli.resume import Checked, resolve_checkpoint
from ae_lightning.cli.setup import equip_trainer, prepare_fit, prepare_predict
from ae_lightning.cluster import check_gpu_binding
from ae_lightning.data.contract import AutoencoderDataModule
from ae_lightning.errors import ConfigError
from ae_lightning.models import AutoencoderModule
from ae_lightning.multistep import link_steps_per_call
from ae_lightning.runs import NewRunFolder

#: what `score` is, for the top-level help (not a LightningCLI subcommand: it needs no config, and runs
#: without Lightning, `entry.run`)
SCORE_HELP = (
    "score: anomaly scores of images (a folder, an IDX or a NPY file) from an exported model, without "
    "Lightning (`score --help`)"
)


@dataclass
class CommandState:
    """What one command set up, for `main` to undo if the command fails (the CLI fails in its constructor,
    so `main` has no CLI object then)."""

    new_run_folder: NewRunFolder | None = None
    trainer: Trainer | None = None


class AutoencoderCLI(LightningCLI):
    """LightningCLI for autoencoders: the datamodule tells the model its image shape and value range.

    Before anything is written it checks the `--ckpt_path` (whole and data only, `resume`), the optimizer
    and scheduler arguments and resuming past `max_epochs`; a new run takes its `version_<n>` folder
    atomically (`runs.NewRunFolder`). `state` records what the command set up (see `main`).
    """

    def __init__(self, *args: Any, state: CommandState | None = None, **kwargs: Any) -> None:
        self.state = state or CommandState()
        self._parsers: list[ArgumentParser] = []
        self._checked: Checked | None = None  # the --ckpt_path file, read and checked
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """Each parser (the main one and the subcommands') knows the classes `--model` and `--data` take
        and the other parsers' options, for its short errors (`parser.ArgumentParser`); the main one's help
        names `score` too."""
        if not self._parsers:
            kwargs["description"] = "Train, validate, test, predict, export and sample from autoencoders."
            kwargs.setdefault("epilog", SCORE_HELP)
        parser = super().init_parser(**kwargs)
        if isinstance(parser, ArgumentParser):
            parser.classes = {
                "model": _classes(ae_lightning.models, AutoencoderModule),
                "data": _classes(ae_lightning.data, AutoencoderDataModule),
            }
            for other in self._parsers:
                other.siblings.append(parser)
                parser.siblings.append(other)
            self._parsers.append(parser)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # one source of truth: the data decides the shape and range, the model is built for them
        # (as lists, the form both hold in their hparams, which Lightning requires to be equal)
        for name in ("image_shape", "value_range"):
            parser.link_arguments(
                f"data.{name}", f"model.init_args.{name}", compute_fn=list, apply_on="instantiate"
            )
        # K optimizer steps per call need K batches per training item: the model's setting sizes them
        link_steps_per_call(parser)
        # in every run: a loss that becomes NaN stops it (--nonfinite_loss.stop false trains on)
        parser.add_lightning_class_args(NonFiniteLossCheck, "nonfinite_loss")
        # under DDP: a rank that died or hangs ends the job in minutes, not at NCCL's 30-minute timeout
        parser.add_lightning_class_args(StepWatchdog, "step_watchdog")
        # at predict, when asked (--heat_maps.write true): a heat-map PNG of each image's anomaly map
        parser.add_lightning_class_args(HeatMapWriter, "heat_maps")
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"],
            default="highest",
            help="Precision of float32 matrix products (torch.set_float32_matmul_precision) on GPUs with "
            "TensorFloat-32 (Ampere and later): highest (full float32, torch's default), high (TF32, 10 "
            "mantissa bits, several times faster) or medium (bfloat16 inside). Convolutions follow "
            "torch.backends.cudnn.allow_tf32. No effect on a CPU.",
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands, without their `weights_only` argument (checkpoints are always read as
        data only: `checkpoints.SafeCheckpointIO`), `export` and `sample` (`export.AutoencoderTrainer`)."""
        commands = {name: {*skipped, "weights_only"} for name, skipped in LightningCLI.subcommands().items()}
        return {**commands, "export": {"model", "datamodule"}, "sample": {"model", "datamodule"}}

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            self._checked, continues = resolve_checkpoint(self.config, subcommand)
            if continues:  # the run's config.yaml is rewritten, with the ckpt_path it resumed from
                self.save_config_kwargs["overwrite"] = True

    def before_instantiate_classes(self) -> None:
        """Sets the float32 matmul precision; a new run of a TensorBoard or CSV logger takes its
        `version_<n>` folder now, atomically (on global rank zero; the other ranks write nothing)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        torch.set_float32_matmul_precision(config.get("float32_matmul_precision") or "highest")
        if subcommand:
            check_gpu_binding(config.trainer.get("accelerator"))
        # an export or a sample writes its own folder (--output), not a run
        if subcommand and subcommand not in ("export", "sample") and rank_zero_only.rank == 0:
            self.state.new_run_folder = NewRunFolder(self.config[subcommand].trainer)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, equipped by `setup.equip_trainer`; an argument Lightning cannot use is one line."""
        # a copy: Lightning appends its defaults to the config's list
        configured = list(self._get(self.config_init, "trainer", default={}).get("callbacks") or [])
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:  # e.g. an accelerator this machine lacks
            raise ConfigError(f"--trainer: {' '.join(str(err).split())}") from None
        equip_trainer(trainer, configured, self._checked)
        self.state.trainer = trainer
        return trainer

    def before_fit(self) -> None:
        prepare_fit(self.trainer, self.model)

    def before_predict(self) -> None:
        prepare_predict(self.trainer)


def _classes(module: Any, base: type) -> list[str]:
    """The classes `module` exports that derive from `base`, as `module.Name` import paths."""
    return sorted(
        f"{module.__name__}.{name}"
        for name in getattr(module, "__all__", ())
        if isinstance(value := getattr(module, name), type)
        and issubclass(value, base)
        and value is not base
        and not inspect.isabstract(value)
    )
