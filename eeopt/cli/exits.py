"""`eeopt exits ...`: bring your own exit outputs (.npz): metrics, calibration, threshold search, analysis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eeopt.cli.certify import exits_certify
from eeopt.cli.common import CalibrateOpt, JsonFlag, ScoreOpt, check_output_dir, check_output_file

exits_app = typer.Typer(help="Bring your own exit outputs (.npz): metrics, calibration, threshold search, analysis.",
                        no_args_is_help=True)


@exits_app.command("evaluate")
def exits_evaluate(
    outputs: Annotated[Path, typer.Argument(help="Exit outputs to evaluate (e.g. test.npz).")],
    fit_on: Annotated[Optional[Path], typer.Option("--fit-on", help="Validation outputs: fit calibrator and thresholds here.")] = None,
    calibrate: CalibrateOpt = "none",
    score: ScoreOpt = "msp",
    compare: Annotated[Optional[str], typer.Option(
        "--compare", help="Also evaluate under these calibrators, fitted on --fit-on: e.g. none,temperature,isotonic "
        "(keys calib/{name}/...).")] = None,
    as_json: JsonFlag = False,
    curve: Annotated[bool, typer.Option("--curve", help="With --json: the full sweep curve, not only its frontier.")] = False,
    plots: Annotated[Optional[Path], typer.Option(
        "--plots", help="Write the plots of a study trial here (with --fit-on, the per-exit threshold search too: "
        "300 trials, seed 0).")] = None,
) -> None:
    """Per-exit calibration and failure-prediction metrics, and global-threshold efficiency."""
    if plots is not None:
        check_output_dir(plots, "--plots", inputs=(outputs, fit_on))
    from eeopt.core.evaluation import evaluate_exits
    from eeopt.core.outputs import ExitOutputs

    evaluated = ExitOutputs.load(outputs)
    fit = ExitOutputs.load(fit_on) if fit_on is not None else None
    names = [c.strip() for c in compare.split(",") if c.strip()] if compare else []
    report = evaluate_exits(evaluated, fit_on=fit, calibrate=calibrate, score=score, compare=names)
    written = write_plots(plots, evaluated, fit, calibrate, score) if plots is not None else {}
    if as_json:
        typer.echo(json.dumps(report.to_dict(curve=curve), indent=1))
        return
    from eeopt import display

    display.print_report(report, evaluated)
    if written:
        typer.echo(f"plots: {', '.join(str(p) for p in written.values())}")


def write_plots(folder: Path, evaluated, fit, calibrate: str, score: str) -> dict:
    """The plots of a study trial for these outputs: with validation outputs, the model assessed as a trial is
    (calibrator fitted on val, per-exit search on val, reported on the evaluated split); without, the evaluated
    split alone (in-sample)."""
    from eeopt.plots import save_plots, save_variant_plots

    if fit is not None:
        from eeopt.assess import assess_model

        return save_variant_plots(assess_model(fit, evaluated, calibration=calibrate, score=score).primary, folder)
    from eeopt.core.evaluation import evaluate
    from eeopt.core.prepared import prepare_pair

    _, split = prepare_pair(None, evaluated, calibrate=calibrate, score=score,
                            names=("fit", Path(evaluated.source).stem))
    return save_plots(folder, split, evaluate(split))


@exits_app.command("search")
def exits_search(
    fit_on: Annotated[Path, typer.Option("--fit-on", help="Validation outputs: thresholds are searched here.")],
    evaluate_on: Annotated[Path, typer.Option("--evaluate-on", help="Test outputs: the val-chosen policies are reported here.")],
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials.")] = 300,
    score: ScoreOpt = "msp",
    calibrate: CalibrateOpt = "none",
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2 or tpe.")] = "nsga2",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    save_policy: Annotated[Optional[Path], typer.Option("--save-policy", help="Write the chosen policies (JSON).")] = None,
    policy_out: Annotated[Optional[Path], typer.Option(
        "--policy-out", help="Write one deployable policy file (for `eeopt predict`): the val-chosen policy at "
        "--budget, or without it the knee of the val front; with the calibrator's fitted state.")] = None,
    budget: Annotated[Optional[float], typer.Option(
        "--budget", help="With --policy-out: share of the last exit's cost, in (0, 1] (0.5 = 50 %).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Per-exit threshold search on validation (Optuna), reported on test beside the global sweep."""
    from eeopt.errors import ConfigError

    if sampler not in ("nsga2", "tpe"):
        raise ConfigError(f"--sampler: expected nsga2 or tpe, got {sampler!r}")
    if save_policy is not None:
        check_output_file(save_policy, "--save-policy", inputs=(fit_on, evaluate_on))
    if budget is not None and policy_out is None:
        raise ConfigError("--budget: only with --policy-out FILE (it picks the policy written there)")
    if budget is not None and not 0 < budget <= 1:
        raise ConfigError(f"--budget: expected a share of the last exit's cost in (0, 1] (0.5 for 50 %), "
                          f"got {budget}")
    if policy_out is not None:
        check_output_file(policy_out, "--policy-out", inputs=(fit_on, evaluate_on, save_policy))
    from eeopt.files import atomic_write_text, jsonable
    from eeopt.core.outputs import ExitOutputs, check_compatible
    from eeopt.core.prepared import fit_calibrator, prepare_pair
    from eeopt.core.search import search_policies

    val_outputs, test_outputs = ExitOutputs.load(fit_on), ExitOutputs.load(evaluate_on)
    check_compatible(val_outputs, test_outputs)
    calibrator = fit_calibrator(calibrate, val_outputs)  # fitted once: the policy file keeps its state
    val, test = prepare_pair(val_outputs, test_outputs, calibrate=calibrator, score=score)
    search = search_policies(val, test, trials=trials, sampler=sampler, seed=seed)
    summary = search.to_dict()
    if policy_out is not None:
        from eeopt.core.policy_choice import policy_from_search

        source = {"fit_on": str(fit_on), "evaluate_on": str(evaluate_on), "trials": trials, "sampler": sampler,
                  "seed": seed}
        policy_from_search(search, budget, calibrator=calibrator, source=source).save(policy_out)
    if save_policy is not None:
        atomic_write_text(save_policy, json.dumps(jsonable(summary["policies"]), indent=2))
    if as_json:
        typer.echo(json.dumps(jsonable(summary), indent=1))
        return
    from eeopt import display

    display.print_search(summary)
    if save_policy is not None:
        typer.echo(f"policies written to {save_policy}")
    if policy_out is not None:
        typer.echo(f"policy file written to {policy_out} (next: eeopt predict MODEL_DIR --policy {policy_out} "
                   "--split test)")


exits_app.command("certify")(exits_certify)


@exits_app.command("analyze")
def exits_analyze(
    folders: Annotated[list[Path], typer.Argument(help="One folder per model with val.npz and test.npz.")],
    target: Annotated[Optional[str], typer.Option("--target", help="Efficiency target of the table (default acc_cost_auc).")] = None,
    split: Annotated[str, typer.Option("--split", help="test (held out) or val.")] = "test",
    compare: Annotated[Optional[str], typer.Option("--compare", help="Calibrators, comma-separated (default: none and all).")] = None,
    score: ScoreOpt = "msp",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials of each threshold search (policy.trials).")] = 300,
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2 or tpe (policy.sampler).")] = "nsga2",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the threshold search (policy.seed).")] = 0,
    per_exit: Annotated[bool, typer.Option("--per-exit", help="Also list the per-exit proxies.")] = False,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", help="Write report.md and plots here.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Which proxy predicts efficiency, over models trained elsewhere (bring your own exit outputs)."""
    from eeopt.errors import ConfigError

    if split not in ("val", "test"):
        raise ConfigError(f"--split: expected val or test, got {split!r}")
    if output_dir is not None:
        check_output_dir(output_dir, "--output-dir")
    from eeopt.analysis import analyze, write_report
    from eeopt.analysis.gather import assess_folders

    names = [c.strip() for c in compare.split(",") if c.strip()] if compare else None
    points, curves = assess_folders(folders, compare=names, score=score, trials=trials, sampler=sampler, seed=seed,
                                    split=split, progress=lambda line: typer.echo(line, err=True))
    analysis = analyze(points, targets=[target] if target else None)
    if output_dir is not None:
        best = max(curves, key=lambda name: curves[name]["none"][1].max() if "none" in curves[name] else 0.0)
        write_report(analysis, output_dir, curves=curves[best], split=split, curves_model=best)
    show_analysis(analysis, as_json, target, per_exit, output_dir)


def show_analysis(analysis, as_json: bool, target: str | None, per_exit: bool, output_dir: Path | None) -> None:
    """The analysis as JSON, or as the proxy table (and where the report went)."""
    if as_json:
        typer.echo(json.dumps(analysis.to_dict(), indent=1))
        return
    from eeopt import display

    display.print_analysis(analysis, target, per_exit)
    if output_dir is not None:
        typer.echo(f"report: {output_dir / 'report.md'}")


@exits_app.command("synthesize")
def exits_synthesize(
    output_dir: Annotated[Path, typer.Argument(help="Folder for val.npz and test.npz.")],
    exits: Annotated[int, typer.Option("--exits", min=1)] = 6,
    samples: Annotated[int, typer.Option("--samples", min=10)] = 5000,
    classes: Annotated[int, typer.Option("--classes", min=2)] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write synthetic exit outputs (later exits cost more and predict better) to try the tools without a model."""
    check_output_dir(output_dir, "OUTPUT_DIR")
    from eeopt.files import atomic_write
    from eeopt.core.synthetic import synthetic_exit_outputs

    for offset, split in enumerate(("val", "test")):
        out = synthetic_exit_outputs(exits, samples, classes, seed=seed * 2 + offset)
        path = atomic_write(output_dir / f"{split}.npz", out.save)
        typer.echo(f"wrote {path} ({exits} exits, {samples} samples, accuracy per exit "
                   f"{', '.join(f'{a:.3f}' for a in out.accuracy)})")


# ------------------------------------------------------------------------------------------------------ data
