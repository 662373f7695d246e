"""Tests for dev/grid.py: a tiny grid end to end on the toy (tuning seeds, a held-out seed, a setting that
diverges), resuming without retraining, and the table's numbers against the runs' own files.

    BS_UNLEARN_CACHE=/tmp/bscache python -m pytest tests/test_grid.py -q      (about 2 min on 2 CPU cores)
"""
import json
import os
import statistics

import pytest

import bs_unlearn as bs
from conftest import one_line_error
from dev import grid

# GA and BS-S, one toy model (seed 0) for all, half an epoch per run; two tuning seeds, two held-out ones;
# lr 10 diverges at once
TINY = ["--methods", "ga,bs_s", "--splits", "forget10", "--world_seed", "0", "--tune_seeds", "0,3",
        "--seeds", "1,2", "--lrs", "3e-4,1e-3,10", "--flags", "--epochs 0.5 --warmup_epochs 0",
        "--eval_flags", "--n_beliefs 2 --max_new_tokens 24"]


@pytest.fixture(scope="module")
def tiny(toy_cache, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("grid"))
    argv = TINY + ["--out_root", out, "--cache_dir", toy_cache[0]]
    return argv, out, grid.main(argv)


def result(out, method, label, seed, split="forget10"):
    with open(os.path.join(out, split, f"seed{seed}", f"{method}-{label}", "result.json")) as f:
        return json.load(f)


def test_tiny_grid_end_to_end(tiny, capsys):
    argv, out, table = tiny
    # lr 10 diverged on the tuning seed: recorded as stopped, never chosen
    for m, lab in (("ga", "lr10"), ("bs_s", "lr10_lam0.5")):
        assert "diverged" in result(out, m, lab, 0)["stopped"]
        assert table["tuning"][m]["forget10"]["scores"][lab] is None
    # the chosen setting is the one with the highest mean Agg over the tuning seeds, from the runs' own files
    for m, labels in (("ga", ["lr0.0003", "lr0.001"]), ("bs_s", ["lr0.0003_lam0.5", "lr0.001_lam0.5"])):
        means = {lab: statistics.mean(result(out, m, lab, s)["summary"]["agg"] for s in (0, 3)) for lab in labels}
        assert table["tuning"][m]["forget10"]["chosen"] == max(means, key=means.get)
        scores = dict(table["tuning"][m]["forget10"]["scores"])
        assert scores.pop(labels[0].replace("0.0003", "10")) is None  # lr 10: stopped
        assert scores == pytest.approx(means)
    chosen = table["tuning"]["ga"]["forget10"]["chosen"]
    # the held-out rows are the chosen setting's runs on seeds 1 and 2, not the tuning seed's
    aggs = [result(out, "ga", chosen, s)["summary"]["agg"] for s in (1, 2)]
    row = table["tuned"]["ga"]["forget10"]
    assert row["agg"]["values"] == aggs
    assert row["agg"]["mean"] == pytest.approx(statistics.mean(aggs))
    assert row["agg"]["sd"] == pytest.approx(statistics.stdev(aggs))
    # the shared setting is bs_unlearn's default lr (3e-4), run on the same seeds
    assert table["shared"]["bs_s"]["forget10"]["setting"] == dict(lr=3e-4, bss_lambda=0.5)
    assert os.path.exists(os.path.join(out, "forget10", "seed2", "bs_s-lr0.0003_lam0.5", "eval.json"))
    # the references: the starting model forgot nothing, the retain-only model never knew
    refs = table["refs"]
    assert refs["base"]["forget10"]["agg"]["mean"] < refs["retain"]["forget10"]["agg"]["mean"]
    text = open(os.path.join(out, "table.md")).read()
    for name in ("Original", "Retrain", "GradDiff", "BS-S", chosen, "Mean Agg of every setting", "Util is MU"):
        assert name in text


def test_tiny_grid_resumes_without_training(tiny, monkeypatch):
    argv, out, table = tiny

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(bs, "train", no_training)
    again = grid.main(argv)
    assert again["tuned"] == json.loads(json.dumps(table["tuned"]))  # (the first went through JSON files too)


def test_other_flags_in_the_same_folder_refused(tiny):
    argv, out, _ = tiny
    other = [a if a != "--epochs 0.5 --warmup_epochs 0" else "--epochs 1 --warmup_epochs 0" for a in argv]
    one_line_error(lambda: grid.main(other), "other flags", "--out_root")


def test_tofu_world_from_local_files(toy_cache, tmp_path):
    """--world tofu on local TOFU-named files (the toy authors, which have TOFU's columns) and local models: the
    path a GPU run takes with hub ids, at the shared setting on one seed."""
    import toy_world
    rows = toy_world.make_toy_data()
    forget, retain = toy_world.split_toy(rows, "forget01")
    data = tmp_path / "tofu"
    data.mkdir()
    for name, part in dict(forget01=forget, forget01_perturbed=forget, retain99=retain[:80],
                           retain_perturbed=retain[:40], real_authors_perturbed=retain[40:48],
                           world_facts_perturbed=retain[48:56]).items():
        (data / f"{name}.json").write_text("\n".join(json.dumps(r) for r in part))
    out = tmp_path / "grid"
    table = grid.main(["--world", "tofu", "--model", toy_cache[1], "--retain_model", toy_cache[2],
                       "--data_dir", str(data), "--splits", "forget01", "--methods", "npo", "--seeds", "0",
                       "--flags", "--epochs 1", "--eval_flags", "--n_beliefs 2 --max_new_tokens 24",
                       "--out_root", str(out)])
    res = result(str(out), "npo", "lr0.0003", 0, split="forget01")
    assert res["summary"]["mu_n"] == 9  # retain, real_authors and world_facts: the TOFU utility
    assert table["shared"]["npo"]["forget01"]["agg"]["values"] == [res["summary"]["agg"]]
    assert os.path.exists(out / "forget01" / "refs" / "refs.json")


def test_other_world_in_the_same_folder_refused(tiny):
    argv, out, _ = tiny
    other = [a if a != "--n_beliefs 2 --max_new_tokens 24" else "--n_beliefs 3 --max_new_tokens 24" for a in argv]
    one_line_error(lambda: grid.main(other), "other settings", "--eval_flags", "--out_root")


def test_tuning_seeds_must_not_be_reported():
    one_line_error(lambda: grid.get_args(["--tune_seeds", "0,1", "--seeds", "1,2"]), "overlap")
    one_line_error(lambda: grid.get_args(["--seeds", "1,1"]), "twice")


@pytest.mark.parametrize("flags,name", [("--seed 3", "--seed"), ("--method npo", "--method"),
                                        ("--lora_r 8", "--lora_r"), ("--model x", "--model")])
def test_flags_the_grid_sets_are_refused(flags, name):
    one_line_error(lambda: grid.get_args(["--flags", flags]), name, "--flags")


def test_a_bad_setting_ends_the_grid_not_recorded_as_stopped(toy_cache, tmp_path):
    # the toy model has 2 decoder layers, so RMU cannot steer layer 5: that is an error, not a diverged run
    argv = ["--methods", "rmu", "--splits", "forget10", "--world_seed", "0", "--seeds", "0", "--flags",
            "--rmu_layer 5 --epochs 0.25", "--out_root", str(tmp_path), "--cache_dir", toy_cache[0],
            "--eval_flags", "--n_beliefs 2 --max_new_tokens 24"]
    one_line_error(lambda: grid.main(argv), "--rmu_layer 5")
    assert not os.path.exists(tmp_path / "forget10" / "seed0" / "rmu-lr0.0003")


def test_cell_mean_and_sample_sd():
    assert grid.cell(grid.stat([0.2, 0.4])) == "0.300 ± 0.141"
    assert grid.cell(grid.stat([-1.0, -3.0]), "+.2f") == "-2.00 ± 1.41"
    assert grid.cell(grid.stat([0.5])) == "0.500"
    assert grid.cell(None) == "-"


def test_tables_only_says_what_has_not_run(tiny, tmp_path, monkeypatch):
    # --tables_only with one more learning rate than ran: that setting reads "not run" (not "stopped"), the
    # choice stays among the finished ones, the table says so, and nothing trains
    argv, out, table = tiny
    import shutil
    shutil.copytree(out, tmp_path / "copy")

    def no_training(*a, **k):
        raise AssertionError("--tables_only trained a run")
    monkeypatch.setattr(bs, "train", no_training)
    more = [a if a != "3e-4,1e-3,10" else "3e-4,1e-3,10,3e-3" for a in argv]
    more[more.index("--out_root") + 1] = str(tmp_path / "copy")
    # and GA's setting that was not chosen (of 3e-4 and 1e-3; 10 stopped) loses its run on tuning seed 3
    chosen = table["tuning"]["ga"]["forget10"]["chosen"]
    partial = "lr0.001" if chosen == "lr0.0003" else "lr0.0003"
    shutil.rmtree(tmp_path / "copy" / "forget10" / "seed3" / f"ga-{partial}")
    again = grid.main(more + ["--tables_only"])
    for m, lab in (("ga", "lr0.003"), ("bs_s", "lr0.003_lam0.5")):
        assert again["tuning"][m]["forget10"]["scores"][lab] == "not run"
        assert again["tuning"][m]["forget10"]["chosen"] == table["tuning"][m]["forget10"]["chosen"]
    assert again["tuning"]["ga"]["forget10"]["scores"][partial] == "1 of 2 seeds run"
    text = open(tmp_path / "copy" / "table.md").read()
    assert "lr0.003 not run" in text and "lr10 stopped" in text and "left out of the choice" in text
    assert f"{partial} 1 of 2 seeds run" in text


def test_a_toy_grid_ignores_the_flags_of_other_worlds(tiny, tmp_path, monkeypatch):
    # --models_dir belongs to the smollm2 world: a toy grid's tables read the same whether or not the folder it
    # names exists (dev/real_model.py makes runs/real_model, which once made every saved toy result "other")
    argv, out, table = tiny
    monkeypatch.setattr(bs, "train", lambda *a, **k: pytest.fail("--tables_only trained a run"))
    again = grid.main(argv + ["--tables_only", "--models_dir", str(tmp_path)])
    assert again["tuned"] == json.loads(json.dumps(table["tuned"]))


def test_partly_run_grid_names_what_is_missing(tiny, tmp_path, monkeypatch):
    # every tuning run of BS-S on seed 3 gone: its tuned row says no setting is chosen yet (not a silent gap);
    # and a result from other code is named in the tables
    argv, out, table = tiny
    import shutil
    copy_ = tmp_path / "copy"
    shutil.copytree(out, copy_)
    for d in (copy_ / "forget10" / "seed3").glob("bs_s-*"):
        shutil.rmtree(d)
    res = copy_ / "forget10" / "seed1" / "ga-lr0.0003" / "result.json"
    saved = json.loads(res.read_text())
    assert saved["code"] == grid.code_version()
    res.write_text(json.dumps(dict(saved, code="0000000")))
    monkeypatch.setattr(bs, "train", lambda *a, **k: pytest.fail("--tables_only trained a run"))
    argv = list(argv)
    argv[argv.index("--out_root") + 1] = str(copy_)
    again = grid.main(argv + ["--tables_only"])
    assert again["tuning"]["bs_s"]["forget10"]["chosen"] is None
    text = (copy_ / "table.md").read_text()
    bs_s_row = next(line for line in text.splitlines() if line.startswith("| BS-S |"))
    assert "none chosen yet" in bs_s_row
    assert "2 versions of the code" in text and "0000000" in text
    grid.main(list(tiny[0]) + ["--tables_only"])  # the same process, another grid: its own versions only
    assert "versions of the code" not in open(os.path.join(out, "table.md")).read()


def test_a_method_whose_every_setting_stopped_says_so(tiny, tmp_path, monkeypatch):
    argv, out, table = tiny
    import shutil
    shutil.copytree(out, tmp_path / "copy")
    for seed in (0, 3):
        for lab in ("lr0.0003", "lr0.001"):
            res = tmp_path / "copy" / "forget10" / f"seed{seed}" / f"ga-{lab}" / "result.json"
            saved = json.loads(res.read_text())
            saved.pop("summary")
            res.write_text(json.dumps(dict(saved, stopped="at step 1 the run diverged (by hand)")))
    argv = list(argv)
    argv[argv.index("--out_root") + 1] = str(tmp_path / "copy")
    monkeypatch.setattr(bs, "train", lambda *a, **k: pytest.fail("--tables_only trained a run"))
    grid.main(argv + ["--tables_only"])
    row = next(line for line in (tmp_path / "copy" / "table.md").read_text().splitlines()
               if line.startswith("| GradDiff |"))
    assert "every setting stopped" in row


def test_settings_and_seeds_that_cannot_be_told_apart_are_refused():
    one_line_error(lambda: grid.get_args(["--lrs", "1e-4,1.0000001e-4"]), "--lrs", "6 digits")
    one_line_error(lambda: grid.get_args(["--lrs", "1e-4,1e-4"]), "--lrs")
    one_line_error(lambda: grid.get_args(["--seeds", ""]), "--seeds")


def test_an_out_root_holding_other_files_is_refused(tmp_path):
    # the grid rewrites table.md and table.json on every call: a folder of someone's notes is left alone
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "table.md").write_text("my notes")
    one_line_error(lambda: grid.main(["--tables_only", "--out_root", str(notes)]), "--out_root", "table.md")
    (notes / "table.md").unlink()
    (notes / "thesis.txt").write_text("years of work")
    one_line_error(lambda: grid.main(["--out_root", str(notes)]), "--out_root", "thesis.txt")
    assert sorted(os.listdir(notes)) == ["thesis.txt"]
    one_line_error(lambda: grid.main(["--tables_only", "--out_root", str(tmp_path / "new")]), "no runs")
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("argv, words", [
    (["--lrs", "-1"], ["--lrs", "> 0"]), (["--bss_lambdas", "1.5"], ["--bss_lambdas"]),
    (["--flags", '--system_prompt "x'], ["--flags", "quotation"]), (["--seeds", str(2 ** 40)], ["--seed"]),
    (["--eval_flags", "--out_dir /tmp/elsewhere"], ["--eval_flags", "--out_dir"])])
def test_bad_grid_input_is_one_line_before_any_work(argv, words):
    one_line_error(lambda: grid.get_args(argv), *words)


def test_a_cut_result_file_is_one_line(tiny, tmp_path):
    argv, out, _ = tiny
    import shutil
    shutil.copytree(out, tmp_path / "copy")
    (tmp_path / "copy" / "forget10" / "seed1" / "ga-lr0.0003" / "result.json").write_text('{"method": "g')
    argv = list(argv)
    argv[argv.index("--out_root") + 1] = str(tmp_path / "copy")
    one_line_error(lambda: grid.main(argv + ["--tables_only"]), "result.json", "not the JSON")
