"""The `reparam` process ends right after its command: output flushed, exit handlers run, exit code kept."""

from __future__ import annotations

import subprocess
import sys


def _run(*code_or_args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=120)


def test_output_and_exit_code_survive_the_fast_exit(tmp_path):
    listed = _run("-m", "reparam", "zoo")
    assert listed.returncode == 0 and "acb_resnet50" in listed.stdout
    missing = _run("-m", "reparam", "inspect", str(tmp_path / "missing.onnx"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0].startswith("error: ") and missing.stdout == ""


def test_exit_handlers_run_before_the_process_ends():
    code = (
        "import atexit, sys\n"
        "from reparam.cli.main import entry\n"
        "atexit.register(lambda: print('exit handler ran'))\n"
        "sys.argv = ['reparam', 'zoo']\n"
        "entry()\n"
    )
    done = _run("-c", code)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("exit handler ran")
