import argparse
import subprocess
import sys

import pytest

from medfm.cli.main import build_parser, main

SUBCOMMANDS = [
    "demo",
    "synthetic",
    "ingest",
    "deidentify",
    "curate",
    "shard",
    "pretrain",
    "evaluate",
    "robustness",
    "register",
    "export",
    "sync",
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_has_help():
    subs = _subparsers(build_parser())
    assert sorted(subs) == sorted(SUBCOMMANDS)
    for name, sub in subs.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.dest} lacks help"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_exits_zero_and_explains(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: medfm {command}")


def test_console_script_top_level_help():
    result = subprocess.run(
        [sys.executable, "-m", "medfm", "--help"], capture_output=True, text=True, check=True
    )
    for command in SUBCOMMANDS:
        assert command in result.stdout


def test_overrides_may_follow_options_and_unknown_options_fail(tmp_path, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        main(["curate", "m.csv", "--out", str(tmp_path), "--bogus", "a=1"])
    assert exit_info.value.code == 2 and "--bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sync", str(tmp_path), "a=1"])  # sync takes no overrides
    args, extra = parser.parse_known_args(["curate", "m.csv", "--out", "o", "seed=3"])
    assert args.overrides == [] and extra == ["seed=3"]  # what main() appends
    assert main(["curate", "missing.csv", "--out", str(tmp_path), "seed=3"]) == 2
    assert "missing.csv not found" in capsys.readouterr().err


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["pretrain", "trian.lr=3", f"out_dir={tmp_path}"]) == 2
    assert "Did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["pretrain", f"out_dir={tmp_path}", "tracking.enabled=false"]) == 2
    assert "data.manifest is not set" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--encoder",
                str(tmp_path),
                "--data",
                "x.csv",
                "--out",
                str(tmp_path / "o"),
                "--no-tracking",
            ]
        )
        == 2
    )
    assert "No encoder artifact" in capsys.readouterr().err


def test_evaluate_heads_default_is_the_config_default_and_help_lists_the_registry():
    from medfm.cli.evaluate_cmd import _evaluate_config
    from medfm.config import DEFAULTS
    from medfm.heads.registry import HEADS

    base = ["evaluate", "--encoder", "enc", "--data", "d.csv", "--out", "o", "--no-tracking"]
    cfg, _ = _evaluate_config(build_parser().parse_args(base))
    assert list(cfg.eval.heads) == DEFAULTS["eval"]["heads"]
    cfg, _ = _evaluate_config(build_parser().parse_args([*base, "--heads", "gda,mlp"]))
    assert list(cfg.eval.heads) == ["gda", "mlp"]
    text = " ".join(_subparsers(build_parser())["evaluate"].format_help().split())
    assert f"eval.heads of the config, {','.join(DEFAULTS['eval']['heads'])}" in text
    assert all(name in text for name in HEADS.names())


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["robustness", "--help"]])
def test_help_imports_no_torch(argv):
    """``medfm --help`` must stay fast: a fresh interpreter prints it without loading torch,
    and ``import medfm`` exposes the public API without loading it either."""
    code = (
        "import sys, contextlib, io\n"
        "import medfm\n"
        "from medfm.cli.main import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    main({argv!r})\n"
        "assert 'usage: medfm' in out.getvalue()\n"
        "assert callable(medfm.evaluate) and callable(medfm.audit)\n"
        "print(sorted(m for m in ('torch', 'monai', 'mlflow', 'timm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
