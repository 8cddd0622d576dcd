"""Model cards (issue 14, item 3): written with ``huggingface_hub.ModelCard``/``ModelCardData`` for every
export -- the artifact, each group, LoRA adapter folders and the single checkpoint -- with base model,
data set, library, tags and a model index; the checkpoint card's usage snippet runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from interop_helpers import tiny_chat_artifact
from scpo.cards import base_model_id, dataset_id
from scpo.cli import main
from scpo.export import export_checkpoint
from scpo.steer import SteerableRewardModel
from test_steer import tiny_artifact

PROMPT, RESPONSE = "How should I greet a new neighbour?", "Knock, smile and introduce yourself."


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _snippet(readme: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0]


def _run_snippet(code: str, placeholder: str, path: Path) -> float:
    """Run a card's snippet as a user would, with the path the card says to put in ``placeholder``."""
    line = f'{placeholder} = "."'
    assert line in code
    code = code.replace(line, f"{placeholder} = {str(path)!r}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip().splitlines()[-1].strip("[]"))


def _no_local_paths(card: ModelCard, *paths: Path) -> None:
    meta = card.data.to_yaml()
    for p in paths:
        assert str(p) not in meta and str(p.resolve()) not in meta


def test_the_checkpoint_card_is_a_hub_card_and_its_snippet_gives_scpos_reward(tmp_path_factory):
    art = tiny_artifact(tmp_path_factory)
    srm = SteerableRewardModel.from_pretrained(art, device="cpu")
    out = export_checkpoint(srm, tmp_path_factory.mktemp("card") / "ga", group="group-a", strength=1.0)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the packaged encoder's Hub id
    assert card.data.library_name == "transformers" and {"reward-model", "scpo", "synthetic-data"} <= set(card.data.tags)
    assert card.data.datasets is None  # scpo's synthetic benchmark is no Hub data set
    (ev,) = card.data.eval_results
    acc = srm.manifest["accuracy"]["group-a"][srm.method]
    assert ev.metric_type == "accuracy" and ev.metric_value == pytest.approx(acc["all"], abs=1e-6)
    assert ev.dataset_split == "test" and ev.dataset_config == "group-a"
    assert f"{100 * acc['ci95'][0]:.1f}%" in card.text  # the CI, in the text
    _no_local_paths(card, art, out)
    reward = _run_snippet(_snippet(out / "README.md"), "PATH", out)
    assert reward == pytest.approx(float(srm.score([PROMPT], [RESPONSE], group="group-a")[0]), abs=1e-5)


def test_the_chat_decoder_snippet_says_add_special_tokens_false_and_runs(tmp_path_factory):
    art = tiny_chat_artifact(tmp_path_factory)
    srm = SteerableRewardModel.from_pretrained(art, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the score layer has no bias: the offset is in the snippet
        out = export_checkpoint(srm, tmp_path_factory.mktemp("card") / "chat", group="group-b", strength=1.0)
    code = _snippet(out / "README.md")
    assert "tokenize=False" in code and "add_special_tokens=False" in code
    expected = float(srm.score([PROMPT], [RESPONSE], group="group-b")[0])
    assert _run_snippet(code, "PATH", out) == pytest.approx(expected, abs=1e-5)
    # (this tiny tokenizer adds no BOS token, so the tokenizer's default would give the same ids here;
    # a Llama-3 tokenizer adds a second <|begin_of_text|> and another reward)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None  # a local folder as the global model: never a path in the metadata
    _no_local_paths(card, art, out, Path(srm.manifest["global_model"]["model"]))


def test_the_artifact_and_group_cards_carry_the_model_index(tmp_path_factory):
    art = tiny_artifact(tmp_path_factory)
    srm = SteerableRewardModel.from_pretrained(art, device="cpu")
    top = ModelCard.load(art / "README.md")
    assert top.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and top.data.library_name == "transformers"
    got = {ev.dataset_config: ev.metric_value for ev in top.data.eval_results}
    assert got == pytest.approx({g: srm.manifest["accuracy"][g][srm.method]["all"] for g in srm.groups}, abs=1e-6)
    for g, rel in srm.manifest["cards"].items():
        card = ModelCard.load(art / rel)
        (ev,) = card.data.eval_results  # this group's model only (the global model's is in the text)
        assert ev.dataset_config == g and ev.metric_value == pytest.approx(srm.manifest["accuracy"][g][srm.method]["all"], abs=1e-6)
        assert f"# SCPO reward model for `{g}`" in card.text
    score = _run_snippet(_snippet(art / "README.md"), "THIS_DIR", art)
    assert score == pytest.approx(float(srm.score([PROMPT], [RESPONSE], group=srm.groups[0], strength=0.5)[0]), abs=1e-5)


def test_lora_adapter_folders_get_a_card_not_pefts_template(tmp_path):
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["run", "--quiet", "--synthetic-preset", "tiny", "--mode", "lora", "--methods", "global,scpo",
                     "--groups", "group-c", "--steps", "2", "--batch-size", "4", "--max-length", "32", "--val-folds", "1",
                     "--learning-rates", "1e-3", "--pulls", "0", "--global-steps", "20", "--plots", "false",
                     "--save-steps", "0", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    (folder,) = (out / "models" / "adapters").iterdir()
    text = (folder / "README.md").read_text()
    assert "[More Information Needed]" not in text  # PEFT's template
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "scpo-lora" in card.data.tags
    assert {ev.dataset_config for ev in card.data.eval_results} == {"group-c"}
    assert "a LoRA adapter over the global model" in card.text


def test_base_model_and_dataset_names():
    assert base_model_id("packaged") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id("allenai/Llama-3.1-Tulu-3-8B-RM") == "allenai/Llama-3.1-Tulu-3-8B-RM"
    assert base_model_id("/models/my-rm") is None and base_model_id("./rm") is None and base_model_id(None) is None
    assert dataset_id({"name": "goqa", "provenance": {"file": "/data/global_opinions_partial.csv"}}) == \
        "Anthropic/llm_global_opinions"
    assert dataset_id({"name": "prism", "provenance": {"hub_id": "HannahRoseKirk/prism-alignment"}}) == \
        "HannahRoseKirk/prism-alignment"
    assert dataset_id({"name": "pairs", "provenance": {"file": "/home/me/data/my_pairs.jsonl"}}) == "my_pairs.jsonl"
    assert dataset_id({"name": "synthetic", "synthetic": True}) is None
