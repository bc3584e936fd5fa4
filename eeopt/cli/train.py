"""`eeopt train` and `eeopt data ...`: one multi-exit model, and where the datasets' files are."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from eeopt.cli.common import SetOpt

data_app = typer.Typer(help="Datasets: where their files are, and the one checksummed download.", no_args_is_help=True)
train_app = typer.Typer()


@data_app.command("find")
def data_find(
    name: Annotated[str, typer.Argument(help="Dataset with files to find: fashion-mnist.")] = "fashion-mnist",
    root: Annotated[Optional[str], typer.Option("--root", help="Look only here (data.root).")] = None,
) -> None:
    """Say where the dataset's files are; exit status 1 when they are not found."""
    from eeopt.data.idx import fashion_mnist_dirs, find_fashion_mnist

    _only_fashion_mnist(name)
    found = find_fashion_mnist(root)
    if found is None:
        typer.echo(f"{name}: not found in {', '.join(str(d) for d in fashion_mnist_dirs(root))}", err=True)
        raise typer.Exit(1)
    typer.echo(str(next(iter(found.values())).parent))


@data_app.command("download")
def data_download(
    name: Annotated[str, typer.Argument(help="Dataset to download: fashion-mnist.")] = "fashion-mnist",
    root: Annotated[Optional[str], typer.Option("--root", help="Target folder (default: $EEOPT_DATA_DIR or the cache).")] = None,
) -> None:
    """Download the official files and verify their MD5 checksums (only when they are not already present)."""
    from eeopt.data.idx import download_dir, download_fashion_mnist, find_fashion_mnist

    _only_fashion_mnist(name)
    found = find_fashion_mnist(root)
    if found is not None:
        typer.echo(f"{name}: already present in {next(iter(found.values())).parent}")
        return
    paths = download_fashion_mnist(download_dir(root))
    typer.echo(f"{name}: downloaded and verified {len(paths)} files into {download_dir(root)}")


def _only_fashion_mnist(name: str) -> None:
    if name != "fashion-mnist":
        from eeopt.errors import ConfigError

        raise ConfigError(f"{name!r}: only fashion-mnist has files to find or download (digits ships with scikit-learn)")


# ------------------------------------------------------------------------------------------------------ train

@train_app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Train config (YAML); a study file works too (its fixed part).")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for model.pt, val.npz, test.npz.")],
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write OUTPUT_DIR/plots/ (the plots of a study "
                                        "trial: calibration and policy.score from the config, fitted on val).")] = True,
) -> None:
    """Train one multi-exit model with fixed hyperparameters and assess it as a study trial is (the same pipeline):
    write its exit outputs for `eeopt exits`, its metrics, policy files and plots."""
    from eeopt.config import load_train_config
    from eeopt.training.checks import check_train_config

    from eeopt.files import check_output_path

    check_output_path(output_dir, what="--output-dir", inputs=(config,), folder=True)  # before any training
    cfg = load_train_config(config, overrides or [])
    check_train_config(cfg, source=str(config))
    from eeopt.pipeline import run_trial

    result, _ = run_trial(cfg, output_dir=output_dir, progress=not quiet, plots=plots)
    acc = ", ".join(f"{a:.3f}" for a in result.test.accuracy)
    typer.echo(f"test accuracy per exit: {acc}")
    typer.echo(f"wrote {output_dir / 'model.pt'}, {output_dir / 'val.npz'}, {output_dir / 'test.npz'}, "
               f"{output_dir / 'metrics.json'}, {output_dir / 'policies'}/")
    if result.plots:
        typer.echo(f"plots: {', '.join(str(p) for p in result.plots.values())}")
    typer.echo(f"next: eeopt exits evaluate {output_dir / 'test.npz'} --fit-on {output_dir / 'val.npz'}")


# ------------------------------------------------------------------------------------------------------ study
