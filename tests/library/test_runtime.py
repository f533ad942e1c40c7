import os
import subprocess
import sys

from labelfree.runtime import HUGE_PAGES_VARIABLE, use_huge_page_allocations


def _in_child(env: dict[str, str]) -> str:
    code = ("import os; from labelfree.runtime import use_huge_page_allocations as use; "
            "print(use(), os.environ['THP_MEM_ALLOC_ENABLE'])")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_huge_pages_default_on_and_the_environment_decides():
    env = {k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}
    assert _in_child(env) == "True 1"
    assert _in_child({**env, HUGE_PAGES_VARIABLE: "0"}) == "False 0"
    assert use_huge_page_allocations() == (os.environ[HUGE_PAGES_VARIABLE] == "1")
