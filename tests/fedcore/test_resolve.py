"""fedcore.resolve: registered names, entry points, package.module:name and schemes."""

from __future__ import annotations

import pytest

from fedcore.resolve import Registry, ResolveError, is_reference, register_scheme


def test_registered_names_are_seen_after_creation():
    registry: Registry[int] = Registry("fedcore.test-things", "thing")
    assert registry.names() == ()
    registry.register("one", 1)
    assert registry.get("one") == 1 and "one" in registry and list(registry) == ["one"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register("one", 2)
    with pytest.raises(ValueError, match="invalid"):
        registry.register("a.b:c", 3)


def test_reference_from_a_package_on_sys_path(user_code):
    user_code("mypkg", {"things": "VALUE = 41\nclass K:\n    ATTR = 'x'\n"})
    registry: Registry[int] = Registry("fedcore.test-things", "thing")
    assert registry.get("mypkg.things:VALUE") == 41
    assert registry.get("mypkg.things:K.ATTR") == "x"
    with pytest.raises(ResolveError, match="importing code by reference is not allowed"):
        registry.get("mypkg.things:VALUE", allow_import=False)


def test_entry_point_of_an_installed_distribution(user_code):
    registry: Registry[int] = Registry("fedcore.test-things", "thing")
    assert "answer" not in registry
    user_code("eppkg", {"things": "VALUE = 42\n"},
              entry_points={"fedcore.test-things": {"answer": "eppkg.things:VALUE"}})
    assert "answer" in registry and registry.names() == ("answer",)
    assert registry.get("answer", allow_import=False) == 42  # installed: no import by message


def test_errors_are_one_line_and_name_the_reference(user_code):
    user_code("badpkg", {"boom": "raise RuntimeError('no\\nway')\n", "ok": "X = 1\n"},
              entry_points={"fedcore.test-things": {"broken": "badpkg.boom:X"}})
    registry: Registry[int] = Registry("fedcore.test-things", "thing")
    cases = {
        "nosuchpkg.mod:x": "no module named 'nosuchpkg'",
        "badpkg.ok:Y": "'badpkg.ok' has no 'Y'",
        "badpkg.boom:X": "importing 'badpkg.boom' failed: RuntimeError: no way",
        "broken": "entry point 'badpkg.boom:X'",
        "missing": "unknown thing 'missing' (known: broken",
    }
    for reference, expected in cases.items():
        with pytest.raises(ResolveError) as info:
            registry.get(reference)
        message = str(info.value)
        assert expected in message and "\n" not in message and repr(reference) in message


def test_schemes_are_the_extension_point():
    register_scheme("testscheme", lambda rest: ("resolved", rest))
    registry: Registry[object] = Registry("fedcore.test-things", "thing")
    assert is_reference("testscheme:some/path.bin") and not is_reference("plain")
    assert registry.get("testscheme:some/path.bin") == ("resolved", "some/path.bin")
    register_scheme("failscheme", lambda rest: (_ for _ in ()).throw(OSError("gone")))
    with pytest.raises(ResolveError, match="thing 'failscheme:x': gone"):
        registry.get("failscheme:x")
