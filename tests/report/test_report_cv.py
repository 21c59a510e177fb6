"""``results/cv/README.md`` (mambaseg.report.cv) from a synthetic cross-validation folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import fake_cv
import fake_results
from mambaseg.compare import format_p, paired_comparison
from mambaseg.report import make_cv_report, make_report


def row(readme: str, first: str, second: str | None = None) -> list[str]:
    """The cells of the first table row starting with ``| `first` |`` (and ``second``)."""
    head = f"| `{first}` |" + (f" `{second}` |" if second else "")
    line = next(ln for ln in readme.splitlines() if ln.startswith(head))
    return [c.strip() for c in line.strip("|").split("|")]


def section(readme: str, heading: str) -> str:
    start = readme.index(heading)
    nxt = readme.find("\n## ", start + len(heading))
    return readme[start: nxt if nxt >= 0 else len(readme)]


def report(cv: Path) -> str:
    path, _ = make_cv_report(cv)
    assert path == cv / "README.md"
    return path.read_text(encoding="utf-8")


def dice_dict(folder: str) -> dict[str, float]:
    """Per-patient Dice recomputed here from the planted counts."""
    return {p: 2 * tp / (2 * tp + fp + fn)
            for p, (tp, fp, fn) in zip(fake_cv.PATIENTS, fake_cv.COUNTS[folder])}


def set_preset(folder: Path, preset: str) -> None:
    doc = json.loads((folder / "crossval.json").read_text())
    doc["settings"]["preset"] = preset
    (folder / "crossval.json").write_text(json.dumps(doc))


@pytest.fixture
def cv(tmp_path: Path) -> Path:
    return fake_cv.make_cv(tmp_path / "results")


def test_header_says_how_it_is_generated(cv):
    readme = report(cv)
    top = readme[:600]
    assert "`mambaseg report results`" in top and "do not edit by hand" in top
    assert fake_cv.MACHINE["device"] in top and fake_cv.MACHINE["command"] in readme


def test_main_table_rows_hold_the_summary_numbers(cv):
    readme = report(cv)
    main = section(readme, "## Main table")
    order = [ln.split("|")[1].strip() for ln in main.splitlines() if ln.startswith("| `")]
    assert order == ["`unet`", "`unet-paper`", "`ulvm_unet_v2`", "`umamba_bot`"]
    unet = row(main, "unet")
    assert unet == [
        "`unet`", "recommended", "7,765,985", f"{fake_cv.mean('unet'):.4f} [0.610, 0.810]",
        "0.7321", "0.7812", "0.6543", "12.3", "12/222 slices (5.4 %)", "3-D largest component",
        "0.7001", "123.5", "—", "40", "0.0003"]   # CPU ms/slice: no cpu_latency.json
    v2 = row(main, "ulvm_unet_v2")
    assert v2[:4] == ["`ulvm_unet_v2`", "recommended", "42,737",
                      f"{fake_cv.mean('ulvm_unet_v2'):.4f} [0.640, 0.830]"]
    assert v2[7:] == ["9.9", "7/222 slices (3.2 %)", "none", "0.7301", "45.0", "—", "40", "0.0003"]
    paper = row(main, "unet-paper")
    assert paper[1] == "paper" and paper[-2] == "100" and paper[8] == "40/222 slices (18.0 %)"


def test_legacy_hd95_is_the_pooled_one_and_is_labelled_so(cv):
    main = section(report(cv), "## Main table")
    header = next(ln for ln in main.splitlines() if ln.startswith("| Model |"))
    assert "| HD95 pooled, medpy (px) |" in header and "max of directed" not in header
    assert "hold the pooled one only" in main


def test_both_hd95_definitions_get_a_column_each(cv):
    """A summary holding both definitions shows both; an old one (``hd95`` only, which is the
    pooled value) shows its value under the pooled column and n/a under the other."""
    path = cv / "ulvm_unet_v2" / "summary.json"
    summary = json.loads(path.read_text())
    summary["hd95"] = {"mean": 14.44, "median": 3.0, "n": 70, "unit": "pixel",
                       "definition": "max_directed"}
    summary["hd95_pooled"] = {"mean": 9.87, "median": 2.0, "n": 70, "unit": "pixel",
                              "definition": "pooled"}
    path.write_text(json.dumps(summary))
    main = section(report(cv), "## Main table")
    header = next(ln for ln in main.splitlines() if ln.startswith("| Model |"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[7:9] == ["HD95 max of directed, MONAI (px)", "HD95 pooled, medpy (px)"]
    assert row(main, "ulvm_unet_v2")[7:9] == ["14.4", "9.9"]
    assert row(main, "unet")[7:9] == ["n/a", "12.3"]
    assert row(main, "umamba_bot")[7:9] == ["—", "—"]                  # not finished
    assert "`n/a`: the summary of `unet`, `unet-paper` was written before both" in main


def test_hd95_metrics_reads_every_kind_of_summary():
    from mambaseg.metrics import HD95_DEFINITIONS
    from mambaseg.report.collect import HD95_LABELS, HD95_MAX, HD95_POOLED, hd95_metrics

    assert set(HD95_LABELS) == set(HD95_DEFINITIONS.values())
    assert (HD95_DEFINITIONS["hd95"], HD95_DEFINITIONS["hd95_pooled"]) == (HD95_MAX, HD95_POOLED)
    legacy = {"hd95": {"mean": 5.0}}
    assert hd95_metrics(legacy) == {HD95_POOLED: {"mean": 5.0}}
    both = {"hd95": {"mean": 7.0}, "hd95_pooled": {"mean": 5.0}}     # keys without definition
    assert hd95_metrics(both) == {HD95_MAX: {"mean": 7.0}, HD95_POOLED: {"mean": 5.0}}
    named = {"hd95": {"mean": 7.0, "definition": HD95_MAX}}
    assert hd95_metrics(named) == {HD95_MAX: named["hd95"]}
    assert hd95_metrics(None) == {} and hd95_metrics({"hd95": None}) == {}


def test_per_fold_and_post_processing_tables(cv):
    readme = report(cv)
    folds = section(readme, "## Per-fold results")
    unet = folds[folds.index("### `unet`"):folds.index("### `unet-paper`")]
    first = fake_cv.fold_rows("unet")[0]
    assert f"| 0 | 3 | {first['dice_patient']:.4f} | {first['dice_global']:.4f} | 10 | 40 | 41.2 |" \
        in unet
    assert "| 2 | 2 |" in unet
    post = section(readme, "## Post-processing")
    unet = post[post.index("### `unet`"):post.index("### `unet-paper`")]
    assert "| none | 0.7001 | 0.7500 | 0.6000 | 22/222 slices (9.9 %) |  |" in unet
    assert "| 3-D largest component | 0.7201 | 0.7700 | 0.6200 | 12/222 slices (5.4 %) | ✓ |" in unet


def test_paired_comparisons_match_paired_comparison(cv):
    readme = report(cv)
    comp = section(readme, "## Paired comparisons")
    for a, b in (("ulvm_unet_v2", "unet"), ("unet", "unet-paper")):
        c = paired_comparison(dice_dict(a), dice_dict(b))
        cells = row(comp, a, b)
        assert cells[2:10] == [
            str(len(fake_cv.PATIENTS)), f"{c['mean_a']:.4f}", f"{c['mean_b']:.4f}",
            f"{c['mean_diff']:+.4f}", f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
            f"{c['median_diff']:+.4f}", format_p(c["p_wilcoxon"]),
            f"{c['wins']}/{c['ties']}/{c['losses']}"]
        assert cells[10] == c["verdict"].replace("A better", f"{a} better").replace(
            "B better", f"{b} better")
    # a recommended-preset model is never compared with the paper-preset unet
    assert "| `ulvm_unet_v2` | `unet-paper` |" not in comp
    assert "`umamba_bot`: not finished (folds done: 0, 2), not compared yet." in comp


def test_paper_preset_models_are_compared_with_unet_paper(cv):
    shutil.copytree(cv / "ulvm_unet_v2", cv / "ulvm_unet_v2-paper")
    set_preset(cv / "ulvm_unet_v2-paper", "paper")
    comp = section(report(cv), "## Paired comparisons")
    assert row(comp, "ulvm_unet_v2-paper", "unet-paper")[2] == str(len(fake_cv.PATIENTS))
    same = row(comp, "ulvm_unet_v2", "ulvm_unet_v2-paper")       # recipe vs paper preset
    assert same[5] == "+0.0000" and same[9] == "0/8/0"
    assert "| `ulvm_unet_v2-paper` | `unet` |" not in comp


def test_different_patients_are_not_compared(cv):
    shutil.copytree(cv / "ulvm_unet_v2", cv / "resnet18")
    summary = json.loads((cv / "resnet18" / "summary.json").read_text())
    summary["model"] = "resnet18"
    summary["per_patient"] = summary["per_patient"][:-1]
    (cv / "resnet18" / "summary.json").write_text(json.dumps(summary))
    comp = section(report(cv), "## Paired comparisons")
    assert "`resnet18` vs `unet`: not compared, the two results cover different patients" in comp
    assert row(comp, "ulvm_unet_v2", "unet")                      # the others still are


def ablation_row(abl: str, name: str) -> list[str]:
    """The ablation table's cells of run folder ``name`` (first cell: folder and model)."""
    line = next(ln for ln in abl.splitlines() if ln.startswith(f"| `{name}` ("))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ablation_table_shows_best_epoch_and_differences(cv):
    readme = report(cv)
    abl = section(readme, "## Ablation")
    assert "fold 0's *validation* patients" in abl and "not on the test fold" in abl
    names = list(fake_cv.ABLATION)
    prev = None
    for name in names:
        best, epoch = fake_cv.best_of(name)
        cells = ablation_row(abl, name)
        assert cells[0] == f"`{name}` (`unet`)" and cells[1] == "123,456"
        assert cells[5] == f"{best:.4f} ({epoch})"
        assert cells[6] == f"{fake_cv.ABLATION[name][1][-1]:.4f}"
        assert cells[7] == ("—" if prev is None else f"{best - prev:+.4f}")
        assert cells[8] == "2.0"                                # 4 epochs of 30 s
        prev = best
    assert ablation_row(abl, "a_baseline")[3] == "(first row)"
    assert ablation_row(abl, "b_augment")[3] == "augment: off → on"
    assert ablation_row(abl, "c_cosine")[3] == "scheduler: none → cosine; warmup_epochs: 0 → 2"
    assert "tumour slices 0.5 of each epoch" in ablation_row(abl, "d_oversample")[2]
    assert ablation_row(abl, "d_oversample")[7] == "+0.0500"


def test_ablation_rows_sort_numbers_as_numbers_and_show_model_options(cv):
    for name, kwargs in (("r10_two", {"directions": 2}), ("r2_one", {"directions": 1})):
        d = cv / "ablation" / name
        shutil.copytree(cv / "ablation" / "d_oversample", d)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "model_kwargs": kwargs}))
    abl = section(report(cv), "## Ablation")
    names = [ln.split("`")[1] for ln in abl.splitlines() if ln.startswith("| `")]
    assert names[-2:] == ["r2_one", "r10_two"]                  # not "r10" before "r2"
    assert ablation_row(abl, "r2_one")[3] == "model_kwargs: none → directions=1"
    assert ablation_row(abl, "r10_two")[3] == "model_kwargs: directions=1 → directions=2"


def test_ablation_cpu_latency_comes_from_the_benchmark_file(cv):
    abl = section(report(cv), "## Ablation")
    assert ablation_row(abl, "a_baseline")[9] == "—" and "not measured" in abl
    d = cv / "ablation" / "r2_one"
    shutil.copytree(cv / "ablation" / "a_baseline", d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_kwargs": {"directions": 1}}))
    where = "x86_64, 2 torch threads"
    (cv / "ablation" / "cpu_latency.json").write_text(json.dumps({
        "unet": {"b1_ms_per_slice": 123.4, "threads": 2, "where": where, "torch": "9.9"},
        "unet:directions=1": {"b1_ms_per_slice": 45.6}}))
    abl = section(report(cv), "## Ablation")
    assert ablation_row(abl, "a_baseline")[9] == "123"
    assert ablation_row(abl, "r2_one")[9] == "46"
    assert f"`benchmarks/predict.py --batches 1 --json`, {where}, torch 9.9" in abl


def test_machine_json_may_list_several_sessions(cv):
    sessions = [{"device": "GPU-ONE", "date": "2026-12-01", "runs": "unet",
                 "command": "bash scripts/crossval_gpu.sh start DATA recipe1"},
                {"device": "GPU-TWO", "date": "2026-12-02", "command": "CMD-TWO"}]
    (cv / "machine.json").write_text(json.dumps({"sessions": sessions}))
    top = report(cv).split("## Main table")[0]
    assert "Run on **GPU-ONE**, 2026-12-01 (unet)." in top
    assert "Run on **GPU-TWO**, 2026-12-02." in top
    assert "crossval_gpu.sh start DATA recipe1" in top and "CMD-TWO" in top
    (cv / "machine.json").write_text(json.dumps({"sessions": "GPU"}))
    assert "is not an object: the machine is not shown" in report(cv)


def test_every_unet_of_the_same_preset_is_a_baseline(cv):
    shutil.copytree(cv / "unet", cv / "unet_lr1e-4")
    comp = section(report(cv), "## Paired comparisons")
    assert row(comp, "ulvm_unet_v2", "unet")[2] == str(len(fake_cv.PATIENTS))
    assert row(comp, "ulvm_unet_v2", "unet_lr1e-4")[5] == row(comp, "ulvm_unet_v2", "unet")[5]


def test_unfinished_model_is_listed(cv):
    readme = report(cv)
    cells = row(section(readme, "## Main table"), "umamba_bot")
    assert cells[3] == "not finished (folds done: 0, 2)"
    assert "3 of 4 cross-validations finished" in readme
    assert "### `umamba_bot`" not in readme                     # no per-fold table yet


def test_targets_and_notes(cv):
    readme = report(cv)
    targets = section(readme, "## Targets")
    m = fake_cv.mean("unet")
    assert f"OOF per-patient Dice {m:.4f} vs 0.836" in targets and "Buda et al. 2019" in targets
    assert f"Δ {m - 0.836:+.4f}" in targets and "0.84 between human readers" in targets
    assert readme.rstrip().endswith(fake_cv.NOTES.strip())      # notes.md verbatim at the end


def test_missing_pieces_are_sentences(tmp_path):
    cv = fake_cv.make_cv(tmp_path / "r", models=("ulvm_unet_v2",), unfinished=False,
                         ablation=False, extras=False)
    readme = report(cv)
    assert "No ablation here" in readme
    assert "no finished `unet` cross-validation under the recommended preset" in readme
    assert "No finished `unet` cross-validation yet" in section(readme, "## Targets")
    assert "No `machine.json`" in readme and "## Notes" not in readme
    empty = tmp_path / "empty" / "cv"
    empty.mkdir(parents=True)
    readme = report(empty)
    assert "No cross-validation saved yet." in readme and "No ablation here" in readme


def test_regenerating_gives_identical_bytes(cv):
    report(cv)
    first = (cv / "README.md").read_bytes()
    report(cv)
    assert (cv / "README.md").read_bytes() == first


def test_cli_report_on_a_results_folder_with_only_cv(cv, cli, capsys):
    results = cv.parent
    assert cli(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {cv / 'README.md'}" in out
    assert "Cross-validation" in out and "not finished (folds done: 0, 2)" in out
    readme = (cv / "README.md").read_text()
    assert row(readme, "unet")[3].startswith(f"{fake_cv.mean('unet'):.4f}")
    assert (results / "README.md").is_file()                     # Table I, all "not run"
    first = (cv / "README.md").read_bytes()
    assert cli(["report", str(results), "--quiet"]) == 0
    assert (cv / "README.md").read_bytes() == first


def test_make_report_adds_cv_readme_next_to_table_one(results, tmp_path):
    plain = make_report(results)
    table_one = (results / "README.md").read_text()
    assert plain.cv_table is None and not (results / "cv").exists()
    fake_cv.make_cv(results)
    res = make_report(results)
    assert results / "cv" / "README.md" in res.written
    assert (results / "README.md").read_text() == table_one     # Table I unchanged
    assert "not finished" in res.cv_table
    out = make_report(results, out=tmp_path / "elsewhere")
    assert tmp_path / "elsewhere" / "cv" / "README.md" in out.written
    assert fake_results.DEVICE in (results / "README.md").read_text()


def test_main_table_gives_each_models_cpu_latency(cv):
    """The main table's CPU ms/slice comes from ablation/cpu_latency.json, looked up by the
    model and the options its folds were trained with."""
    def cpu_cells(readme: str) -> dict[str, str]:
        lines = [ln for ln in section(readme, "## Main table").splitlines() if ln.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        col = header.index("CPU ms/slice")
        rows = ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])
        return {r[0].strip("`"): r[col] for r in rows}

    readme = report(cv)
    assert set(cpu_cells(readme).values()) == {"—"} and "CPU ms/slice: not measured" in readme
    fold = cv / "unet" / "fold_0" / "config.json"
    cfg = json.loads(fold.read_text())
    fold.write_text(json.dumps({**cfg, "model_kwargs": {"features": [4, 8]}}))
    (cv / "ablation" / "cpu_latency.json").write_text(json.dumps({
        "unet": {"b1_ms_per_slice": 99.0, "where": "x86_64, 2 torch threads", "torch": "9.9"},
        "unet:features=[4, 8]": {"b1_ms_per_slice": 12.4}}))
    cells = cpu_cells(report(cv))
    assert cells["unet"] == "12"
    others = {json.loads((cv / k / "fold_0" / "config.json").read_text())["model"]: v
              for k, v in cells.items() if k != "unet" and (cv / k / "fold_0").is_dir()}
    assert others.get("unet") == "99" and others.get("ulvm_unet_v6", "—") == "—"
