"""``check_apart``: a check run in a forked child says the same as run here, and what it
imports stays in the child."""

import json
import subprocess
import sys

import pytest

from deploy.apart import check_apart


class Wrong(ValueError):
    pass


class Other(ValueError):
    pass


def test_the_childs_error_comes_back_with_its_type_and_message():
    def check():
        raise Other("data: x has 3 rows and y 2; need equal, > 0")

    with pytest.raises(Other, match=r"^data: x has 3 rows and y 2; need equal, > 0$"):
        check_apart(check, (Wrong, Other))
    check_apart(lambda: None, (Wrong,))  # a check that passes: nothing raised


def test_a_check_that_fails_otherwise_is_run_here_and_shows_its_own_error():
    def check():
        raise KeyError("not one of the errors named")

    with pytest.raises(KeyError, match="not one of the errors named"):
        check_apart(check, (Wrong,))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork here")
def test_what_the_check_imports_stays_in_the_child():
    code = (
        "import json, sys\n"
        "from deploy.apart import check_apart\n"
        "def check():\n"
        "    import fractions\n"
        "    raise ValueError(str(len(sys.modules)))\n"
        "try:\n"
        "    check_apart(check, (ValueError,))\n"
        "except ValueError as exc:\n"
        "    print(json.dumps(['fractions' in sys.modules, str(exc)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here, said = json.loads(out.stdout)
    assert not here and said.isdigit()  # the child's message; its import stayed there
