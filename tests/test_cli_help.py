"""Issue 13 item 13: every option's --help shows its default, names agree across subcommands,
and `sbnn train --help` lists the --set keys."""

from __future__ import annotations

import argparse
import re

import pytest

from sbnn import cli
from sbnn.pipeline.config import config_keys


def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_with_a_default_shows_it():
    for name, p in _subparsers().items():
        text = " ".join(p.format_help().split())
        for a in p._actions:
            if not a.option_strings or not cli._has_default(a):
                continue
            shown = f"default: {a.default}"
            assert shown in text, (name, a.option_strings, shown)



def test_no_option_says_default_twice():
    # the formatter appends "(default: X)"; a help text that also states it by hand printed
    # "(default 4) (default: 4)" for sbnn export --calib-batches
    twice = []
    for name, p in _subparsers().items():
        fmt = p._get_formatter()
        for a in p._actions:
            text = fmt._expand_help(a) if a.help else ""
            if len(re.findall(r"\bdefault\b", text, flags=re.I)) > 1:
                twice.append(f"sbnn {name} {'/'.join(a.option_strings) or a.dest}: {text}")
    assert not twice, "\n".join(twice)

def test_train_help_lists_every_set_key(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for key, _, _ in config_keys():
        assert f"  {key} " in out, key
    assert "--overwrite" in out


def test_names_agree_across_subcommands():
    p = cli.build_parser()
    conv = p.parse_args(["convert", "x.pt", "--ec", "0.1", "--domain", "ab", "--out", "o"])
    assert conv.ones == 0.1 and conv.domain == "learned" and conv.device == "auto"
    assert p.parse_args(["convert", "x.pt", "--ones", "0.2", "-o", "o"]).ones == 0.2  # old name
    for flag in ("-o", "--out", "--output"):
        assert p.parse_args(["export", "run", flag, "m.sbnn"]).output == "m.sbnn"
    assert p.parse_args(["evaluate", "run"]).device == "auto"


def test_readme_convert_examples_say_how_to_get_a_working_model():
    """Issue 13 item 14: a conversion without BatchNorm recalibration and fine-tuning is at
    chance; every README example either asks for both or says so next to it."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cmds = re.findall(r"^(sbnn convert .*?)(?<!\\)$", text.replace("\\\n", " "), flags=re.M)
    assert cmds
    for c in cmds:
        assert re.search(r"--bn-batches [1-9]", c) and re.search(r"--finetune-epochs [1-9]", c), c
    p = cli.build_parser()
    for c in cmds:  # and they parse
        p.parse_args(c.split("#")[0].split()[1:])
