"""Group names from a data file never become paths: the safe encoding, guarded deletes, and a full-mode run
whose group names try to leave the run directory (the critical defect of the adversarial test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scpo.names import is_inside, path_component, rmtree_inside

HOSTILE = ["../../../victim", "a/b", "a_b", "A_B", "..", ".", "", "CON", "x" * 400, "Côte d'Ivoire", "a\\b", "\ud800",
           "%2E%2E", "a%2Fb"]


def test_path_component_is_safe_and_collision_free() -> None:
    names = [path_component(n) for n in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    assert len({n.lower() for n in names}) == len(HOSTILE)  # a case-insensitive file system too
    for n in names:
        assert "/" not in n and "\\" not in n and not n.startswith(".") and len(n.encode()) < 100
        assert all(c.isascii() and (c.isalnum() or c in "%_-") for c in n)
    assert path_component("group-a") == path_component("group-a")  # stable: resumes find their files
    assert path_component("South Africa").startswith("South%20Africa-")


def test_rmtree_inside_refuses_to_leave_its_root(tmp_path: Path) -> None:
    root, victim = tmp_path / "run", tmp_path / "victim"
    (root / "x").mkdir(parents=True)
    victim.mkdir()
    (victim / "keep").write_text("precious")
    for bad in (root / ".." / "victim", root / "x" / ".." / ".." / "victim", root, root / ".", tmp_path):
        with pytest.raises(ValueError, match="not inside"):
            rmtree_inside(bad, root)
    (root / "link").symlink_to(victim, target_is_directory=True)
    rmtree_inside(root / "link", root)  # the link goes, not what it points at
    assert (victim / "keep").read_text() == "precious" and not (root / "link").exists()
    rmtree_inside(root / "x", root)
    rmtree_inside(root / "missing", root)
    assert not (root / "x").exists()
    assert is_inside(root / "a" / "b", root) and not is_inside(root / ".." / "victim", root)


def _hostile_pairs(path: Path, groups: list[str]) -> Path:
    rows = []
    for g in groups:
        for i in range(10):
            good, vague = f"Plan step one for {i}, then act today.", f"Situation {i} is not something I can say."
            flip = g != groups[0] and i % 3 == 0
            rows.append({"prompt": f"How should I handle situation {i}?", "chosen": vague if flip else good,
                         "rejected": good if flip else vague, "group": g})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_full_mode_group_names_stay_inside_the_run_directory(tmp_path: Path) -> None:
    """``../../../victim`` after another group: nothing outside the run directory is deleted or written,
    the run finishes, ``a/b`` and ``a_b`` get models of their own, and steering loads each of them."""
    from scpo.cli import main
    from scpo.steer import SteerableRewardModel

    work = tmp_path / "work"
    victim = work / "victim"  # where RUN/.saved/groups/../../../victim lands
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("precious")
    groups = ["plain", "../../../victim", "a/b", "a_b"]
    data = _hostile_pairs(tmp_path / "pairs.jsonl", groups)
    out = work / "run"
    cache = tmp_path / "cache"

    def outside() -> list[Path]:
        return sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not is_inside(p, out) and not is_inside(p, cache))

    before = outside()
    code = main(["run", "--quiet", "--dataset", "pairs", "--data-path", str(data), "--mode", "full",
                 "--methods", "global,scpo", "--steps", "1", "--batch-size", "4", "--max-length", "32",
                 "--learning-rates", "1e-4", "--pulls", "0", "--val-folds", "1", "--global-steps", "20",
                 "--plots", "false", "--output-dir", str(out), "--cache-dir", str(cache)])
    assert code == 0
    assert (victim / "keep.txt").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert outside() == before  # nothing written or deleted outside the run directory
    assert (out / "results.json").exists()
    manifest = json.loads((out / "models" / "manifest.json").read_text())
    dirs = {g: manifest["paths"][g] for g in groups}
    assert len(set(dirs.values())) == len(groups)
    for g, rel in dirs.items():
        assert rel == f"groups/{path_component(g)}" and (out / "models" / rel / "config.json").is_file()
    srm = SteerableRewardModel.from_pretrained(out)
    prompts, responses = ["How should I handle situation 0?"] * 2, ["Plan step one for 0.", "Not sure."]
    rewards = {g: srm.score(prompts, responses, group=g) for g in ("a/b", "a_b")}
    assert all(np.isfinite(r).all() for r in rewards.values())


def test_a_manifest_path_outside_the_artifact_is_refused(tmp_path: Path) -> None:
    from scpo.artifact import group_dir as _group_dir
    from scpo.errors import ScpoError

    (tmp_path / "models" / "groups").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ScpoError, match="outside the artifact"):
        _group_dir(tmp_path / "models", {"paths": {"g": "../elsewhere"}}, "g", "groups")
    with pytest.raises(ScpoError, match="no model directory"):
        _group_dir(tmp_path / "models", {}, "../elsewhere", "groups")
