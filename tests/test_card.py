"""The model card: written at export, completed by verify, listed in the manifest with its sha256, and saying
what the run's own files say (train.json, verify.json, manifest.json)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from edgetl.pipeline import first_unfinished, verify_stage
from edgetl.rundir import read_json
from edgetl.verify import ChecksFailed, VerifySettings
from edgetl.verify.latency import TimingPlan

FAST = VerifySettings(samples=4, threads=(1,), timing=TimingPlan(seconds=0.01, min_iterations=1, max_seconds=0.03))


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def section(text: str, title: str) -> str:
    [part] = [s for s in text.split("\n## ") if s.startswith(title)]
    return part


def test_the_manifest_lists_the_card_and_the_card_every_file_of_the_manifest(finished_run):
    run, output = finished_run
    manifest = read_json(run / "export" / "manifest.json")
    card = run / "export" / "MODEL_CARD.md"
    assert manifest["card"] == {"file": "MODEL_CARD.md", "bytes": card.stat().st_size, "sha256": sha256(card)}
    files = section(card.read_text(), "Files")
    for artifact in manifest["artifacts"]:
        row = next(line for line in files.splitlines() if line.startswith(f"| `{artifact['file']}` |"))
        assert artifact["sha256"] in row and f"{artifact['bytes']:,}" in row and artifact["precision"] in row
    assert "| `manifest.json` |" in files and "| `MODEL_CARD.md` |" in files
    assert "model card: " in output


def test_the_card_says_what_train_json_and_verify_json_say(finished_run):
    run, _ = finished_run
    text = (run / "export" / "MODEL_CARD.md").read_text()
    train, report = read_json(run / "train.json"), read_json(run / "verify.json")
    manifest = read_json(run / "export" / "manifest.json")

    accuracy = section(text, "Accuracy on the val split")
    figures = train["per_class"]
    assert f"**{pct(figures['accuracy'])}** of {figures['images']} val images" in accuracy
    for c in figures["classes"]:
        assert f"| `{c['label']}` | {c['support']} | {pct(c['precision'])} | {pct(c['recall'])} | {pct(c['f1'])} |" in accuracy

    verification = section(text, "Verification")
    assert "**passed**" in verification and report["created"] in verification
    assert report["machine"]["id"] in verification and report["machine"]["cpu_model"] in verification
    timed = sorted({r["threads"] for r in report["latency"] if r["batch"] == 1})
    threads = sorted({timed[0], timed[-1]})
    for name, p in report["parity"].items():
        p50 = [next(f"{r['p50_ms']:.2f}" for r in report["latency"]
                    if r["file"] == name and r["batch"] == 1 and r["threads"] == t) for t in threads]
        row = next(line for line in verification.splitlines() if line.startswith(f"| `{name}` |"))
        assert row.split(" | ")[2:5 + len(threads)] == [pct(p["accuracy"]), f"{p['max_abs_diff']:.2g}",
                                                         pct(p["top1_agreement"]), *p50], row
    for k, c in enumerate(report["per_class"]["model.onnx"]["classes"]):  # recall per class, one column per file
        row = next(line for line in verification.splitlines() if line.startswith(f"| `{c['label']}` | {c['support']} |"))
        assert row.removesuffix(" |").split(" | ")[2:] == [pct(f["classes"][k]["recall"])
                                                           for f in report["per_class"].values()]

    p = manifest["preprocessing"]
    assert f"shorter side is {p['resize_size']} px ({p['interpolation']}" in text
    assert f"Crop the central {p['crop_size']} × {p['crop_size']} px" in text
    assert "## Intended use" in text and "## Known limits" in text


def test_a_card_for_last_pt_never_credits_it_with_best_pts_figures(finished_run, tmp_path):
    from typer.testing import CliRunner

    from edgetl.cli import app

    run = shutil.copytree(finished_run[0], tmp_path / "run")
    result = CliRunner().invoke(app, ["export", str(run), "--checkpoint", "last", "-f", "onnx", "--replace"])
    assert result.exit_code == 0, result.output
    summary = section((run / "export" / "MODEL_CARD.md").read_text(), "Summary")
    assert "`checkpoints/last.pt`" in summary
    assert "it chose it" not in summary and "test accuracy of that checkpoint" not in summary
    assert " images" not in next(line for line in summary.splitlines() if "val accuracy of that checkpoint" in line)


def test_verify_completes_the_card_again_and_the_manifest_hash_stays_true(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    card, manifest = run / "export" / "MODEL_CARD.md", run / "export" / "manifest.json"
    for _ in range(2):  # the second verify's integrity check reads the card the first one wrote
        result = verify_stage(run, FAST)
        assert result.report.passed, result.report.failures
        text = card.read_text()
        assert text.count("## Verification") == 1 and result.report.created in text
        assert read_json(manifest)["card"]["sha256"] == sha256(card)
        assert result.report.manifest_sha256 == sha256(manifest) == read_json(run / "verify.json")["manifest_sha256"]
        assert any(c["artifact"] == "MODEL_CARD.md" and c["measure"] == "sha256" and c["passed"]
                   for c in result.report.checks)
    assert first_unfinished(run) is None  # the manifest rewritten before verify.json: every stage still done

    before = card.read_bytes()
    verify_stage(run, FAST, json_path=tmp_path / "elsewhere.json")  # a report elsewhere leaves the run's card
    assert card.read_bytes() == before


def test_a_changed_card_fails_integrity_and_is_left_as_it_is(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run[0], tmp_path / "run"))
    card, manifest = run / "export" / "MODEL_CARD.md", run / "export" / "manifest.json"
    card.write_text(card.read_text() + "\nAccuracy: 100 %, trust me.\n")
    listed = manifest.read_bytes()
    with pytest.raises(ChecksFailed, match="MODEL_CARD.md: sha256"):
        verify_stage(run, FAST)
    assert card.read_text().endswith("trust me.\n") and manifest.read_bytes() == listed


def test_export_writes_a_card_that_awaits_verify_even_without_train_json(exported_both):
    """A fake run (no train.json, no split): the card says what it cannot know instead of failing."""
    card = exported_both / "export" / "MODEL_CARD.md"
    text = card.read_text()
    assert "Not verified yet" in text and "No per-class results recorded" in text and "## Preprocessing" in text
    assert read_json(exported_both / "export" / "manifest.json")["card"]["sha256"] == sha256(card)
