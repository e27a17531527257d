"""The engine-efficiency table that calibrates the virtual clock."""

from __future__ import annotations

import pytest

from device_profiles import FAMILIES, ProfileError, efficiency, get_profile
from device_profiles.efficiency import efficiencies


def test_shipped_table_covers_the_measured_families():
    table = efficiencies()
    assert {"mlp", "cnn", "rnn"} <= set(table) <= set(FAMILIES)
    assert all(0 < value <= 1 for value in table.values())


def test_compute_seconds_divides_by_gemm_speed_times_efficiency():
    profile = get_profile("rpi-zero-2w")
    flops = 3.7e9
    assert profile.compute_seconds(flops) == pytest.approx(flops / (0.74e9))
    expected = flops / (0.74e9 * efficiencies()["cnn"])
    assert profile.compute_seconds(flops, "cnn") == pytest.approx(expected)
    assert profile.compute_seconds(flops, "cnn") > profile.compute_seconds(flops)


def test_an_unmeasured_family_is_timed_as_mlp_and_an_unknown_one_refused():
    if "transformer" not in efficiencies():
        assert efficiency("transformer") == efficiencies()["mlp"]
    assert efficiency(None) == 1.0
    with pytest.raises(ProfileError, match="unknown model family 'gan'"):
        efficiency("gan")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[efficiency]\ngan = 0.5\n", "efficiency.gan: unknown family"),
        ("[efficiency]\nmlp = 0\n", "efficiency.mlp: must be a number in (0, 1]"),
        ("[efficiency]\nmlp = 1.5\n", "efficiency.mlp: must be a number in (0, 1]"),
        ("[efficiency]\nmlp = true\n", "efficiency.mlp: must be a number in (0, 1]"),
        ("[measured]\nx = 1\n", "efficiency: missing table"),
        ("[efficiency\n", "invalid TOML"),
    ],
)
def test_bad_tables_are_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "efficiency.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as caught:
        efficiencies(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
