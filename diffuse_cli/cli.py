"""`diffuse <command> [overrides]`: picks the command, then lets Hydra compose its config."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import NamedTuple

_STARTED = time.time()  # when this process started the CLI (see _remove_empty_output_dir)
_JOBS_DONE = 0  # jobs of this command (a sweep's) that ended without an error


class Command(NamedTuple):
    """A command of `diffuse`: what the usage says of it and the function that runs it, which
    imports the command's modules when called. The CLI is the top of the package (nothing
    imports it), so this table is the only list of commands."""

    description: str
    run: Callable  # composes_config: run(cfg); otherwise run(argv) -> exit status
    composes_config: bool = True  # False: reads files only, no Hydra config (report)


def _train(cfg) -> None:
    from diffuse_cli.train.trainer import train

    train(cfg)


def _sample(cfg) -> None:
    from diffuse_cli.generate import sample_command

    sample_command(cfg)


def _eval(cfg) -> None:
    from diffuse_cli.evaluate.command import eval_command

    eval_command(cfg)


def _import(cfg) -> None:
    from diffuse_cli.import_command import import_command

    import_command(cfg)


def _export(cfg) -> None:
    from diffuse_cli.interop.export import export_command

    export_command(cfg)


def _report(argv: list[str]) -> int:
    from diffuse_cli.evaluate.report import main as report

    return report(argv)


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train a diffusion model into a run directory (resumes if it has checkpoints)", _train
    ),
    "sample": Command(
        "draw samples from a run's checkpoint (latest, EMA) into <run_dir>/samples/", _sample
    ),
    "eval": Command(
        "evaluate a run's checkpoint (latest, EMA) and write JSON reports to <run_dir>/eval/",
        _eval,
    ),
    "import": Command(
        "make a run from an openai .pt file or a diffusers folder (then sample, eval, train)",
        _import,
    ),
    "report": Command(
        "gather the eval reports below a run or sweep folder into report.md and report.png",
        _report,
        composes_config=False,
    ),
    "export": Command(
        "write a run's checkpoint (latest, EMA) as a diffusers pipeline folder", _export
    ),
}

USAGE = """usage: diffuse <command> [key=value ...] [hydra flags]
       diffuse --version

commands:
{commands}

Each command composes one Hydra config; `diffuse <command> --help` lists its groups and keys.
Examples:
  diffuse train schedule=cosine
  diffuse sample sampler=ddim steps=50
  diffuse eval
  diffuse eval -m metrics=[fid] sampler=ddim,ddpm steps=10,20,50,100
  diffuse report runs/default
  diffuse import source=64x64_diffusion.pt name=adm64 experiment=adm_imagenet64 \
      use_new_attention_order=true
  diffuse train -m schedule=linear,cosine
  diffuse export run_dir=runs/default format=diffusers out=exported/default
"""


def _usage() -> str:
    lines = "\n".join(f"  {name:<8}{command.description}" for name, command in COMMANDS.items())
    return USAGE.format(commands=lines)


def _task(command: str):
    """The function Hydra calls with the composed config; user errors become one line."""

    def task(cfg) -> None:
        from diffuse_cli import distributed
        from diffuse_cli.data import DataError
        from diffuse_cli.errors import UserError

        distributed.export_slurm_environment()  # a no-op outside a multi-task Slurm job
        from diffuse_cli.config import check_known_keys

        global _JOBS_DONE
        ok = False
        try:
            check_known_keys(cfg, command)
            COMMANDS[command].run(cfg)
            ok = True
            _JOBS_DONE += 1
        except (UserError, DataError) as err:
            if cfg.get("debug", False):
                raise
            _remove_empty_output_dir()
            print(f"diffuse {command}: error: {err}", file=sys.stderr)
            sys.exit(getattr(err, "exit_code", 2))
        except KeyboardInterrupt:
            _remove_empty_output_dir()
            print(f"diffuse {command}: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as err:
            if distributed.launched_world_size() <= 1:
                if isinstance(err, OSError) and err.filename and not cfg.get("debug", False):
                    # a full disk, a read-only folder, a file where a folder should be: the
                    # path and the reason say what to change; a traceback would hide them
                    _remove_empty_output_dir()
                    print(f"diffuse {command}: error: {err}", file=sys.stderr)
                    sys.exit(2)
                raise
            # Hydra would log this job's error and start the next job of a sweep while the
            # other processes still wait in this one's collectives: end all of them instead.
            traceback.print_exc()
            print(f"diffuse {command}: error: a process failed (traceback above)", file=sys.stderr)
            distributed.leave(1)
        finally:
            if distributed.under_submitit():  # one job per process there: leave the group now
                distributed.teardown(ok)

    return task


def _remove_empty_output_dir() -> None:
    """Hydra makes the job's output folder (the run directory for `train`) before the command
    runs; a command refused before writing anything leaves no empty run folder behind. The
    job's folder goes here when it is empty and was made by this command (a sweep job's folder:
    made after it started), never one the user made; main() then removes the parents this
    command made (new_folders.remove_new_folders: `runs/` of a first command, `runs/a` of
    `name=a/b`)."""
    from diffuse_cli.new_folders import is_new_folder
    from diffuse_cli.runs import hydra_output_dir

    out = hydra_output_dir()
    if out is None:
        return
    with contextlib.suppress(OSError):  # not empty, or gone (another process of the job)
        if is_new_folder(out) or os.stat(out).st_mtime >= _STARTED - 1:
            out.rmdir()


def _missing_launcher(args: list[str]) -> str | None:
    """The submitit launchers come with an extra; say so instead of Hydra's 'could not find'."""
    import importlib.util

    for arg in args:
        name = arg.partition("hydra/launcher=")[2]
        if name in ("slurm", "submitit_slurm", "submitit_local"):
            try:
                found = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher")
            except ModuleNotFoundError:  # no hydra_plugins package at all
                found = None
            if found is None:
                return (
                    f"hydra/launcher={name} needs Hydra's submitit launcher: "
                    'pip install "diffuse[cluster]"'
                )
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from diffuse_cli.version import __version__

        print(f"diffuse {__version__}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"diffuse: unknown command '{command}'; choose one of: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    if not COMMANDS[command].composes_config:
        sys.exit(COMMANDS[command].run(rest))

    missing = _missing_launcher(rest)
    if missing:
        print(f"diffuse {command}: error: {missing}", file=sys.stderr)
        sys.exit(2)

    import hydra

    from diffuse_cli.config import register_configs

    register_configs()
    sys.argv = [f"diffuse {command}", *rest]  # Hydra parses sys.argv
    run = hydra.main(
        config_path="pkg://diffuse_cli.configs", config_name=command, version_base="1.3"
    )(_task(command))
    try:
        run()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    from diffuse_cli import distributed
    from diffuse_cli.new_folders import remove_new_folders

    if code != 0:  # the folders a refused command made: parents, a sweep folder, multirun.yaml
        remove_new_folders(leftover=None if _JOBS_DONE else "multirun.yaml")
    if distributed.in_process_group():  # after the last job of a launched run: see distributed
        distributed.leave(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
