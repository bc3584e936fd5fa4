"""Post-hoc calibrators: fitted per exit on validation outputs, applied to any split of the same model.

A calibrator maps `ExitOutputs` to new `ExitOutputs` whose softmax gives the calibrated probabilities; labels, costs
and scores are kept. Built-ins (each fitted independently per exit k):

- ``temperature``: softmax(z / T_k), one scalar T_k > 0 minimising validation NLL (Guo et al., 2017). Never changes
  the prediction, but it DOES change the order of max-softmax confidences between samples (see `kendall_tau`);
- ``vector``: softmax(z * w_k + b_k) with per-class w_k, b_k [C] (Guo et al., 2017); may change predictions;
- ``histogram``: histogram binning of the top-label confidence (Zadrozny & Elkan, 2001);
- ``isotonic``: isotonic regression of correctness on the top-label confidence (Zadrozny & Elkan, 2002).

The top-label calibrators (``histogram``, ``isotonic``) only give a calibrated confidence c' of the predicted class;
`top_label_probs` turns it into a full distribution that keeps the prediction, set exactly (`ExitOutputs.with_probs`),
so samples given the same c' keep exactly the same confidence and their ties stay ties.

The paper behind eeopt argues that calibration is the wrong proxy for early-exit efficiency because calibrators
re-rank samples within an exit; `kendall_tau` measures exactly that.

Calibrated outputs are float64. Add a calibrator with `register_calibrator`; build one with `create_calibrator`.
"""

from eeopt.core.calibration import builtin as _builtin  # noqa: F401  (registers the built-in calibrators)
from eeopt.core.calibration.base import (
    CALIBRATORS,
    Calibrator,
    TopLabelCalibrator,
    create_calibrator,
    list_calibrators,
    register_calibrator,
)
from eeopt.core.calibration.builtin import HistogramBinning, IsotonicCalibration, TemperatureScaling, VectorScaling
from eeopt.core.calibration.functional import (
    LOG_TEMPERATURE_BOUNDS,
    TOP_LABEL_CEIL_GAP,
    TOP_LABEL_MARGIN,
    fit_temperature,
    fit_vector_scaling,
    kendall_tau,
    top_label_logits,
    top_label_probs,
)

__all__ = [
    "CALIBRATORS",
    "LOG_TEMPERATURE_BOUNDS",
    "TOP_LABEL_CEIL_GAP",
    "TOP_LABEL_MARGIN",
    "Calibrator",
    "HistogramBinning",
    "IsotonicCalibration",
    "TemperatureScaling",
    "TopLabelCalibrator",
    "VectorScaling",
    "create_calibrator",
    "fit_temperature",
    "fit_vector_scaling",
    "kendall_tau",
    "list_calibrators",
    "register_calibrator",
    "top_label_logits",
    "top_label_probs",
]
