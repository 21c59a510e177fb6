"""The seed spread of dice_paper: runs of other seeds in ``paper/<model>/seeds/<s>/``."""
from __future__ import annotations

import json
import statistics

import pytest

import fake_results
from mambaseg.report import make_report
from mambaseg.report.collect import load_runs
from mambaseg.report.paper import load_paper_table
from mambaseg.report.tables import build_rows

#: model -> {seed: dice_paper} of the reruns added to the fake results (seed 0: fake_results.PAPER_RUNS)
SEEDS = {
    "unet": {1: 0.8950, 2: 0.8800},     # paper 0.8929 lies within 0.8712-0.8950
    "umamba_bot": {1: 0.9050},          # paper 0.8799 lies below 0.9001-0.9050
}


def add_seeds(results, seeds=SEEDS, protocol="paper"):
    test = fake_results.split_doc()["paper"]["test"]
    for model, by_seed in seeds.items():
        params = fake_results.PAPER_RUNS[model][1]
        for seed, dice in by_seed.items():
            fake_results.write_run(results, protocol, model, {"parameters": params, "dice_paper": {"mean": dice}},
                                   test, seed=seed)


def spread_row(readme: str, model: str) -> list[str]:
    """The cells of ``model``'s row in the README's seed-spread table."""
    table = readme[readme.index("## Seed spread of dice_paper"):readme.index("## Differences")]
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| `{model}` |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_spread_gives_mean_sd_range_minutes_and_verdict(results):
    add_seeds(results)
    make_report(results)
    readme = (results / "README.md").read_text()
    unet = [fake_results.PAPER_RUNS["unet"][0], *SEEDS["unet"].values()]
    mean, sd = statistics.mean(unet), statistics.stdev(unet)       # 0.8821 ± 0.0120
    assert spread_row(readme, "unet") == [
        "`unet`", "-0.0217", "3", f"{mean:.4f} ± {sd:.4f}", "0.8712–0.8950", "0.8929",
        "1.8",                                   # 3 seeds x (11 + 12 + 13) s of epochs
        "3/3", "paper within our range"]
    umamba = [fake_results.PAPER_RUNS["umamba_bot"][0], SEEDS["umamba_bot"][1]]
    assert spread_row(readme, "umamba_bot") == [
        "`umamba_bot`", "+0.0202", "2", f"{statistics.mean(umamba):.4f} ± {statistics.stdev(umamba):.4f}",
        "0.9001–0.9050", "0.8799", "1.2", "3/3", "real gap"]
    assert spread_row(readme, "ulvm_unet_v2") == [
        "`ulvm_unet_v2`", "+0.0007", "1", "0.8250", "—", "0.8243", "0.6", "3/3", "1 seed: not known"]
    diffs = readme[readme.index("## Differences"):]
    assert "**Seed spread:** paper within our range (3 seeds, range 0.8712–0.8950)" in diffs
    assert "**Seed spread:** real gap (2 seeds, range 0.9001–0.9050)" in diffs


@pytest.mark.parametrize("seeds, verdict", [
    ({1: 0.8800, 2: 0.8750}, "real gap"),               # paper 0.8929 above all three seeds
    ({1: 0.8929}, "paper within our range"),            # the range includes its ends
    ({1: 0.9100, 2: 0.8800}, "paper within our range"),
])
def test_verdict_is_whether_the_paper_lies_within_the_seeds_range(results, seeds, verdict):
    add_seeds(results, {"unet": seeds})
    row = next(r for r in build_rows(load_runs(results), load_paper_table(results)) if r.model == "unet")
    assert row.spread.verdict == verdict


def test_a_model_with_seeds_is_still_one_model(results):
    before = load_runs(results)
    add_seeds(results)
    add_seeds(results, {"unet": {3: 0.5}}, protocol="patient")      # the spread is the paper protocol's
    (results / "paper" / "unet" / "seeds" / "1" / "commands.json").write_text(json.dumps(
        {"seed": 1, "train": ["python3 -m mambaseg train --model unet --seed 1 SEED-1-CMD"], "evaluate": "E"}))
    runs = load_runs(results)
    assert runs.keys() == before.keys()
    assert [r.seed for r in runs[("paper", "unet")].seed_runs] == [0, 1, 2]
    assert [r.seed for r in runs[("patient", "unet")].seed_runs] == [0, 3]
    rows = build_rows(runs, load_paper_table(results))
    assert len(rows) == 13 and "seeds" not in {r.model for r in rows}
    make_report(results)
    readme = (results / "README.md").read_text()
    assert "3 of 13 models have results" in readme and "`seeds`" not in readme
    training = readme[readme.index("## Training runs"):readme.index("## Figures")]
    assert len([ln for ln in training.splitlines() if ln.startswith("| paper") or ln.startswith("| patient")]) == 5
    assert "# paper/unet seed 1\npython3 -m mambaseg train --model unet --seed 1 SEED-1-CMD" in readme
    assert spread_row(readme, "unet")[2] == "3"


def test_seed_runs_left_undone_are_listed(results):
    (results / "reproduce.json").write_text(json.dumps({"invocations": [{
        "command": "PYTHONPATH=src python3 scripts/reproduce.py --seeds 0,1", "summary": "1 kept, 1 skipped",
        "jobs": [{"protocol": "paper", "model": "unet", "seed": 0, "status": "kept", "message": ""},
                 {"protocol": "paper", "model": "unet", "seed": 1, "status": "skipped",
                  "message": "time budget spent; rerun to continue"}]}]}))
    make_report(results)
    readme = (results / "README.md").read_text()
    assert "- paper/unet seed 1: skipped — time budget spent; rerun to continue" in readme
    assert "- paper/unet: kept" not in readme
