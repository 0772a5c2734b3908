"""The larger builtin corpus: Debian's documentation packages and public-domain reference texts.

`apt-get download` fetches the .deb files (no installation, no root needed beyond apt's own), and
`dpkg-deb -x` unpacks them; each package's readable text is extracted to plain UTF-8 `.txt` files:
reST sources of the Python and Linux documentation, POD, AsciiDoc, HTML pages (tags stripped),
Webster's 1913 dictionary (GCIDE), WordNet glosses and fortunes: ~15.4 M words (measured), about
half technical documentation and half dictionaries. The SWORD Bible/commentary modules named in
DATA.md (its other ~11 M words, the literature) are not extracted yet: their compressed block format
needs a reader of its own.
"""

from __future__ import annotations

import gzip
import html
import html.parser
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pdsweep import files
from pdsweep.errors import UserError


class _Text(html.parser.HTMLParser):
    """Visible text of an HTML page (scripts, styles and navigation dropped)."""

    SKIP = {"script", "style", "nav", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.depth += 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr", "dt", "dd"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts.append(data)


def html_text(raw: str) -> str:
    parser = _Text()
    parser.feed(raw)
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def gcide_text(raw: str) -> str:
    return html.unescape(re.sub(r"<[^>]{0,200}>", "", raw))


def wordnet_glosses(raw: str) -> str:
    return "\n".join(
        line.split(" | ", 1)[1].strip() for line in raw.splitlines() if " | " in line and not line.startswith("  ")
    )


def fortunes_text(raw: str) -> str:
    return "\n\n".join(f.strip() for f in raw.split("\n%\n") if f.strip())


@dataclass(frozen=True)
class Source:
    package: str
    globs: tuple[str, ...]
    convert: Callable[[str], str] = lambda text: text


SOURCES = (
    Source("python3.11-doc", ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",)),
    Source("linux-doc-6.1", ("usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt",)),
    Source("python-django-doc", ("usr/share/doc/python-django-doc/html/**/*.html",), html_text),
    Source("postgresql-doc-15", ("usr/share/doc/postgresql-doc-15/html/*.html",), html_text),
    Source("git-doc", ("usr/share/doc/git-doc/*.txt",)),
    Source("perl-doc", ("usr/share/perl/*/pod/*.pod", "usr/share/doc/perl/*.pod.gz")),
    Source("dict-gcide", ("usr/share/dictd/gcide.dict.dz",), gcide_text),
    Source("wordnet-base", ("usr/share/wordnet/data.*",), wordnet_glosses),
    Source("fortunes", ("usr/share/games/fortunes/[a-z]*",), fortunes_text),
)


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix in (".gz", ".dz") else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def _extract(source: Source, root: Path, out: Path) -> Iterator[Path]:
    for pattern in source.globs:
        for path in sorted(root.glob(pattern)):
            if not path.is_file() or path.suffix in (".dat", ".u8"):
                continue
            text = source.convert(_read(path)).strip()
            if len(text) < 200:
                continue
            rel = path.relative_to(root).as_posix().replace("/", "__")
            target = out / source.package / (rel if rel.endswith(".txt") else f"{rel}.txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
            yield target


def fetch(out: Path, progress: Callable[[str, int, int], None], packages: tuple[str, ...] | None = None) -> Path:
    """Download the packages with apt-get, extract their text into `out` (atomically, once)."""
    if (out / "manifest.json").exists():
        return out
    chosen = [s for s in SOURCES if packages is None or s.package in packages]
    with tempfile.TemporaryDirectory() as tmp, files.atomic_dir(out) as staging:
        debs = Path(tmp)
        done = subprocess.run(
            ["apt-get", "download", *(s.package for s in chosen)], cwd=debs, capture_output=True, text=True
        )
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["apt-get failed"])[-1]
            raise UserError(
                f"corpus debian-docs: apt-get download failed ({why}); on Debian/Ubuntu run `apt-get update` once"
            )
        manifest: dict[str, dict] = {}
        for i, source in enumerate(chosen):
            progress("extract debian-docs", i, len(chosen))
            deb = next(debs.glob(f"{source.package}_*.deb"))
            root = debs / source.package
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            written = list(_extract(source, root, staging))
            manifest[source.package] = {"deb": deb.name, "deb_sha256": files.sha256_file(deb), "files": len(written)}
        progress("extract debian-docs", len(chosen), len(chosen))
        files.write_json(
            staging / "manifest.json", {"source": "Debian packages via apt-get download", "packages": manifest}
        )
    return out
