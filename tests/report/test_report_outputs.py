"""`mambaseg report` on a synthetic results folder: README table, differences, figures."""
from __future__ import annotations

import json
import shutil
import re

import numpy as np
from PIL import Image

import fake_results
from mambaseg.report import make_report
from mambaseg.models import count_parameters
from mambaseg.report.notes import parse_notes
from mambaseg.report.samples import choose_evenly, parse_slices
from mambaseg.report.tables import fmt_duration

FIGS = ("fig1_data.png", "fig2_dice_params.png", "fig3_samples.png")


def table_row(readme: str, model: str) -> list[str]:
    """The cells of ``model``'s row in the README's Table I."""
    line = next(ln for ln in readme.splitlines() if ln.startswith(f"| `{model}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def section(readme: str, heading: str) -> str:
    start = readme.index(heading)
    nxt = readme.find("\n## ", start + len(heading))
    return readme[start: nxt if nxt >= 0 else len(readme)]


def test_readme_table_rows_hold_the_summary_values(results, cli, capsys):
    assert cli(["report", str(results)]) == 0
    readme = (results / "README.md").read_text()
    unet = table_row(readme, "unet")
    assert unet[1] == "7,765,985" and unet[2] == "7,765,985"
    assert unet[3] == "0.8712" and unet[4] == "0.8929" and unet[5] == "-0.0217"
    assert unet[6] == "0.8123"                       # per-slice Dice (all slices), patient split
    assert unet[7] == "n/a"                          # the summary holds no tumour-slice Dice
    assert unet[8] == "0.7900 [0.750, 0.830]"        # per-patient Dice with its 95 % interval
    assert unet[9] == "12.0 s"                       # median of epoch_time_s 11, 12, 13
    assert unet[10].startswith("36.0 s")             # sum of the epoch times
    assert unet[11] == "3/3 (paper 100)"
    assert unet[12] == fake_results.DEVICE
    v2 = table_row(readme, "ulvm_unet_v2")
    assert v2[3] == "0.8250" and v2[4] == "0.8243" and v2[5] == "+0.0007"
    assert table_row(readme, "umamba_bot")[6:8] == ["not run"] * 2   # no patient-protocol run
    for model in ("resnet50", "segformer", "ulvm_unet_v6"):
        row = table_row(readme, model)
        assert row[3] == "not run" and row[8] == "not run"
        assert row[1].startswith(f"{count_parameters(model):,}")   # counted without a run
    assert table_row(readme, "resnet50")[4] == "0.8672"          # paper's number still shown
    out = capsys.readouterr().out
    printed = next(ln for ln in out.splitlines() if ln.startswith("unet "))
    assert "0.8712" in printed and "0.8929" in printed and "not run" in out


def test_tumour_slice_dice_beside_the_all_slice_mean(results):
    """The leak-free columns: all-slice mean (empty-empty slices count 1.0) and tumour slices only;
    an old summary without ``tumour_mean`` shows n/a, never a number made up."""
    path = results / "patient" / "unet" / "summary.json"
    summary = json.loads(path.read_text())
    summary["dice_slice"].update({"tumour_mean": 0.61234, "n": 6, "n_tumour": 3})
    path.write_text(json.dumps(summary))
    path = results / "patient" / "ulvm_unet_v2" / "summary.json"
    summary = json.loads(path.read_text())
    summary["dice_slice"].update({"n": 6, "n_tumour": 3})       # an old summary: no tumour_mean
    path.write_text(json.dumps(summary))
    from mambaseg.report.collect import load_runs
    from mambaseg.report.paper import load_paper_table
    from mambaseg.report.readme import slice_dice_note
    from mambaseg.report.tables import HEADER, build_rows

    rows = {r.model: r for r in build_rows(load_runs(results), load_paper_table(results))}
    assert HEADER[6:8] == ["Per-slice Dice (all slices), patient split", "Tumour-slice Dice, patient split"]
    assert rows["unet"].cells()[6:8] == ["0.8123", "0.6123"]
    assert rows["ulvm_unet_v2"].cells()[6:8] == ["0.7601", "n/a"]
    note = slice_dice_note(list(rows.values()))
    assert "tumour-free slice predicted empty scores 1.0" in note and "(3 of the 6 test slices here)" in note
    assert "averages the 3 slices with tumour only" in note and "`n/a`: the summary does not hold it" in note


def test_runs_table_says_when_config_names_another_checkpoint(results):
    def edit(name, **values):
        path = results / "patient" / "unet" / name
        doc = json.loads(path.read_text())
        doc.update(values)
        path.write_text(json.dumps(doc))

    def runs_cell():
        readme = (results / "README.md").read_text()
        line = next(ln for ln in readme.splitlines() if ln.startswith("| patient | `unet` |"))
        return [c.strip() for c in line.strip("|").split("|")][8], readme

    edit("summary.json", checkpoint="/runs/patient/unet/best")
    edit("config.json", checkpoint="last")                 # trained with the paper preset's setting
    make_report(results)
    cell, readme = runs_cell()
    assert cell == "best (config.json: last)" and "`(config.json: …)`: the run's `config.json`" in readme
    edit("config.json", evaluation_checkpoint="best")      # recorded at the end of training
    from mambaseg.report.collect import load_runs
    from mambaseg.report.tables import runs_rows

    runs = load_runs(results)
    assert not any(r.checkpoint_mismatch for r in runs.values())
    assert next(r for r in runs_rows(runs) if r[:2] == ["patient", "`unet`"])[8] == "best"


def test_overview_section_of_notes_goes_above_the_table(results):
    make_report(results)
    readme = (results / "README.md").read_text()
    assert "OVERVIEW-TEXT-7" in readme
    assert readme.index("OVERVIEW-TEXT-7") < readme.index("## Table I")


def test_differences_are_flagged_with_notes_or_a_placeholder(results):
    make_report(results)
    readme = (results / "README.md").read_text()
    diffs = section(readme, "## Differences from the paper")
    assert "### `unet`: ours 0.8712, paper 0.8929 (Δ -0.0217)" in diffs
    assert "EVIDENCE-UNET-42" in diffs                    # the notes.md paragraph is copied
    umamba = diffs[diffs.index("### `umamba_bot`"):]
    assert "No explanation recorded yet" in umamba and "## umamba_bot" in umamba
    assert "ulvm_unet_v2" not in diffs                   # within 0.01 of the paper
    assert "must not appear" not in readme               # notes of a model not flagged
    assert "No explanation recorded yet" not in diffs[: diffs.index("### `umamba_bot`")]


def test_figures_are_written_and_linked(results):
    res = make_report(results)
    readme = (results / "README.md").read_text()
    for name in FIGS:
        path = results / "figures" / name
        assert res.figures[name] == path
        assert path.stat().st_size > 20_000, name
        with Image.open(path) as im:
            w, h = im.size
        assert 400 <= w <= 4000 and 300 <= h <= 4000, (name, w, h)
        assert f"](figures/{name})" in readme
    assert "scripts/reproduce.py" in readme and "-m mambaseg report results" in readme
    assert not [p for p in results.rglob(".*") if p.is_file()], "temporary files left behind"


def test_report_is_deterministic_and_atomic(results):
    make_report(results)
    first = (results / "README.md").read_text()
    make_report(results)
    assert (results / "README.md").read_text() == first


def test_missing_runs_and_inputs_are_reported_not_fatal(tmp_path, cli):
    results = fake_results.make_results(tmp_path / "r", with_saved_inputs=False, with_notes=False)
    for protocol in ("paper", "patient"):
        for d in (results / protocol).iterdir():
            if d.name != "unet":
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
    assert cli(["report", str(results), "--quiet"]) == 0
    readme = (results / "README.md").read_text()
    assert "Fig. 1" in readme and "**not drawn**" in readme          # no data_stats.json
    assert (results / "figures" / "fig3_samples.png").is_file()      # predictions only
    assert "No explanation recorded yet" in readme                   # no notes.md at all
    assert table_row(readme, "umamba_bot")[3] == "not run"


def test_empty_results_folder(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    assert cli(["report", str(tmp_path / "empty")]) == 2        # the command: nothing to report
    assert not (tmp_path / "empty" / "README.md").exists()
    make_report(tmp_path / "empty")                              # the function: empty rows
    readme = (tmp_path / "empty" / "README.md").read_text()
    assert "0 of 13 models have results" in readme
    assert readme.count("not run") >= 13


def test_out_folder_and_links(results, tmp_path, cli):
    out = tmp_path / "elsewhere"
    assert cli(["report", str(results), "--out", str(out), "--quiet"]) == 0
    assert (out / "README.md").is_file() and (out / "figures" / "fig2_dice_params.png").is_file()
    assert not (results / "README.md").exists()


def test_report_from_data_saves_its_inputs(tmp_path, cli):
    data = fake_results.make_dataset(tmp_path / "lgg")
    results = fake_results.make_results(tmp_path / "results", with_saved_inputs=False)
    assert cli(["report", str(results), "--data", str(data), "--slices", "3", "--quiet"]) == 0
    stats = json.loads((results / "data_stats.json").read_text())
    splits = fake_results.split_doc()
    for protocol, split in splits.items():
        for part, rels in split.items():
            c = stats["protocols"][protocol][part]
            assert c["slices"] == len(rels)
            assert c["tumour"] == sum(fake_results.has_tumour(r) for r in rels)
            assert c["tumour_free"] == c["slices"] - c["tumour"]
            assert c["patients"] == len({r.split("/")[0] for r in rels})
    assert stats["protocols"]["patient"]["test"]["patients_also_in_other_parts"] == 0
    with np.load(results / "fig3_inputs.npz") as z:
        rels = list(z["rel"])
        assert len(rels) == 3 and z["images"].shape == (3, 64, 64, 3) and z["masks"].shape == (3, 64, 64)
        assert all(r in splits["paper"]["test"] and fake_results.has_tumour(r) for r in rels)
        for r, m in zip(rels, z["masks"]):
            assert np.array_equal(m, fake_results.gt_mask(r))
    # and the next report needs only the results folder
    (results / "figures" / "fig1_data.png").unlink()
    assert cli(["report", str(results), "--slices", "2", "--quiet"]) == 0
    assert (results / "figures" / "fig1_data.png").stat().st_size > 20_000


def test_explicit_slices_must_be_saved_or_readable(results, cli, capsys):
    assert cli(["report", str(results), "--slices", "TCGA_XX_1/TCGA_XX_1_1.tif", "--quiet"]) == 2
    assert "fig3_inputs.npz" in capsys.readouterr().err


def test_broken_summary_names_the_file(results, cli, capsys):
    (results / "paper" / "unet" / "summary.json").write_text("{not json")
    assert cli(["report", str(results)]) == 2
    assert "paper/unet/summary.json" in capsys.readouterr().err


def test_truncated_last_metrics_line_is_tolerated(results):
    path = results / "paper" / "unet" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 4, "train_lo')
    make_report(results)
    assert table_row((results / "README.md").read_text(), "unet")[11].startswith("3/3")


def test_parameter_mismatch_is_marked(results):
    path = results / "paper" / "unet" / "summary.json"
    summary = json.loads(path.read_text())
    summary["parameters"] = 7_000_000
    path.write_text(json.dumps(summary))
    make_report(results)
    assert table_row((results / "README.md").read_text(), "unet")[1] == "7,000,000 ≠"


def test_runs_of_the_old_segformer_say_what_they_ran(results):
    paper = results / "paper"
    shutil.copytree(paper / "unet", paper / "segformer")
    path = paper / "segformer" / "summary.json"
    summary = json.loads(path.read_text())
    for params, label in ((17_597_057, "`segformer` (ran as `segformer_mit_b0`)"),
                          (17_782_913, "`segformer`")):
        (paper / "segformer" / "summary.json").write_text(
            json.dumps({**summary, "model": "segformer", "parameters": params}))
        config = json.loads((paper / "segformer" / "config.json").read_text())
        (paper / "segformer" / "config.json").write_text(
            json.dumps({**config, "model": "segformer", "parameters": params}))
        make_report(results)
        line = next(ln for ln in (results / "README.md").read_text().splitlines()
                    if ln.startswith("| `segformer`"))
        assert line.split("|")[1].strip() == label


def test_helpers():
    assert choose_evenly(list(range(10)), 4) == [1, 3, 6, 8]
    assert choose_evenly([1, 2], 4) == [1, 2]
    assert parse_slices(None) == 4 and parse_slices("2") == 2 and parse_slices("a.tif, b.tif") == ["a.tif", "b.tif"]
    assert [fmt_duration(s) for s in (12.34, 245, 7620)] == ["12.3 s", "4 min 05 s", "2 h 07 min"]
    notes = parse_notes("# T\nintro\n## unet\nA\n### detail\nB\n## resnet18: why\nC\n# End\nD\n")
    assert notes == {"unet": "A\n### detail\nB", "resnet18": "C"}


def test_paper_table_is_complete():
    doc = json.loads((fake_results.REPO / "results" / "paper_table1.json").read_text())
    rows = {r["model"]: r for r in doc["models"]}
    assert list(rows) == ["unet", "resnet18", "resnet50", "segformer", "umamba_bot", "umamba_bot_pp",
                          "ulvm_unet", "ulvm_unet_v1", "ulvm_unet_v2", "ulvm_unet_v3", "ulvm_unet_v4",
                          "ulvm_unet_v5", "ulvm_unet_v6"]
    assert rows["unet"]["parameters"] == 7_765_985 and rows["unet"]["dice"] == 0.8929
    assert rows["ulvm_unet_v2"]["parameters"] == 42_737 and rows["ulvm_unet_v2"]["dice"] == 0.8243
    assert all(isinstance(r["dice"], float) for r in rows.values())
    assert re.fullmatch(r"[0-9a-f]{40}", doc["source"]["numbers_from"]["commit"])


def test_invalid_runs_are_marked_and_left_out_of_the_figures(results, monkeypatch, cli, capsys):
    import mambaseg.report.build as build
    from mambaseg.report.collect import load_runs
    from mambaseg.report.figures import fig2_dice_params
    from mambaseg.report.paper import load_paper_table
    from mambaseg.report.tables import build_rows

    make_report(results)  # nothing marked: no mark and no legend for it
    assert "✗" not in (results / "README.md").read_text()
    (results / "invalid.json").write_text(json.dumps({"paper/unet": "fed at the wrong scale"}))
    drawn = {}
    real_fig3 = build.fig3_samples

    def recording_fig3(inputs, preds):
        drawn["fig3"] = sorted(preds)
        return real_fig3(inputs, preds)

    monkeypatch.setattr(build, "fig3_samples", recording_fig3)
    make_report(results)
    readme = (results / "README.md").read_text()
    unet = table_row(readme, "unet")
    assert unet[3] == "0.8712 ✗" and unet[5] == "-0.0217 ✗"
    assert unet[6] == "0.8123" and "✗" not in unet[8]  # the patient run is not marked
    assert "unet" not in drawn["fig3"] and drawn["fig3"]
    assert "`✗`: the run's evaluation is known to be wrong" in readme
    runs = load_runs(results)
    assert runs[("paper", "unet")].invalid == "fed at the wrong scale"
    assert runs[("patient", "unet")].invalid is None
    # Fig. 2: unet's paper-protocol point is not drawn; its published marker is named in grey
    fig = fig2_dice_params(build_rows(runs, load_paper_table(results)))
    left = fig.axes[0]
    names = {t.get_text(): t.get_color() for t in left.texts}
    assert names["unet"] == "0.45"
    # a malformed file is refused, naming it
    (results / "invalid.json").write_text(json.dumps({"unet": "no protocol"}))
    assert cli(["report", str(results)]) != 0
    assert "invalid.json" in capsys.readouterr().err
