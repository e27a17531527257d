import tomllib
from pathlib import Path

import pytest

from device_profiles import DeviceProfile, ProfileError, catalog, detect, get_profile
from device_profiles.profile import load_profile_file, parse_profile

CATALOG = Path(__file__).resolve().parents[2] / "device_profiles" / "catalog"


def base() -> dict:
    return tomllib.loads((CATALOG / "rpi-4-4gb.toml").read_text())


def test_catalog_has_at_least_twelve_checked_profiles_with_sources():
    profiles = catalog()
    assert len(profiles) >= 12
    for name, p in profiles.items():
        assert p.name == name
        assert all(getattr(p.source, f) for f in ("spec", "compute", "network", "power"))
    kinds = {p.kind for p in profiles.values()}
    assert {"phone", "sbc", "jetson"} <= kinds
    phones = [p for p in profiles.values() if p.kind == "phone"]
    assert all(p.battery_powered for p in phones)


def test_derived_quantities():
    pi = get_profile("rpi-4-4gb")
    assert pi.memory_budget_bytes == int(4 * 0.8 * 2**30)
    assert pi.compute_seconds(23.8e9) == pytest.approx(1.0)
    # 1 MB up at 100 Mbit/s + 2 MB down at 200 Mbit/s = 0.08 s + 0.08 s
    assert pi.transfer_seconds(1e6, 2e6) == pytest.approx(0.16)
    assert pi.energy_joules(10) == pytest.approx(72.0)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("uplink_mbps", -5.0, "uplink_mbps"),
        ("app_memory_share", 1.5, "app_memory_share"),
        ("ram_gib", "lots", "ram_gib"),
        ("kind", "toaster", "kind"),
        ("colour", "red", "colour"),
        ("cpu_cores", 0, "cpu_cores"),
    ],
)
def test_impossible_numbers_name_the_field(field, value, needle):
    data = base()
    data[field] = value
    with pytest.raises(ProfileError, match=needle) as info:
        parse_profile(data, "x.toml")
    assert "\n" not in str(info.value) and str(info.value).startswith("x.toml: ")


def test_missing_source_is_an_error():
    data = base()
    del data["source"]["compute"]
    with pytest.raises(ProfileError, match="source.compute"):
        parse_profile(data, "x.toml")


def test_unknown_device_lists_known_ones():
    with pytest.raises(ProfileError, match="rpi-5-8gb"):
        get_profile("nokia-3310")


def test_bad_files(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        load_profile_file(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ProfileError, match="invalid TOML"):
        load_profile_file(broken)


def test_detect_describes_this_machine():
    profile = detect(measure=False)
    assert isinstance(profile, DeviceProfile)
    assert profile.cpu_cores >= 1 and profile.ram_gib > 0.1
    measured = detect()
    assert measured.sustained_gflops > 0.1
