"""`eeopt predict` and `eeopt profile`: run a policy file on a trained model with early exits; time each exit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eeopt.cli.common import JsonFlag, check_output_file

predict_app = typer.Typer()

ModelDirArg = Annotated[Path, typer.Argument(help="Model folder written by `eeopt train --output-dir`.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="Where the network runs: cpu, cuda, cuda:1, ...")]


@predict_app.command("predict")
def predict_cmd(
    model_dir: ModelDirArg,
    policy: Annotated[Path, typer.Option("--policy", help="Policy file (from `eeopt exits search --policy-out`).")],
    split: Annotated[Optional[str], typer.Option(
        "--split", help="val or test: the split the model was trained with; reports accuracy, mean cost, exit "
        "shares.")] = None,
    input_file: Annotated[Optional[Path], typer.Option(
        "--input", help="Inputs [N, C, H, W] (.npy), preprocessed like the model's dataset.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", help="Write predictions, exits (0-based) and scores here (.npz).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    device: DeviceOpt = "cpu",
    as_json: JsonFlag = False,
) -> None:
    """Predict with early exits: each sample stops at the first exit whose score passes the policy's threshold."""
    from eeopt.errors import ConfigError

    if (split is None) == (input_file is None):
        raise ConfigError("give exactly one of --split (val or test) and --input FILE.npy")
    if split is not None and split not in ("val", "test"):
        raise ConfigError(f"--split: expected val or test, got {split!r}")
    if output is not None:
        check_output_file(output, "--output", inputs=(policy, input_file, *_model_files(model_dir)))
        if output.suffix != ".npz":
            raise ConfigError(f"--output {output}: expected a .npz file name")
    from eeopt.core.policy_file import PolicyFile

    loaded = PolicyFile.load(policy)
    inputs = _read_inputs(input_file) if input_file is not None else None
    from eeopt import inference

    if split is not None:
        summary, prediction = inference.predict_split(model_dir, loaded, split, batch_size=batch_size,
                                                      device=device)
    else:
        model, _ = inference.load_model_dir(model_dir)
        prediction = inference.EarlyExitPredictor(model, loaded, device=device).predict(inputs, batch_size)
        summary = None
    if output is not None:
        _write_prediction(output, prediction)
    if summary is None:
        if output is None:
            typer.echo(json.dumps({"predictions": prediction.labels.tolist(), "exits": prediction.exits.tolist(),
                                   "scores": prediction.scores.tolist()}))
        else:
            typer.echo(f"wrote {output} ({prediction.labels.size} predictions)")
        return
    if loaded.report is not None and loaded.report.get("split") == split:
        summary["policy_file"] = {k: loaded.report.get(k) for k in ("accuracy", "mean_cost", "exit_shares")}
    if as_json:
        from eeopt.files import jsonable

        typer.echo(json.dumps(jsonable(summary), indent=1))
        return
    _print_summary(summary, loaded, policy)
    if output is not None:
        typer.echo(f"wrote {output}")


@predict_app.command("profile")
def profile_cmd(
    model_dir: ModelDirArg,
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per timed batch.")] = 1,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs (median, p10, p90 over them).")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 3,
    write: Annotated[bool, typer.Option("--write/--no-write", help="Store latency_ms (ms per sample at this batch "
                                        "size) in MODEL_DIR's val.npz and test.npz.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Measure the cumulative latency to each exit on this machine; store it in the exit outputs as latency_ms."""
    if write and model_dir.is_dir():  # val.npz and test.npz are rewritten in place: the folder must take new files
        check_output_file(model_dir / "val.npz", "MODEL_DIR (--write)")
    from eeopt.inference import profile_model_dir

    profile, written = profile_model_dir(model_dir, device=device, batch_size=batch_size, warmup=warmup,
                                         repeats=repeats, write=write)
    if as_json:
        typer.echo(json.dumps({**profile.to_dict(), "written": [str(p) for p in written]}, indent=1))
        return
    _print_profile(profile, profile.flops)
    if written:
        typer.echo(f"latency_ms (per sample) written to {', '.join(str(p) for p in written)}")


# ------------------------------------------------------------------------------------------------------ helpers
def _read_inputs(path: Path):
    import numpy as np

    from eeopt.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"--input {path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"--input {path}: not a readable .npy array ({str(exc).splitlines()[0]})") from None
    if not isinstance(array, np.ndarray):
        raise ConfigError(f"--input {path}: expected one .npy array [N, C, H, W], got an .npz archive")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ConfigError(f"--input {path}: expected a numeric array, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ConfigError(f"--input {path}: contains NaN or inf")
    return array


def _model_files(model_dir: Path) -> tuple[Path, ...]:
    """The files of a model folder that predict and profile read (an output must not replace them)."""
    return tuple(model_dir / name for name in ("model.pt", "val.npz", "test.npz"))


def _write_prediction(path: Path, prediction) -> None:
    import numpy as np

    from eeopt.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, predictions=prediction.labels, exits=prediction.exits, scores=prediction.scores)

    atomic_write(path, write)


def _print_summary(summary: dict, policy, policy_path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = summary["cost_unit"]
    last = policy.costs[-1]
    table = Table(title=f"{policy_path}: score={policy.score}, calibrator={policy.calibrator}, "
                        f"{summary['split']} split ({summary['samples']} samples)", title_justify="left")
    for col in ("exit", "threshold", f"cost ({unit})", "share leaving"):
        table.add_column(col, justify="right")
    thresholds = [*policy.thresholds, None]
    for k, (share, cost) in enumerate(zip(summary["exit_shares"], policy.costs)):
        thr = "(rest)" if thresholds[k] is None else f"{thresholds[k]:.4g}"
        table.add_row(f"exit{k + 1}", thr, f"{cost:.4g}", f"{100 * share:.1f}%")
    console = Console()
    console.print(table)
    line = (f"accuracy {summary['accuracy']:.4f}   mean cost {summary['mean_cost']:.4g} {unit} "
            f"({100 * summary['mean_cost'] / last:.1f}% of the last exit's)   {summary['seconds']:.2f} s on "
            f"{summary['device']}, batch {summary['batch_size']}")
    console.print(line)
    recorded = summary.get("policy_file")
    if recorded and recorded.get("accuracy") is not None:
        console.print(f"the policy file recorded: accuracy {recorded['accuracy']:.4f}, "
                      f"mean cost {recorded['mean_cost']:.4g} {unit}")
    cert = summary.get("certification")
    if cert:
        promise = (f"expected {cert['risk']} <= {cert['epsilon']:g}" if cert["method"] == "crc" else
                   f"{cert['risk']} <= {cert['epsilon']:g} with probability >= {1 - cert['delta']:g}")
        realised = cert["note"] if cert["realised_risk"] is None else f"{cert['realised_risk']:.4f}"
        head = "certified" if cert.get("certified", True) else "no policy was certified (the last exit alone) for"
        console.print(f"{head}: {promise} ({cert['method']}); realised {cert['risk']} on the {summary['split']} "
                      f"split: {realised}")


def _print_profile(profile, flops) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cumulative latency per exit: batch {profile.batch_size} on {profile.device}, median of "
                        f"{profile.repeats} runs after {profile.warmup} warm-up", title_justify="left")
    for col in ("exit", "median ms", "p10 ms", "p90 ms", "ms / sample", "share of last (measured)",
                "share of last (FLOPs)"):
        table.add_column(col, justify="right")
    last_ms = profile.median_ms[-1]
    for k in range(len(profile.median_ms)):
        flop_share = "-" if flops is None else f"{100 * flops[k] / flops[-1]:.1f}%"
        table.add_row(f"exit{k + 1}", f"{profile.median_ms[k]:.3f}", f"{profile.p10_ms[k]:.3f}",
                      f"{profile.p90_ms[k]:.3f}", f"{profile.per_sample_ms[k]:.4f}",
                      f"{100 * profile.median_ms[k] / last_ms:.1f}%", flop_share)
    Console().print(table)
