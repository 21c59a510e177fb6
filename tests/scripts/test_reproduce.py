"""scripts/reproduce.py: the commands it prints (--dry-run) and its bookkeeping when run."""
from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fake_results
from mambaseg.errors import MambasegError
from mambaseg.training import rundir

SCRIPT = fake_results.REPO / "scripts" / "reproduce.py"
STUB = Path(__file__).with_name("fake_mambaseg.py")


def dry_run(tmp_path: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--data", "/data/lgg/kaggle_3m",
           "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def commands(lines: list[str], sub: str) -> list[list[str]]:
    """The printed command lines running ``mambaseg <sub>``, split into words."""
    out = []
    for line in lines:
        if "$ " in line:
            words = shlex.split(line.split("$ ", 1)[1])
            if words[0].startswith("CUDA_VISIBLE_DEVICES="):
                words = words[1:]
            if words[1:4] == ["-m", "mambaseg", sub]:
                out.append(words[4:])
    return out


def test_dry_run_prints_train_and_evaluate_commands(tmp_path):
    lines = dry_run(tmp_path, "--models", "ulvm_unet_v2", "--epochs", "5")
    runs, res = tmp_path / "runs", tmp_path / "results"
    train = commands(lines, "train")
    assert train == [
        ["--model", "ulvm_unet_v2", "--data", "/data/lgg/kaggle_3m", "--split", f"{res}/splits/paper.json",
         "--preset", "paper", "--out", f"{runs}/paper/ulvm_unet_v2", "--no-progress", "--epochs", "5"],
        ["--model", "ulvm_unet_v2", "--data", "/data/lgg/kaggle_3m", "--split", f"{res}/splits/patient.json",
         "--preset", "paper", "--eval-checkpoint", "best", "--out", f"{runs}/patient/ulvm_unet_v2",
         "--no-progress", "--epochs", "5"],
    ]
    evaluate = commands(lines, "evaluate")
    assert evaluate[0][:10] == ["--checkpoint", f"{runs}/paper/ulvm_unet_v2/last", "--data", "/data/lgg/kaggle_3m",
                                "--split", f"{res}/splits/paper.json", "--part", "test",
                                "--out", f"{runs}/paper/ulvm_unet_v2/eval/summary.json"]
    assert evaluate[1][1] == f"{runs}/patient/ulvm_unet_v2/best"
    assert all("--save-predictions" in e for e in evaluate)
    splits = commands(lines, "data")
    assert ["split", "/data/lgg/kaggle_3m", "--split", "paper", "-o", f"{res}/splits/paper.json"] in splits
    assert ["split", "/data/lgg/kaggle_3m", "--split", "patient", "-o", f"{res}/splits/patient.json"] in splits
    report = commands(lines, "report")
    assert report[-1] == [str(res), "--data", "/data/lgg/kaggle_3m"]
    assert any(f"predictions.npz -> {res}/paper/ulvm_unet_v2/predictions.npz" in ln for ln in lines)
    assert any(f"predictions.npz -> {res}/patient/ulvm_unet_v2/predictions.npz" in ln for ln in lines)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_dry_run_defaults_to_all_models(tmp_path):
    lines = dry_run(tmp_path, "--protocols", "paper")
    models = [c[c.index("--model") + 1] for c in commands(lines, "train")]
    assert models == ["unet", "resnet18", "resnet50", "segformer", "umamba_bot", "umamba_bot_pp", "ulvm_unet",
                      "ulvm_unet_v1", "ulvm_unet_v2", "ulvm_unet_v3", "ulvm_unet_v4", "ulvm_unet_v5", "ulvm_unet_v6"]
    assert all("--epochs" not in c for c in commands(lines, "train"))


def test_dry_run_resumes_or_skips_existing_runs(tmp_path):
    partial = tmp_path / "runs" / "paper" / "unet"
    (partial / "last").mkdir(parents=True)
    (partial / "last" / "train_state.pt").write_bytes(b"x")
    (partial / "config.json").write_text(json.dumps({"epochs": 4}))
    (partial / "metrics.jsonl").write_text('{"epoch": 1}\n')
    complete = tmp_path / "runs" / "paper" / "ulvm_unet"
    complete.mkdir(parents=True)
    (complete / "config.json").write_text(json.dumps({"epochs": 2}))
    (complete / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    lines = dry_run(tmp_path, "--models", "unet,ulvm_unet", "--protocols", "paper")
    train = commands(lines, "train")
    assert len(train) == 1 and train[0][1] == "unet" and train[0][-1] == "--resume"
    assert any("ulvm_unet: training complete" in ln for ln in lines)
    assert len(commands(lines, "evaluate")) == 2


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("reproduce_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "mambaseg", lambda *a: [sys.executable, str(STUB), *a])
    return mod


def test_run_copies_results_and_survives_a_failed_run(tmp_path, monkeypatch, capsys):
    mod = load_script(monkeypatch)
    data = fake_results.make_dataset(tmp_path / "lgg")
    results = tmp_path / "results"
    argv = ["--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(results),
            "--models", "broken,unet,ulvm_unet_v2", "--epochs", "2", "--parallel", "2"]
    assert mod.main(argv) == 1                     # 'broken' failed, the others went on
    out = capsys.readouterr().out
    assert "failed paper/broken" in out and "failed patient/broken" in out
    for protocol in ("paper", "patient"):
        for model in ("unet", "ulvm_unet_v2"):
            d = results / protocol / model
            assert {p.name for p in d.iterdir()} == {"config.json", "metrics.jsonl", "summary.json",
                                                     "predictions.npz", "commands.json"}
            rec = json.loads((d / "commands.json").read_text())
            assert rec["status"] == "done" and rec["epochs_option"] == 2
            assert rec["checkpoint"] == ("last" if protocol == "paper" else "best")
            assert "--epochs 2" in rec["train"][0]
            assert ("--eval-checkpoint best" in rec["train"][0]) == (protocol == "patient")
    assert not (results / "paper" / "broken").exists()
    assert not list(results.rglob("*.pt")) and not list(results.rglob("*.safetensors"))
    assert {"data_stats.json", "fig3_inputs.npz", "README.md", "reproduce.json"} <= {p.name for p in results.iterdir()}
    assert (results / "splits" / "paper.json").is_file() and (results / "splits" / "patient.json").is_file()
    log = json.loads((results / "reproduce.json").read_text())["invocations"][-1]
    assert log["argv"] == argv and {(j["model"], j["status"]) for j in log["jobs"]} >= {("broken", "failed"), ("unet", "done")}
    readme = (results / "README.md").read_text()
    assert "| `unet` |" in readme and "Fake GPU" in readme and "scripts/reproduce.py --data" in readme
    assert all((results / "figures" / f).is_file() for f in ("fig1_data.png", "fig2_dice_params.png", "fig3_samples.png"))

    # a second invocation keeps finished runs and does not retrain them
    assert mod.main(argv) == 1
    out = capsys.readouterr().out
    assert "paper/unet: already in results/, kept" in out
    assert "train --model unet" not in out


def test_resume_may_switch_the_evaluated_checkpoint(tmp_path):
    """A leak-free run started before reproduce.py passed --eval-checkpoint best (its config.json
    says "last") resumes under today's command, which records "best"; other settings still count."""
    run = tmp_path / "runs" / "patient" / "unet"
    (run / "last").mkdir(parents=True)
    (run / "last" / "train_state.pt").write_bytes(b"x")
    (run / "last" / "model.safetensors").write_bytes(b"x")
    (run / "config.json").write_text(json.dumps({
        "model": "unet", "preset": "paper", "epochs": 100, "lr": 3e-4, "checkpoint": "last"}))

    def given(**kw):
        return rundir.TrainConfig(model="unet", preset="paper", checkpoint="best", out=run,
                                  resume=True, **kw)

    assert rundir.resume_config(run, given(epochs=100)).checkpoint == "best"
    with pytest.raises(MambasegError, match="--lr"):
        rundir.resume_config(run, given(lr=1e-3))


def test_time_budget_stops_launching_work(tmp_path, monkeypatch, capsys):
    mod = load_script(monkeypatch)
    data = fake_results.make_dataset(tmp_path / "lgg")
    argv = ["--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "--models", "unet", "--time-budget", "0", "--no-report"]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    assert "paper/unet: not started (time budget spent)" in out and "train --model" not in out
    assert not (tmp_path / "runs" / "paper" / "unet").exists()


def test_dry_run_spreads_runs_over_gpus(tmp_path):
    lines = dry_run(tmp_path, "--models", "unet,ulvm_unet,ulvm_unet_v5", "--protocols", "paper",
                    "--gpus", "2")
    train = [ln for ln in lines if "-m mambaseg train" in ln]
    assert [ln.split("$ ", 1)[1].split()[0] for ln in train] == [
        "CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1", "CUDA_VISIBLE_DEVICES=0"]
    assert [c[c.index("--model") + 1] for c in commands(lines, "train")] == [
        "unet", "ulvm_unet", "ulvm_unet_v5"]


def test_bad_gpu_list_is_refused(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--gpus", "0,0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--gpus '0,0': expected distinct device numbers" in proc.stderr


def test_runs_use_their_assigned_gpu(tmp_path, monkeypatch, capsys):
    mod = load_script(monkeypatch)
    data = fake_results.make_dataset(tmp_path / "lgg")
    argv = ["--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--models", "ulvm_unet,ulvm_unet_v2,ulvm_unet_v5",
            "--protocols", "paper", "--epochs", "1", "--gpus", "3,5", "--no-report"]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    seen = {}
    for model in ("ulvm_unet", "ulvm_unet_v2", "ulvm_unet_v5"):
        cfg = json.loads((tmp_path / "runs" / "paper" / model / "config.json").read_text())
        seen[model] = cfg["cuda_visible_devices"]
        assert f"paper/{model}: start on GPU {seen[model]}" in out
    assert set(seen.values()) == {"3", "5"}


def test_only_runs_exactly_the_named_runs_in_order(tmp_path):
    lines = dry_run(tmp_path, "--only", "paper/ulvm_unet_v4,patient/segformer,paper/segformer")
    train = commands(lines, "train")
    runs = tmp_path / "runs"
    assert [(c[c.index("--model") + 1], c[c.index("--out") + 1]) for c in train] == [
        ("ulvm_unet_v4", f"{runs}/paper/ulvm_unet_v4"), ("segformer", f"{runs}/patient/segformer"),
        ("segformer", f"{runs}/paper/segformer")]
    assert [c[0] for c in commands(lines, "evaluate")] == ["--checkpoint"] * 3
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--only", "paper/unet,unet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--only: 'unet' is not PROTOCOL/MODEL" in proc.stderr


def test_dry_run_plans_one_job_per_seed(tmp_path):
    partial = tmp_path / "runs" / "paper" / "unet.seed2"
    (partial / "last").mkdir(parents=True)
    (partial / "last" / "train_state.pt").write_bytes(b"x")
    lines = dry_run(tmp_path, "--models", "unet", "--protocols", "paper", "--seeds", "0,2", "--epochs", "5")
    runs, res = tmp_path / "runs", tmp_path / "results"
    common = ["--model", "unet", "--data", "/data/lgg/kaggle_3m", "--split", f"{res}/splits/paper.json",
              "--preset", "paper"]
    assert commands(lines, "train") == [
        common + ["--out", f"{runs}/paper/unet", "--no-progress", "--epochs", "5"],
        common + ["--out", f"{runs}/paper/unet.seed2", "--no-progress", "--seed", "2", "--epochs", "5", "--resume"],
    ]
    assert [e[1] for e in commands(lines, "evaluate")] == [f"{runs}/paper/unet/last", f"{runs}/paper/unet.seed2/last"]
    assert any(f"predictions.npz -> {res}/paper/unet/predictions.npz" in ln for ln in lines)
    assert any(f"{runs}/paper/unet.seed2/eval/predictions.npz -> {res}/paper/unet/seeds/2/predictions.npz" in ln
               for ln in lines)
    assert any("finished: 2 planned (dry run)" in ln for ln in lines)


@pytest.mark.parametrize("seeds", ["1,x", "-1", "", "0,0", "1.5", "0,,1"])
def test_bad_seed_list_is_refused(seeds):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--seeds", seeds],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--seeds {seeds!r}: expected distinct non-negative integers" in proc.stderr


def test_order_gap_takes_the_largest_gap_first(tmp_path):
    fake_results.make_results(tmp_path / "results")  # |Δ|: unet 0.0217, umamba_bot 0.0202, ulvm_unet_v2 0.0007
    models = ["--models", "ulvm_unet_v2,resnet18,umamba_bot,unet", "--protocols", "paper", "--seeds", "0,1"]

    def planned(*extra):
        train = commands(dry_run(tmp_path, *models, *extra), "train")
        return [(c[c.index("--model") + 1], c[c.index("--seed") + 1] if "--seed" in c else "0") for c in train]

    assert planned() == [("ulvm_unet_v2", "0"), ("ulvm_unet_v2", "1"), ("resnet18", "0"), ("resnet18", "1"),
                         ("umamba_bot", "0"), ("umamba_bot", "1"), ("unet", "0"), ("unet", "1")]
    assert planned("--order", "gap") == [("unet", "0"), ("unet", "1"), ("umamba_bot", "0"), ("umamba_bot", "1"),
                                         ("ulvm_unet_v2", "0"), ("ulvm_unet_v2", "1"),
                                         ("resnet18", "0"), ("resnet18", "1")]   # no saved result: last


def test_seed_jobs_write_their_own_results_and_resume(tmp_path, monkeypatch, capsys):
    mod = load_script(monkeypatch)
    data = fake_results.make_dataset(tmp_path / "lgg")
    runs, results = tmp_path / "runs", tmp_path / "results"
    base = ["--data", str(data), "--runs-dir", str(runs), "--results-dir", str(results), "--epochs", "2"]
    results.mkdir()
    shutil.copy(fake_results.REPO / "results" / "paper_table1.json", results)
    assert mod.main(base + ["--models", "unet", "--protocols", "paper", "--seeds", "0,2", "--parallel", "2"]) == 0
    files = {"config.json", "metrics.jsonl", "summary.json", "predictions.npz", "commands.json"}
    main, seed2 = results / "paper" / "unet", results / "paper" / "unet" / "seeds" / "2"
    assert {p.name for p in main.iterdir()} == files | {"seeds"}
    assert {p.name for p in seed2.iterdir()} == files
    assert [p.name for p in (main / "seeds").iterdir()] == ["2"]
    rec = json.loads((seed2 / "commands.json").read_text())
    assert rec["seed"] == 2 and rec["status"] == "done" and f"--out {runs}/paper/unet.seed2" in rec["train"][0]
    assert "--seed 2" in rec["train"][0] and "--seed" not in json.loads((main / "commands.json").read_text())["train"][0]
    assert json.loads((runs / "paper" / "unet.seed2" / "config.json").read_text())["seed"] == 2
    assert json.loads((seed2 / "summary.json").read_text())["dice_paper"]["mean"] == pytest.approx(0.87)
    log = json.loads((results / "reproduce.json").read_text())["invocations"][-1]
    assert {(j["model"], j["seed"], j["status"]) for j in log["jobs"]} == {("unet", 0, "done"), ("unet", 2, "done")}
    readme = (results / "README.md").read_text()
    assert "1 of 13 models have results" in readme and "`seeds`" not in readme
    spread = next(ln for ln in readme.split("## Seed spread")[1].splitlines() if ln.startswith("| `unet` |"))
    assert spread.startswith("| `unet` | -0.0429 | 2 | 0.8600 ± 0.0141 | 0.8500–0.8700 | 0.8929 |")
    assert spread.endswith("| real gap |")
    capsys.readouterr()

    # resumed: both seeds kept; --force redoes seed 2 only, its old run folder set aside
    assert mod.main(base + ["--only", "paper/unet", "--seeds", "0,2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "paper/unet: already in results/, kept" in out and "paper/unet seed 2: already in results/, kept" in out
    assert "train --model unet" not in out
    assert mod.main(base + ["--only", "paper/unet", "--seeds", "2", "--force", "--no-report"]) == 0
    assert [p.name.startswith("unet.seed2.old-") for p in sorted((runs / "paper").iterdir())] == [False, False, True]
    assert len(json.loads((seed2 / "commands.json").read_text())["train"]) == 2
    capsys.readouterr()

    # a spent time budget leaves a new seed unstarted, and says so
    assert mod.main(base + ["--only", "paper/unet", "--seeds", "0,1", "--time-budget", "0", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "paper/unet seed 1: not started (time budget spent)" in out and not (runs / "paper" / "unet.seed1").exists()
