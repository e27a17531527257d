import json

from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_profiles_list_and_show():
    listed = runner.invoke(app, ["profiles", "list", "--json"])
    assert listed.exit_code == 0
    names = [p["name"] for p in json.loads(listed.stdout)]
    assert len(names) >= 12 and "rpi-zero-2w" in names
    table = runner.invoke(app, ["profiles", "list"])
    assert "jetson-nano" in table.stdout
    shown = runner.invoke(app, ["profiles", "show", "jetson-nano"])
    assert shown.exit_code == 0 and "source.compute" in shown.stdout


def test_unknown_profile_is_one_line_exit_2():
    result = runner.invoke(app, ["profiles", "show", "nokia-3310"])
    assert result.exit_code == 2
    assert "unknown device 'nokia-3310'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_detect_json():
    result = runner.invoke(app, ["profiles", "detect", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["name"] == "this-machine"
