"""scpo's own tools accept its own single-group export (issue 13, item 3): from_pretrained, score, rerank, serve."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo.cli import main
from scpo.errors import InputError, ScpoError
from scpo.export import export_checkpoint
from scpo.steer import SteerableRewardModel
from test_serve import PROMPT, RESPONSES, tiny_artifact

PROMPTS = [PROMPT, "What is a good gift for a host?", PROMPT]
TEXTS = RESPONSES


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def srm(artifact: Path) -> SteerableRewardModel:
    return SteerableRewardModel.from_pretrained(artifact, device="cpu")


@pytest.fixture(scope="module")
def exported(srm: SteerableRewardModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_checkpoint(srm, tmp_path_factory.mktemp("export") / "ga", group="group-a", strength=0.5)


def test_from_pretrained_loads_a_single_group_export(srm: SteerableRewardModel, exported: Path, tmp_path: Path) -> None:
    one = SteerableRewardModel.from_pretrained(exported, device="cpu")
    assert one.mode == "export" and one.groups == ["group-a"] and one.method == srm.method
    assert one.calibration_info["baked_into_checkpoint"] and one.calibration_info["method"] == srm.calibration_info["method"]
    expected = srm.score(PROMPTS, TEXTS, group="group-a", strength=0.5)
    np.testing.assert_allclose(one.score(PROMPTS, TEXTS, group="group-a"), expected, atol=2e-5)
    np.testing.assert_allclose(one.score(PROMPTS, TEXTS), expected, atol=2e-5)  # group=None: the exported reward
    np.testing.assert_allclose(one.score(PROMPTS, TEXTS, group={"group-a": 3.0}), expected, atol=2e-5)
    assert one.compare(PROMPT, TEXTS[0], TEXTS[1], group="group-a") == pytest.approx(
        srm.compare(PROMPT, TEXTS[0], TEXTS[1], group="group-a", strength=0.5), abs=1e-5)
    with pytest.raises(InputError, match="strength is fixed"):
        one.score(PROMPTS, TEXTS, group="group-a", strength=0.3)
    with pytest.raises(InputError, match="finite number > 0"):
        one.score(PROMPTS, TEXTS, group={"group-a": -1})
    with pytest.raises(InputError, match="unknown group 'group-b'"):
        one.score(PROMPTS, TEXTS, group="group-b")
    with pytest.raises(ScpoError, match="already a single exported checkpoint"):
        export_checkpoint(one, tmp_path / "again", group="group-a")
    # a global-model export: no group, the global rewards
    glob = SteerableRewardModel.from_pretrained(export_checkpoint(srm, tmp_path / "glob", group=None), device="cpu")
    assert glob.groups == []
    np.testing.assert_allclose(glob.score(PROMPTS, TEXTS), srm.score(PROMPTS, TEXTS), atol=2e-5)


def test_reward_offset_is_added_back(srm: SteerableRewardModel, exported: Path, tmp_path: Path) -> None:
    """A score layer without a bias stores its centring offset in scpo_export.json: the loader adds it back."""
    import shutil

    copy = tmp_path / "offset"
    shutil.copytree(exported, copy)
    spec = json.loads((copy / "scpo_export.json").read_text())
    spec["reward_offset"] = 1.25
    (copy / "scpo_export.json").write_text(json.dumps(spec))
    one = SteerableRewardModel.from_pretrained(copy, device="cpu")
    np.testing.assert_allclose(one.score(PROMPTS, TEXTS), srm.score(PROMPTS, TEXTS, group="group-a", strength=0.5) + 1.25,
                               atol=2e-5)
    spec["reward_offset"] = "lots"
    (copy / "scpo_export.json").write_text(json.dumps(spec))
    with pytest.raises(ScpoError, match="reward_offset"):
        SteerableRewardModel.from_pretrained(copy, device="cpu")


def test_cli_score_and_rerank_accept_the_export(srm: SteerableRewardModel, exported: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, TEXTS)))
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--model", str(exported), "--input", str(rows), "--output", str(out), "--device", "cpu"]) == 0
    got = [json.loads(x)["reward"] for x in out.read_text().splitlines()]
    np.testing.assert_allclose(got, srm.score(PROMPTS, TEXTS, group="group-a", strength=0.5), atol=2e-5)
    assert main(["score", "--model", str(exported), "--input", str(rows), "--group", "group-a", "--output", str(out),
                 "--device", "cpu"]) == 0
    assert main(["score", "--model", str(exported), "--input", str(rows), "--group", "group-b", "--device", "cpu"]) == 2
    assert "unknown group 'group-b'" in capsys.readouterr().err
    cands = tmp_path / "cands.jsonl"
    cands.write_text(json.dumps({"prompt": PROMPT, "responses": TEXTS}) + "\n")
    ranked = tmp_path / "ranked.jsonl"
    assert main(["rerank", "--model", str(exported), "--input", str(cands), "--output", str(ranked), "--device", "cpu"]) == 0
    best = json.loads(ranked.read_text())
    expected = srm.score(PROMPT, TEXTS, group="group-a", strength=0.5)
    assert best["best"] == TEXTS[int(np.argmax(expected))]
    assert [r["reward"] for r in best["ranking"]] == pytest.approx(sorted(expected, reverse=True), abs=2e-5)


def test_serve_accepts_the_export(srm: SteerableRewardModel, exported: Path) -> None:
    from fastapi.testclient import TestClient

    from scpo.serve import create_app

    one = SteerableRewardModel.from_pretrained(exported, device="cpu")
    with TestClient(create_app(one)) as client:
        expected = srm.score(PROMPT, TEXTS, group="group-a", strength=0.5)
        r = client.post("/score", json={"prompt": PROMPT, "responses": TEXTS})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["rewards"], expected, atol=2e-5)
        r = client.post("/get_reward", json={"query": [PROMPT + t for t in TEXTS], "prompts": [PROMPT] * 3, "labels": [""] * 3})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["rewards"], expected, atol=2e-5)
        assert client.get("/groups").json()["groups"] == ["group-a"]
        assert client.get("/health").json()["mode"] == "export"
        r = client.post("/score", json={"prompt": PROMPT, "response": "x", "group": "group-a", "strength": 0.2})
        assert r.status_code == 422 and "strength is fixed" in r.json()["error"]
