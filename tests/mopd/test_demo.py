"""The README's run command until the trainer exists: it must run and show the loss going down."""

import subprocess
import sys


def test_demo_runs_and_the_loss_decreases():
    out = subprocess.run(
        [sys.executable, "-m", "mopd.embedded.demo", "--steps", "4"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "response ids aligned: True" in out.stdout
    assert "the loss decreased" in out.stdout
