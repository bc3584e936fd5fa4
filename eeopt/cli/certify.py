"""`eeopt exits certify`: an exit policy whose risk stays below epsilon with probability >= 1 - delta."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eeopt.cli.common import CalibrateOpt, JsonFlag, ScoreOpt, check_output_file


def exits_certify(
    fit_on: Annotated[Path, typer.Option("--fit-on", help="Calibration outputs (e.g. val.npz): the policy is "
                                         "certified here.")],
    evaluate_on: Annotated[Path, typer.Option("--evaluate-on", help="Outputs the certified policy is reported on "
                                              "(e.g. test.npz); never used to choose.")],
    epsilon: Annotated[float, typer.Option("--epsilon", help="Risk level the policy must keep, in [0, 1).")],
    risk: Annotated[str, typer.Option("--risk", help="performance-gap (wrong where the last exit is right), "
                                      "consistency (differs from the last exit; no labels needed), error, "
                                      "brier-gap.")] = "performance-gap",
    delta: Annotated[float, typer.Option("--delta", help="Allowed probability that the promise fails, in (0, 1).")]
    = 0.1,
    method: Annotated[str, typer.Option("--method", help="ltt (Hoeffding-Bentkus p-values), ucb-wsr "
                                        "(Waudby-Smith-Ramdas bound), crc (conformal risk control: in "
                                        "expectation).")] = "ltt",
    per_exit: Annotated[bool, typer.Option("--per-exit", help="Per-exit thresholds by Pareto Testing (search on "
                                           "one part of --fit-on, test on the other) instead of one shared "
                                           "threshold.")] = False,
    split_share: Annotated[float, typer.Option("--split-share", help="With --per-exit or --calibrate: the share "
                                               "of --fit-on that fits the calibrator and runs the search; the rest "
                                               "certifies.")] = 0.5,
    calibrate: CalibrateOpt = "none",
    score: ScoreOpt = "msp",
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials of the per-exit search.")] = 300,
    sampler: Annotated[str, typer.Option("--sampler", help="nsga2 or tpe.")] = "nsga2",
    seed: Annotated[int, typer.Option("--seed", help="Seeds the calibration split and the search.")] = 0,
    policy_out: Annotated[Optional[Path], typer.Option(
        "--policy-out", help="Write the certified policy file (for `eeopt predict`), with its certification "
        "record.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """A certified exit policy: risk <= epsilon with probability >= 1 - delta on new data from the same
    distribution as --fit-on, beside the uncontrolled val-optimal policy at the same val cost."""
    _check_options(fit_on, evaluate_on, epsilon, risk, delta, method, per_exit, split_share, sampler, policy_out)
    from eeopt.core.outputs import ExitOutputs, check_compatible
    from eeopt.risk_control import certify_policy

    fit, evaluate = ExitOutputs.load(fit_on), ExitOutputs.load(evaluate_on)
    check_compatible(fit, evaluate)
    report = certify_policy(fit, evaluate, risk=risk, epsilon=epsilon, delta=delta, method=method,
                            per_exit=per_exit, calibrate=calibrate, score=score, split_share=split_share, seed=seed,
                            trials=trials, sampler=sampler)
    if policy_out is not None:
        source = {"fit_on": str(fit_on), "evaluate_on": str(evaluate_on), "seed": seed,
                  **({"trials": trials, "sampler": sampler} if per_exit else {})}
        report.policy_file(source=source, calibration_source=str(fit_on)).save(policy_out)
    if as_json:
        from eeopt.files import jsonable

        typer.echo(json.dumps(jsonable(report.to_dict()), indent=1))
        return
    _print_report(report, fit_on, evaluate_on)
    if policy_out is not None:
        typer.echo(f"policy file written to {policy_out} (next: eeopt predict MODEL_DIR --policy {policy_out} "
                   "--split test)")


def _check_options(fit_on, evaluate_on, epsilon, risk, delta, method, per_exit, split_share, sampler,
                   policy_out) -> None:
    """Every option checked before any work; one line naming the option."""
    from eeopt.errors import ConfigError
    from eeopt.risk_control import PROCEDURES, RISKS

    if risk not in RISKS:
        raise ConfigError(f"--risk: unknown risk {risk!r} (known: {', '.join(RISKS)})")
    if method not in PROCEDURES:
        raise ConfigError(f"--method: unknown method {method!r} (known: {', '.join(PROCEDURES)})")
    if not 0 <= epsilon < 1:
        raise ConfigError(f"--epsilon: expected a risk level in [0, 1), got {epsilon}")
    if not 0 < delta < 1:
        raise ConfigError(f"--delta: expected a probability in (0, 1), got {delta}")
    if not 0 < split_share < 1:
        raise ConfigError(f"--split-share: expected a share in (0, 1), got {split_share}")
    if sampler not in ("nsga2", "tpe"):
        raise ConfigError(f"--sampler: expected nsga2 or tpe, got {sampler!r}")
    if policy_out is not None:
        check_output_file(policy_out, "--policy-out")
        for option, path in (("--fit-on", fit_on), ("--evaluate-on", evaluate_on)):
            if path.exists() and policy_out.resolve() == path.resolve():
                raise ConfigError(f"--policy-out {policy_out}: is the {option} file; give another file name")


def _print_report(report, fit_on: Path, evaluate_on: Path) -> None:
    """The promise (or that none was made), then the certified and the uncontrolled policy on both splits."""
    from eeopt import display

    c = report.certificate
    out = display.console()
    promise = (f"expected {c.risk} <= {c.epsilon:g}" if c.method == "crc" else
               f"{c.risk} <= {c.epsilon:g} with probability >= {1 - c.delta:g}")
    stat = {"p_value": "p-value", "bound": "upper bound" if c.method == "ucb-wsr" else "CRC bound"}[
        c.statistic_name]
    tested = f"{c.n} calibration samples" + (f" (the held-out {1 - report.split_share:g} of {fit_on})"
                                             if report.split_share is not None else f" ({fit_on})")
    if c.certified:
        out.print(f"certified: {promise} ({c.method}, {'per-exit thresholds' if c.per_exit else 'one shared threshold'}"
                  f"); {stat} {c.statistic:.4g} on {tested}; {c.passed} of {c.candidates} candidates passed")
    else:
        out.print(f"no policy certified: even the safest of {c.candidates} candidates fails {promise} ({c.method}, "
                  f"{stat} {c.statistic:.4g} on {tested}); the policy is the last exit alone, with no promise")
    last = report.costs[-1]
    rows = []
    for name, label in (("certified", "certified"), ("uncontrolled", "val-optimal")):
        fit, test = report.fit[name], report.report[name]
        rows.append([label, display.fmt(fit["risk"]), display.fmt(fit["accuracy"]),
                     f"{100 * fit['mean_cost'] / last:.1f}%", display.fmt(test["risk"]),
                     display.fmt(test["accuracy"]), f"{100 * test['mean_cost'] / last:.1f}%",
                     f"{test['speedup']:.2f}x"])
    heads = ("policy", "val\nrisk", "val\nacc", "val\ncost", "test\nrisk", "test\nacc", "test\ncost", "test\nspeed-up")
    columns = [display.Column(h, [r[i] for r in rows], justify="left" if i == 0 else "right", key=i == 0,
                              group="val" if h.startswith("val") else "test") for i, h in enumerate(heads)]
    thresholds = " ".join(f"{t:.4g}" for t in c.thresholds)
    display.print_fitted(columns, out=out, title=(
        f"{c.risk} on {fit_on.name} (val, calibration) and {evaluate_on.name} (test, held out); score={report.score}, "
        f"calibration={report.calibration}"), notes=[
        f"certified thresholds (exit1..exit{len(c.thresholds)}): {thresholds}",
        "val-optimal: the most accurate per-exit-searched policy at the certified policy's val cost, no promise; "
        "cost as % of the last exit's"])
