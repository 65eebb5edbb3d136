"""The HTML report renders in a real browser with its plots (headless Chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.report import write_report
from testbed.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

EXPERIMENT = """name: render
topology: {topo}
set:
  traffic.0.bulk.bytes: 40kB
  run.stall_timeout_s: 2
grid:
  routers.r2.icmp: [send, suppress]
  traffic.0.sysctls.net.ipv4.tcp_mtu_probing: [0, 2]
metrics: [completed, duration_s]
plots:
  - {{x: traffic.0.sysctls.net.ipv4.tcp_mtu_probing, y: duration_s, by: routers.r2.icmp, kind: bar}}
"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                    "(scripts/setup.sh installs Debian's chromium)")
def test_report_renders_with_visible_plots(tmp_path):
    import matplotlib.image as mpimg
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.format(topo=ROOT / "topologies" / "pmtu_blackhole.yaml"))
    out = tmp_path / "out"
    sweep(str(exp), str(out))
    report = write_report(str(out))
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", report.as_uri()],
        check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[:, :, :3]
    # Coloured pixels are the plots' bars and lines: text and tables are black on white.
    coloured = ((img.max(axis=2) - img.min(axis=2)) > 0.25).sum()
    assert coloured > 5000, f"only {coloured} coloured pixels: the plots did not render"
    # And the page is not just one block of colour.
    assert (img.min(axis=2) > 0.95).mean() > 0.3
