"""Which policy to deploy from a threshold search: the val-chosen policy at a budget, or the knee of the val front.

The result is a `PolicyFile` (`eeopt.core.policy_file`), the form `eeopt predict` and `EarlyExitPredictor` take.
Pure numpy: no torch here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from eeopt.core.metrics.efficiency import BUDGET_RTOL, frontier_indices, select_by_budget
from eeopt.core.policy_file import PolicyFile, PolicyFileError, check_budget

if TYPE_CHECKING:
    from eeopt.core.calibration import Calibrator
    from eeopt.core.search import PolicySearch


def policy_from_search(
    search: PolicySearch,
    budget: float | None,
    *,
    calibrator: Calibrator | None = None,
    source: dict | None = None,
    cost_unit: str = "flops",
) -> PolicyFile:
    """The policy file of one per-exit-searched policy, chosen on val.

    Args:
        search: `eeopt.core.search.search_policies`' result (val front, test numbers).
        budget: a share of the last exit's cost in (0, 1]: the val-chosen policy at that budget (the best val
            accuracy with val mean cost <= budget, the rule of `eeopt.core.metrics.efficiency`; at 0.25/0.5/0.75/1 it is
            exactly the policy behind acc_at_25.. acc_at_100). None: the *knee* of the val front, the policy farthest
            above the straight line from the cheapest to the most accurate front point (cost as a share of the last
            exit's, accuracy as a share of the front's accuracy range): the point where paying more cost stops
            buying much accuracy. (acc_cost_auc scores a whole front, so no single policy is "the best" for it.)
        calibrator: the calibrator fitted on val that `search` was prepared with (its state goes into the file);
            None when it was prepared without one.
        source: provenance to record.
        cost_unit: the unit of `search.costs`.

    Raises:
        PolicyFileError: `budget` outside (0, 1], no val policy within it, or the calibrator is not the search's.
    """
    result = search.result
    costs = np.asarray(search.costs, dtype=np.float64)
    cal_name = calibrator.name if calibrator is not None else "none"
    if cal_name != search.calibration:
        raise PolicyFileError(f"policy: calibrator: the search was prepared with {search.calibration!r}, "
                              f"got {cal_name!r}")
    if budget is None:
        index = knee_index(result.fit.mean_cost / costs[-1], result.fit.accuracy)
    else:
        budget = check_budget(budget, "budget")
        index = select_by_budget(result.fit.mean_cost, result.fit.accuracy, budget * costs[-1],
                                 BUDGET_RTOL * costs[-1])
        if index < 0:
            cheapest = float(np.nanmin(result.fit.mean_cost) / costs[-1])
            raise PolicyFileError(f"budget: no policy costs at most {budget} of the last exit's cost on val "
                                  f"(the cheapest costs {cheapest:.4f})")
    report = None
    if result.report is not None:
        report = {"split": "test", "accuracy": float(result.report.accuracy[index]),
                  "mean_cost": float(result.report.mean_cost[index]),
                  "exit_shares": [float(s) for s in result.report.exit_share[index]]}
    return PolicyFile(
        score=search.score,
        thresholds=tuple(float(t) for t in result.thresholds[index]),
        costs=tuple(float(c) for c in costs),
        cost_unit=cost_unit,
        budget=budget,
        calibrator=cal_name,
        calibrator_state=calibrator.state_dict() if calibrator is not None else None,
        chosen_on={"split": "val", "accuracy": float(result.fit.accuracy[index]),
                   "mean_cost": float(result.fit.mean_cost[index]),
                   "exit_shares": [float(s) for s in result.fit.exit_share[index]],
                   "rule": "knee of the val front" if budget is None else f"best val accuracy within {budget}"},
        report=report,
        source=source,
    )


def knee_index(cost_share, accuracy) -> int:
    """Index of the knee of an accuracy-cost front: the point of greatest (normalised) height above the chord from
    the cheapest point to the most accurate one; ties go to the cheaper point. NaN points are ignored.

    Args:
        cost_share: [P] mean cost as a share of the last exit's cost; accuracy: [P].
    """
    cost = np.asarray(cost_share, dtype=np.float64)
    acc = np.asarray(accuracy, dtype=np.float64)
    front = frontier_indices(cost, acc)
    if front.size == 0:
        raise PolicyFileError("policy: no candidate policy to choose from")
    c, a = cost[front], acc[front]
    if front.size <= 2 or a[-1] <= a[0]:
        return int(front[-1] if a[-1] > a[0] else front[0])
    x = (c - c[0]) / max(c[-1] - c[0], 1e-300)
    y = (a - a[0]) / (a[-1] - a[0])
    return int(front[np.argmax(y - x)])  # argmax: the first (cheapest) of equal heights
