"""Every run records what it ran with (params.json `provenance`), and the analysis says when compared runs differ."""

import json
import platform
import re
from importlib import metadata

import pandas as pd

from t2istudy import run_store
from t2istudy.study import analysis as F
from t2istudy.study import run_results
from t2istudy.study.grids import RunSpec
from t2istudy.study.provenance import FIELDS, git_state, provenance
from t2istudy.study.run_folder import params_record


def test_provenance_has_every_field_with_real_values():
    record = provenance()
    assert tuple(record) == FIELDS
    assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])  # the tests run in a checkout
    assert isinstance(record["git_dirty"], bool)
    assert record["python"] == platform.python_version()
    for name in ("torch", "diffusers", "transformers", "accelerate", "papermill"):
        assert record[name] == metadata.version(name)
    assert record["device"].startswith(("cpu: ", "cuda: "))


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_state(tmp_path) == (None, None)


def test_the_runner_writes_it_to_params_json(tmp_path):
    spec = RunSpec(grid="manual", run_id="r1", notebook=str(tmp_path / "nb.ipynb"), params={"seed": 0})
    out = tmp_path / "runs" / "manual" / "r1"
    out.mkdir(parents=True)
    run_store.write_json(out / "params.json", params_record(spec))  # as the runner does before the run
    run_store.write_json(out / "DONE", {"finished": run_store.now()})  # and after it
    recorded = json.loads((out / "params.json").read_text())["provenance"]
    assert set(recorded) == set(FIELDS) and recorded["git_commit"] is not None
    table = run_results.load_provenance(tmp_path / "runs", "manual")
    assert table.loc[0, "run_id"] == "r1" and table.loc[0, "torch"] == metadata.version("torch")


def test_tables_note_runs_that_differ():
    same = {k: "x" for k in FIELDS}
    agree = pd.DataFrame([{"run_id": "a", **same}, {"run_id": "b", **same}])
    assert F.provenance_note(agree) == ""
    differ = pd.DataFrame(
        [{"run_id": "a", **same}, {"run_id": "b", **same, "torch": "2.5.1", "git_dirty": True}]
    )
    assert F.provenance_note(differ) == " Compared runs differ in: git_dirty (True, x); torch (2.5.1, x)."
    old = pd.DataFrame([{"run_id": "a", **same}, {"run_id": "b", **{k: None for k in FIELDS}}])
    assert F.provenance_note(old) == " Compared runs differ in: 1 of 2 runs predate provenance records."
    never = pd.DataFrame([{"run_id": "a", **{k: None for k in FIELDS}}])
    assert F.provenance_note(never) == ""
