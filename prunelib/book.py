"""Build the static HTML book of the executed study from the committed executed notebooks, executing nothing."""
from __future__ import annotations

import html
import logging
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jinja2
import mistune
import nbformat

from prunelib.notebooks import format_duration
from prunelib.paths import project_root
from prunelib.publish import read_provenance

log = logging.getLogger(__name__)

# (profile, part title): the book's parts in reading order, each from executed/<profile>/.
PARTS = (
    ("default", "The study: whisper-base"),
    ("default-tiny", "The second size: whisper-tiny.en"),
)
ASSETS = "assets"
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")  # copied into the book where a page shows them
# MathJax 3's one-file TeX-to-SVG build (every TeX extension inside): draws formulas without web fonts
# or further downloads, so they render offline and from file:// as well as from a web server.
MATHJAX_FILE = "tex-svg-full.js"
_MATHJAX = """<script>
window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]],
                        processEscapes: true, processEnvironments: true},
                  svg: {fontCache: "global"}};
</script>
<script src="{root}assets/mathjax/{file}"></script>"""

_CHAPTER_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{#- The study's outputs are text, tables and PNGs: no require.js or mermaid, nothing fetched from a CDN. -#}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}{{ resources.book.mathjax }}{%- endblock html_head_js_mathjax -%}
{% block extra_css %}<link rel="stylesheet" href="{{ resources.book.root }}assets/book.css">{% endblock extra_css %}
{%- block body_header -%}
<body class="jp-Notebook book-page" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.book.navigation }}
<main class="book-main">
{{ resources.book.provenance }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.book.pager }}
</main>
</body>
{% endblock body_footer %}
"""

_FRONT_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{{ title }}</title>
<link rel="stylesheet" href="assets/book.css">
</head>
<body class="book-page">
{{ navigation }}
<main class="book-main book-front">
{{ body }}
{{ pager }}
</main>
</body>
</html>
"""

_CSS = """
body.book-page { margin: 0; }
.book-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 17rem; overflow-y: auto; padding: 1rem;
  box-sizing: border-box; background: #f6f6f4; border-right: 1px solid #ddd; font: 14px/1.4 system-ui, sans-serif; }
.book-provenance { color: #555; font: 13px/1.4 system-ui, sans-serif;
  margin: 0 0 1rem calc(var(--jp-cell-prompt-width, 64px) + 22px); }  /* in line with the cells, past their prompts */
.book-nav a { color: #1a4f8b; text-decoration: none; }
.book-nav a:hover { text-decoration: underline; }
.book-nav .book-title { display: block; font-weight: 600; font-size: 16px; margin-bottom: 1rem; }
.book-nav h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .04em; color: #555; margin: 1.2rem 0 .4rem; }
.book-nav ol { margin: 0; padding-left: 1.4rem; }
.book-nav li { margin: .25rem 0; }
.book-nav .current { font-weight: 600; color: #000; }
.book-main { margin-left: 17rem; padding: 1rem 2rem 3rem; max-width: 80rem; }
.book-main .jp-InputArea-editor, .book-main .jp-OutputArea-output { overflow-x: auto; }
.book-front { font: 16px/1.55 system-ui, sans-serif; }
.book-front table { border-collapse: collapse; margin: 1rem 0; font-size: 14px; }
.book-front th, .book-front td { border: 1px solid #ccc; padding: .25rem .5rem; }
.book-front pre { background: #f6f6f4; padding: .75rem; overflow-x: auto; }
.book-front img { max-width: 100%; }
.book-pager { display: flex; justify-content: space-between; border-top: 1px solid #ddd; margin-top: 2rem;
  padding-top: 1rem; font: 15px system-ui, sans-serif; }
.repo-file { font-family: monospace; }
@media (max-width: 60rem) { .book-nav { position: static; width: auto; } .book-main { margin-left: 0; } }
"""


@dataclass(frozen=True)
class Page:
    """One page of the book: where it is written, its title, and what it is made from."""

    path: str  # relative to the book's root, e.g. "default/03_component_ablations.html"
    title: str
    part: str  # part title; "" for the front page
    source: Path


class BookError(ValueError):
    """The book cannot be built from what is on disk."""


def first_heading(markdown: str, fallback: str) -> str:
    """The first Markdown heading of a text, without its leading #s."""
    heading = next((line for line in markdown.splitlines() if line.startswith("#")), "")
    return heading.lstrip("#").strip() or fallback


def chapter_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The first Markdown heading of a notebook."""
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    return first_heading(markdown, fallback)


def book_pages(root: Path, readme: Path, parts: tuple[tuple[str, str], ...] = PARTS) -> list[Page]:
    """The front page, then every executed notebook of every part, in order."""
    pages = [Page("index.html", first_heading(readme.read_text(encoding="utf-8"), "The study"), "", readme)]
    for profile, part_title in parts:
        for notebook in sorted((root / "executed" / profile).glob("[0-9][0-9]_*.ipynb")):
            title = chapter_title(nbformat.read(notebook, as_version=4), notebook.stem)
            pages.append(Page(f"{profile}/{notebook.stem}.html", title, part_title, notebook))
    if len(pages) == 1:
        folders = ", ".join(f"executed/{profile}/" for profile, _ in parts)
        raise BookError(f"no executed notebooks in {folders}: run `make reproduce` first (nothing is executed here)")
    return pages


def _navigation(pages: list[Page], current: Page) -> str:
    """The sidebar: the front page, then each part's chapters, the current one marked."""
    depth = current.path.count("/")
    up = "../" * depth
    items = [f'<nav class="book-nav"><a class="book-title" href="{up}index.html">{html.escape(pages[0].title)}</a>']
    part = None
    for page in pages[1:]:
        if page.part != part:
            items.append(("</ol>" if part is not None else "") + f"<h2>{html.escape(page.part)}</h2><ol>")
            part = page.part
        mark = ' class="current" aria-current="page"' if page == current else ""
        items.append(f'<li><a{mark} href="{up}{page.path}">{html.escape(page.title)}</a></li>')
    items.append("</ol></nav>")
    return "".join(items)


def _pager(pages: list[Page], current: Page) -> str:
    """Links to the previous and the next page."""
    index = pages.index(current)
    up = "../" * current.path.count("/")
    links = []
    for neighbour, label, rel in ((index - 1, "← ", "prev"), (index + 1, "", "next")):
        if 0 <= neighbour < len(pages):
            page = pages[neighbour]
            text = f"{label}{html.escape(page.title)}" + (" →" if rel == "next" else "")
            links.append(f'<a rel="{rel}" href="{up}{page.path}">{text}</a>')
        else:
            links.append("<span></span>")
    return f'<nav class="book-pager">{"".join(links)}</nav>'


class _Links:
    """Rewrites a page's relative links: notebooks to their chapters, figures into the book, the rest unlinked."""

    def __init__(self, root: Path, out: Path, pages: list[Page]):
        self.root, self.out = root, out
        # executed/<profile>/NN.ipynb -> its chapter; (profile, NN.ipynb) -> the chapter a source link opens there.
        self.chapters = {page.source.relative_to(root).as_posix(): page.path for page in pages[1:]}
        self.by_part = {(page.path.split("/")[0], page.source.name): page.path for page in pages[1:]}

    def rewrite(self, text: str, page: Page, base: str) -> str:
        """`text` (HTML) with its href/src targets rewritten for `page`; `base` is the folder links are relative to."""
        up = "../" * page.path.count("/")

        def target(value: str) -> str | None:
            parts = urlsplit(value)
            if parts.scheme or value.startswith(("#", "//", "data:")) or not parts.path:
                return value
            resolved = posixpath.normpath(posixpath.join(base, unquote(parts.path)))
            fragment = f"#{parts.fragment}" if parts.fragment else ""
            if resolved in self.chapters:
                return up + self.chapters[resolved] + fragment
            folder, _, name = resolved.rpartition("/")
            if folder == "notebooks":
                # A clean source notebook opens as the chapter of the page's own part, else of the reference run.
                chapter = self.by_part.get((page.path.split("/")[0], name)) or self.by_part.get((PARTS[0][0], name))
                if chapter:
                    return up + chapter + fragment
            source = self.root / resolved
            if not resolved.startswith("..") and source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
                destination = self.out / resolved
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
                return up + resolved
            return None

        def attribute(match: re.Match) -> str:
            name, value = match.group(1), html.unescape(match.group(2))
            new = target(value)
            if new is None and name == "src":
                raise BookError(f"{page.source}: image {value!r} is not a file in the repository")
            if new is None:
                return f'class="repo-file" title="{html.escape(value)} (in the repository; not part of the book)"'
            return f'{name}="{html.escape(new)}"'

        return re.sub(r'\b(href|src)="([^"]*)"', attribute, text)


def _front_page(page: Page, pages: list[Page], links: _Links) -> str:
    """The README as the front page."""
    markdown = mistune.create_markdown(escape=False, plugins=["table", "strikethrough", "url"])
    body = links.rewrite(markdown(page.source.read_text(encoding="utf-8")), page, base="")
    return jinja2.Template(_FRONT_TEMPLATE).render(
        title=html.escape(page.title), navigation=_navigation(pages, page), body=body, pager=_pager(pages, page))


def _provenance(notebook: nbformat.NotebookNode) -> str:
    """One line saying which commit and profile produced a chapter and how long it ran ('' when unrecorded)."""
    record = read_provenance(notebook.metadata)
    if record["commit"] is None:
        return ""
    text = f"Executed at commit <code>{html.escape(record['commit'])}</code>"
    if record["profile"]:
        text += f", profile <code>{html.escape(record['profile'])}</code>"
    if record["seconds"]:
        text += f", in {format_duration(record['seconds'])}"
    if record["modified"]:
        text += " <strong>with uncommitted changes to " + html.escape(", ".join(record["modified"])) + "</strong>"
    return f'<p class="book-provenance">{text}.</p>'


def _chapter(page: Page, pages: list[Page], links: _Links) -> str:
    """One executed notebook as HTML, outputs as they were saved, with the book's navigation."""
    from jinja2 import pass_context
    from nbconvert import HTMLExporter

    class ChapterExporter(HTMLExporter):
        """nbconvert's lab page whose Markdown cells link into the book."""

        @pass_context
        def markdown2html(self, context, source):
            # A notebook's Markdown links relative to notebooks/, where its clean source lives.
            return links.rewrite(super().markdown2html(context, source), page, base="notebooks")

    up = "../" * page.path.count("/")
    notebook = nbformat.read(page.source, as_version=4)
    exporter = ChapterExporter(
        extra_loaders=[jinja2.DictLoader({"book_chapter.html.j2": _CHAPTER_TEMPLATE})],
        template_file="book_chapter.html.j2",
    )
    resources = {"book": {"root": up, "navigation": _navigation(pages, page), "pager": _pager(pages, page),
                          "mathjax": _MATHJAX.replace("{root}", up).replace("{file}", MATHJAX_FILE),
                          "provenance": _provenance(notebook)},
                 "metadata": {"name": page.title}}
    body, _ = exporter.from_notebook_node(notebook, resources=resources)
    return body


def _copy_assets(out: Path) -> None:
    """The book's stylesheet and a local MathJax, so that no page fetches anything."""
    try:
        import mathjax  # the django-static-mathjax wheel: MathJax's own files, no Django needed
    except ImportError as err:
        raise BookError("the book needs MathJax from django-static-mathjax (pip install -e '.[dev]')") from err
    assets = out / ASSETS
    (assets / "mathjax").mkdir(parents=True, exist_ok=True)
    (assets / "book.css").write_text(_CSS.lstrip(), encoding="utf-8")
    shipped = Path(mathjax.__file__).parent / "static" / "mathjax"
    shutil.copyfile(shipped / "es5" / MATHJAX_FILE, assets / "mathjax" / MATHJAX_FILE)
    shutil.copyfile(shipped / "LICENSE", assets / "mathjax" / "LICENSE")


def build_book(out: str | Path, root: str | Path | None = None) -> list[Path]:
    """Write the book into `out` (a new folder or one this function wrote before); returns its pages."""
    root = Path(root) if root is not None else project_root()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / ASSETS / "book.css").exists():
        raise BookError(f"{out} exists and is not a book this command built: give a new or empty folder")
    pages = book_pages(root, root / "README.md")
    links = _Links(root, out, pages)
    _copy_assets(out)
    written = []
    for page in pages:
        text = _front_page(page, pages, links) if page.path == "index.html" else _chapter(page, pages, links)
        path = out / page.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
        log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1e3)
    return written
