"""Output files (eeopt.files): every command refuses an unwritable or wrong output location in one line before any
work, never overwrites one of its own inputs, writes atomically, and converts results to strict JSON one way."""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from eeopt.cli import main
from eeopt.errors import ConfigError
from eeopt.files import atomic_write, atomic_write_text, check_output_path, jsonable
from eeopt.core.synthetic import synthetic_exit_outputs

ROOT = Path(__file__).resolve().parents[1]


def _probe(folder: Path) -> bool:
    """Whether a new file can be created in `folder` (what the OS really allows, not what `os.access` says)."""
    try:
        (folder / ".probe").write_text("")
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


@pytest.fixture
def read_only(tmp_path):
    """An existing folder no new file can be created in. As a normal user chmod 0o500 does it; root ignores
    permission bits, so as root the folder is made immutable (chattr +i, which binds root too)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"")  # a model folder for `profile`
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o500)
        made, undo = True, ["chmod", "700", str(folder)]
    if not made or _probe(folder):
        subprocess.run(undo, capture_output=True)
        pytest.skip("no way to make a read-only folder here (root without chattr +i)")
    yield folder
    subprocess.run(undo, check=True)


@pytest.fixture
def npz(tmp_path):
    val = synthetic_exit_outputs(3, 300, 5, seed=1)
    test = synthetic_exit_outputs(3, 200, 5, seed=2)
    return val.save(tmp_path / "val.npz"), test.save(tmp_path / "test.npz")


def _refused(capsys, argv, path) -> str:
    """The command exits with 2 and prints one line naming `path`, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err, err
    return err


def _study_file(tmp_path, name, runs_dir=None) -> Path:
    study = tmp_path / f"{name}.yaml"
    runs = f", runs_dir: '{runs_dir}'" if runs_dir is not None else ""
    study.write_text(f"study: {{name: {name}{runs}}}\n")
    return study


# The commands that ended in a traceback (or, for train and studies, after the work) with an unwritable output.
# Each entry: the argv, with RO for the read-only folder; the path the message must name.
COMMANDS = {
    "exits synthesize": (["exits", "synthesize", "RO/out"], "RO/out"),
    "exits evaluate --plots": (["exits", "evaluate", "TEST", "--plots", "RO/plots"], "RO/plots"),
    "exits search --policy-out": (["exits", "search", "--fit-on", "VAL", "--evaluate-on", "TEST", "--policy-out",
                                   "RO/p.json"], "RO/p.json"),
    "exits search --save-policy": (["exits", "search", "--fit-on", "VAL", "--evaluate-on", "TEST", "--save-policy",
                                    "RO/p.json"], "RO/p.json"),
    "exits certify --policy-out": (["exits", "certify", "--fit-on", "VAL", "--evaluate-on", "TEST", "--epsilon",
                                    "0.1", "--policy-out", "RO/p.json"], "RO/p.json"),
    "exits analyze --output-dir": (["exits", "analyze", "DIR", "--output-dir", "RO/report"], "RO/report"),
    "train -o": (["train", ROOT / "studies" / "quickstart.yaml", "-o", "RO/run"], "RO/run"),
    "predict --output": (["predict", "DIR", "--policy", "DIR/p.json", "--split", "test", "--output", "RO/p.npz"],
                         "RO/p.npz"),
    "profile": (["profile", "RO"], "RO/val.npz"),
    "study export -o": (["study", "export", "STUDY", "-o", "RO/trials.csv"], "RO/trials.csv"),
    "study export --best --policy": (["study", "export", "STUDY", "--best", "--policy", "RO/p.json"], "RO/p.json"),
    "study analyze --output-dir": (["study", "analyze", "STUDY", "--output-dir", "RO/report"], "RO/report"),
    "study run (runs_dir read-only)": (["study", "run", "RO_STUDY"], "RO"),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_read_only_output_is_refused_before_any_work(name, read_only, npz, tmp_path, capsys):
    argv, named = COMMANDS[name]
    val_path, test_path = npz
    places = {"RO_STUDY": str(_study_file(tmp_path, "ro", runs_dir=read_only / "runs")),
              "STUDY": str(_study_file(tmp_path, "s")),
              "VAL": str(val_path), "TEST": str(test_path), "DIR": str(tmp_path), "RO": str(read_only)}

    def fill(text):
        head, _, rest = str(text).partition("/")
        return str(text) if head not in places else places[head] + (f"/{rest}" if rest else "")

    before = sorted(p.name for p in tmp_path.iterdir())
    err = _refused(capsys, [fill(a) for a in argv], fill(named))
    assert "cannot write in" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no store, no runs folder, nothing trained
    assert sorted(p.name for p in read_only.iterdir()) == ["model.pt"]


def test_a_file_where_a_folder_is_needed(tmp_path, npz, capsys):
    """The runs folder (or any output folder) under a file: `study.runs_dir` names the field and the file."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    study = _study_file(tmp_path, "s", runs_dir=blocker)
    err = _refused(capsys, ["study", "run", study], blocker)
    assert "study.runs_dir" in err and str(study) in err and "not a directory" in err
    _refused(capsys, ["exits", "search", "--fit-on", npz[0], "--evaluate-on", npz[1], "--policy-out",
                      blocker / "out.json"], blocker / "out.json")
    _refused(capsys, ["train", ROOT / "studies" / "quickstart.yaml", "-o", blocker / "run"], blocker / "run")


def test_search_never_overwrites_its_input(npz, tmp_path, capsys):
    val_path, test_path = npz
    before = val_path.read_bytes()
    search = ["exits", "search", "--fit-on", val_path, "--evaluate-on", test_path, "--trials", "5"]
    err = _refused(capsys, [*search, "--policy-out", val_path], val_path)
    assert "is also an input" in err
    link = tmp_path / "link.npz"
    link.symlink_to(val_path)
    _refused(capsys, [*search, "--policy-out", link], link)  # the same file under another name
    _refused(capsys, [*search, "--save-policy", test_path], test_path)
    # predict reads MODEL_DIR's test.npz with --split test: --output there is refused before the model is loaded
    _refused(capsys, ["predict", tmp_path, "--policy", tmp_path / "p.json", "--split", "test", "--output",
                      test_path], test_path)
    assert val_path.read_bytes() == before


def test_check_output_path_accepts_what_it_should(tmp_path):
    assert check_output_path(tmp_path / "a" / "b", what="--x", folder=True) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checking creates nothing
    target = tmp_path / "f.json"
    assert check_output_path(target, what="--x", inputs=(None, tmp_path / "g.json")) == target
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    with pytest.raises(ConfigError, match=r"^--x .*: no such directory"):
        check_output_path(tmp_path / "a" / "f.json", what="--x")


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = atomic_write_text(tmp_path / "sub" / "r.json", "old")  # the folder is created
    assert target.read_text() == "old"

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["r.json"]
    out = synthetic_exit_outputs(2, 20, 3, seed=0)
    saved = atomic_write(tmp_path / "o.npz", out.save)  # np.savez keeps the name: the temporary ends in .npz
    np.testing.assert_array_equal(np.load(saved)["logits"], out.logits)


def test_jsonable_is_strict_json():
    value = {1: np.float32(0.5), "a": (np.int64(3), np.bool_(True), math.nan, -math.inf),
             "arr": np.array([[1.0, np.inf]]), "s": "x", "n": None}
    expected = {"1": 0.5, "a": [3, True, None, None], "arr": [[1.0, None]], "s": "x", "n": None}
    out = jsonable(value)
    assert out == expected and json.loads(json.dumps(out, allow_nan=False)) == expected
    assert type(out["a"][0]) is int and type(out["a"][1]) is bool
    assert jsonable([math.inf, -math.inf, math.nan, 2.0], infinity_as_string=True) == ["inf", "-inf", None, 2.0]
    from eeopt.analysis.points import json_float
    from eeopt.core.policies import float_to_json

    assert float_to_json(-math.inf) == "-inf" and float_to_json(1) == 1.0 and type(float_to_json(1)) is float
    assert json_float(np.float64("nan")) is None and json_float(2) == 2.0 and json_float(None) is None
