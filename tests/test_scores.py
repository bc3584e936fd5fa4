import math

import numpy as np
import pytest

from eeopt.errors import ExitOutputsError
from eeopt.registry import UnknownNameError
from eeopt.core.outputs import ExitOutputs
from eeopt.core.scores import compute_score, list_scores, register_score
from eeopt.core.synthetic import synthetic_exit_outputs


def _loop_scores(name, probs):
    """Brute force per sample with plain Python."""
    k, n, c = probs.shape
    out = np.zeros((k, n))
    for i in range(k):
        for j in range(n):
            p = sorted(probs[i, j].tolist(), reverse=True)
            if name == "msp":
                out[i, j] = p[0]
            elif name == "margin":
                out[i, j] = p[0] - p[1]
            elif name == "entropy":
                out[i, j] = sum(q * math.log(q) for q in p if q > 0) / math.log(c)
            elif name == "doctor":
                out[i, j] = sum(q * q for q in p)
    return out


@pytest.mark.parametrize("name", ["msp", "margin", "entropy", "doctor"])
def test_builtin_scores_match_brute_force(name):
    out = synthetic_exit_outputs(3, 60, 5, seed=4)
    np.testing.assert_allclose(compute_score(name, out), _loop_scores(name, out.probs), rtol=1e-10, atol=1e-12)


def test_doctor_orders_like_doctor_d_alpha():
    out = synthetic_exit_outputs(2, 200, 4, seed=5)
    g = compute_score("doctor", out)
    d_alpha = (1 - g) / g  # DOCTOR rejects when D_alpha is large
    assert np.all(np.argsort(g, axis=1, kind="stable") == np.argsort(-d_alpha, axis=1, kind="stable"))


def test_entropy_handles_exact_zero_probabilities():
    logits = np.array([[[0.0, -1e4, -1e4]]])
    out = ExitOutputs(logits, np.array([0]), np.array([1.0]))
    assert compute_score("entropy", out)[0, 0] == pytest.approx(0.0, abs=1e-12)


def test_learned_score_needs_scores_array():
    out = synthetic_exit_outputs(2, 10, 3, seed=0)
    with pytest.raises(ExitOutputsError, match="needs a 'scores' array"):
        compute_score("learned", out)
    with_scores = synthetic_exit_outputs(2, 10, 3, seed=0, with_scores=True)
    np.testing.assert_array_equal(compute_score("learned", with_scores), with_scores.scores)


def test_registry():
    assert {"msp", "entropy", "margin", "doctor", "learned"} <= set(list_scores())
    with pytest.raises(UnknownNameError, match="unknown score 'nope' \\(known: doctor, entropy"):
        compute_score("nope", synthetic_exit_outputs(2, 10, 3))

    @register_score("test_negative_msp")
    def _neg(outputs):
        return -outputs.confidence

    out = synthetic_exit_outputs(2, 10, 3)
    np.testing.assert_array_equal(compute_score("test_negative_msp", out), -out.confidence)
    with pytest.raises(ValueError, match="already registered"):
        register_score("msp")(_neg)
