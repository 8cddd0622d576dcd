"""Steerable reward models: artifact, calibration, steering, export, CLI (head, lora and full layouts)."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo.artifact import GLOBAL, compute_calibration, models_fingerprint, resolve_artifact
from scpo.cli import main
from scpo.errors import InputError, ScpoError
from scpo.export import export_artifact, export_checkpoint
from scpo.names import path_component
from scpo.steer import SteerableRewardModel, parse_group

PROMPTS = ["How should I greet my new neighbour?"] * 3 + ["What should I cook for my family tonight?"] * 3
RESPONSES = ["Say hello and smile.", "Bring a small gift and bow politely.", "Ignore them, it's none of your business.",
             "A big pot of stew to share with everyone.", "Order a pizza.", "Whatever is quickest for you alone."]


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic preset run, made once per session (shared with test_serve.py)."""
    from scpo import RunConfig, run

    base = tmp_path_factory.getbasetemp()
    run_dir = base / "scpo-tiny-run"
    with open(base / "scpo-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "results.json").is_file():
            cfg = RunConfig().replace(synthetic_preset="tiny", steps=[20], output_dir=str(run_dir),
                                      cache_dir=str(base / "scpo-cache"), plots=False)
            run(cfg, progress=False)
    return run_dir


def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run's models exported (calibrated, with cards) to their own directory, once per session."""
    run_dir = tiny_run(tmp_path_factory)
    base = tmp_path_factory.getbasetemp()
    out = base / "scpo-tiny-artifact"
    with open(base / "scpo-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "README.md").is_file():
            export_artifact(run_dir, out)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small batches: one intra-op thread is as fast, and does not thrash a CPU shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def srm(artifact: Path) -> SteerableRewardModel:
    return SteerableRewardModel.from_pretrained(artifact, device="cpu")


def plain_rewards(path: Path, prompts: list[str], responses: list[str]) -> np.ndarray:
    """Rewards of a checkpoint loaded the way an RLHF trainer loads it: plain transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    net = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return net(**tok(prompts, responses, return_tensors="pt", padding=True)).logits[:, 0].double().numpy()


# ---------------------------------------------------------------------------------------------
# the artifact


def test_artifact_manifest_cards_and_accuracies(run_dir: Path, artifact: Path) -> None:
    man = json.loads((artifact / "manifest.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    assert man["mode"] == "head" and man["groups"] == results["data"]["groups"]
    assert man["tau"] == pytest.approx(0.7) and man["beta"] == pytest.approx(1.1)
    assert man["data"]["provenance"] == results["data"]["provenance"] and man["data"]["synthetic"] is True
    for g in man["groups"]:
        assert man["accuracy"][g]["scpo"]["all"] == results["metrics"][g]["scpo"]["all"]["mean"]
        assert man["accuracy"][g]["global"]["all"] == results["metrics"][g]["global"]["all"]["mean"]
        card = (artifact / man["cards"][g]).read_text()
        assert g in card and "τ = 0.7" in card and "Synthetic data" in card
        assert f"{100 * results['metrics'][g]['scpo']['all']['mean']:.1f}%" in card
    cal = man["calibration"]
    assert cal["n"] == sum(1 for line in (artifact / "reference.jsonl").read_text().splitlines() if line.strip())
    assert {GLOBAL, *(f"{g}/scpo" for g in man["groups"])} <= set(cal["models"])
    assert cal["models"][GLOBAL]["scale"] == 1.0  # the global model is only centred
    assert cal["models_fingerprint"] == models_fingerprint(artifact)
    assert (artifact / "README.md").is_file() and (artifact / "heads.safetensors").is_file()


def test_resolve_artifact(run_dir: Path, artifact: Path, tmp_path: Path) -> None:
    assert resolve_artifact(run_dir) == run_dir / "models"
    assert resolve_artifact(run_dir / "models") == run_dir / "models"
    assert resolve_artifact(artifact) == artifact
    with pytest.raises(ScpoError, match="not a steerable reward model"):
        resolve_artifact(tmp_path)
    with pytest.raises(ScpoError, match="no such directory"):
        resolve_artifact(tmp_path / "missing")


def test_round_trip_identical_rewards(run_dir: Path, artifact: Path, srm: SteerableRewardModel, tmp_path: Path) -> None:
    # the run directory itself (calibration computed on load) == the exported artifact (stored calibration)
    from_run = SteerableRewardModel.from_pretrained(run_dir, device="cpu")
    for m, c in srm.calibration.items():
        assert from_run.calibration[m].mean == pytest.approx(c.mean, abs=1e-9)
        assert from_run.calibration[m].scale == pytest.approx(c.scale, rel=1e-9)
    # save again (the stored calibration still matches the weights, so it is kept) -> load -> identical
    copy = export_artifact(artifact, tmp_path / "copy")
    again = SteerableRewardModel.from_pretrained(copy, device="cpu")
    assert again.calibration == srm.calibration
    for group in (None, "group-a", {"group-a": 0.5, "group-c": 0.5}):
        expected = srm.score(PROMPTS, RESPONSES, group=group, strength=0.8)
        np.testing.assert_array_equal(again.score(PROMPTS, RESPONSES, group=group, strength=0.8), expected)
        np.testing.assert_allclose(from_run.score(PROMPTS, RESPONSES, group=group, strength=0.8), expected, atol=1e-9)


def test_rewards_equal_the_pipelines_scoring(artifact: Path, srm: SteerableRewardModel) -> None:
    from safetensors.torch import load_file

    from scpo.config import ModelConfig
    from scpo.forward import rewards_of
    from scpo.model import load_reward_model
    from scpo.score import encode_features, rewards_from_features

    rm = load_reward_model(ModelConfig(), path=str(artifact / "global"))
    assert rm.formatter == srm.formatter
    np.testing.assert_allclose(srm.raw_rewards(PROMPTS, RESPONSES), rewards_of(rm.model, rm.tokenizer, rm.formatter, PROMPTS, RESPONSES), atol=1e-5)
    feats, _ = encode_features(rm, PROMPTS, RESPONSES, progress=False, kill_point=None)
    heads = load_file(str(artifact / "heads.safetensors"))
    bias = float(rm.head_params()[1])
    for g in srm.groups:
        expected = rewards_from_features(feats, heads[f"{g}/scpo"].numpy(), bias)
        np.testing.assert_allclose(srm.raw_rewards(PROMPTS, RESPONSES, g), expected, atol=1e-5)
        cal = srm.calibration[f"{g}/scpo"]
        np.testing.assert_allclose(srm.score(PROMPTS, RESPONSES, group=g), (expected - cal.mean) * cal.scale, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# steering


def test_strength_and_mixtures(srm: SteerableRewardModel) -> None:
    z0 = srm.score(PROMPTS, RESPONSES)
    za = srm.score(PROMPTS, RESPONSES, group="group-a")
    zb = srm.score(PROMPTS, RESPONSES, group="group-b")
    cal0 = srm.calibration[GLOBAL]
    np.testing.assert_array_equal(z0, (srm.raw_rewards(PROMPTS, RESPONSES) - cal0.mean) * cal0.scale)
    assert not np.allclose(za, z0) and not np.allclose(za, zb)
    np.testing.assert_array_equal(srm.score(PROMPTS, RESPONSES, group="group-a", strength=0.0), z0)
    np.testing.assert_array_equal(srm.score(PROMPTS, RESPONSES, group="group-a", strength=1.0), za)
    for a in (0.25, 0.5, 0.9):
        np.testing.assert_allclose(srm.score(PROMPTS, RESPONSES, group="group-a", strength=a), (1 - a) * z0 + a * za, atol=1e-12)
    mix = srm.score(PROMPTS, RESPONSES, group={"group-a": 0.7, "group-b": 0.3})
    np.testing.assert_allclose(mix, 0.7 * za + 0.3 * zb, atol=1e-12)
    np.testing.assert_allclose(srm.score(PROMPTS, RESPONSES, group={"group-a": 7, "group-b": 3}), mix, atol=1e-12)
    np.testing.assert_allclose(srm.score(PROMPTS, RESPONSES, group={"group-a": 0.7, "group-b": 0.3}, strength=0.4),
                               0.6 * z0 + 0.4 * (0.7 * za + 0.3 * zb), atol=1e-12)
    np.testing.assert_allclose(srm.score(PROMPTS, RESPONSES, group={"group-a": 1.0, "group-b": 0.0}), za, atol=1e-12)
    # one prompt shared by several responses (another batch: padding changes the floats' last bits)
    np.testing.assert_allclose(srm.score(PROMPTS[0], RESPONSES[:3], group="group-a"), za[:3], atol=1e-5)


def test_compare_is_bradley_terry(srm: SteerableRewardModel) -> None:
    r = srm.score(PROMPTS[:2], RESPONSES[:2], group="group-c", strength=0.6)
    p = srm.compare(PROMPTS[0], RESPONSES[0], RESPONSES[1], group="group-c", strength=0.6)
    assert isinstance(p, float) and p == pytest.approx(1 / (1 + math.exp(-(r[0] - r[1]))), abs=1e-12)
    assert srm.compare(PROMPTS[0], RESPONSES[1], RESPONSES[0], group="group-c", strength=0.6) == pytest.approx(1 - p)
    assert srm.compare(PROMPTS[0], RESPONSES[0], RESPONSES[0]) == pytest.approx(0.5)
    many = srm.compare(PROMPTS[:3], RESPONSES[:3], RESPONSES[3:], group="group-a")
    assert isinstance(many, np.ndarray) and many.shape == (3,) and np.all((many > 0) & (many < 1))


def test_bad_steering_is_an_input_error(srm: SteerableRewardModel) -> None:
    with pytest.raises(InputError, match="unknown group 'group-x'.*did you mean"):
        srm.score(PROMPTS, RESPONSES, group="group-x")
    for bad in (-0.1, 1.1, float("nan"), float("inf"), True, "0.5", None):
        with pytest.raises(InputError, match="strength"):
            srm.score(PROMPTS, RESPONSES, group="group-a", strength=bad)  # type: ignore[arg-type]
    for mix, msg in (({}, "at least one"), ({"group-a": -1}, ">= 0"), ({"group-a": 0, "group-b": 0}, "all be 0"),
                     ({"group-a": float("nan")}, ">= 0"), ({"nope": 1}, "unknown group")):
        with pytest.raises(InputError, match=msg):
            srm.score(PROMPTS, RESPONSES, group=mix)
    with pytest.raises(InputError, match="group must be"):
        srm.score(PROMPTS, RESPONSES, group=3)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="6 prompts but 2 responses"):
        srm.score(PROMPTS, RESPONSES[:2])


def test_batched_eval_mode_inference(artifact: Path) -> None:
    m = SteerableRewardModel.from_pretrained(artifact, device="cpu", batch_size=4)
    assert m.mode == "head" and len(m.modules()) == 1
    assert all(not mod.training for mod in m.module().modules())
    before = m.forward_passes
    r = m.score(PROMPTS + PROMPTS, RESPONSES + RESPONSES, group={"group-a": 0.5, "group-b": 0.5}, strength=0.5)
    assert m.forward_passes - before == 2  # 6 distinct texts in batches of 4; every group from the same features
    np.testing.assert_array_equal(r[:6], r[6:])
    assert m.score_requests([]) == []


def test_calibration_math() -> None:
    rng = np.random.default_rng(0)
    raw = {GLOBAL: rng.normal(3, 2, 100), "a/scpo": rng.normal(-1, 0.5, 100), "flat/scpo": np.ones(100)}
    cal, common = compute_calibration(raw)
    assert common == pytest.approx(np.std(raw[GLOBAL]))
    for m in ("a/scpo", GLOBAL):
        z = cal[m].apply(raw[m])
        assert np.mean(z) == pytest.approx(0, abs=1e-12) and np.std(z) == pytest.approx(common)
    assert cal["flat/scpo"].scale == 1.0 and np.all(cal["flat/scpo"].apply(raw["flat/scpo"]) == 0)
    centred, _ = compute_calibration(raw, scale=False)
    assert all(c.scale == 1.0 for c in centred.values())


def test_parse_group() -> None:
    groups = ["a", "b", "x=y"]
    assert parse_group(None, groups) is None and parse_group("global", groups) is None
    assert parse_group("a", groups) == "a" and parse_group("x=y", groups) == "x=y"
    assert parse_group("a=0.7,b=0.3", groups) == {"a": 0.7, "b": 0.3}
    with pytest.raises(InputError, match="not a number"):
        parse_group("a=lots", groups)


# ---------------------------------------------------------------------------------------------
# export for RLHF trainers


def test_export_loads_in_plain_transformers(srm: SteerableRewardModel, tmp_path: Path) -> None:
    for i, (group, strength) in enumerate([("group-a", 1.0), ({"group-b": 0.6, "group-c": 0.4}, 0.7), (None, 1.0)]):
        out = export_checkpoint(srm, tmp_path / f"e{i}", group=group, strength=strength)
        np.testing.assert_allclose(plain_rewards(out, PROMPTS, RESPONSES), srm.score(PROMPTS, RESPONSES, group, strength),
                                   atol=2e-5)
        spec = json.loads((out / "scpo_export.json").read_text())
        assert spec["strength"] == strength and spec["reward_offset"] == 0.0
        assert (out / "README.md").read_text().startswith("---")
    with pytest.raises(ScpoError, match="not empty"):
        export_checkpoint(srm, tmp_path / "e0", group="group-a")


def test_cli_export(run_dir: Path, artifact: Path, srm: SteerableRewardModel, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ga"
    assert main(["export", str(artifact), "--group", "group-a", "--strength", "0.5", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    np.testing.assert_allclose(plain_rewards(out, PROMPTS, RESPONSES),
                               srm.score(PROMPTS, RESPONSES, group="group-a", strength=0.5), atol=2e-5)
    assert main(["export", str(artifact), "--out", str(tmp_path / "all")]) == 0  # the whole artifact
    assert json.loads((tmp_path / "all" / "manifest.json").read_text())["calibration"] == json.loads(
        (artifact / "manifest.json").read_text())["calibration"]
    assert main(["export", str(artifact), "--group", "group-a"]) == 2
    assert "--group needs --out" in capsys.readouterr().err
    assert main(["export", str(artifact), "--group", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown group 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(artifact), "--group", "group-a", "--strength", "2", "--out", str(tmp_path / "y")])


# ---------------------------------------------------------------------------------------------
# scpo score / scpo rerank


def test_cli_score_rewards_and_pairs(artifact: Path, srm: SteerableRewardModel, tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "prompt": p, "response": r}) + "\n" for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))))
    out = tmp_path / "rows.out.jsonl"
    assert main(["score", "--model", str(artifact), "--group", "group-b", "--strength", "0.3", "--input", str(rows),
                 "--output", str(out), "--device", "cpu"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == list(range(6))
    np.testing.assert_allclose([g["reward"] for g in got], srm.score(PROMPTS, RESPONSES, group="group-b", strength=0.3), atol=1e-9)

    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows({"prompt": PROMPTS[i], "chosen": RESPONSES[i], "rejected": RESPONSES[i + 1]} for i in (0, 3))
    out = tmp_path / "pairs.out.jsonl"
    assert main(["score", "--model", str(artifact), "--group", "group-a=0.5,group-c=0.5", "--input", str(pairs),
                 "--output", str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    mix = {"group-a": 0.5, "group-c": 0.5}
    for g, i in zip(got, (0, 3)):
        assert g["p_chosen"] == pytest.approx(srm.compare(PROMPTS[i], RESPONSES[i], RESPONSES[i + 1], group=mix), abs=1e-6)
        assert g["p_chosen"] == pytest.approx(1 / (1 + math.exp(g["reward_rejected"] - g["reward_chosen"])))


def test_cli_score_errors(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "text": "x"}) + "\n")
    assert main(["score", "--model", str(artifact), "--input", str(bad)]) == 2
    assert "expected a column 'response'" in capsys.readouterr().err
    bad.write_text(json.dumps({"prompt": "p", "response": 3}) + "\n")
    assert main(["score", "--model", str(artifact), "--input", str(bad)]) == 2
    assert "row 1" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    assert main(["score", "--model", str(artifact), "--group", "nope", "--input", str(good)]) == 2
    assert "unknown group" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path), "--input", str(good)]) == 2
    assert "not a steerable reward model" in capsys.readouterr().err


def test_cli_rerank_best_of_n(artifact: Path, srm: SteerableRewardModel, tmp_path: Path) -> None:
    inp = tmp_path / "cands.jsonl"
    inp.write_text(json.dumps({"prompt": PROMPTS[0], "responses": RESPONSES[:3]}) + "\n"
                   + json.dumps({"prompt": PROMPTS[3], "responses": RESPONSES[3:]}) + "\n")
    out = tmp_path / "ranked.jsonl"
    assert main(["rerank", "--model", str(artifact), "--group", "group-c", "--input", str(inp), "--output", str(out),
                 "--top-k", "2"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    for row, lo in zip(got, (0, 3)):
        r = srm.score(PROMPTS[lo : lo + 3], RESPONSES[lo : lo + 3], group="group-c")
        order = list(np.argsort(-r, kind="stable"))
        assert row["best"] == RESPONSES[lo + order[0]]
        assert [x["response"] for x in row["ranking"]] == [RESPONSES[lo + j] for j in order[:2]]
        assert [x["rank"] for x in row["ranking"]] == [1, 2]
    # one candidate a row, CSV
    csv_in = tmp_path / "cands.csv"
    with open(csv_in, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "response"])
        w.writeheader()
        w.writerows({"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES))
    assert main(["rerank", "--model", str(artifact), "--group", "group-c", "--input", str(csv_in), "--output", str(out)]) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["best"] for row in again] == [row["best"] for row in got] and len(again[0]["ranking"]) == 3


# ---------------------------------------------------------------------------------------------
# lora and full layouts (built here, independent of the trainer)

SHORT_REF = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]


def _base_dir(artifact: Path, root: Path, mode: str, groups: list[str]) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(artifact / "global", root / "global")
    man = json.loads((artifact / "manifest.json").read_text())
    manifest = {"mode": mode, "groups": groups, "methods": ["global", "scpo"], "score_layer": man["score_layer"],
                "formatter": man["formatter"], "global_model": man["global_model"]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHORT_REF))
    return root


@pytest.fixture(scope="module")
def lora_dir(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    groups = ["group-a", "group b/with odd name"]
    root = _base_dir(artifact, tmp_path_factory.mktemp("lora") / "models", "lora", groups)
    for k, g in enumerate(groups):
        base = AutoModelForSequenceClassification.from_pretrained(str(root / "global"))
        pm = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
                elif "modules_to_save" in n:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
        pm.save_pretrained(str(root / "adapters" / path_component(g)))  # the safe encoding, as the run writes it
    return root


@pytest.fixture(scope="module")
def full_dir(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    groups = ["group-a", "group-c"]
    root = _base_dir(artifact, tmp_path_factory.mktemp("full") / "models", "full", groups)
    tok = AutoTokenizer.from_pretrained(str(root / "global"))
    for k, g in enumerate(groups):
        net = AutoModelForSequenceClassification.from_pretrained(str(root / "global"))
        gen = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for n, p in net.named_parameters():
                if "classifier" in n or "layer.5.output.dense" in n:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        net.save_pretrained(str(root / "groups" / g))
        tok.save_pretrained(str(root / "groups" / g))
    return root


def _merged_rewards(lora_dir: Path, group: str | None) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    net = AutoModelForSequenceClassification.from_pretrained(str(lora_dir / "global")).eval()
    if group is not None:
        net = PeftModel.from_pretrained(net, str(lora_dir / "adapters" / path_component(group))).merge_and_unload().eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(lora_dir / "global"))
    with torch.no_grad():
        return net(**tok(PROMPTS, RESPONSES, return_tensors="pt", padding=True)).logits[:, 0].double().numpy()


def test_lora_one_base_switching_adapters(lora_dir: Path, tmp_path: Path) -> None:
    m = SteerableRewardModel.from_pretrained(lora_dir, device="cpu")
    ga, gb = m.groups
    # one base model in memory: every group is the same module, and switching adapters keeps the base's storage
    assert m.mode == "lora" and len(m.modules()) == 1
    assert m.module(None) is m.module(ga) is m.module(gb)
    base_ptrs = {n: p.data_ptr() for n, p in m.module().named_parameters() if "lora_" not in n and "modules_to_save" not in n}
    n_base = sum(p.numel() for n, p in m.module().named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    n_all = sum(p.numel() for p in {p.data_ptr(): p for p in m.module().parameters()}.values())
    assert n_all < 1.05 * n_base  # not one copy of the base per group
    for g in (ga, gb, None):
        np.testing.assert_allclose(m.raw_rewards(PROMPTS, RESPONSES, g), _merged_rewards(lora_dir, g), atol=2e-5)
    assert base_ptrs == {n: p.data_ptr() for n, p in m.module().named_parameters() if "lora_" not in n and "modules_to_save" not in n}
    # steering over adapters
    z0, za, zb = (m.score(PROMPTS, RESPONSES, group=g) for g in (None, ga, gb))
    assert not np.allclose(za, zb)
    np.testing.assert_allclose(m.score(PROMPTS, RESPONSES, group=ga, strength=0.25), 0.75 * z0 + 0.25 * za, atol=1e-12)
    np.testing.assert_allclose(m.score(PROMPTS, RESPONSES, group={ga: 0.5, gb: 0.5}), 0.5 * za + 0.5 * zb, atol=1e-12)
    passes = m.forward_passes
    m.score(PROMPTS, RESPONSES, group=ga, strength=0.5)
    assert m.forward_passes - passes == 2  # global (adapters off) and group-a
    # export merges the adapter into a plain checkpoint with the calibration baked in
    out = export_checkpoint(m, tmp_path / "lora-ga", group=ga)
    np.testing.assert_allclose(plain_rewards(out, PROMPTS, RESPONSES), za, atol=2e-5)
    with pytest.raises(ScpoError, match="not one checkpoint"):
        export_checkpoint(m, tmp_path / "lora-mix", group=ga, strength=0.5)
    # artifact export stores the calibration and writes each adapter's model card
    export_artifact(lora_dir)
    assert (lora_dir / "adapters" / path_component(gb) / "README.md").read_text().startswith("---")
    stored = json.loads((lora_dir / "manifest.json").read_text())["calibration"]["models"]
    assert stored[f"{ga}/scpo"] == m.calibration[f"{ga}/scpo"].to_dict()


def test_full_checkpoint_per_group(full_dir: Path, tmp_path: Path) -> None:
    m = SteerableRewardModel.from_pretrained(full_dir, device="cpu")
    assert m.mode == "full"
    for g in m.groups:
        raw = m.raw_rewards(PROMPTS, RESPONSES, g)
        np.testing.assert_allclose(raw, plain_rewards(full_dir / "groups" / g, PROMPTS, RESPONSES), atol=2e-5)
        cal = m.calibration[f"{g}/scpo"]
        np.testing.assert_allclose(m.score(PROMPTS, RESPONSES, group=g), (raw - cal.mean) * cal.scale, atol=1e-12)
    z0, za = m.score(PROMPTS, RESPONSES), m.score(PROMPTS, RESPONSES, group="group-a")
    np.testing.assert_allclose(m.score(PROMPTS, RESPONSES, group="group-a", strength=0.5), 0.5 * (z0 + za), atol=1e-12)
    out = export_checkpoint(m, tmp_path / "full-ga", group="group-a")
    np.testing.assert_allclose(plain_rewards(out, PROMPTS, RESPONSES), za, atol=2e-5)
    out0 = export_checkpoint(m, tmp_path / "full-global", group="group-a", strength=0.0)
    np.testing.assert_allclose(plain_rewards(out0, PROMPTS, RESPONSES), z0, atol=2e-5)


def test_missing_group_model_is_reported(lora_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(lora_dir, broken)
    man = json.loads((broken / "manifest.json").read_text())
    man["groups"].append("group-z")
    (broken / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ScpoError, match="no model directory for group 'group-z'"):
        SteerableRewardModel.from_pretrained(broken, device="cpu")
