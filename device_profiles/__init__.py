"""Device classes (phones, Raspberry Pi and Jetson boards) as checked data, and ``detect()``.

Imports nothing of fedcore's: a device or a simulation can read profiles on their own.
"""

from device_profiles.catalog import catalog, get_profile
from device_profiles.detect import detect, measure_gflops
from device_profiles.efficiency import FAMILIES, efficiency
from device_profiles.profile import KINDS, DeviceProfile, ProfileError, Sources, load_profile_file

__all__ = [
    "KINDS",
    "DeviceProfile",
    "FAMILIES",
    "ProfileError",
    "Sources",
    "catalog",
    "detect",
    "efficiency",
    "get_profile",
    "load_profile_file",
    "measure_gflops",
]
