"""Certified exit policies: thresholds whose risk stays below epsilon with probability >= 1 - delta (or in expectation).

The calibration data (validation exit outputs) chooses the policy; the guarantee is about new data drawn from the
same distribution. Risks (`risks`), bounds (`bounds`), candidates (`candidates`: one shared threshold, or per-exit
thresholds by Pareto Testing) and procedures (`procedures`: ltt, ucb-wsr, crc) are pure functions on arrays;
`certify_policy` runs them on exit outputs the way `eeopt exits certify` and a study trial do.

What is guaranteed: with exchangeable calibration and deployment samples, P(risk of the certified policy > epsilon)
<= delta over the draw of the calibration data (ltt, ucb-wsr), or E[risk] <= epsilon (crc). Marginal over
calibration draws, not conditional on the one at hand. Whatever chose the score, the calibrator or the model on the
same samples (a threshold search, a study picking its best trial) is not covered: `certify_policy` fits the
calibrator on a part of the calibration data it does not certify on, and studies keep a share of val apart.

Pure NumPy/SciPy (Optuna for the per-exit search).
"""

from eeopt.risk_control.candidates import (
    Candidates,
    pareto_front,
    sequence_candidates,
    shared_candidates,
    split_calibration,
)
from eeopt.risk_control.certify import (
    Certificate,
    RiskControlReport,
    certify_per_exit,
    certify_policy,
    certify_shared,
    policy_numbers,
    realised_risk,
)
from eeopt.risk_control.procedures import PROCEDURES, fixed_sequence, naive_index
from eeopt.risk_control.risks import RISKS, exit_losses

__all__ = ["RISKS", "PROCEDURES", "Certificate", "RiskControlReport", "certify_policy", "certify_shared",
           "certify_per_exit", "policy_numbers", "realised_risk", "exit_losses", "fixed_sequence", "naive_index",
           "Candidates", "shared_candidates", "sequence_candidates", "pareto_front", "split_calibration"]
