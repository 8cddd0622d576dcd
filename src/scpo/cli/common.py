"""What the subcommands share: config flags generated from the config dataclasses, quiet libraries."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import FIELD_SECTION, SECTION_CLASSES, RunConfig, layered, read_yaml

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
"""(help, add_arguments, handler) of one subcommand."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per config field (``--tau``, ``--global-model``...), default unset."""
    parser.add_argument("--config", metavar="YAML", help="config file; flags given on the command line override it")
    for sec, c in SECTION_CLASSES.items():
        group = parser.add_argument_group(f"{sec} options ({c.__doc__.strip().splitlines()[0]})")
        defaults = c()
        for f in dataclasses.fields(c):
            default = getattr(defaults, f.name)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                metavar=f.name.upper(),
                help=f"{f.metadata.get('help', '')} (default: {shown})",
            )


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
