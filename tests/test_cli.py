"""python -m nbopt: the demo job and the profile command."""
from __future__ import annotations

import subprocess
import sys


def nbopt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbopt", *args], capture_output=True, text=True, timeout=300)


def test_profile_torchvision_model():
    out = nbopt("profile", "torchvision:resnet18", "--input", "1,3,224,224", "--no-latency", "--top", "3")
    assert out.returncode == 0, out.stderr
    assert "MACs 1.81G" in out.stdout
    assert out.stdout.splitlines()[3].startswith("conv1 ") and "118.01M" in out.stdout  # the top layer


def test_profile_user_factory_and_errors():
    out = nbopt("profile", "nbopt.demo:load_model", "--input", "1,1,8,8", "--no-latency")
    assert out.returncode == 0 and "MACs 2.56M" in out.stdout
    bad = nbopt("profile", "torchvision:nosuch")
    assert bad.returncode == 2 and "torchvision has no model 'nosuch'" in bad.stderr
    bad = nbopt("profile", "torchvision:resnet18", "--input", "1,x")
    assert bad.returncode == 2 and "comma-separated integers" in bad.stderr


def test_demo_job_prints_measured_accuracy_and_table():
    out = nbopt("demo")
    assert out.returncode == 0, out.stderr
    assert "held-out accuracy 99.44%" in out.stdout and "block3.conv1.0" in out.stdout
