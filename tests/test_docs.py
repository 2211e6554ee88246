"""Generated docs must match what generates them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmarks_page_is_assembled_from_the_records() -> None:
    # -P: bench/operator.py would shadow the standard library's operator module
    result = subprocess.run([sys.executable, "-P", "bench/report.py", "--check"], cwd=ROOT)
    assert result.returncode == 0, "docs/benchmarks.md is stale: run bench/report.py"


def test_readme_starts_with_the_two_commands() -> None:
    """The README opens (right under its title) with exactly two commands: one runs the
    demo, one runs the full suite, which is what CI runs."""
    lines = [x for x in (ROOT / "README.md").read_text().splitlines() if x.strip()]
    assert lines[0].startswith("# ") and lines[1] == "```sh", lines[:2]
    block = lines[2:lines.index("```", 2)]
    commands = [x.split("#", 1)[0].strip() for x in block]
    assert commands == ["./dev demo", "./dev test"], block
    dev = (ROOT / "dev").read_text()
    demo = re.search(r"^  demo\)\n(.*?);;", dev, re.M | re.S)
    assert demo and 'exec "$VENV/bin/smtpctl" demo' in demo.group(1), "./dev demo: smtpctl demo"
    ci = [x for x in (ROOT / ".ci" / "run").read_text().splitlines()
          if x.strip() and not x.startswith(("#", "set ", "cd "))]
    assert ci == ["exec ./dev test"], ci


# --- links ------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
                  r"|^[ \t]{0,3}\[[^\]]+\]:[ \t]*<?(\S+?)>?(?:\s|$)", re.M)
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?")
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HEADING = re.compile(r"^[ \t]{0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def _tracked(suffix: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", f"*{suffix}"], cwd=ROOT, capture_output=True,
                         check=True, timeout=60).stdout.decode()
    return [ROOT / p for p in out.split("\0") if p]


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans (a link there is not a link)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub(lambda m: " " * len(m.group(0)), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set(HTML_ANCHOR.findall(text))
    for m in HEADING.finditer(FENCE.sub("", text)):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    text = doc.read_text()
    prose = _prose(text)
    bad = []
    for m in sorted([*LINK.finditer(prose), *IMAGE.finditer(prose)], key=lambda m: m.start()):
        target = next(g for g in m.groups() if g)
        line = prose.count("\n", 0, m.start()) + 1
        where = f"{doc.relative_to(root)}:{line}: {target}"
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...: not ours
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if root not in dest.parents and dest != root:
            bad.append(f"{where} (points outside the repository)")
        elif not dest.exists():
            bad.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{where} (no heading #{anchor} in {dest.relative_to(root)})")
    return bad


def test_every_link_in_the_docs_resolves() -> None:
    """Relative links in every tracked Markdown file point at a file of the repository and,
    with ``#anchor``, at a heading (GitHub's slug) or ``<a id>`` of that file."""
    docs = _tracked(".md")
    assert ROOT / "README.md" in docs and len(docs) > 10
    bad = [b for d in docs for b in broken_links(d)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    assert slug("The JSON result envelope") == "the-json-result-envelope"
    assert slug("Reading manifests (`-f`)") == "reading-manifests--f"
    assert slug("`get active` / `describe`") == "get-active--describe"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text((ROOT / "docs" / "cli.md").read_text())
    doc = tmp_path / "docs" / "probe.md"
    doc.write_text("# Top\n\n[ok](#top) [ok](cli.md#installing) [bad](#nope) "
                   "[bad](missing.md) [bad](cli.md#no-such-heading) `[code](missing.md)`\n"
                   "```\n[fenced](missing.md)\n```\n[ref]: nothing.md\n[out](../../x.md)\n")
    bad = broken_links(doc, tmp_path)
    assert [b.split(": ", 1)[1] for b in bad] == [
        "#nope (no heading #nope in docs/probe.md)",
        "missing.md (no such file)",
        "cli.md#no-such-heading (no heading #no-such-heading in docs/cli.md)",
        "nothing.md (no such file)",
        "../../x.md (points outside the repository)",
    ], bad
