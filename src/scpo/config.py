"""Configuration: dataclasses with documented defaults, loadable from YAML, overridable from the CLI.

A run is described by one :class:`RunConfig` made of sections (``data``, ``model``, ``select``,
``train``, ``trainer``, ``studies``, ``output``). In YAML the sections are nested mappings; on the
command line every field is a flat flag (``--tau 0.6``, ``--global-model PATH``), since field names
are unique across sections. Each run writes its resolved config as ``config.yaml`` next to its results.

**One layering** (:func:`layered`), used by every command and by :meth:`RunConfig.replace`: the
built-in defaults, then a command's own defaults (``scpo evaluate``, ``scpo sweep``), then the YAML
file, then the flags -- each later layer wins, each value is checked where it enters and named by
its source. A YAML file written before ``trainer`` and ``studies`` were sections of their own (those
keys under ``train``) still loads: each such key is read from its old place, with a note naming
its new one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .selection import validate_beta, validate_tau

PACKAGED_MODEL = "packaged"
"""Name of the offline default global model: the packaged all-MiniLM-L6-v2 encoder."""

METHODS = (
    "global",
    "full",
    "scpo",
    "filter-only",
    "weight-only",
    "inverse",
    "random-subset",
    "scratch",
)
"""Every method scpo can compare; see :mod:`scpo.train` for what each trains on."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class DataConfig:
    """Which preference data to load and how to split it."""

    dataset: str = _help(
        "synthetic (embedded default, no download), goqa, prism, pairs or ratings",
        default="synthetic",
    )
    data_path: str | None = _help(
        "local file/folder or Hub id of the data set (goqa: CSV; prism: folder with "
        "utterances.jsonl and survey.jsonl; pairs/ratings: a .jsonl, .json, .csv or .parquet file, a folder "
        "of such shards, a datasets save_to_disk folder, or a Hub id); default: the Hub for goqa/prism",
        default=None,
    )
    data_split: str = _help(
        "pairs/ratings: split of a Hub id, a save_to_disk DatasetDict or a folder of shards named by split",
        default="train",
    )
    groups: list[str] | None = _help(
        "target groups to train (comma separated); default: the data set's own default groups (pairs/ratings: "
        "every group that is not a population group); pairs/ratings keep the other groups' rows in the data",
        default=None,
    )
    columns: dict[str, str] = _help(
        "column mapping for pairs/ratings files, canonical=yours (prompt=question,group=country)",
        default_factory=dict,
    )
    group_column: str | None = _help(
        "pairs/ratings: the column naming each row's group (the same as --columns group=COL)", default=None
    )
    group_value: str | None = _help(
        "pairs/ratings: every row belongs to this group (a file without a group column)", default=None
    )
    population_groups: list[str] | None = _help(
        "pairs/ratings: groups whose pairs train the global model (comma separated); not trained as target "
        "groups unless also named in --groups",
        default=None,
    )
    split_seed: int = _help("seed of the train/test partition of split keys", default=0)
    test_fraction: float | None = _help(
        "share of split keys held out for testing (default: the data set's own, e.g. 0.15 for prism)",
        default=None,
    )
    global_source: str = _help(
        "data of the offline global model: auto, holdout (a held-apart share of split keys), "
        "pooled (population pairs built by the loader) or none (a pretrained reward model)",
        default="auto",
    )
    global_fraction: float = _help(
        "share of split keys held apart to train the offline global model (global_source=holdout)",
        default=0.3,
    )
    min_share_gap: float = _help(
        "goqa: two options form a pair when their shares differ by at least this", default=0.10
    )
    country_field: str = _help(
        "prism: survey field naming the group (reside_country or birth_country)",
        default="reside_country",
    )
    synthetic_preset: str = _help(
        "synthetic: default, no-outliers (control), no-deviation (control) or tiny",
        default="default",
    )
    synthetic_seed: int = _help("synthetic: seed of the generator", default=0)

    def __post_init__(self) -> None:
        if self.dataset not in ("synthetic", "goqa", "prism", "pairs", "ratings"):
            raise ConfigError(f"--dataset must be synthetic, goqa, prism, pairs or ratings, got {self.dataset!r}")
        self.groups = _group_names(self.groups, "--groups")
        self.population_groups = _group_names(self.population_groups, "--population-groups")
        if not isinstance(self.data_split, str) or not self.data_split.strip():
            raise ConfigError(f"--data-split must name a split, got {self.data_split!r}")
        for name in ("group_value", "group_column"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"--{name.replace('_', '-')} must be a non-empty text, got {v!r}")
        if self.group_value is not None:
            self.group_value = _group_names([self.group_value], "--group-value")[0]
        if self.group_value is not None and (self.group_column or "group" in self.columns):
            raise ConfigError("--group-value (every row one group) and --group-column / --columns group=... exclude "
                              "each other")
        if self.group_column and self.columns.get("group", self.group_column) != self.group_column:
            raise ConfigError(f"--group-column {self.group_column!r} contradicts --columns group={self.columns['group']}")
        if self.dataset not in ("pairs", "ratings"):
            given = [f"--{n.replace('_', '-')}" for n in ("group_value", "group_column", "population_groups")
                     if getattr(self, n)]
            if given:
                raise ConfigError(f"{', '.join(given)}: only for --dataset pairs or ratings, not {self.dataset!r}")
        if self.test_fraction is not None and not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.global_fraction < 1.0:
            raise ConfigError(f"--global-fraction must be in [0, 1), got {self.global_fraction}")
        if self.global_source not in ("auto", "holdout", "pooled", "none"):
            raise ConfigError(
                f"--global-source must be auto, holdout, pooled or none, got {self.global_source!r}"
            )
        if not 0.0 <= self.min_share_gap < 1.0:
            raise ConfigError(f"--min-share-gap must be in [0, 1), got {self.min_share_gap}")
        for name in ("split_seed", "synthetic_seed"):  # numpy's generators take no negative seed
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 0, got {short(v)}")
        if self.synthetic_preset not in SYNTHETIC_PRESETS:
            raise ConfigError(f"--synthetic-preset must be one of {', '.join(SYNTHETIC_PRESETS)}, "
                              f"got {short(self.synthetic_preset)}")


SYNTHETIC_PRESETS = ("default", "no-outliers", "no-deviation", "tiny")
"""The presets of :data:`scpo.load.synthetic.PRESETS` (config sits below the loaders; a test keeps them equal)."""

_NULL_WORDS = ("none", "null", "~")


def _group_names(names: list[Any] | None, flag: str) -> list[str] | None:
    """Group names as texts, NFC-normalised; a null (YAML ``null``, Python ``None``, the word ``null``) is an error."""
    if names is None:
        return None
    out = []
    for n in names:
        if n is None or (isinstance(n, str) and n.strip().casefold() in _NULL_WORDS):
            raise ConfigError(f"{flag}: a group name is null ({n!r}); give group names as text (a group that the "
                              "data really calls 'null' or 'None' cannot be requested by that name)")
        if not isinstance(n, str) or not n.strip():
            raise ConfigError(f"{flag}: group names must be non-empty texts, got {n!r}")
        out.append(unicodedata.normalize("NFC", n.strip()))
    return out


@dataclass
class ModelConfig:
    """The global reward model and how texts are fed to it."""

    global_model: str = _help(
        "'packaged' (all-MiniLM-L6-v2 with a reward head trained on the population's pairs) "
        "or a Hub id / local path of a sequence-classification reward model",
        default=PACKAGED_MODEL,
    )
    input_format: str = _help(
        "auto, text-pair (encoder reward models) or chat (chat-template reward models)",
        default="auto",
    )
    max_length: int = _help("maximum tokens per (prompt, response); truncation keeps the response", default=256)
    score_batch_size: int = _help(
        "texts per forward pass when scoring; 0 = auto: 16 on a CPU (a batch's activations stay in cache: "
        "1.16x faster than 64 for the packaged encoder here), 64 on a GPU",
        default=0,
    )
    cache_dir: str = _help("on-disk cache of scores and features", default=".scpo_cache")
    torch_dtype: str = _help("float32, bfloat16 or float16", default="float32")
    device: str = _help(
        "where the global model scores: auto (cuda:LOCAL_RANK on a GPU machine, else MPS/XPU, else cpu) "
        "or a torch device such as cpu, cuda, cuda:1",
        default="auto",
    )

    def __post_init__(self) -> None:
        if self.input_format not in ("auto", "text-pair", "chat"):
            raise ConfigError(f"--input-format must be auto, text-pair or chat, got {self.input_format!r}")
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be >= 8, got {self.max_length}")
        if self.score_batch_size < 0:
            raise ConfigError(f"--score-batch-size must be >= 1, or 0 for auto, got {self.score_batch_size}")
        if self.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"--torch-dtype must be float32, bfloat16 or float16, got {self.torch_dtype!r}")
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu|npu)(:\d+)?", self.device):
            raise ConfigError(f"--device must be auto or a torch device (cpu, cuda, cuda:1, mps, xpu), got {self.device!r}")


@dataclass
class SelectConfig:
    """The SCPO filter and weight."""

    tau: float = _help("filter: keep a pair where sigmoid(delta) < tau; 1 turns it off", default=0.7)
    beta: float = _help("weight: w = min(exp(delta/beta), 1); inf turns it off", default=1.1)

    def __post_init__(self) -> None:
        try:
            self.tau = validate_tau(self.tau)
            self.beta = validate_beta(self.beta)
        except ValueError as e:
            raise ConfigError(f"--{str(e)}") from None


@dataclass
class TrainConfig:
    """How each group's model is trained and which methods are compared."""

    mode: str = _help(
        "head (frozen encoder, train the score layer on cached features; fast on CPU), "
        "full (full fine-tuning with the transformers Trainer) or lora (PEFT LoRA)",
        default="head",
    )
    methods: list[str] = _help(
        "methods to compare: " + ", ".join(METHODS),
        default_factory=lambda: ["global", "full", "scpo"],
    )
    seeds: list[int] = _help("training seeds; every number is reported as mean and std over them", default_factory=lambda: [0])
    learning_rates: list[float] = _help(
        "learning-rate grid, chosen per method and group on validation folds",
        default_factory=lambda: [1e-3, 3e-3, 1e-2],
    )
    steps: list[int] = _help("training-steps grid", default_factory=lambda: [50, 150, 400])
    pulls: list[float] = _help(
        "grid of the L2 pull towards the global model's parameters", default_factory=lambda: [0.0, 1.0]
    )
    batch_size: int = _help("pairs per optimisation step (global batch)", default=32)
    val_folds: int = _help(
        "validation folds carved from each group's training split keys for the grid search "
        "(1 = no search: the first value of every grid)",
        default=3,
    )
    head_solver: str = _help(
        "head mode's optimiser: newton (every score layer, the global one included, solved to convergence, "
        "the pull chosen from --head-pulls on the validation folds) or adam (the earlier mini-batch Adam over "
        "the --learning-rates x --steps x --pulls grid, which stops short of the optimum; kept for comparison)",
        default="newton",
    )
    head_pulls: list[float] = _help(
        "newton head solver: grid of the pull towards the global layer (standardised features; 0 = no pull)",
        default_factory=lambda: [100.0, 10.0, 1.0, 0.1, 0.01, 0.001, 0.0001, 0.0],
    )
    head_criterion: str = _help(
        "newton head solver: how the validation folds choose the pull: log_loss (lowest mean validation "
        "Bradley-Terry log-loss) or accuracy (highest mean validation accuracy); ties go to the larger pull",
        default="log_loss",
    )
    head_layers: str = _help(
        "head mode's trained layers: score (the score layer alone, on its cached inputs) or pooler (the pooler's "
        "dense layer and the score layer of encoder reward models with a pooler, BERT/RoBERTa/DeBERTa-v2, on "
        "cached first-token states; non-convex, Adam from the global model's values)",
        default="score",
    )
    global_learning_rate: float = _help("learning rate of the offline global model's head", default=3e-3)
    global_steps: int = _help("training steps of the offline global model's head", default=1500)
    def __post_init__(self) -> None:
        if self.mode not in ("head", "full", "lora"):
            raise ConfigError(f"--mode must be head, full or lora, got {self.mode!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"--methods: unknown method(s) {bad}; known: {', '.join(METHODS)}")
        if not self.methods:
            raise ConfigError("--methods must name at least one method")
        for name in ("learning_rates", "steps", "pulls", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} must not be empty")
        if any(lr <= 0 or not math.isfinite(lr) for lr in self.learning_rates):
            raise ConfigError(f"--learning-rates must be finite and > 0, got {short(self.learning_rates)}")
        if any(s < 0 for s in self.steps):
            raise ConfigError(f"--steps must be >= 0, got {short(self.steps)}")
        if self.head_solver not in ("adam", "newton"):
            raise ConfigError(f"--head-solver must be adam or newton, got {self.head_solver!r}")
        if not self.head_pulls or any(not 0 <= p < math.inf for p in self.head_pulls):
            raise ConfigError(f"--head-pulls must be finite values >= 0, got {short(self.head_pulls)}")
        if self.head_criterion not in ("log_loss", "accuracy"):
            raise ConfigError(f"--head-criterion must be log_loss or accuracy, got {self.head_criterion!r}")
        if self.head_layers not in ("score", "pooler"):
            raise ConfigError(f"--head-layers must be score or pooler, got {short(self.head_layers)}")
        if self.head_layers == "pooler" and self.mode != "head":
            raise ConfigError(f"--head-layers pooler trains head mode's layers only (--mode head), not --mode {self.mode}")
        if any(not 0 <= p < math.inf for p in self.pulls):
            raise ConfigError(f"--pulls must be finite and >= 0, got {short(self.pulls)}")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds must be >= 0, got {short(self.seeds)}")
        if not 0 < self.global_learning_rate < math.inf:
            raise ConfigError(f"--global-learning-rate must be finite and > 0, got {self.global_learning_rate}")
        if self.global_steps < 1:
            raise ConfigError(f"--global-steps must be >= 1, got {self.global_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.val_folds < 1:
            raise ConfigError(f"--val-folds must be >= 1, got {self.val_folds}")


@dataclass
class TrainerConfig:
    """The transformers Trainer's settings for full and LoRA mode (passed through; head mode ignores all but
    ``report_to``)."""

    weight_decay: float = _help("Trainer: weight decay", default=0.0)
    warmup_ratio: float = _help("Trainer: warm-up share of steps", default=0.0)
    gradient_accumulation_steps: int = _help("Trainer: gradient accumulation steps", default=1)
    gradient_checkpointing: bool = _help("Trainer: gradient checkpointing", default=False)
    bf16: bool = _help("Trainer: bf16 mixed precision", default=False)
    deepspeed: str | None = _help("Trainer: DeepSpeed config file", default=None)
    report_to: str = _help(
        "trackers to report training to, in every mode (full/LoRA: the Trainer's report_to; head: accelerate's "
        "trackers): none, all, or names such as tensorboard,wandb; TensorBoard writes RUN_DIR/tensorboard/",
        default="none",
    )
    group_by_length: bool = _help("Trainer: length-grouped batches", default=True)
    disable_dropout: bool = _help(
        "Trainer: set every dropout probability of the trained model to 0 (LoRA's too), as TRL's DPO and "
        "reward trainers do by default; runs are then the same on 1 and N processes",
        default=True,
    )
    dataloader_num_workers: int = _help("Trainer: data loader workers", default=0)
    save_steps: int = _help("Trainer: checkpoint every this many steps (resume after an interruption); 0 = never", default=200)
    lora_r: int = _help("LoRA rank", default=8)
    lora_alpha: int = _help("LoRA alpha", default=16)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    lora_target_modules: list[str] | None = _help(
        "LoRA target modules (default: PEFT's choice for the architecture)", default=None
    )

    def __post_init__(self) -> None:
        checks = [
            ("weight-decay", 0 <= self.weight_decay < math.inf, "finite and >= 0", self.weight_decay),
            ("warmup-ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)", self.warmup_ratio),
            ("gradient-accumulation-steps", self.gradient_accumulation_steps >= 1, ">= 1", self.gradient_accumulation_steps),
            ("dataloader-num-workers", self.dataloader_num_workers >= 0, ">= 0", self.dataloader_num_workers),
            ("save-steps", self.save_steps >= 0, ">= 0 (0 = never)", self.save_steps),
            ("lora-r", self.lora_r >= 1, ">= 1", self.lora_r),
            ("lora-alpha", self.lora_alpha >= 1, ">= 1", self.lora_alpha),
            ("lora-dropout", 0 <= self.lora_dropout < 1, "in [0, 1)", self.lora_dropout),
        ]
        for flag, ok, want, got in checks:
            if not ok:
                raise ConfigError(f"--{flag} must be {want}, got {got}")


@dataclass
class StudyConfig:
    """Studies on top of the main comparison: more split seeds, learning curves, the tau x beta sweep."""

    split_seeds: list[int] = _help(
        "re-split and re-train with each of these split seeds, so CIs cover split variance "
        "(empty: the single split --split-seed)",
        default_factory=list,
    )
    curve_fractions: list[float] = _help(
        "learning curves: fractions of each group's training pairs, e.g. 0.1,0.25,0.5,0.75,1 (empty: no curves)",
        default_factory=list,
    )
    curve_methods: list[str] = _help("methods trained for the learning curves", default_factory=lambda: ["full", "scpo"])
    sweep_taus: list[float] = _help("tau values of a tau x beta sweep of SCPO (empty: no sweep)", default_factory=list)
    sweep_betas: list[float] = _help("beta values of a tau x beta sweep of SCPO (empty: no sweep)", default_factory=list)
    downstream_n: list[int] = _help(
        "downstream best-of-N study: the N candidates per prompt, e.g. 4,16,64 (synthetic: new candidates scored "
        "by every group model against the true utility; goqa: each test question's options against the country's "
        "answer shares; empty: no study)",
        default_factory=list,
    )
    downstream_prompts: int = _help("downstream study: synthetic prompts to draw candidates for (0: every "
                                    "benchmark prompt)", default=0)
    downstream_candidates: str | None = _help(
        "downstream study on your own candidates: a JSONL/JSON/Parquet file, one record per prompt "
        "{prompt, candidates: [texts], choices: {group: [count or share per candidate]}} (held-out human "
        "choices); each group model's first-ranked candidate is scored by the share of the group that chose it",
        default=None,
    )


    def __post_init__(self) -> None:
        if any(s < 0 for s in self.split_seeds):
            raise ConfigError(f"--split-seeds must be >= 0, got {short(self.split_seeds)}")
        if any(not 0.0 < f <= 1.0 for f in self.curve_fractions):
            raise ConfigError(f"--curve-fractions must be in (0, 1], got {self.curve_fractions}")
        bad = [m for m in self.curve_methods if m not in METHODS or m == "global"]
        if bad:
            raise ConfigError(f"--curve-methods: not trainable method(s) {bad}")
        if any(n < 1 for n in self.downstream_n) or self.downstream_prompts < 0:
            raise ConfigError(f"--downstream-n must be >= 1 and --downstream-prompts >= 0, got "
                              f"{short(self.downstream_n)} and {self.downstream_prompts}")
        try:
            self.sweep_taus = [validate_tau(t) for t in self.sweep_taus]
            self.sweep_betas = [validate_beta(b) for b in self.sweep_betas]
        except ValueError as e:
            raise ConfigError(f"--sweep-{str(e)}") from None


@dataclass
class OutputConfig:
    """Where results go."""

    output_dir: str = _help("run directory (results, report, models)", default="runs/default")
    save_models: bool = _help("save each group's trained model in the run directory", default=True)
    plots: bool = _help("write PNG plots next to the report", default=True)
    n_boot: int = _help("bootstrap replicates of every confidence interval and paired test", default=2000)

    def __post_init__(self) -> None:
        if self.n_boot < 10:
            raise ConfigError(f"--n-boot must be >= 10, got {self.n_boot}")
        if not self.output_dir.strip():
            raise ConfigError("--output-dir must name a directory, got an empty string")


@dataclass
class RunConfig:
    """Everything one ``scpo run`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    studies: StudyConfig = field(default_factory=StudyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if (self.studies.sweep_taus or self.studies.sweep_betas) and self.train.mode != "head":
            raise ConfigError("the tau x beta sweep runs in head mode only (--mode head)")

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        d = self.to_dict()
        # YAML has no inf literal that yaml.safe_load reads back as float unless written .inf
        return yaml.safe_dump(d, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> RunConfig:
        """A config from nested sections (missing sections and keys take their defaults)."""
        return layered((source, sections_only(d, source)), base=None)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        return layered((str(path), read_yaml(path)), base=None)

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with flat field overrides (``tau=0.6``, ``mode='full'``) applied and validated."""
        return layered(("overrides", overrides), base=self)


MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused: configs are a page of settings."""


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter: no aliases (a 430-byte alias "bomb" expands to gigabytes) and no
    duplicate keys (the second ``train:`` section would silently replace the first)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed in a config")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: duplicate key {str(key)[:80]!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in a YAML config file (:class:`~scpo.errors.ConfigError` when unreadable,
    larger than :data:`MAX_CONFIG_BYTES`, or using aliases or duplicate keys)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"cannot read config {path}: {len(data):,} bytes, more than a config's 1 MiB")
        d = yaml.load(data.decode("utf-8"), Loader=_ConfigLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"cannot read config {path}: {e}".splitlines()[0][:300]) from None
    return sections_only(d, str(path))


def sections_only(d: Any, source: str) -> Mapping[str, Any]:
    """``d`` itself, checked to be a mapping of section names (YAML files and ``from_dict`` are nested)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
    unknown = [k for k in d if k not in _SECTION_CLASSES]
    if unknown:
        raise ConfigError(f"{source}: unknown section {str(unknown[0])[:80]!r}; known: {', '.join(_SECTION_CLASSES)}")
    return d


def layered(*layers: tuple[str, Mapping[str, Any] | None], base: RunConfig | None = None) -> RunConfig:
    """The one config layering: ``base`` (default: the built-in defaults), then each ``(source, layer)``.

    A layer is nested by section (``{"select": {"tau": 0.6}}``, as YAML files are) or flat
    (``{"tau": 0.6}``, as flags and :meth:`RunConfig.replace` are); later layers win. Each value is
    parsed where it enters and an error names its source and key.
    """
    values: dict[str, dict[str, Any]] = base.to_dict() if base is not None else {s: {} for s in _SECTION_CLASSES}
    for source, layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(layer).__name__}")
        for key, value in layer.items():
            if key in _SECTION_CLASSES:
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{source}: section {key!r} must be a mapping")
                for k, v in value.items():
                    sec = _section_of(key, k, source)
                    values[sec][k] = _coerce(v, _FIELDS[sec][k], f"{source}: {sec}.{k}")
            elif key in FIELD_SECTION:
                sec = FIELD_SECTION[key]
                values[sec][key] = _coerce(value, _FIELDS[sec][key], f"{source}: {key}")
            else:
                raise ConfigError(f"{source}: unknown section or option {key!r}; sections: {', '.join(_SECTION_CLASSES)}")
    return RunConfig(**{sec: cls_(**values[sec]) for sec, cls_ in _SECTION_CLASSES.items()})


def _section_of(section: str, key: str, source: str) -> str:
    """The section a key of ``section`` belongs to (keys that moved out of ``train`` are read from there)."""
    if key in _FIELDS[section]:
        return section
    moved = FIELD_SECTION.get(key)
    if section == "train" and moved in ("trainer", "studies"):
        log.info("%s: train.%s is now %s.%s (read from its old place)", source, key, moved, key)
        return moved
    raise ConfigError(f"{source}: unknown key {section}.{key}; known: {', '.join(_FIELDS[section])}")


_SECTION_CLASSES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "select": SelectConfig,
    "train": TrainConfig,
    "trainer": TrainerConfig,
    "studies": StudyConfig,
    "output": OutputConfig,
}

FIELD_SECTION: dict[str, str] = {
    f.name: sec for sec, c in _SECTION_CLASSES.items() for f in dataclasses.fields(c)
}
"""Flat option name -> section name."""

_FIELDS: dict[str, dict[str, dataclasses.Field]] = {
    sec: {f.name: f for f in dataclasses.fields(c)} for sec, c in _SECTION_CLASSES.items()
}

SECTION_CLASSES: Mapping[str, type] = _SECTION_CLASSES
"""Section name -> its dataclass, in the order of :class:`RunConfig`."""

log = logging.getLogger("scpo")


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message never echoes a huge value whole."""
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) < 1000 else f"<{type(value).__name__} of {len(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    if isinstance(tp, str):
        tp = eval(tp, {**vars(typing), "list": list, "dict": dict})  # annotations are ours
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(value: Any, f: dataclasses.Field, where: str) -> Any:
    tp, optional = _base_type(f.type)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must not be empty")
    try:
        return _parse_value(value, tp)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{where}: {str(e)[:300]}") from None


def _parse_scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {short(value)}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {short(value)}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {short(value)}")
        out = float(value)
        if math.isnan(out):  # NaN is never a setting: every comparison with it is false
            raise ValueError("expected a number, got NaN")
        return out
    if tp is str:
        if value is None:
            raise ValueError("a null where a text is expected")
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {short(value)}")
        return str(value)
    return value


def _parse_value(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_parse_scalar(v, item) for v in value]
    if origin is dict:
        if isinstance(value, str):
            out = {}
            for part in value.split(","):
                if not part.strip():
                    continue
                if "=" not in part:
                    raise ValueError(f"expected key=value pairs, got {short(part)}")
                k, v = part.split("=", 1)
                out[k.strip()] = v.strip()
            return out
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {short(value)}")
        return {str(k): str(v) for k, v in value.items()}
    return _parse_scalar(value, tp)
