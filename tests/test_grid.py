"""``spruce grid``: validation of GRID.yaml, expansion, resumable execution and the summary.

No model is trained: runs are launched as a small fake ``spruce prune`` script that reads
the run's ``--config`` file and writes a plausible report.json whose accuracy depends on
the settings (or fails where a marker file says so).
"""

from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import pytest

from spruce.cli.main import main
from spruce.errors import SpruceError
from spruce.grid import expand, load_grid, run_grid, summarize
from spruce.grid import runner as grid_runner
from spruce.grid import summary as grid_summary
from spruce.grid.plots import EXAMPLES, _lines, dense_line, plot_metric_vs_examples
from spruce.grid.runner import command_for
from spruce.grid.spec import resolve_path

REPO = Path(__file__).resolve().parents[1]

FAKE_PRUNE = """
import json, pathlib, sys
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--out") + 1])
config = json.loads(pathlib.Path(args[args.index("--config") + 1]).read_text())
state = pathlib.Path(STATE)
with open(state / "launches.txt", "a") as handle:
    handle.write(out.name + "\\n")
if (state / ("fail-" + out.name)).exists():
    print("training...", flush=True)
    print("spruce: error: boom", file=sys.stderr)
    sys.exit(1)
transfer, seed = config["transfer"], config["train"]["seed"]
coupling = transfer["coupling"]
accuracy = {"none": 0.70, "sequential": 0.72, "joint": 0.75, "tied": 0.73}[coupling]
if coupling in ("sequential", "joint"):
    accuracy += {"weights": 0.0, "masks": 0.01, "both": 0.02}[transfer["transfer"]]
if coupling in ("joint", "tied"):
    accuracy += {"constant": 0.0, "prune-only": 0.01}[transfer["schedule"]]
sparsity = config["prune"]["target_sparsity"]
examples = config["data"]["max_train_samples"] or 1000
accuracy += 0.002 * seed - 0.1 * (sparsity - 0.5) + examples / 1e5
report = {
    "task": "fake",
    "metrics": {"accuracy": round(accuracy, 6), "macro_f1": round(accuracy - 0.01, 6)},
    "metrics_split": "test",
    "sparsity": {"encoder": sparsity, "total": sparsity / 2},
    "params": {"total": 1000, "dense_total": 2000},
    "wall_time_s": 1.5,
    "target_sparsity": sparsity,
    "method": "l0",
    "transfer": {"coupling": coupling, "transfer": transfer["transfer"],
                 "schedule": transfer["schedule"], "aux": transfer["aux"]},
    "config": config,
}
if config["prune"]["teacher"]:  # spruce prune evaluates the dense teacher beside it
    dense = 0.8 + examples / 1e5 + 0.002 * seed
    report["dense_metrics"] = {"test": {"accuracy": round(dense, 6)}}
out.mkdir(parents=True, exist_ok=True)
(out / "report.json").write_text(json.dumps(report))
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def grid_file(tmp_path: Path, grid: str, extra: str = "", base: str = "  aux: [mlm]\n") -> Path:
    body = f"name: test\nout: {tmp_path / 'out'}\nseeds: [0, 1]\njobs: 2\nthreads: 1\n{extra}"
    base = "base:\n  train: train.tsv\n" + base
    return write(tmp_path / "grid.yaml", body + base + "grid:\n" + grid)


@pytest.fixture
def fake(tmp_path: Path):
    """A command builder that runs the fake prune script instead of ``spruce prune``."""
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "fake_prune.py"
    script.write_text(f"STATE = {str(state)!r}\n" + FAKE_PRUNE)

    def command(spec, run, directory):
        real = command_for(spec, run, directory)
        assert real[1:5] == ["-m", "spruce", "prune", "--config"]
        return [sys.executable, str(script), *real[4:]]

    command.state = state
    command.launches = lambda: (state / "launches.txt").read_text().split()
    return command


def error_of(path: Path) -> str:
    with pytest.raises(SpruceError) as caught:
        load_grid(path)
    return caught.value.one_line()


TRANSFER_GRID = """\
  coupling: [none, sequential, joint, tied]
  transfer: [weights, both]
  aux-schedule: [constant, prune-only]
  target-sparsity: [0.5, 0.9]
"""


# --- validation -------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "seed: [0]\nbase: {train: t.tsv}\n")
    message = error_of(path)
    assert "unknown grid file key 'seed'" in message and "did you mean 'seeds'?" in message
    assert str(path) in message


@pytest.mark.parametrize("section", ["base", "grid"])
def test_unknown_option_suggests_the_nearest(tmp_path: Path, section: str) -> None:
    value = "0.9" if section == "base" else "[0.5, 0.9]"
    path = write(tmp_path / "g.yaml", f"{section}:\n  prune.target_sparsty: {value}\n")
    message = error_of(path)
    assert "unknown spruce prune setting 'prune.target_sparsty'" in message
    assert "did you mean 'prune.target_sparsity'?" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("base:\n  seed: 3\n", "'seed' in base is set by spruce grid"),
        ("grid:\n  out: [a, b]\n", "'out' in grid is set by spruce grid"),
        ("grid:\n  threads: [1, 2]\n", "'threads' in grid is set by spruce grid"),
        ("base:\n  overwrite: true\n", "'overwrite' in base is set by spruce grid"),
        ("grid:\n  method: []\n", "grid axis 'method' is empty"),
        ("grid:\n  method: l0\n", "grid axis 'method' must be a list"),
        ("grid:\n  method: [l0, {prune-rounds: 2}]\n", "mixes mappings of settings"),
        ("jobs: 0\n", "jobs must be 'auto' or a positive whole number"),
        ("jobs: many\n", "jobs must be 'auto'"),
        ("threads: 1.5\n", "threads must be a positive whole number"),
        ("seeds: []\n", "seeds must be a list"),
        ("seeds: [0, 0]\n", "distinct"),
        ("metric: acuracy\n", "did you mean 'accuracy'?"),
        ("base:\n  quiet: true\n", "'quiet' in base is set by spruce grid"),
        ("base:\n  trim-vocab: 3\n", "'trim-vocab' in base is true or false"),
        ("base:\n  seed: 3\n", "'seed' in base is set by spruce grid"),
        ("base:\n  epochs: many\n", "train.epochs: expected a number"),
        ("base:\n  method: [l0, taylor]\n", "'method' in base takes one value"),
        ("base:\n  method: yes\n", "quote it"),
        ("base:\n  lr: 1e-4\n  train.learning_rate: 1e-5\n", "given twice"),
        ("base:\n  prune: {method: l0}\n  method: pdp\n", "given twice"),
        ("base:\n  method: l0\ngrid:\n  method: [taylor]\n", "set both in base"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_invalid_grid_files(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of(write(tmp_path / "g.yaml", text))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "seeds: [0, 1]\nbase:\n  train: [a\ngrid: {}\n")
    message = error_of(path)
    assert str(path) in message and " line " in message


def test_missing_grid_file(tmp_path: Path) -> None:
    assert "does not exist" in error_of(tmp_path / "nope.yaml")


def test_spellings_are_normalised_to_paths_and_nulls_omitted(tmp_path: Path) -> None:
    text = (
        "base:\n  lr: 1e-4\n  no-latency: true\n  prune: {method: pdp, trim_vocab: true}\n"
        "grid:\n  max-train-samples: [null, 200]\n"
    )
    runs = expand(load_grid(write(tmp_path / "g.yaml", text)))
    common = {
        "train.learning_rate": 1e-4,  # YAML reads 1e-4 as text; the setting's type reads it
        "prune.measure_latency": False,
        "prune.method": "pdp",
        "prune.trim_vocab": True,
    }
    assert [run.options for run in runs] == [common, {**common, "data.max_train_samples": 200}]
    assert [run.id for run in runs] == ["run-s0", "200-s0"]


# --- expansion --------------------------------------------------------------------------


def test_canonical_dedupe(tmp_path: Path) -> None:
    path = grid_file(tmp_path, "  coupling: [none, joint]\n  transfer: [weights, both]\n")
    runs = expand(load_grid(path))
    assert len(runs) == 6
    assert [r.id for r in runs] == [
        "none-s0", "joint-weights-s0", "joint-both-s0",
        "none-s1", "joint-weights-s1", "joint-both-s1",
    ]  # fmt: skip
    # none ignores the auxiliary task: it is left out of the run's settings
    assert runs[0].options == {"data.train": "train.tsv", "transfer.coupling": "none"}
    assert [r.id for r in expand(load_grid(path))] == [r.id for r in runs]


def test_full_transfer_grid_counts(tmp_path: Path) -> None:
    path = grid_file(tmp_path, TRANSFER_GRID, extra="")
    runs = expand(load_grid(path))
    # per sparsity: none 1, sequential 2 (no schedule), joint 4, tied 2 (no transfer)
    assert len(runs) == 9 * 2 * 2
    assert len({r.id for r in runs}) == len(runs)
    assert "tied-prune-only-0.9-s1" in {r.id for r in runs}


def test_list_values_and_mapping_axes(tmp_path: Path) -> None:
    text = """
        base:
          train: train.tsv
          coupling: joint
        grid:
          aux: [[mlm], [mlm, "task:../data/sst2/train.tsv"]]
          budget:
            - {max-train-samples: 100, trim-vocab: true}
            - {max-train-samples: 1000}
    """
    spec = load_grid(write(tmp_path / "g.yaml", text))
    runs = expand(spec)
    assert [r.id for r in runs] == [
        "mlm-100-trim_vocab-s0",
        "mlm-1000-s0",
        "mlm+task-sst2-train-100-trim_vocab-s0",
        "mlm+task-sst2-train-1000-s0",
    ]
    assert runs[2].options == {
        "data.train": "train.tsv", "transfer.coupling": "joint",
        "transfer.aux": ["mlm", "task:../data/sst2/train.tsv"],
        "data.max_train_samples": 100, "prune.trim_vocab": True,
    }  # fmt: skip
    directory = tmp_path / "out" / "runs" / runs[2].id
    command = command_for(spec, runs[2], directory)
    assert command[4:] == [
        "--config", str(tmp_path / "out" / "runs" / f"{runs[2].id}.config.json"),
        "--threads", "1", "--out", str(directory), "--quiet",
    ]  # fmt: skip
    config = grid_runner.config_for(spec, runs[2])
    assert [task["kind"] for task in config["transfer"]["aux"]] == ["mlm", "task"]
    assert config["data"]["max_train_samples"] == 100 and config["train"]["seed"] == 0
    assert config["prune"]["trim_vocab"] is True and "out" not in config


def test_auxiliary_tasks_take_their_weights_and_mappings(tmp_path: Path) -> None:
    text = """
        base: {train: t.tsv}
        grid:
          auxiliary:
            - {aux: [mlm, distill], aux-weight: [0.3, 1.0]}
            - {transfer.aux: [{kind: mlm, weight: 0.5}]}
    """
    spec = load_grid(write(tmp_path / "g.yaml", text))
    first, second = (grid_runner.config_for(spec, run) for run in expand(spec))
    assert [(t["kind"], t["weight"]) for t in first["transfer"]["aux"]] == [
        ("mlm", 0.3), ("distill", 1.0)
    ]  # fmt: skip
    assert second["transfer"]["aux"][0]["weight"] == 0.5
    assert first["transfer"]["coupling"] == "joint"  # auxiliary tasks without a coupling


def test_seed_field_names_what_was_made_for_each_seed(tmp_path: Path) -> None:
    text = """
        seeds: [0, 2]
        base:
          train: runs/data/sst2-s{seed}.tsv
          coupling: joint
        grid:
          aux: [[mlm], [distill, "mlm:unlabelled-s{seed}.txt"]]
    """
    runs = expand(load_grid(write(tmp_path / "g.yaml", text)))
    by_id = {run.id: run.options for run in runs}
    assert by_id["mlm-s2"]["data.train"] == "runs/data/sst2-s2.tsv"
    assert by_id["distill+mlm-unlabelled.txt-s0"]["transfer.aux"] == [
        "distill", "mlm:unlabelled-s0.txt"
    ]  # fmt: skip
    assert by_id["mlm-s0"]["data.train"] == "runs/data/sst2-s0.tsv"


def test_colliding_slugs_get_a_hash(tmp_path: Path) -> None:
    spec = load_grid(write(tmp_path / "g.yaml", "grid:\n  train: [a/b.tsv, a/b.csv]\n"))
    ids = [run.id for run in expand(spec)]
    assert len(set(ids)) == 2 and all(i.startswith("a-b-") for i in ids)


def test_paths_resolve_against_the_yaml_folder_only_if_they_exist(tmp_path: Path) -> None:
    root, cwd = tmp_path / "grids", tmp_path / "elsewhere"
    (root / "data").mkdir(parents=True)
    cwd.mkdir()
    (root / "data" / "t.tsv").write_text("x")
    resolved = str((root / "data" / "t.tsv").resolve())
    assert resolve_path("data/t.tsv", root, cwd) == resolved
    assert resolve_path("task:data/t.tsv", root, cwd) == f"task:{resolved}"
    assert resolve_path("../shared/x.tsv", root, cwd) == "../shared/x.tsv"
    assert resolve_path("data", root, cwd) == "data"  # no slash, no suffix: a word
    assert resolve_path("data/t.tsv", root, root) == "data/t.tsv"


def test_on_off_switches_keep_their_meaning(tmp_path: Path) -> None:
    # group-by-length: false and no-group-by-length: true both turn it off.
    for key, value, wanted in (
        ("group-by-length", "false", False),
        ("no-group-by-length", "true", False),
        ("group-by-length", "true", True),
        ("prune.group_by_length", "true", True),
    ):
        spec = load_grid(grid_file(tmp_path, f"  {key}: [{value}]\n"))
        config = grid_runner.config_for(spec, expand(spec)[0])
        assert config["prune"]["group_by_length"] is wanted, (key, value)


def test_example_grids_expand(tmp_path: Path) -> None:
    sst2 = load_grid(REPO / "examples" / "grids" / "sst2-transfer.yaml")
    assert len(expand(sst2)) == 7 * 3
    counts = {
        "sst2-schedule": 5,
        "sst2-examples": 8,
        "rte-examples": 8,
        "sst2-aux-weight": 4,
        "sst2-distill-couplings": 4,
    }
    for name, configurations in counts.items():
        spec = load_grid(REPO / "examples" / "grids" / f"{name}.yaml")
        assert len(expand(spec)) == configurations * 3, name
    rte = load_grid(REPO / "examples" / "grids" / "rte-transfer.yaml")
    runs = expand(rte)
    assert len(runs) == 7 * 3
    assert "joint-both-mlm+task-sst2-train-0.3+1.0-s2" in {r.id for r in runs}


# --- execution and summary --------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_resume_failures_and_report(tmp_path: Path, fake) -> None:
    spec = load_grid(grid_file(tmp_path, TRANSFER_GRID))
    runs, out = expand(spec), tmp_path / "out"
    (fake.state / "fail-tied-constant-0.9-s1").write_text("")
    outcome = run_grid(spec, runs, out, jobs=2, command=fake)
    assert len(fake.launches()) == len(runs) == 36
    assert outcome.failed == ["tied-constant-0.9-s1"] and len(outcome.done) == 35
    assert (out / "runs" / "tied-constant-0.9-s1.log").read_text().rstrip().endswith("boom")

    report = summarize(spec, runs, out, "spruce grid grid.yaml")
    rows = read_csv(out / "results.csv")
    assert [row["run"] for row in rows] == [run.id for run in runs]
    failed = [row for row in rows if row["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == "1"
    assert failed[0]["error"] == "spruce: error: boom"
    none = next(row for row in rows if row["run"] == "none-0.5-s0")
    assert none["transfer.transfer"] == "" and none["transfer.schedule"] == ""
    assert none["data.train"] == "train.tsv" and none["transfer.aux"] == ""
    assert float(none["accuracy"]) == pytest.approx(0.71)
    assert none["metrics_split"] == "test" and none["total_params"] == "1000"

    text = report.read_text()
    for heading in ("## How", "## What", "## When", "## Best configuration", "## Failed runs"):
        assert heading in text
    best = (
        "`transfer.coupling=joint, transfer.transfer=both, transfer.schedule=prune-only, "
        "prune.target_sparsity=0.5`"
    )
    assert f"{best}: 79.10 ± 0.14 (n = 2); +8.00 points over `none`" in text
    assert "Its settings (beside the seed): `data.train=train.tsv, transfer.aux=mlm, " in text
    assert "spruce prune --config OUT/runs/RUN/report.json --out DIR" in text
    assert "| none | 4 | 69.10 ± 2.31 | +0.00 |" in text
    assert "| joint | 16 | 75.60 ± 2.37 | +6.50 |" in text
    assert "| joint | both | 8 |" in text and "| tied | prune-only | 4 |" in text
    assert (
        "| prune.target_sparsity=0.9 | transfer.coupling=joint, transfer.transfer=both, "
        "transfer.schedule=prune-only |" in text
    )
    assert (out / "metric_vs_sparsity.png").stat().st_size > 0
    assert "(metric_vs_sparsity.png)" in text
    assert not (out / "metric_vs_examples.png").exists()
    assert "target-sparsity: [0.5, 0.9]" in text  # the YAML is quoted

    # Resume: only the failed run is launched again; it fails again, then succeeds.
    outcome = run_grid(spec, runs, out, jobs=2, command=fake)
    assert len(outcome.skipped) == 35 and len(fake.launches()) == 37
    (fake.state / "fail-tied-constant-0.9-s1").unlink()
    outcome = run_grid(spec, runs, out, jobs=1, command=fake)
    assert outcome.done == ["tied-constant-0.9-s1"] and len(fake.launches()) == 38
    summarize(spec, runs, out, "spruce grid grid.yaml")
    assert {row["status"] for row in read_csv(out / "results.csv")} == {"done"}
    assert "## Failed runs" not in (out / "report.md").read_text()


def test_examples_plot_when_the_budget_varies(tmp_path: Path, fake) -> None:
    grid = "  coupling: [none, joint]\n  max-train-samples: [100, 1000]\n"
    spec = load_grid(grid_file(tmp_path, grid))
    runs, out = expand(spec), tmp_path / "out"
    run_grid(spec, runs, out, jobs=2, command=fake)
    text = summarize(spec, runs, out, "spruce grid grid.yaml").read_text()
    assert (out / "metric_vs_examples.png").is_file()
    assert not (out / "metric_vs_sparsity.png").exists()
    assert "(metric_vs_examples.png)" in text
    # The budget is not a transfer choice: each joint run is compared with its own none.
    row = (
        "| data.max_train_samples=100 | transfer.coupling=joint | 78.20 ± 0.14 | 2 | "
        "70.20 ± 0.14 | +8.00 |"
    )
    assert row in text


def test_the_dense_teacher_is_reported_beside_the_pruned_runs(tmp_path: Path, fake) -> None:
    grid = """\
      coupling: [none, joint]
      budget:
        - {max-train-samples: 100, teacher: t100}
        - {max-train-samples: 1000, teacher: t1000}
    """
    spec = load_grid(grid_file(tmp_path, textwrap.indent(textwrap.dedent(grid), "  ")))
    runs, out = expand(spec), tmp_path / "out"
    run_grid(spec, runs, out, jobs=2, command=fake)
    text = summarize(spec, runs, out, "spruce grid grid.yaml").read_text()
    rows = {row["run"]: row for row in read_csv(out / "results.csv")}
    assert {float(row["dense_accuracy"]) for row in rows.values()} == {0.801, 0.803, 0.81, 0.812}
    assert "its dense teacher (not pruned) scores 81.10 ± 0.14." in text
    assert "| +8.00 | 81.10 ± 0.14 |" in text  # the per-budget table has a teacher column

    results = grid_summary.collect(spec, runs, out)
    configs = grid_summary.group(results, "accuracy")
    lines = _lines([(c.options, c.values) for c in configs], EXAMPLES)
    none = next(line for line in lines if line[0]["transfer.coupling"] == "none")
    teacher = dense_line([(c.options, c.dense) for c in configs], EXAMPLES, none)
    # One score per seed at each budget, though two couplings distilled from each teacher.
    assert teacher is not None and teacher[1] == {100.0: [0.801, 0.803], 1000.0: [0.81, 0.812]}
    assert (out / "metric_vs_examples.png").is_file()


def test_a_grid_without_teachers_has_no_dense_column_values(tmp_path: Path, fake) -> None:
    spec = load_grid(grid_file(tmp_path, "  coupling: [none, joint]\n"))
    runs, out = expand(spec), tmp_path / "out"
    run_grid(spec, runs, out, jobs=2, command=fake)
    text = summarize(spec, runs, out, "spruce grid grid.yaml").read_text()
    assert {row["dense_accuracy"] for row in read_csv(out / "results.csv")} == {""}
    assert "dense teacher" not in text


def test_an_option_made_for_each_budget_stays_on_its_budgets_line(tmp_path: Path) -> None:
    # Each budget has its own teacher (fine-tuned on that sample): the teacher changes with
    # the budget alone, so each coupling is still one line over the budgets.
    configs = [
        (
            {"transfer.coupling": coupling, EXAMPLES: n, "prune.teacher": f"t-n{n}"},
            [70.0 + n / 100],
        )
        for coupling in ("none", "joint")
        for n in (250, 1000, 4000)
    ]
    lines = _lines(configs, EXAMPLES)
    assert lines is not None and len(lines) == 2
    assert sorted(line[0]["transfer.coupling"] for line in lines) == ["joint", "none"]
    assert all(sorted(line[1]) == [250.0, 1000.0, 4000.0] for line in lines)
    assert plot_metric_vs_examples(configs, "accuracy", tmp_path / "e.png").is_file()
    # An option that also differs between lines at one budget is a line's own setting.
    tied = {"transfer.coupling": "tied", EXAMPLES: 250, "prune.teacher": "t-x"}
    assert len(_lines([*configs, (tied, [1.0])], EXAMPLES)) == 7


def test_a_seed_field_does_not_split_a_configuration(tmp_path: Path, fake) -> None:
    # train differs per seed (what was made for each seed), yet each configuration's runs
    # are its seeds: one row with n = 2, shown with the field unfilled.
    body = f"name: test\nout: {tmp_path / 'out'}\nseeds: [0, 1]\njobs: 2\nthreads: 1\n"
    grid = "base:\n  train: train-s{seed}.tsv\n  aux: mlm\ngrid:\n  coupling: [none, joint]\n"
    spec = load_grid(write(tmp_path / "grid.yaml", body + grid))
    runs, out = expand(spec), tmp_path / "out"
    assert [run.options["data.train"] for run in runs] == ["train-s0.tsv"] * 2 + [
        "train-s1.tsv"
    ] * 2
    run_grid(spec, runs, out, jobs=2, command=fake)
    text = summarize(spec, runs, out, "spruce grid grid.yaml").read_text()
    all_configs = text[text.index("## All configurations") :]
    assert "| joint | 2 |" in all_configs and "| none | 2 |" in all_configs
    assert "(n = 2)" in text and "data.train=train-s{seed}.tsv" in text


# --- command line -----------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], args: list[object]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_bad_yaml_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "seeds: [0\n")
    code, out, err = run_cli(capsys, ["grid", path])
    assert code == 2 and out == ""
    assert err.startswith("spruce: error: ") and err.count("\n") == 1 and str(path) in err


def test_cli_unknown_option_is_one_line(capsys, tmp_path: Path) -> None:
    path = write(tmp_path / "g.yaml", "out: o\nbase:\n  metod: l0\n")
    code, _, err = run_cli(capsys, ["grid", path])
    assert code == 2 and "did you mean 'method'?" in err and err.count("\n") == 1
    path = write(tmp_path / "g.yaml", "out: o\nbase:\n  train: t.tsv\n  units: head,bogus\n")
    code, _, err = run_cli(capsys, ["grid", path])
    assert code == 2 and "unknown unit types bogus" in err and err.count("\n") == 1


def test_cli_bad_value_is_caught_before_running(capsys, tmp_path: Path) -> None:
    path = grid_file(tmp_path, "  target-sparsity: [0.5, 1.5]\n")
    code, _, err = run_cli(capsys, ["grid", path])
    assert code == 2 and "run 1.5-s0" in err and "(0, 1)" in err
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_summary_only_and_exit_codes(capsys, tmp_path, fake, monkeypatch) -> None:
    monkeypatch.setattr(grid_runner, "command_for", fake)
    path = grid_file(tmp_path, "  method: [magnitude, taylor]\n")
    out = tmp_path / "other"
    code, stdout, _ = run_cli(capsys, ["grid", path, "--out", out, "--dry-run"])
    assert code == 0 and "taylor-s1 (to run): data.train=train.tsv" in stdout
    assert "prune.method=taylor, seed 1" in stdout and "taylor-s1.config.json" in stdout
    assert not out.exists()

    (fake.state / "fail-taylor-s1").write_text("")
    code, stdout, _ = run_cli(capsys, ["grid", path, "--out", out, "--jobs", "1"])
    assert code == 1 and "1 of 4 runs failed: taylor-s1" in stdout
    assert stdout.rstrip().endswith(f"wrote {out / 'report.md'}")
    assert len(fake.launches()) == 4

    (out / "report.md").unlink()
    code, stdout, _ = run_cli(capsys, ["grid", path, "--out", out, "--summary-only"])
    assert code == 1 and (out / "report.md").is_file() and len(fake.launches()) == 4
    assert "--summary-only" in (out / "report.md").read_text()

    (fake.state / "fail-taylor-s1").unlink()
    code, stdout, _ = run_cli(capsys, ["grid", path, "--out", out])
    assert code == 0 and "skip magnitude-s0: done" in stdout and len(fake.launches()) == 5
    assert json.loads((out / "runs" / "taylor-s1" / "report.json").read_text())["metrics"]


def test_cli_seeds_replace_the_yamls(capsys, tmp_path, fake, monkeypatch) -> None:
    monkeypatch.setattr(grid_runner, "command_for", fake)
    path = grid_file(tmp_path, "  method: [magnitude, taylor]\n")
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, ["grid", path, "--out", out, "--seeds", "1", "7"])
    assert code == 0 and len(fake.launches()) == 4
    assert sorted(p.name for p in (out / "runs").glob("*/")) == [
        "magnitude-s1", "magnitude-s7", "taylor-s1", "taylor-s7"
    ]  # fmt: skip
    assert "--seeds 1 7" in (out / "report.md").read_text()
    code, _, err = run_cli(capsys, ["grid", path, "--seeds", "1", "1"])
    assert code == 2 and err == (
        "spruce: error: --seeds lists a seed twice: [1, 1]; give each seed once\n"
    )


def test_cli_threads_replace_the_yamls(capsys, tmp_path) -> None:
    path = grid_file(tmp_path, "  method: [magnitude]\n")
    code, stdout, _ = run_cli(capsys, ["grid", path, "--threads", "3", "--dry-run"])
    assert code == 0 and "--threads 3" in stdout and "--threads 1 " not in stdout


FAKE_ADAPT = """
import json, pathlib, sys
args = sys.argv[1:]
out = pathlib.Path(args[args.index("--out") + 1])
config = json.loads(pathlib.Path(args[args.index("--config") + 1]).read_text())
fine = config["adapt"]["fine_prune"]
report = {"metrics": {"accuracy": 0.70 if fine else 0.72}, "metrics_split": "test",
          "sparsity": {"encoder": 0.7, "total": 0.5}, "params": {"total": 500},
          "learned_params": 9000 if fine else 300, "task_file_bytes": 40000 if fine else 2000,
          "wall_time_s": 1.0}
out.mkdir(parents=True)
(out / "report.json").write_text(json.dumps(report))
"""


def test_a_grid_can_run_spruce_adapt(tmp_path: Path) -> None:
    body = "command: adapt\nseeds: [0]\njobs: 1\nthreads: 1\nbase:\n  train: t.tsv\n"
    spec = load_grid(write(tmp_path / "g.yaml", body + "grid:\n  fine-prune: [false, true]\n"))
    script = write(tmp_path / "fake_adapt.py", FAKE_ADAPT)
    seen = []

    def command(spec, run, directory):
        real = command_for(spec, run, directory)
        seen.append(real[3])
        return [sys.executable, str(script), *real[4:]]

    runs, out = expand(spec), tmp_path / "out"
    assert run_grid(spec, runs, out, jobs=1, command=command).failed == []
    assert seen == ["adapt", "adapt"]
    text = summarize(spec, runs, out, "spruce grid g.yaml").read_text()
    assert "## How" not in text and "spruce adapt --config" in text
    assert "| false | 1 | 72.00 ± 0.00 | 300 | 2,000 | 0 |" in text  # false is a setting too
    assert {row["learned_params"] for row in read_csv(out / "results.csv")} == {"300", "9000"}
    with pytest.raises(SpruceError, match="command 'finetune' cannot be run"):
        load_grid(write(tmp_path / "h.yaml", "command: finetune\n"))


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples" / "grids").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_example_grid_passes_the_config_classes(path: Path) -> None:
    from spruce.grid import check_runs

    spec = load_grid(path)
    runs = expand(spec)
    check_runs(spec, runs)  # every run's settings build a PruneRun / AdaptRun
    assert len({run.id for run in runs}) == len(runs)
