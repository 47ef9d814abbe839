"""PNG export of the report's figures through headless Chromium (for papers, READMEs, slides).

Plotly's own static export needs Kaleido and a downloaded browser; tmcli instead renders each
figure as a tiny offline page and screenshots it with the system's Chromium, which is already
what the report's browser test uses.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tmcli.errors import TmcliError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for name in BROWSERS if (p := shutil.which(name))), None)


def chromium_command(binary: str, profile: Path, *args: str) -> list[str]:
    """Headless Chromium that never talks to the network (no background services)."""
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
            f"--user-data-dir={profile}", *args]


def export_png(analysis, out_dir: str | Path, *, temperatures=None,
               width: int = 1100) -> list[Path]:
    """Write every report figure as ``out_dir/<figure id>.png``; returns the paths."""
    from tmcli.present.html_report import build_figures

    binary = find_chromium()
    if binary is None:
        raise TmcliError("PNG export needs Chromium",
                         hint="install it (Debian: apt-get install chromium) or use --html")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_png(fig, out / f"{fid}.png", width=width, browser=binary)
            for fid, _title, fig in build_figures(analysis, temperatures)]


def write_png(fig, target: str | Path, *, width: int = 1100, browser: str | None = None) -> Path:
    """One Plotly figure as a PNG at ``target`` (the report's figures, or any other)."""
    from tmcli.io.outputs import replacing

    binary = browser or find_chromium()
    if binary is None:
        raise TmcliError("PNG export needs Chromium",
                         hint="install it (Debian: apt-get install chromium) or use --html")
    target = Path(target)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        height = int(fig.layout.height or 460)
        fig = fig.update_layout(width=width, height=height)
        page = tmpdir / "figure.html"
        page.write_text(fig.to_html(include_plotlyjs=True, full_html=True,
                                    config={"staticPlot": True}), encoding="utf-8")
        shot = tmpdir / "figure.png"
        cmd = chromium_command(binary, tmpdir / "profile", f"--screenshot={shot}",
                               f"--window-size={width + 20},{height + 20}",
                               "--virtual-time-budget=5000", page.as_uri())
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0 or not shot.exists():
            raise TmcliError(f"Chromium could not render figure '{target.stem}' "
                             f"(exit {res.returncode})", hint="try --html instead")
        with replacing(target) as part:  # an existing figure is replaced whole, or kept
            shutil.copyfile(shot, part)
    return target
