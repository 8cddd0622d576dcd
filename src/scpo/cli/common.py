"""What the subcommands share: config flags generated from the config dataclasses, quiet libraries.

Flags follow the conventions of transformers' ``HfArgumentParser`` and accelerate:

* a boolean field is a bare flag with its negation (``--bf16``, ``--no-bf16``, ``--no-plots``);
  ``--bf16 true`` / ``--plots false`` still work, as before;
* a list field takes its values space or comma separated (``--seeds 0 1 2`` = ``--seeds 0,1,2``);
* no abbreviations (``allow_abbrev=False`` on every parser): ``--learning-rate`` is an error, not
  ``--learning-rates``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..config import FIELD_SECTION, SECTION_CLASSES, RunConfig, layered, read_yaml

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
"""(help, add_arguments, handler) of one subcommand."""


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class BoolFlag(argparse.Action):
    """``--name`` (true), ``--no-name`` (false) and, kept from before, ``--name true|false``.

    Like :class:`argparse.BooleanOptionalAction`, plus an optional value after the positive form.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        (positive,) = option_strings
        negative = "--no-" + positive[2:]
        super().__init__([positive, negative], dest, nargs="?", metavar="{true,false}", **kwargs)
        self.negative = negative

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if option_string == self.negative:
            if values is not None:
                parser.error(f"argument {self.negative}: takes no value (got {values!r}); "
                             f"write {self.negative} or {self.option_strings[0]} false")
            setattr(namespace, self.dest, False)
            return
        if values is None:
            setattr(namespace, self.dest, True)
            return
        word = str(values).strip().lower()
        if word not in _TRUE + _FALSE:
            parser.error(f"argument {option_string}: expected no value, true or false, got {values!r}")
        setattr(namespace, self.dest, word in _TRUE)

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class ListFlag(argparse.Action):
    """A list field: values space and/or comma separated (``--seeds 0 1 2``, ``--seeds 0,1,2``);
    ``--split-seeds ""`` is the empty list. Items are parsed and checked by the config. With ``extend``
    (the group-name lists, :data:`NAME_FLAGS`) a repeated flag, or the singular one, adds to the list."""

    def __init__(self, option_strings: Sequence[str], dest: str, extend: bool = False, **kwargs: Any) -> None:
        self.extend = extend
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = [v.strip() for text in values for v in str(text).split(",") if v.strip()]
        before = (getattr(namespace, self.dest, None) or []) if self.extend else []
        setattr(namespace, self.dest, [*before, *items])


class AppendName(argparse.Action):
    """``--group NAME`` / ``--population-group NAME``: one whole group name (commas and spaces kept),
    repeatable; adds to the list that ``--groups`` / ``--population-groups`` give."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=None, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), str(values)])


NAME_FLAGS = {"groups": "--group", "population_groups": "--population-group"}
"""List fields of group names that also have a singular, repeatable flag taking one whole name."""


def _kind(f: dataclasses.Field) -> str:
    """``bool``, ``list`` or ``value``: how the flag of config field ``f`` takes its argument."""
    tp = f.type
    if isinstance(tp, str):
        tp = eval(tp, {**vars(typing), "list": list, "dict": dict})  # noqa: S307 - annotations are ours
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if tp is bool:
        return "bool"
    return "list" if typing.get_origin(tp) is list else "value"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per config field (``--tau``, ``--global-model``...), default unset:
    booleans bare (``--bf16``/``--no-bf16``), lists space or comma separated."""
    parser.add_argument("--config", metavar="YAML", help="config file; flags given on the command line override it")
    for sec, c in SECTION_CLASSES.items():
        group = parser.add_argument_group(f"{sec} options ({c.__doc__.strip().splitlines()[0]})")
        defaults = c()
        for f in dataclasses.fields(c):
            default = getattr(defaults, f.name)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            flag, kind, text = "--" + f.name.replace("_", "-"), _kind(f), f.metadata.get("help", "")
            if kind == "bool":
                group.add_argument(flag, dest=f.name, default=None, action=BoolFlag,
                                   help=f"{text} (default: {'on' if default else 'off'})")
            elif kind == "list":
                group.add_argument(flag, dest=f.name, default=None, action=ListFlag, metavar=f.name.upper(),
                                   extend=f.name in NAME_FLAGS, help=f"{text}; space or comma separated (default: {shown})")
                if f.name in NAME_FLAGS:
                    group.add_argument(NAME_FLAGS[f.name], dest=f.name, default=None, action=AppendName, metavar="NAME",
                                       help=f"one name for {flag}, taken whole (a name with a comma or a space); "
                                            "repeatable, adds to the list")
            else:
                group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                                   help=f"{text} (default: {shown})")


def config_from_args(args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> RunConfig:
    """The resolved config (:func:`scpo.config.layered`): built-in defaults, then ``defaults`` (a
    command's own), then the ``--config`` YAML, then the flags given."""
    flags = {k: getattr(args, k) for k in FIELD_SECTION if getattr(args, k, None) is not None}
    yaml_layer = (args.config, read_yaml(args.config)) if getattr(args, "config", None) else ("config", None)
    return layered(("command defaults", defaults), yaml_layer, ("command line", flags))


def quiet_transformers() -> None:
    """No transformers progress bars or info logging (the CLI prints its own)."""
    from transformers.utils import logging as hf_logging  # start-up time: transformers loads only when needed

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def quiet_everything() -> None:
    """``--quiet``: nothing but the command's own output and errors. transformers, huggingface_hub and
    datasets lose their progress bars ("Loading weights", "Writing model shards") and their info and
    warning logging; scpo's own logging keeps warnings and errors only (its bars are off by ``progress=False``)."""
    quiet_transformers()
    import datasets
    import huggingface_hub.utils as hub_utils

    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.WARNING)  # every library logging through the root (matplotlib's font cache...)
    for name in ("scpo", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING)
