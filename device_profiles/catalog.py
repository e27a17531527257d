"""The shipped catalog of device classes (``device_profiles/catalog/*.toml``)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from device_profiles.profile import DeviceProfile, ProfileError, load_profile_file


@cache
def catalog() -> dict[str, DeviceProfile]:
    """All shipped profiles by name (read and checked once per process)."""
    profiles: dict[str, DeviceProfile] = {}
    folder = resources.files("device_profiles") / "catalog"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            with resources.as_file(entry) as path:
                profile = load_profile_file(path)
            if profile.name != entry.name.removesuffix(".toml"):
                raise ProfileError(f"{entry.name}: name: {profile.name!r} does not match the file")
            profiles[profile.name] = profile
    return profiles


def get_profile(name: str) -> DeviceProfile:
    """One profile by name; an unknown name lists the known ones."""
    profiles = catalog()
    if name not in profiles:
        raise ProfileError(f"unknown device {name!r}; known: {', '.join(profiles)}")
    return profiles[name]
