"""The wheel a user installs with `pip install .` carries the twistd plugin, and
nothing that would delete Twisted's own files on uninstall (DESIGN.md)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_plugin_without_twisted_package_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = tmp_path.glob("mailgateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/mailgateway_plugin.py" in names
    assert "gateway/default.toml" in names  # the embedded default configuration
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.startswith("twisted/") and n.endswith("dropin.cache") for n in names)
