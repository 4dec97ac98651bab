"""Rebuild .dvc/plots/offline.html, the page `dvc plots show` fills, with vega, vega-lite and vega-embed inlined.

DVC's own page loads the three from a CDN, so it stays blank offline; .dvc/config points `plots.html_template`
at this one instead, and every page DVC writes from it carries the libraries and their licenses. Run from the
repository root with npm on the PATH (it fetches the pinned packages with `npm pack`):

    python scripts/vendor_vega.py

The licenses come from .dvc/plots/licenses/ (vega's npm package leaves its LICENSE out; that copy is from
github.com/vega/vega).
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

# The newest releases of the majors that DVC's own page and templates use (vega 5, vega-lite 5, vega-embed 6).
PACKAGES = {
    "vega": ("5.33.1", "build/vega.min.js"),
    "vega-lite": ("5.23.0", "build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "build/vega-embed.min.js"),
}
PLOTS_DIR = Path(".dvc/plots")
TEMPLATE = PLOTS_DIR / "offline.html"
# DVC fills these with str.replace; the third one is where it would put its CDN script tags, so the page below
# leaves it out, and inlined code must not contain any of them.
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}", "{scripts}")
# The .map files are not shipped: without this line a browser's developer tools would look for them.
SOURCE_MAP = re.compile(r"\n//# sourceMappingURL=\S+\s*$")
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>Burrscope: DVC plots</title>
<!--
Inlined by scripts/vendor_vega.py, so this page needs no network: {versions}.

{licenses}
-->
{scripts}
<style>
body {{ font-family: sans-serif; display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def minified(name: str, version: str, member: str, workdir: Path) -> str:
    """The package's minified browser build, from its npm tarball."""
    packed = subprocess.run(
        ["npm", "pack", f"{name}@{version}", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
    )
    with tarfile.open(workdir / packed.stdout.strip().splitlines()[-1]) as tar:
        build = tar.extractfile(f"package/{member}")  # KeyError if the package moved its build
        if build is None:
            raise SystemExit(f"{name} {version}: {member} is not a regular file")
        code = build.read().decode()
    # An inline script ends at the first "</script"; a placeholder inside it would be filled by DVC.
    if "</script" in code.lower() or any(placeholder in code for placeholder in PLACEHOLDERS):
        raise SystemExit(f"{name} {version}: {member} cannot be inlined verbatim")
    return SOURCE_MAP.sub("\n", code)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = "\n".join(
            f"<script>/* {name} {version} */\n{minified(name, version, member, Path(tmp))}</script>"
            for name, (version, member) in PACKAGES.items()
        )
    versions = ", ".join(f"{name} {version}" for name, (version, _) in PACKAGES.items())
    licenses = "\n".join(
        f"{name}:\n{(PLOTS_DIR / 'licenses' / f'{name}.txt').read_text(encoding='utf-8')}" for name in PACKAGES
    )
    TEMPLATE.write_text(PAGE.format(versions=versions, licenses=licenses, scripts=scripts), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size // 1024} KiB): {versions}")


if __name__ == "__main__":
    main()
