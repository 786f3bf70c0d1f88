"""Binder launch links for the tutorials, all made from one GitHub slug: the line in binder/github-slug.

    python binder/links.py                              # print the badge and one launch link per notebook
    python binder/links.py --check                      # exit 1 if README.md or a notebook links elsewhere
    python binder/links.py --slug owner/name --write    # set the slug, rewrite every link to it

The repository has no GitHub remote yet, so the slug is the placeholder ORG/REPO and the links do not work
until it is set. Links open each notebook in JupyterLab: .../v2/gh/<slug>/HEAD?urlpath=lab/tree/notebooks/NAME.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLUG_FILE = ROOT / "binder" / "github-slug"
PLACEHOLDER = "ORG/REPO"
SLUG_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
LINK_RE = re.compile(r"https://mybinder\.org/v2/gh/([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)/HEAD"
                     r"\?urlpath=lab/tree/notebooks/([A-Za-z0-9_.-]+\.ipynb)")
BADGE = "https://mybinder.org/badge_logo.svg"
NOTE_RE = re.compile(r"<!-- binder-placeholder:.*?<!-- /binder-placeholder -->\n\n?", re.S)  # README's warning


def read_slug() -> str:
    """The GitHub owner/name the links point to."""
    slug = SLUG_FILE.read_text().strip()
    if not SLUG_RE.match(slug):
        raise SystemExit(f"{SLUG_FILE} must hold one GitHub owner/name such as octocat/nbopt, not {slug!r}")
    return slug


def launch_url(slug: str, notebook: str) -> str:
    return f"https://mybinder.org/v2/gh/{slug}/HEAD?urlpath=lab/tree/notebooks/{notebook}"


def notebooks() -> list[str]:
    return sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def linking_files() -> list[Path]:
    """README.md and every tutorial notebook (each notebook carries its own badge)."""
    return [ROOT / "README.md"] + [ROOT / "notebooks" / n for n in notebooks()]


def links(path: Path) -> list[tuple[str, str]]:
    """(slug, notebook) of every Binder launch link in ``path``."""
    return LINK_RE.findall(path.read_text())


def problems(slug: str) -> list[str]:
    """Links to another slug or to a missing notebook, and notebooks without a README launch link."""
    out, names = [], set(notebooks())
    for path in linking_files():
        for found, nb in links(path):
            if found != slug:
                out.append(f"{path.relative_to(ROOT)}: link to {found}, expected {slug} ({nb})")
            if nb not in names:
                out.append(f"{path.relative_to(ROOT)}: link to missing notebooks/{nb}")
    readme = (ROOT / "README.md").read_text()
    if (slug == PLACEHOLDER) != bool(NOTE_RE.search(readme)):
        out.append("README.md: the placeholder note must be there exactly while the slug is " + PLACEHOLDER)
    in_readme = {nb for _, nb in links(ROOT / "README.md")}
    out += [f"README.md: no Binder launch link for notebooks/{nb}" for nb in sorted(names - in_readme)]
    return out


def rewrite(slug: str) -> list[Path]:
    """Point every Binder link in README.md and the notebooks at ``slug`` (a real slug also drops README's
    placeholder note); returns the files changed."""
    changed = []
    for path in linking_files():
        text = path.read_text()
        new = LINK_RE.sub(lambda m: launch_url(slug, m.group(2)), text)
        if slug != PLACEHOLDER:
            new = NOTE_RE.sub("", new)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slug", help="GitHub owner/name to store in binder/github-slug")
    ap.add_argument("--write", action="store_true", help="rewrite the links in README.md and the notebooks")
    ap.add_argument("--check", action="store_true", help="exit 1 when a link disagrees with the slug")
    args = ap.parse_args(argv)
    if args.slug:
        if not SLUG_RE.match(args.slug):
            ap.error(f"--slug must look like owner/name, got {args.slug!r}")
        SLUG_FILE.write_text(args.slug + "\n")
    slug = read_slug()
    if args.write:
        for path in rewrite(slug):
            print(f"updated {path.relative_to(ROOT)}")
    if args.check:
        found = problems(slug)
        print("\n".join(found) or f"all Binder links point to {slug}")
        return 1 if found else 0
    if slug == PLACEHOLDER:
        print(f"# {PLACEHOLDER} is a placeholder: set the real slug with --slug owner/name --write", file=sys.stderr)
    print(f"[![Binder]({BADGE})]({launch_url(slug, notebooks()[0])})")
    for nb in notebooks():
        print(launch_url(slug, nb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
