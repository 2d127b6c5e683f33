"""The Python API: the README's example runs as written (train tiny -> export -> verify -> predict, no CLI), gives
the run files the CLI gives, and fails with the CLI's errors; `import edgetl` stays light."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgetl
from edgetl.cli import app
from edgetl.errors import EdgetlError, RunDirError
from edgetl.files import sha256_file
from edgetl.model.checkpoint import load_checkpoint
from edgetl.verify import ChecksFailed

README = Path(__file__).parents[1] / "README.md"


def readme_example() -> str:
    """The first python block of the README's "Python API" section."""
    section = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)[:1]
    return block


@pytest.fixture(scope="module")
def readme_run(tiny, tmp_path_factory):
    """The README block, run in a fresh folder with the tiny recipe and data in place of quickstart and sample,
    and verify's timing shortened; every other line as written (photo.jpg is a val image copied there)."""
    data, recipe = tiny
    cwd = tmp_path_factory.mktemp("readme")
    shutil.copy(next((data / "val" / "ring").iterdir()), cwd / "photo.jpg")  # a PNG named .jpg: decoded by content
    code = readme_example()
    for old, new in (('recipe="quickstart"', f"recipe={str(recipe)!r}"), ('data="sample"', f"data={str(data)!r}"),
                     ("run.verify()", "run.verify(samples=8, latency_seconds=0.05)")):
        assert code.count(old) == 1, f"the README example no longer has {old}"
        code = code.replace(old, new)
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 — the documentation's own code
    return cwd, namespace


def test_the_readme_example_trains_exports_verifies_and_predicts(readme_run, tiny):
    cwd, ns = readme_run
    run, report, manifest = ns["run"], ns["report"], ns["manifest"]
    assert isinstance(run, edgetl.Run) and run.path == Path("artifacts/api-demo") and (cwd / run.path).is_dir()
    root = cwd / "artifacts" / "api-demo"
    assert report.passed is True and json.loads((root / "verify.json").read_text())["passed"] is True
    assert [a.file for a in manifest.artifacts] == ["model.onnx", "model.torchscript.pt"]
    assert manifest.card is not None and (root / "export" / "MODEL_CARD.md").is_file()
    [p] = edgetl.Run(root).predict(cwd / "photo.jpg", top_k=3)  # one path, or a list of them
    assert isinstance(p, edgetl.Prediction) and p.label in manifest.labels and len(p.top) == 3
    assert abs(sum(q for _, q in p.top) - 1) < 1e-5  # three classes: the top 3 are all of them
    summary = ns["summary"]
    assert sum(map(sum, summary.per_class.confusion)) == summary.per_class.images == 6
    assert (root / "confusion.png").is_file() and (root / "verify-confusion.png").is_file()


def test_load_run_reads_the_run_back_and_refuses_a_folder_that_is_not_one(readme_run, tmp_path):
    cwd, _ = readme_run
    run = edgetl.load_run(cwd / "artifacts" / "api-demo")
    assert run.summary.backbone == "mobilenet_v3_small" and run.labels == run.manifest.labels
    assert run.report.passed and run.describe().next_stage is None
    with pytest.raises(RunDirError, match="not found — pass the folder `edgetl train` wrote"):
        edgetl.load_run(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="is not an edgetl run"):
        edgetl.load_run(tmp_path)


def test_the_cli_and_the_api_write_the_same_run(readme_run, finished_run):
    """`edgetl run` (tests/conftest.py) and the README's calls, same recipe, data and verify settings."""
    cli, api = finished_run[0], readme_run[0] / "artifacts" / "api-demo"
    for name in ("recipe.resolved.toml", "labels.json", "preprocessing.json", "split.json", "data.json"):
        assert (cli / name).read_bytes() == (api / name).read_bytes(), name
    a, b = (load_checkpoint(run / "checkpoints" / "best.pt")["model"] for run in (cli, api))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def timeless(path: Path, *drop: str) -> dict:
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if k not in drop}

    drop = ("run_dir", "seconds", "wall_seconds", "phases")
    assert timeless(cli / "train.json", *drop) == timeless(api / "train.json", *drop)
    cli_manifest, api_manifest = (timeless(run / "export/manifest.json", "created", "artifacts", "card")
                                  for run in (cli, api))
    for manifest, run in ((cli_manifest, cli), (api_manifest, api)):  # each pins its own checkpoint file's bytes
        assert manifest["run"].pop("checkpoint_sha256") == sha256_file(run / "checkpoints" / "best.pt")
    assert cli_manifest == api_manifest
    cli_report, api_report = (json.loads((run / "verify.json").read_text()) for run in (cli, api))
    assert cli_report["per_class"] == api_report["per_class"] and set(cli_report["parity"]) == set(api_report["parity"])
    assert [(c["artifact"], c["measure"], c["passed"]) for c in cli_report["checks"]] == \
        [(c["artifact"], c["measure"], c["passed"]) for c in api_report["checks"]]


def one_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize("case", ["recipe", "data", "override", "resume"])
def test_the_api_raises_the_cli_s_errors(tiny, tmp_path, case):
    data, recipe = tiny
    flags, kwargs = {
        "recipe": (["--recipe", "no-such-recipe"], {"recipe": "no-such-recipe"}),
        "data": (["--recipe", str(recipe), "--data", str(tmp_path / "missing")],
                 {"recipe": recipe, "data": tmp_path / "missing"}),
        "override": (["--recipe", str(recipe), "--seed", "-1"], {"recipe": recipe, "seed": -1}),
        "resume": (["--resume", str(tmp_path / "nowhere")], {"resume": tmp_path / "nowhere"}),
    }[case]
    result = CliRunner().invoke(app, ["train", *flags, "--out", str(tmp_path / "cli")], env={"COLUMNS": "300"})
    with pytest.raises(EdgetlError) as raised:
        edgetl.train(**kwargs, out=tmp_path / "api")
    assert result.exit_code == raised.value.exit_code == 2
    assert one_error(result) == str(raised.value)
    assert not (tmp_path / "api").exists()


def test_a_failed_verify_is_a_report_or_with_check_the_cli_s_error(readme_run, tmp_path):
    run = edgetl.load_run(shutil.copytree(readme_run[0] / "artifacts" / "api-demo", tmp_path / "run"))
    with open(run.files.export_dir / "model.onnx", "ab") as f:
        f.write(b"\0")
    report = run.verify(samples=2, latency_seconds=0.01)
    assert report.passed is False and any("model.onnx: bytes" in f for f in report.failures)
    with pytest.raises(ChecksFailed) as raised:
        run.verify(samples=2, latency_seconds=0.01, check=True)
    result = CliRunner().invoke(app, ["verify", str(run.path), "--samples", "2", "--latency-seconds", "0.01"])
    assert result.exit_code == raised.value.exit_code == 1
    assert one_error(result).split(" (report:")[0] == str(raised.value).split(" (report:")[0]


def test_progress_goes_to_the_hooks_given(readme_run, capsys):
    run = edgetl.load_run(readme_run[0] / "artifacts" / "api-demo")
    steps: list[str] = []

    class Steps(edgetl.Hooks):
        def verifying(self):
            import contextlib

            return contextlib.nullcontext(steps.append)

    run.verify(samples=2, threads=[1], latency_seconds=0.01, progress=Steps())
    assert steps[:3] == ["integrity", "reference", "inputs"] and "latency" in steps
    run.verify(samples=2, threads=[1], latency_seconds=0.01, progress="tqdm")
    captured = capsys.readouterr()  # bars on stderr, results on stdout, as in the CLI
    assert "verify · latency" in captured.err and "verify passed" in captured.out
    with pytest.raises(EdgetlError, match="progress must be None, 'tqdm' or an edgetl.Hooks"):
        run.verify(progress="rich")


def test_import_edgetl_loads_no_torch_and_edgetl_train_is_the_api_function():
    code = ("import sys, edgetl, edgetl.cli\n"
            "assert edgetl.Run and edgetl.load_run and edgetl.Hooks and 'torch' not in sys.modules, 'torch loaded'\n"
            "import edgetl.training.stage\n"  # the training package has its own name: edgetl.train stays the function
            "import inspect; assert inspect.isfunction(edgetl.train) and edgetl.train.__module__ == 'edgetl.api'\n"
            "assert 'recipe' in inspect.signature(edgetl.train).parameters\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
