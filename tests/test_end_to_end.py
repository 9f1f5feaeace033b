"""End to end: crystal-train on the demo data writes every run file; crystal-eval reproduces it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from config_utils import compose_config
from conftest import DEMO_OVERRIDES, cif_folder, cif_text, good_structures
from pymatgen.core.operations import SymmOp

from crystal_train.training.evaluation import evaluate
from crystal_train.data.sources import to_crystal
from crystal_train.training.prediction import file_ids, input_items, output_file, run_predict, structure_files
from crystal_train.data.graphs import GRAPH_VERSION
from crystal_train.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from crystal_train.training.run import train

RUN_FILES = (
    "metrics.json",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
    "history.csv",
    "predictions_test.csv",
    "errors_by_element_test.csv",
    "errors_by_element_test.png",
    "split.json",
    "skipped.csv",
    "config.yaml",
    "parity_test.png",
    "learning_curve.png",
)
@pytest.mark.slow
def test_training_writes_every_run_file(demo_run):
    run_dir, _, best_val = demo_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert set(metrics[split]) == {"mae", "mae_stderr", "rmse", "r2", "n"}
        assert metrics[split]["n"] > 0
    assert metrics["val"]["mae"] == pytest.approx(best_val, rel=1e-5)
    assert metrics["target"] == "formation_energy_per_atom" and metrics["units"] == "eV/atom"
    assert metrics["baseline_test_mae"] > 0 and 1 <= metrics["best_epoch"] <= 3
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert metrics["epochs"] == len(rows)
    assert metrics["train_seconds"] == pytest.approx(sum(float(row["seconds"]) for row in rows), rel=1e-6)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "lr", "train_loss", "train_mae", "val_mae", "seconds"}
    split = json.loads((run_dir / "split.json").read_text())
    assert sum(len(ids) for ids in split.values()) == 120
    assert not set(split["train"]) & set(split["test"])
    with open(run_dir / "predictions_test.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["id"] for p in predictions] == split["test"]
    assert list(predictions[0]) == ["id", "formula", "target", "prediction"]
    with open(run_dir / "errors_by_element_test.csv") as handle:
        by_element = list(csv.DictReader(handle))
    assert list(by_element[0]) == ["element", "z", "n", "n_train", "mae", "mae_stderr", "rmse", "r2"]
    assert {row["element"] for row in by_element} <= {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}  # the demo's metals
    assert max(int(row["n"]) for row in by_element) <= metrics["test"]["n"] < sum(int(row["n"]) for row in by_element)
    training_counts = load_checkpoint(run_dir / "checkpoints" / "best.pt")["training_element_counts"]
    assert {row["element"]: int(row["n_train"]) for row in by_element} == {
        row["element"]: training_counts.get(int(row["z"]), 0) for row in by_element
    }
    assert max(training_counts.values()) <= len(split["train"]) < sum(training_counts.values())  # alloys: two elements each


@pytest.mark.slow
def test_eval_reproduces_test_mae_with_no_other_argument(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    cfg = compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"output={tmp_path}", "device=cpu"])
    report = evaluate(cfg)
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert report["test"]["mae"] == pytest.approx(trained["test"]["mae"], abs=1e-5)
    assert report["test"]["n"] == trained["test"]["n"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"] == report["test"] and (tmp_path / "predictions_test.csv").is_file()
    assert (tmp_path / "errors_by_element_test.png").is_file()
    assert (tmp_path / "errors_by_element_test.csv").read_text() == (run_dir / "errors_by_element_test.csv").read_text()  # n_train too
    before = (run_dir / "metrics.json").read_bytes()
    with pytest.raises(ValueError, match=f"output={run_dir} holds a training run: its metrics.json and skipped.csv would be replaced"):
        evaluate(compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"output={run_dir}", "device=cpu"]))
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.slow
def test_a_figure_that_fails_loses_no_score(demo_run, tmp_path, monkeypatch):
    run_dir, _, _ = demo_run
    import crystal_train.training.run as run_module

    def broken_plot(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(run_module, "parity_plot", broken_plot)
    with pytest.raises(RuntimeError, match="no fonts"):
        evaluate(compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"output={tmp_path}", "device=cpu"]))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["test"], abs=1e-6)
    assert written["checkpoint"] == str(run_dir / "checkpoints" / "best.pt")
    assert (tmp_path / "predictions_test.csv").is_file() and (tmp_path / "errors_by_element_test.csv").is_file()

    monkeypatch.undo()  # the parity plot drawn again; training's learning curve, drawn after the scores too, fails
    monkeypatch.setattr(run_module, "learning_curve_plot", broken_plot)
    _, cache, _ = demo_run
    cfg = compose_config("train", [*DEMO_OVERRIDES, f"data.cache_dir={cache}", "trainer.device=cpu", "trainer.progress_bar=false", "trainer.max_epochs=1"])
    (tmp_path / "trained").mkdir()
    with pytest.raises(RuntimeError, match="no fonts"):
        train(cfg, tmp_path / "trained")
    assert json.loads((tmp_path / "trained" / "metrics.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_eval_on_another_source_scores_every_crystal_of_it(demo_run, write_csv, good_rows, tmp_path, caplog):
    """A demo-trained checkpoint scored on a CSV: the CSV's crystals, all of them, not the demo data."""
    run_dir, _, _ = demo_run
    snapshot = write_csv(good_rows)
    base = [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"data.snapshot={snapshot}", "device=cpu"]
    report = evaluate(compose_config("eval", [*base, f"output={tmp_path / 'whole'}"]))
    assert report["source"]["n"] == 5 and "test" not in report
    with open(tmp_path / "whole" / "predictions_source.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in rows) == sorted(row["material_id"] for row in good_rows)
    # A source with its own split column: split=test scores just its test rows.
    labelled = write_csv([{**row, "split": split} for row, split in zip(good_rows, ["train", "train", "val", "test", "test"])], "split.csv")
    test_only = evaluate(compose_config("eval", [*base[:1], f"data.snapshot={labelled}", "device=cpu", "split=test", f"output={tmp_path / 'test'}"]))
    assert test_only["test"]["n"] == 2 and "source" not in test_only
    with open(tmp_path / "test" / "predictions_test.csv", newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["mp-mgo", "mp-cscl"]
    # Scored whole, a source with a split column is not split first, nor logged as split.
    caplog.clear()
    with caplog.at_level("INFO"):
        whole = evaluate(compose_config("eval", [*base[:1], f"data.snapshot={labelled}", "device=cpu", f"output={tmp_path / 'whole_labelled'}"]))
    assert whole["source"]["n"] == 5 and "test" not in whole
    assert "all 5 crystals, scored as one set" in caplog.text and "split column" not in caplog.text
    # A source naming the columns otherwise (as matbench's e_form): data.target= and data.id_column= say which they are.
    renamed = write_csv([{"structure_id": row["material_id"], "cif": row["cif"], "e_form": row["formation_energy_per_atom"]} for row in good_rows], "e_form.csv")
    with pytest.raises(ValueError, match="e_form.csv"):
        evaluate(compose_config("eval", [*base[:1], f"data.snapshot={renamed}", "device=cpu", f"output={tmp_path / 'renamed'}"]))
    named = evaluate(compose_config(
        "eval", [*base[:1], f"data.snapshot={renamed}", "data.target=e_form", "data.id_column=structure_id", "device=cpu", f"output={tmp_path / 'renamed'}"],
    ))
    assert named["target"] == "e_form" and named["units"] == "eV/atom"
    assert named["source"]["mae"] == pytest.approx(report["source"]["mae"], rel=1e-6)  # the same crystals and labels as before
    cgcnn = cif_folder(tmp_path)  # a CGCNN folder: its labels have no name or units, the model's units stand
    (cgcnn / "id_prop.csv").write_text("".join(f"{row['material_id']},{row['formation_energy_per_atom']}\n" for row in good_rows))
    folder_report = evaluate(compose_config("eval", [*base[:1], f"data.snapshot={cgcnn}", "device=cpu", f"output={tmp_path / 'cgcnn'}"]))
    assert (folder_report["target"], folder_report["units"], folder_report["source"]["n"]) == ("target", "eV/atom", 5)
    with pytest.raises(ValueError, match=r"best.pt predicts formation_energy_per_atom in eV/atom, but data.target=band_gap is in eV: name"):
        evaluate(compose_config("eval", [*base, "data.target=band_gap", f"output={tmp_path / 'gap'}"]))
    with pytest.raises(ValueError, match="data.target describe another source: give it with data.snapshot=PATH"):
        evaluate(compose_config("eval", [*base[:1], "data.target=e_form", "device=cpu", f"output={tmp_path / 'no_source'}"]))


@pytest.mark.slow
def test_eval_and_predict_skip_elements_missing_from_the_checkpoints_own_table(demo_run, write_csv, good_rows, tmp_path):
    """A model whose element table has no sodium (as an imported atom_init.json may) must not score NaCl with zero features."""
    run_dir, _, _ = demo_run
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    table = checkpoint["model_state"]["atom_features"].clone()
    table[11] = 0.0
    no_sodium = tmp_path / "no_sodium.pt"
    save_checkpoint(no_sodium, **{**checkpoint, "model_state": {**checkpoint["model_state"], "atom_features": table}})

    report = evaluate(compose_config("eval", [f"ckpt={no_sodium}", f"data.snapshot={write_csv(good_rows)}", f"output={tmp_path}", "device=cpu"]))
    assert report["source"]["n"] == 4
    with open(tmp_path / "predictions_source.csv", newline="") as handle:
        assert "mp-nacl" not in {row["id"] for row in csv.DictReader(handle)}
    with open(tmp_path / "skipped.csv", newline="") as handle:
        assert [(row["id"], row["reason"]) for row in csv.DictReader(handle)] == [("mp-nacl", "element outside the feature table: Na")]

    folder = cif_folder(tmp_path)
    output = run_predict(compose_config("predict", [f"ckpt={no_sodium}", f"input={folder}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    with open(output, newline="") as handle:
        assert sorted(row["id"] for row in csv.DictReader(handle)) == ["mp-cscl", "mp-cu", "mp-mgo", "mp-si"]


@pytest.mark.slow
def test_predict_reads_any_case_keeps_dotted_names_and_refuses_an_empty_result(demo_run, tmp_path, caplog):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    structures = list(good_structures().values())
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "mp-1.v1.cif").write_text(cif_text(structures[0]))
    (folder / "mp-1.v2.CIF").write_text(cif_text(structures[1]))
    (folder / "si.cif").write_text(cif_text(structures[1]))
    structures[1].to(filename=str(folder / "si.vasp"), fmt="poscar")
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    structures[2].to(filename=str(folder / "cu_POSCAR"), fmt="poscar")  # pymatgen's *POSCAR* naming
    (folder / "notes.txt").write_text("not a structure")
    output = tmp_path / "preds.csv"
    stale = tmp_path / "preds.skipped.csv"

    with caplog.at_level("WARNING"):
        run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={output}", "device=cpu"]))
    with open(output, newline="") as handle:
        predicted = {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)}
    assert sorted(predicted) == ["cu_POSCAR", "mp-1.v1", "mp-1.v2", "si.cif", "si.vasp"]  # si.cif and si.vasp would both be "si"
    assert predicted["si.cif"] == pytest.approx(predicted["si.vasp"], abs=1e-5)
    assert "Ignored 1 file(s) in" in caplog.text and "notes.txt" in caplog.text
    assert "broken" in stale.read_text()

    (folder / "broken.cif").unlink()
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={output}", "device=cpu"]))
    assert not stale.exists()  # the earlier list no longer applies
    chosen = tmp_path / "chosen.csv"  # a glob and a file, as a list
    run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input=[{folder}/mp-1.*,{folder}/si.vasp]", f"output={chosen}", "device=cpu"]))
    with open(chosen, newline="") as handle:
        assert {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)} == pytest.approx(
            {"mp-1.v1": predicted["mp-1.v1"], "mp-1.v2": predicted["mp-1.v2"], "si": predicted["si.vasp"]}
        )

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.cif").write_text("data_broken\n_cell_length_a 3\n")
    with pytest.raises(ValueError, match=r"none of the 1 structure\(s\) in .*bad could be used"):
        run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={bad}", f"output={output}", "device=cpu"]))
    assert not output.exists() and "broken" in stale.read_text()  # no earlier predictions beside this input's skip list


@pytest.mark.slow
def test_predict_reads_every_row_of_tables_and_every_structure_of_a_cif(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    structures = good_structures()
    from_files = run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={cif_folder(tmp_path)}", f"output={tmp_path / 'files.csv'}", "device=cpu"]))
    with open(from_files, newline="") as handle:
        expected = {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)}

    # no label column; a row without a structure and a repeated id are skipped and listed
    unlabelled = [{"material_id": item_id, "cif": cif_text(structure)} for item_id, structure in list(structures.items())[:3]]
    unlabelled += [{"material_id": "mp-empty", "cif": ""}, {"material_id": "mp-si", "cif": cif_text(structures["mp-cu"])}]
    pd.DataFrame(unlabelled).to_csv(tmp_path / "candidates.csv.gz", index=False)
    # pymatgen structure dicts in JSON records
    records = [{"id": item_id, "structure": structure.as_dict()} for item_id, structure in list(structures.items())[3:]]
    (tmp_path / "more.json").write_text(json.dumps(records))
    output = run_predict(compose_config("predict", [
        f"ckpt={ckpt}", f"input=[{tmp_path / 'candidates.csv.gz'},{tmp_path / 'more.json'}]", f"output={tmp_path / 'rows.csv'}", "device=cpu",
    ]))
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["mp-nacl", "mp-si", "mp-cu", "mp-mgo", "mp-cscl"]
    assert {row["id"]: float(row["prediction"]) for row in rows} == pytest.approx(expected, abs=1e-5)  # as from the CIF files
    with open(tmp_path / "rows.skipped.csv", newline="") as handle:
        assert [(row["id"], row["reason"]) for row in csv.DictReader(handle)] == [
            ("mp-empty", "empty CIF"), ("mp-si", "duplicate id (only its first row is read, even if that row was skipped)"),
        ]

    # other column names, given as for training
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps([{"name": record["id"], "struct": record["structure"]} for record in records]))
    settings = ["data.id_column=name", "data.cif_column=struct", "device=cpu"]
    output = run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={renamed}", f"output={tmp_path / 'renamed.csv'}", *settings]))
    with open(output, newline="") as handle:
        assert {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)} == pytest.approx(
            {item_id: expected[item_id] for item_id in ("mp-mgo", "mp-cscl")}, abs=1e-5
        )

    # predictions follow input='s order; a glob's CSV or JSON that is no table of structures is skipped and listed
    like_cgcnn = tmp_path / "like_cgcnn"
    like_cgcnn.mkdir()
    (like_cgcnn / "mp-si.cif").write_text(cif_text(structures["mp-si"]))
    (like_cgcnn / "id_prop.csv").write_text("mp-si,0.5\n")
    (like_cgcnn / "atom_init.json").write_text('{"14": [0, 1]}')
    output = run_predict(compose_config("predict", [
        f"ckpt={ckpt}", f"input=[{renamed},{like_cgcnn}/*]", f"output={tmp_path / 'ordered.csv'}", *settings,
    ]))
    with open(output, newline="") as handle:
        assert [row["id"] for row in csv.DictReader(handle)] == ["mp-mgo", "mp-cscl", "mp-si"]
    with open(tmp_path / "ordered.skipped.csv", newline="") as handle:
        reasons = {row["id"]: row["reason"] for row in csv.DictReader(handle)}
    assert reasons.keys() == {str(like_cgcnn / "atom_init.json"), str(like_cgcnn / "id_prop.csv")}
    assert reasons[str(like_cgcnn / "id_prop.csv")].startswith("not a table of structures: ") and "data.id_column 'name' not found" in reasons[str(like_cgcnn / "id_prop.csv")]

    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = [AseAtomsAdaptor.get_atoms(structure) for structure in structures.values()]  # no ids: numbered frames
    write(tmp_path / "relaxed.extxyz", frames, format="extxyz")
    output = run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={tmp_path / 'relaxed.extxyz'}", f"output={tmp_path / 'xyz.csv'}", "device=cpu"]))
    with open(output, newline="") as handle:
        assert {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)} == pytest.approx(
            {f"relaxed#{index}": expected[item_id] for index, item_id in enumerate(structures)}, abs=1e-5
        )

    several = tmp_path / "several.cif"  # a CIF of several structures: a prediction per data block, as from its own file
    several.write_text("".join(cif_text(structures[item_id]) for item_id in ("mp-mgo", "mp-cu")))
    output = run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={several}", f"output={tmp_path / 'blocks.csv'}", "device=cpu"]))
    with open(output, newline="") as handle:
        assert {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)} == pytest.approx(
            {"several#MgO": expected["mp-mgo"], "several#Cu": expected["mp-cu"]}, abs=1e-5
        )

    clashing = tmp_path / "mp-mgo.cif"  # a file whose id is a row's
    clashing.write_text(cif_text(structures["mp-mgo"]))
    with pytest.raises(ValueError, match=rf"input= gives the id mp-mgo to a row of .*renamed.json and to {clashing}: predictions could not be told apart"):
        run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input=[{clashing},{renamed}]", f"output={tmp_path / 'x.csv'}", *settings]))


@pytest.mark.slow
def test_predictions_of_structures_that_look_wrong_say_so_in_their_row(demo_run, tmp_path):
    run_dir, _, _ = demo_run
    folder = tmp_path / "in"
    folder.mkdir()
    copper = good_structures()["mp-cu"]
    (folder / "cu.cif").write_text(cif_text(copper))
    squeezed = copper.copy()
    squeezed.scale_lattice(copper.volume * 0.15**3)  # an ångström cell read as bohr, and worse: neighbours 0.38 Å apart
    (folder / "squeezed.cif").write_text(cif_text(squeezed))
    output = tmp_path / "preds.csv"
    run_predict(compose_config("predict", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={folder}", f"output={output}", "device=cpu"]))
    with open(output, newline="") as handle:
        notes = {row["id"]: row["structure_warnings"] for row in csv.DictReader(handle)}
    assert notes == {"cu": "", "squeezed": "atoms under 0.5 Å apart"}


def test_predict_input_may_be_a_file_a_folder_a_glob_or_a_list_of_them(tmp_path, caplog):
    folder = tmp_path / "in"
    (folder / "more").mkdir(parents=True)
    for name in ("a.cif", "b.cif", "c.vasp", "more/d.cif", "notes.txt"):
        (folder / name).write_text("x")
    assert structure_files(str(folder / "a.cif")) == [folder / "a.cif"]
    with caplog.at_level("WARNING"):
        assert structure_files(str(folder)) == [folder / "a.cif", folder / "b.cif", folder / "c.vasp"]
    assert f"Not searched: 1 subfolder(s) of {folder} (more)" in caplog.text
    assert structure_files(f"{folder}/*.cif") == [folder / "a.cif", folder / "b.cif"]
    assert structure_files([str(folder / "more"), f"{folder}/c.*"]) == [folder / "more" / "d.cif", folder / "c.vasp"]
    with pytest.raises(ValueError, match=r"input= names .*a.cif more than once"):
        structure_files([str(folder), str(folder / "a.cif")])
    with pytest.raises(ValueError, match=r"input= names .*b.cif more than once"):  # once relative, once absolute
        structure_files([str(folder / "b.cif"), os.path.relpath(folder / "b.cif")])
    with pytest.raises(FileNotFoundError, match=r"input pattern .*\*.xyz matches no file"):
        structure_files(f"{folder}/*.xyz")
    with pytest.raises(FileNotFoundError, match=r"input not found: .*missing.cif \(give a structure file, a folder of them, a quoted glob"):
        structure_files(str(folder / "missing.cif"))


def test_a_cif_of_several_structures_gives_an_item_per_data_block_named_by_file_and_block(tmp_path):
    structures = good_structures()
    publication = "data_global\n_journal_year 2018\n"  # no atom sites: no structure
    many = tmp_path / "many.cif"
    many.write_text(publication + "".join(cif_text(structures[item_id]) for item_id in ("mp-nacl", "mp-si", "mp-cu")))
    alike = tmp_path / "alike.cif"  # cat cu.cif cu.cif: block names repeat, so blocks are numbered
    alike.write_text(cif_text(structures["mp-cu"]) * 2)
    single = tmp_path / "single.cif"
    single.write_text(publication + cif_text(structures["mp-mgo"]))
    items, skipped = input_items([many, alike, single])
    assert [item.id for item in items] == ["many#NaCl", "many#Si", "many#Cu", "alike#1", "alike#2", "single"] and skipped == []
    assert items[-1].path == str(single) and items[0].path is None  # one structure: read from its file, as before
    for item, item_id in zip(items, ("mp-nacl", "mp-si", "mp-cu", "mp-cu", "mp-cu", "mp-mgo")):
        crystal, expected = to_crystal(item), structures[item_id]
        assert crystal.id == item.id and sorted(crystal.numbers) == sorted(expected.atomic_numbers)

    marked = tmp_path / "marked.cif"  # a byte-order mark before the first block hides no structure
    marked.write_text("\ufeff" + cif_text(structures["mp-cu"]) + cif_text(structures["mp-si"]), encoding="utf-8")
    assert [item.id for item in input_items([marked])[0]] == ["marked#Cu", "marked#Si"]

    clashing = tmp_path / "many#Si.cif"
    clashing.write_text(cif_text(structures["mp-si"]))
    with pytest.raises(ValueError, match=rf"input= gives the id many#Si to {clashing} and to a data block of {many}"):
        input_items([many, clashing])


def test_frames_without_ids_in_tables_of_one_name_are_told_apart_by_their_paths(tmp_path):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = [AseAtomsAdaptor.get_atoms(structure) for structure in list(good_structures().values())[:2]]
    tables = [tmp_path / "run1" / "traj.extxyz", tmp_path / "run2" / "traj.extxyz", tmp_path / "run1" / "traj.xyz.gz"]
    for table in tables:
        table.parent.mkdir(exist_ok=True)
        write(table, atoms, format="extxyz")
    items, _ = input_items(tables)
    assert [item.id for item in items] == [
        "run1/traj.extxyz#0", "run1/traj.extxyz#1", "run2/traj.extxyz#0", "run2/traj.extxyz#1", "traj.xyz.gz#0", "traj.xyz.gz#1",
    ]
    assert [item.id for item in input_items(tables[2:])[0]] == ["traj#0", "traj#1"]  # alone: as training names them


def test_prediction_ids_stay_unique_when_a_whole_file_name_equals_another_files_id():
    files = [Path("in") / name for name in ("a.cif", "a.cif.vasp", "a.vasp", "b.cif", "b_POSCAR", "b.cif.cif")]
    ids = file_ids(files)
    assert ids == ["a.cif", "a.cif.vasp", "a.vasp", "b", "b_POSCAR", "b.cif"]  # b.cif.cif's id clashes with no other
    assert len(set(ids)) == len(files)


def test_prediction_ids_of_files_with_one_name_in_several_folders_are_their_paths_below_the_shared_folder(tmp_path):
    calcs = tmp_path / "calcs"
    files = [calcs / "Cu" / "CONTCAR", calcs / "Cu3Au" / "CONTCAR", calcs / "NiAl" / "relax" / "CONTCAR", calcs / "Cu.cif"]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("x")
    assert file_ids(structure_files(f"{calcs}/*/CONTCAR")) == ["Cu/CONTCAR", "Cu3Au/CONTCAR"]
    assert file_ids(files) == ["Cu/CONTCAR", "Cu3Au/CONTCAR", "NiAl/relax/CONTCAR", "Cu"]
    linked = tmp_path / "linked"
    for name, job in (("Ag", "job7"), ("Au", "job3")):  # calculation folders linking to a scratch store
        (tmp_path / "store" / job).mkdir(parents=True)
        (tmp_path / "store" / job / "CONTCAR").write_text("x")
        (linked / name).mkdir(parents=True)
        (linked / name / "CONTCAR").symlink_to(tmp_path / "store" / job / "CONTCAR")
    assert file_ids(structure_files(f"{linked}/*/CONTCAR")) == ["Ag/CONTCAR", "Au/CONTCAR"]  # the paths given, not the targets


@pytest.mark.slow
def test_same_settings_reuse_the_graph_cache(demo_run, tmp_path, caplog):
    _, cache, _ = demo_run
    caches = {path: path.stat().st_mtime_ns for path in cache.glob("graphs/graphs-*.pt")}
    cfg = compose_config(
        "train",
        [*DEMO_OVERRIDES, f"data.cache_dir={cache}", "trainer.device=cpu", "trainer.progress_bar=false", "trainer.max_epochs=1"],
    )
    with caplog.at_level("INFO", logger="crystal_train.data.cache"):
        train(cfg, tmp_path)
    assert {path: path.stat().st_mtime_ns for path in cache.glob("graphs/graphs-*.pt")} == caches  # none rewritten or added
    assert "Graph cache loaded" in caplog.text and "Graph cache built" not in caplog.text


@pytest.mark.slow
def test_installed_cli_prints_composed_config_from_any_directory(tmp_path):
    """The console script finds its packaged configs when run outside the repository."""
    env = {**os.environ, "PYTHONPATH": ""}
    script = Path(sys.executable).with_name("crystal-train")
    result = subprocess.run(
        [str(script), "--cfg", "job", "model=schnet", "data=mp_gap"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "crystal_train.models.schnet.SchNet" in result.stdout
    assert "target: band_gap" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,shown,hidden",
    [
        ("crystal-train", ["crystal-train data=demo", "model: cgcnn, schnet", "crystal-eval ckpt="], []),
        ("crystal-eval", ["crystal-eval ckpt=", "split: null"], ["model: cgcnn", "experiment:"]),
        ("crystal-predict", ["crystal-predict ckpt=", "input: ???"], ["model: cgcnn", "experiment:"]),
    ],
)
def test_each_cli_help_shows_its_own_usage(tmp_path, command, shown, hidden):
    """--help names the command, gives examples and lists only the settings that command reads."""
    script = Path(sys.executable).with_name(command)
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{command}: ")
    for text in shown:
        assert text in result.stdout
    for text in hidden:
        assert text not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "command,args,message",
    [
        ("crystal-eval", [], "crystal-eval: give ckpt=..."),
        ("crystal-predict", ["output=preds.csv"], "crystal-predict: give ckpt=... input=..."),
        ("crystal-predict", ["input=my_cifs"], "crystal-predict: give ckpt=... (see"),
        ("crystal-eval", ["ckpt=${oc.env:NO_SUCH_VARIABLE_HERE}"], "crystal-eval: InterpolationResolutionError: "),  # found listing what is missing
    ],
)
def test_missing_mandatory_setting_is_a_usage_line_not_a_traceback(tmp_path, command, args, message):
    script = Path(sys.executable).with_name(command)
    result = subprocess.run([str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("command", ["crystal-eval", "crystal-predict"])
def test_an_error_is_one_line_naming_its_cause_and_hydra_full_error_shows_the_traceback(tmp_path, command):
    script = Path(sys.executable).with_name(command)
    (tmp_path / "a.cif").write_text("data_a\n")
    args = [str(script), "ckpt=missing.pt", "input=a.cif", "output=preds.csv"][: 2 if command == "crystal-eval" else 4]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"{command}: FileNotFoundError: checkpoint not found: missing.pt" in result.stderr
    assert "Traceback" not in result.stderr
    full = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback (most recent call last)" in full.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.cif"]


@pytest.mark.slow
def test_a_checkpoint_trained_on_other_graphs_is_loaded_with_a_warning_naming_the_change(demo_run, tmp_path, caplog):
    run_dir, _, _ = demo_run
    current = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert current["graph_version"] == GRAPH_VERSION
    unrecorded = {key: value for key, value in current.items() if key != "graph_version"}
    old, old_uncapped, newer = tmp_path / "old.pt", tmp_path / "old_uncapped.pt", tmp_path / "newer.pt"
    save_checkpoint(old, **unrecorded)
    uncapped_config = {**current["config"], "graph": {**current["config"]["graph"], "max_neighbors": None}}
    save_checkpoint(old_uncapped, **{**unrecorded, "config": uncapped_config})  # version 2 changed capped graphs only
    save_checkpoint(newer, **{**current, "graph_version": GRAPH_VERSION + 1})
    with caplog.at_level("WARNING"):
        load_model(run_dir / "checkpoints" / "best.pt")
        load_model(old_uncapped)
        assert "graphs of version" not in caplog.text
        load_model(old)
        assert f"{old} was trained on graphs of version 1; this crystal-train builds version {GRAPH_VERSION}" in caplog.text
        assert "kept whole with shared edge weights" in caplog.text
        load_model(newer)
    assert f"{newer} was trained by a newer crystal-train, on graphs of version {GRAPH_VERSION + 1}" in caplog.text


@pytest.mark.slow
def test_checkpoint_records_training_elements_and_predict_warns_outside_them(demo_run, tmp_path, caplog):
    run_dir, _, _ = demo_run
    ckpt = run_dir / "checkpoints" / "best.pt"
    assert load_checkpoint(ckpt)["training_elements"] == [13, 28, 29, 46, 47, 78, 79]  # the demo's Al Ni Cu Pd Ag Pt Au
    folder = cif_folder(tmp_path)
    with caplog.at_level("WARNING"):
        run_predict(compose_config("predict", [f"ckpt={ckpt}", f"input={folder}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    assert "4 of 5 crystals hold elements absent from the model's training split" in caplog.text
    assert "mp-nacl (Na Cl)" in caplog.text and "mp-cu" not in caplog.text
    with open(tmp_path / "p.csv", newline="") as handle:
        marked = {row["id"]: row["unseen_elements"] for row in csv.DictReader(handle)}
    assert marked == {"mp-cscl": "Cl Cs", "mp-cu": "", "mp-mgo": "O Mg", "mp-nacl": "Na Cl", "mp-si": "Si"}


def _train_tiny_cgcnn(tmp_path: Path, *data_overrides: str) -> Path:
    """One epoch of a tiny CGCNN on CPU into tmp_path/run; returns its best.pt."""
    tiny = ["model.atom_fea_len=8", "model.n_conv=1", "model.h_fea_len=8", "trainer.batch_size=2", "trainer.max_epochs=1", "seed=0"]
    train(compose_config("train", [*data_overrides, "trainer.device=cpu", "trainer.progress_bar=false", *tiny]), tmp_path / "run")
    return tmp_path / "run" / "checkpoints" / "best.pt"


def _move_elsewhere(tmp_path: Path, monkeypatch) -> Path:
    """Change into a new folder beside the run, as a user scoring it from another directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return elsewhere


@pytest.mark.slow
def test_a_run_resumes_from_another_directory_with_its_relative_snapshot_spelled_from_there(write_csv, good_rows, tmp_path, monkeypatch):
    write_csv(good_rows)
    monkeypatch.chdir(tmp_path)
    data = ["data.split.fractions=[0.6,0.2,0.2]", f"data.cache_dir={tmp_path / 'cache'}"]
    _train_tiny_cgcnn(tmp_path, "data.snapshot=data.csv", *data)
    _move_elsewhere(tmp_path, monkeypatch)
    tiny = ["model.atom_fea_len=8", "model.n_conv=1", "model.h_fea_len=8", "trainer.batch_size=2", "seed=0"]
    cfg = compose_config("train", ["data.snapshot=../data.csv", *data, "trainer.device=cpu", "trainer.progress_bar=false", *tiny, "trainer.max_epochs=2"])
    train(cfg, tmp_path / "run")  # the same file as training's data.csv: resumed, not refused as a changed setting
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_state"]["epoch"] == 2


def test_eval_finds_a_relative_snapshot_from_another_directory(write_csv, good_rows, tmp_path, monkeypatch):
    """Trained with data.snapshot=data.csv in one directory, scored with crystal-eval ckpt=... from another."""
    write_csv(good_rows)
    monkeypatch.chdir(tmp_path)
    ckpt = _train_tiny_cgcnn(tmp_path, "data.snapshot=data.csv", "data.split.fractions=[0.6,0.2,0.2]", f"data.cache_dir={tmp_path / 'cache'}")
    elsewhere = _move_elsewhere(tmp_path, monkeypatch)

    report = evaluate(compose_config("eval", [f"ckpt={ckpt}", f"output={elsewhere}", "device=cpu"]))
    assert report["test"]["mae"] == pytest.approx(json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]["mae"], abs=1e-6)

    without_launch_dir = elsewhere / "old.pt"
    save_checkpoint(without_launch_dir, **{k: v for k, v in load_checkpoint(ckpt).items() if k not in ("format", "version", "launch_dir")})
    with pytest.raises(FileNotFoundError, match=r"old\.pt was trained on data\.csv, relative to the directory training ran in"):
        evaluate(compose_config("eval", [f"ckpt={without_launch_dir}", f"output={elsewhere}", "device=cpu"]))


@pytest.mark.slow
def test_eval_from_another_directory_finds_the_training_runs_relative_split_file_and_graph_cache(
    write_csv, good_rows, tmp_path, monkeypatch
):
    """Trained with data.split.file=split.json and data.cache_dir=cache: the checkpoint's saved split replaces the
    file, split_from=data looks for it where training ran, as data.snapshot is, and the graphs are read from that cache."""
    write_csv(good_rows)
    ids = [row["material_id"] for row in good_rows]
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:3], "val": [ids[3]], "test": [ids[4]]}))
    monkeypatch.chdir(tmp_path)
    ckpt = _train_tiny_cgcnn(tmp_path, "data.snapshot=data.csv", "data.split.file=split.json", "data.cache_dir=cache")
    elsewhere = _move_elsewhere(tmp_path, monkeypatch)

    def scored(*overrides: str) -> dict:
        return evaluate(compose_config("eval", [f"ckpt={ckpt}", f"output={elsewhere}", "device=cpu", "split=all", *overrides]))

    expected = {name: len(members) for name, members in json.loads((tmp_path / "split.json").read_text()).items()}
    assert {name: scored()[name]["n"] for name in expected} == expected
    assert {name: scored("split_from=data")[name]["n"] for name in expected} == expected
    assert not (elsewhere / "cache").exists()  # the relative cache_dir is the one training filled, not a new one here
    (tmp_path / "split.json").unlink()
    assert {name: scored()[name]["n"] for name in expected} == expected  # the saved split needs no file
    with pytest.raises(FileNotFoundError, match=r"best\.pt was trained on split\.json, relative to .*: run crystal-eval there, or give data\.split\.file=PATH"):
        scored("split_from=data")


def test_eval_of_a_copy_of_the_training_data_scores_the_saved_split(write_csv, good_rows, tmp_path, caplog):
    """data.snapshot=<the training file> split=test must score the run's own test crystals, not a redrawn split."""
    snapshot = write_csv(good_rows)
    ckpt = _train_tiny_cgcnn(tmp_path, f"data.snapshot={snapshot}", "data.split.fractions=[0.6,0.2,0.2]", f"data.cache_dir={tmp_path / 'cache'}")
    saved = load_checkpoint(ckpt)["split_ids"]

    evaluate(compose_config("eval", [f"ckpt={ckpt}", f"data.snapshot={snapshot}", "split=all", f"output={tmp_path / 'copy'}", "device=cpu"]))
    for name in ("train", "val", "test"):
        with open(tmp_path / "copy" / f"predictions_{name}.csv", newline="") as handle:
            assert [row["id"] for row in csv.DictReader(handle)] == saved[name]

    fewer = write_csv([row for row in good_rows if row["material_id"] != saved["train"][0]], name="fewer.csv")
    with caplog.at_level("WARNING"):
        evaluate(compose_config("eval", [f"ckpt={ckpt}", f"data.snapshot={fewer}", "split=test", f"output={tmp_path / 'fewer'}", "device=cpu"]))
    # A fresh random split of the rest: it holds training crystals, counted and named.
    assert re.search(rf"\d+ of the \d+ crystals scored as test were in the train split of {re.escape(str(ckpt))} \(", caplog.text)
    with pytest.raises(ValueError, match=r"split_from=checkpoint: .*fewer\.csv does not hold every crystal of the split saved in"):
        evaluate(compose_config("eval", [f"ckpt={ckpt}", f"data.snapshot={fewer}", "split=test", "split_from=checkpoint", "device=cpu"]))

    # split_from=data scores the source's own split column even when it holds every crystal of the saved split.
    own = [{**row, "split": split} for row, split in zip(good_rows, ["test", "test", "test", "train", "val"])]
    caplog.clear()
    with caplog.at_level("WARNING"):
        report = evaluate(compose_config(
            "eval", [f"ckpt={ckpt}", f"data.snapshot={write_csv(own, name='own.csv')}", "split=test", "split_from=data", f"output={tmp_path / 'own'}", "device=cpu"],
        ))
    assert report["test"]["n"] == 3
    seen = [item for item in ("mp-nacl", "mp-si", "mp-cu") if item in saved["train"]]
    assert (f"{len(seen)} of the 3 crystals scored as test were in the train split" in caplog.text) is bool(seen)


def test_predict_output_may_be_a_file_or_a_folder_that_exists_or_ends_in_a_slash(tmp_path):
    assert output_file(str(tmp_path / "preds.csv")) == tmp_path / "preds.csv"
    assert output_file(str(tmp_path)) == tmp_path / "predictions.csv"  # an existing folder
    assert output_file(f"{tmp_path / 'new'}/") == tmp_path / "new" / "predictions.csv"  # not a file named new


@pytest.mark.parametrize("overwritten", ["best.pt", "in/a.cif", "atom_init.json"])
def test_predict_never_writes_over_its_checkpoint_or_inputs(tmp_path, overwritten):
    for name in ("best.pt", "in/a.cif", "atom_init.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    settings = [f"ckpt={tmp_path / 'best.pt'}", f"input={tmp_path / 'in'}", f"atom_init={tmp_path / 'atom_init.json'}", "device=cpu"]
    with pytest.raises(ValueError, match=f"crystal-predict would write .*{overwritten} over its input .*{overwritten}: give another output= file"):
        run_predict(compose_config("predict", [*settings, f"output={tmp_path / overwritten}"]))
    assert all((tmp_path / name).read_text() == name for name in ("best.pt", "in/a.cif", "atom_init.json"))


@pytest.mark.slow
def test_schnet_with_its_own_graph_settings_is_rescored_and_predicted_as_trained(write_csv, good_rows, tmp_path):
    """A SchNet run with a non-default neighbour cap: normaliser and training elements come from the train
    split only; crystal-eval reproduces its metrics and crystal-predict its test predictions, also for a
    rotated supercell of the test crystal (both rebuild graphs with the checkpoint's settings)."""
    splits = {"mp-nacl": "train", "mp-si": "train", "mp-cu": "train", "mp-mgo": "val", "mp-cscl": "test"}
    for row in good_rows:
        row["split"] = splits[row["material_id"]]
    cfg = compose_config("train", [
        f"data.snapshot={write_csv(good_rows)}", "model=schnet", "graph.max_neighbors=16", "model.hidden_channels=16",
        "model.num_filters=16", "model.num_interactions=2", "trainer.batch_size=2", "trainer.max_epochs=2", "seed=0",
        f"data.cache_dir={tmp_path / 'cache'}", "trainer.device=cpu", "trainer.progress_bar=false",
    ])
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    metrics = json.loads((run_dir / "metrics.json").read_text())

    train_targets = np.array([row["formation_energy_per_atom"] for row in good_rows if row["split"] == "train"])
    all_targets = np.array([row["formation_energy_per_atom"] for row in good_rows])
    assert checkpoint["normalizer"]["mean"] == pytest.approx(train_targets.mean()) != pytest.approx(all_targets.mean())
    assert checkpoint["normalizer"]["std"] == pytest.approx(train_targets.std())
    test_target = good_rows[4]["formation_energy_per_atom"]
    assert metrics["baseline_test_mae"] == pytest.approx(abs(test_target - train_targets.mean()))
    assert checkpoint["training_elements"] == [11, 14, 17, 29]  # Na, Si, Cl, Cu: not val's Mg and O or test's Cs

    report = evaluate(compose_config("eval", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "split=all", f"output={tmp_path / 'eval'}", "device=cpu"]))
    for name in ("train", "val", "test"):
        assert report[name]["mae"] == pytest.approx(metrics[name]["mae"], abs=1e-6), name

    with open(run_dir / "predictions_test.csv", newline="") as handle:
        (trained,) = [float(row["prediction"]) for row in csv.DictReader(handle)]
    cscl = good_structures()["mp-cscl"]
    supercell = cscl.copy()
    supercell.make_supercell([2, 2, 2])
    supercell.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    folder = tmp_path / "cifs"
    folder.mkdir()
    (folder / "cscl.cif").write_text(cif_text(cscl))
    (folder / "cscl_rotated_supercell.cif").write_text(cif_text(supercell))
    run_predict(compose_config("predict", [f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"input={folder}", f"output={tmp_path / 'p.csv'}", "device=cpu"]))
    with open(tmp_path / "p.csv", newline="") as handle:
        predicted = {row["id"]: float(row["prediction"]) for row in csv.DictReader(handle)}
    assert predicted == {"cscl": pytest.approx(trained, abs=1e-5), "cscl_rotated_supercell": pytest.approx(trained, abs=1e-5)}
