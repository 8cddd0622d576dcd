"""The package's shape holds: layers (import-linter), a serving import without training code, one
config layering that still reads old files, and features keyed by the encoder rather than its folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("scpo.pipeline", "scpo.fitting", "scpo.jobs", "scpo.trainer", "scpo.heads", "scpo.experiment", "scpo.score",
            "scpo.studies", "scpo.pooler")


def test_import_contracts_are_kept() -> None:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") >= 3


def test_serving_import_loads_no_training_code() -> None:
    code = ("import sys, scpo, scpo.serve, scpo.export\n"
            f"print([m for m in sys.modules if m.startswith({TRAINING!r})] + "
            "[m for m in ('peft', 'transformers.trainer', 'accelerate') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    code = "import sys, scpo; print(sorted(m for m in sys.modules if m.startswith('scpo.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # lazy package exports: `import scpo` loads none of its modules


def test_lazy_exports_resolve() -> None:
    import scpo

    for name in scpo.__all__:
        assert getattr(scpo, name) is not None, name
    with pytest.raises(AttributeError):
        _ = scpo.not_a_name


def test_one_layering_defaults_yaml_flags_and_old_sections(tmp_path: Path) -> None:
    from scpo.config import RunConfig, layered, read_yaml

    old = tmp_path / "old.yaml"  # trainer and studies keys under train, as files written before the split
    old.write_text("select: {tau: 0.6}\ntrain: {mode: lora, bf16: true, lora_r: 4, curve_fractions: [0.5, 1.0]}\n")
    cfg = layered(("command defaults", {"methods": ["global", "scpo"], "tau": 0.5}), (str(old), read_yaml(old)),
                  ("command line", {"lora_r": "2"}))
    assert cfg.select.tau == 0.6 and cfg.train.methods == ["global", "scpo"] and cfg.train.mode == "lora"
    assert cfg.trainer.bf16 is True and cfg.trainer.lora_r == 2 and cfg.studies.curve_fractions == [0.5, 1.0]
    assert RunConfig.from_yaml(old) == RunConfig.from_dict(read_yaml(old))
    assert cfg.replace(tau=0.7).select.tau == 0.7 and cfg.replace(tau=0.7).trainer.lora_r == 2
    again = tmp_path / "again.yaml"  # the resolved config round-trips through its own YAML
    again.write_text(cfg.to_yaml())
    assert RunConfig.from_yaml(again) == cfg


def test_a_saved_global_model_reuses_the_cached_features(tmp_path: Path) -> None:
    """The feature cache is keyed by the tensors below the score layer: passing a run's own
    ``models/global`` (same encoder, a trained head) as ``--global-model`` runs no encoder pass."""
    from scpo.cli import main
    from scpo.instrument import COUNTS

    common = ["--quiet", "--synthetic-preset", "tiny", "--methods", "global,scpo", "--val-folds", "1", "--steps", "5",
              "--global-steps", "50", "--plots", "false", "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", *common, "--output-dir", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert first["scoring"]["computed"] > 0
    saved = tmp_path / "saved-global"
    shutil.copytree(tmp_path / "a" / "models" / "global", saved)
    before = COUNTS["scoring_forward_passes"]
    assert main(["run", *common, "--output-dir", str(tmp_path / "b"), "--global-model", str(saved)]) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert COUNTS["scoring_forward_passes"] == before  # zero encoder forward passes
    assert second["scoring"]["computed"] == 0 and second["scoring"]["cached"] == second["scoring"]["distinct"]
