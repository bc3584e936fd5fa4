import numpy as np
import pytest

from eeopt.errors import ExitOutputsError
from eeopt.core.outputs import ExitOutputs, check_compatible, softmax
from eeopt.core.synthetic import synthetic_exit_outputs


def _arrays(k=3, n=20, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        logits=rng.normal(size=(k, n, c)).astype(np.float32),
        labels=rng.integers(0, c, size=n),
        costs=np.array([1.0, 2.0, 3.0])[:k],
    )


def test_roundtrip_and_derived_arrays(tmp_path):
    a = _arrays()
    out = ExitOutputs(**a, scores=np.random.default_rng(1).normal(size=(3, 20)), latency_ms=np.array([0.1, 0.2, 0.4]))
    path = out.save(tmp_path / "x.npz")
    back = ExitOutputs.load(path)
    np.testing.assert_array_equal(back.logits, out.logits)
    np.testing.assert_array_equal(back.labels, out.labels)
    np.testing.assert_array_equal(back.scores, out.scores)
    np.testing.assert_array_equal(back.latency_ms, out.latency_ms)
    # derived arrays against a direct computation
    e = np.exp(a["logits"].astype(np.float64))
    np.testing.assert_allclose(back.probs, e / e.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(back.correct, a["logits"].argmax(-1) == a["labels"])
    np.testing.assert_allclose(back.accuracy, (a["logits"].argmax(-1) == a["labels"]).mean(1))
    assert back.source == str(path)


def test_softmax_is_stable_for_huge_logits():
    p = softmax(np.array([[1e4, 0.0, -1e4]]))
    assert np.all(np.isfinite(p)) and p[0, 0] == pytest.approx(1.0)


def test_select_exits_and_subset():
    out = synthetic_exit_outputs(5, 50, 3, seed=0, with_scores=True)
    sel = out.select_exits([0, 2, 4])
    np.testing.assert_array_equal(sel.logits, out.logits[[0, 2, 4]])
    np.testing.assert_array_equal(sel.costs, out.costs[[0, 2, 4]])
    np.testing.assert_array_equal(sel.scores, out.scores[[0, 2, 4]])
    sub = out.subset(np.arange(10))
    assert sub.num_samples == 10 and sub.scores.shape == (5, 10)
    with pytest.raises(ExitOutputsError, match="increasing"):
        out.select_exits([2, 1])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(logits=np.zeros((2, 3))), "logits must have shape"),
        (dict(logits=np.zeros((3, 20, 4), dtype=np.int64)), "floating point"),
        (dict(labels=np.zeros(19, dtype=int)), "labels must have shape"),
        (dict(labels=np.full(20, 4)), "out of range"),
        (dict(labels=np.full(20, -1)), "out of range"),
        (dict(labels=np.full(20, 0.5)), "integers"),
        (dict(costs=np.array([1.0, 2.0])), "costs must have shape"),
        (dict(costs=np.array([3.0, 2.0, 1.0])), "cumulative"),
        (dict(costs=np.array([-1.0, 2.0, 3.0])), "non-negative"),
        (dict(costs=np.array([1.0, np.inf, 3.0])), "costs contains inf"),
        (dict(scores=np.zeros((3, 19))), "scores must have shape"),
    ],
)
def test_validation_errors(change, message):
    a = _arrays()
    a.update(change)
    with pytest.raises(ExitOutputsError, match=message):
        ExitOutputs(**a)


def test_nan_logits_named_with_position():
    a = _arrays()
    a["logits"][1, 7, 2] = np.nan
    with pytest.raises(ExitOutputsError, match=r"logits contains NaN \(exit 2, sample 7; 1 non-finite"):
        ExitOutputs(**a)


def test_unchecked_outputs_equal_validated_ones_and_still_refuse_nan():
    a = _arrays()
    scores = np.random.default_rng(2).random((3, 20))
    checked, unchecked = ExitOutputs(**a, scores=scores), ExitOutputs.unchecked(**a, scores=scores)
    for name in ("probs", "log_normalizer", "predictions", "confidence", "scores", "costs"):
        np.testing.assert_array_equal(getattr(unchecked, name), getattr(checked, name), err_msg=name)
    a["logits"][2, 5, 1] = np.inf
    with pytest.raises(ExitOutputsError, match=r"logits contains inf \(exit 3, sample 5"):
        ExitOutputs.unchecked(**a)
    scores[0, 3] = np.nan
    with pytest.raises(ExitOutputsError, match=r"scores contains NaN"):
        ExitOutputs.unchecked(**_arrays(), scores=scores)


def test_load_errors(tmp_path):
    with pytest.raises(ExitOutputsError, match="no such file"):
        ExitOutputs.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ExitOutputsError, match="not a readable NumPy .npz"):
        ExitOutputs.load(bad)
    a = _arrays()
    np.savez(tmp_path / "nolabels.npz", logits=a["logits"], costs=a["costs"])
    with pytest.raises(ExitOutputsError, match="missing array 'labels'"):
        ExitOutputs.load(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "typo.npz", **a, score=np.zeros((3, 20)))
    with pytest.raises(ExitOutputsError, match="unknown array 'score'"):
        ExitOutputs.load(tmp_path / "typo.npz")


def test_check_compatible():
    a = ExitOutputs(**_arrays())
    b = ExitOutputs(**_arrays(seed=1))
    check_compatible(a, b)
    c = _arrays(c=5)
    with pytest.raises(ExitOutputsError, match="5 classes"):
        check_compatible(a, ExitOutputs(**c))
    d = _arrays()
    d["costs"] = np.array([1.0, 2.0, 4.0])
    with pytest.raises(ExitOutputsError, match="costs"):
        check_compatible(a, ExitOutputs(**d))


def test_synthetic_outputs_look_like_a_multi_exit_network():
    out = synthetic_exit_outputs(6, 4000, 10, seed=3)
    assert np.all(np.diff(out.costs) > 0)
    assert np.all(np.diff(out.accuracy) > 0)
