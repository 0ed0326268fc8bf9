"""Every command's --help runs and documents the exit codes where it should."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from migrator.cli import cli
from migrator.errors import EXIT_CODES


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output) > 200


def test_top_level_help_lists_every_exit_code():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for code, text in EXIT_CODES.items():
        assert f"{code:>3}  {text}" in result.output


def test_unknown_store_kind_is_a_usage_error(tmp_path):
    from migrator.cli import main

    with pytest.raises(SystemExit) as info:
        main(["plan", "--source", "cassandra=x://h", "--target", "cassandra=x://h",
              "-o", str(tmp_path / "p.yaml")])
    assert info.value.code == 2
