"""The HTML book: built from executed notebooks without executing them, then opened in headless Chromium."""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import matplotlib
import nbformat
import pytest

from prunelib import book

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Set to a folder to keep a screenshot of every page the browser tests open.
SCREENSHOTS_ENV = "PRUNELIB_BOOK_SCREENSHOTS"


def png_bytes() -> bytes:
    """A small real PNG figure."""
    figure, axes = plt.subplots(figsize=(2, 1.5))
    axes.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def chapter(title: str, link: str) -> nbformat.NotebookNode:
    """An executed notebook: a heading, a formula, a link, a section, and a figure output."""
    code = nbformat.v4.new_code_cell("plot()", execution_count=1)
    code.outputs = [nbformat.v4.new_output(
        "display_data", data={"image/png": base64.b64encode(png_bytes()).decode(), "text/plain": "<Figure>"})]
    return nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(f"# {title}\n\nFisher: $F = \\tfrac1n \\sum_i g_i^2$; see [it]({link})."),
        code,
        nbformat.v4.new_markdown_cell("## Reading\n\nBack to [the top](#Reading)."),
    ])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository with a README, a figure and executed notebooks of two profiles."""
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.png").write_bytes(png_bytes())
    (tmp_path / "README.md").write_text(
        "# The study\n\n| claim | verdict |\n|---|---|\n| decoder FFN is fragile | holds |\n\n"
        "![the figure](figures/f.png)\n\nSee [notebook 02](notebooks/02_b.ipynb), "
        "[the tiny run](executed/default-tiny/01_a.ipynb) and [the code](prunelib/book.py).\n")
    for profile, names in (("default", ("01_a", "02_b")), ("default-tiny", ("01_a",))):
        folder = tmp_path / "executed" / profile
        folder.mkdir(parents=True)
        for index, name in enumerate(names):
            notebook = chapter(f"{profile} chapter {index + 1}", "02_b.ipynb")
            notebook.cells.append(nbformat.v4.new_markdown_cell("Back to [the start](01_a.ipynb)."))
            nbformat.write(notebook, folder / f"{name}.ipynb")
    return tmp_path


def test_pages_in_reading_order_with_their_titles(project):
    pages = book.book_pages(project, project / "README.md")
    assert [page.path for page in pages] == ["index.html", "default/01_a.html", "default/02_b.html",
                                             "default-tiny/01_a.html"]
    assert [page.title for page in pages[1:]] == ["default chapter 1", "default chapter 2", "default-tiny chapter 1"]
    assert pages[1].part == book.PARTS[0][1] and pages[3].part == book.PARTS[1][1]
    assert pages[0].title == "The study"  # the README's title names the book


def test_links_go_to_chapters_figures_are_copied_and_repository_files_unlinked(project, tmp_path):
    out = tmp_path / "site"
    book.build_book(out, root=project)
    front = (out / "index.html").read_text()
    assert 'href="default/02_b.html"' in front and 'href="default-tiny/01_a.html"' in front
    assert 'src="figures/f.png"' in front and (out / "figures" / "f.png").read_bytes() == (
        project / "figures" / "f.png").read_bytes()
    assert "prunelib/book.py" not in front.split('title="')[0] and 'href="prunelib/book.py"' not in front
    page = (out / "default-tiny" / "01_a.html").read_text()
    assert 'href="../default-tiny/02_b.html"' not in page  # that part has no 02: its link falls back
    assert 'href="../default/02_b.html"' in page  # notebooks/02_b.ipynb is the reference run's chapter
    assert 'href="../default-tiny/01_a.html"' in page  # a notebook of the page's own part opens there
    assert "cdnjs" not in page and "unpkg" not in page and 'src="http' not in page
    assert (out / book.ASSETS / "mathjax" / book.MATHJAX_FILE).is_file()


def test_each_chapter_says_which_commit_produced_it(project, tmp_path):
    source = project / "executed" / "default" / "01_a.ipynb"
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata["prunelib"] = {"commit": "0123456789abcdef", "modified": ["prunelib/x.py"], "profile": "default"}
    notebook.metadata["papermill"] = {"duration": 3725.2}
    nbformat.write(notebook, source)
    book.build_book(tmp_path / "site", root=project)
    page = (tmp_path / "site" / "default" / "01_a.html").read_text()
    assert "Executed at commit <code>0123456789ab</code>, profile <code>default</code>, in 1 h 2 min 5 s" in page
    assert "with uncommitted changes to prunelib/x.py" in page
    assert "Executed at commit" not in (tmp_path / "site" / "default" / "02_b.html").read_text()  # unrecorded


def test_a_missing_figure_is_an_error_not_a_broken_image(project, tmp_path):
    (project / "figures" / "f.png").unlink()
    with pytest.raises(book.BookError, match="figures/f.png"):
        book.build_book(tmp_path / "site", root=project)


def test_no_executed_notebooks_is_an_error(tmp_path):
    (tmp_path / "README.md").write_text("# x\n")
    with pytest.raises(book.BookError, match="make reproduce"):
        book.build_book(tmp_path / "site", root=tmp_path)


def test_the_command_refuses_in_one_line_without_executed_notebooks(tmp_path, monkeypatch, capsys):
    from prunelib.__main__ import main

    (tmp_path / "README.md").write_text("# x\n")
    monkeypatch.setattr(book, "project_root", lambda: tmp_path)
    assert main(["book", "--out", str(tmp_path / "site")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: no executed notebooks") and "\n" not in message
    assert not (tmp_path / "site").exists()


def test_refuses_to_write_into_a_folder_it_did_not_build(project, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(book.BookError, match="not a book"):
        book.build_book(out, root=project)
    assert (out / "notes.txt").read_text() == "keep me"
    book.build_book(tmp_path / "site", root=project)
    book.build_book(tmp_path / "site", root=project)  # rebuilding its own book is fine


def browse(site: Path, screenshots: Path | None = None) -> dict:
    """Open every page reachable from the front page in headless Chromium; return what was seen."""
    from playwright.sync_api import sync_playwright

    seen = {"pages": [], "failed_requests": [], "errors": [], "broken_images": [], "broken_links": [],
            "math": 0, "images": 0}
    to_visit, targets = [(site / "index.html").resolve().as_uri()], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("requestfailed", lambda request: seen["failed_requests"].append(f"{request.url}: {request.failure}"))
        page.on("pageerror", lambda error: seen["errors"].append(str(error)))
        page.on("console", lambda message: message.type == "error" and seen["errors"].append(message.text))
        while to_visit:
            url = to_visit.pop(0)
            if url in seen["pages"]:
                continue
            response = page.goto(url, wait_until="load")
            assert response is not None and response.ok, url
            page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => 1) : 0")
            seen["pages"].append(url)
            seen["images"] += page.eval_on_selector_all("img", "imgs => imgs.length")
            seen["broken_images"] += [f"{url}: {src}" for src in page.eval_on_selector_all(
                "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")]
            seen["math"] += page.eval_on_selector_all("mjx-container svg", "m => m.length")
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                name = url[len(site.resolve().as_uri()) + 1:].replace("/", "__").replace(".html", ".png")
                page.screenshot(path=str(screenshots / name), full_page=False)
            for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
                if href.startswith(site.resolve().as_uri()):
                    targets.append((url, href))
                    to_visit.append(href.split("#")[0])
        for source, href in targets:
            file_url, _, fragment = href.partition("#")
            path = Path(file_url[len("file://"):])
            if not path.is_file():
                seen["broken_links"].append(f"{source} -> {href}")
            elif fragment:
                page.goto(file_url, wait_until="load")
                # As a browser does: the fragment as written, else percent-decoded (nbconvert's ids keep %XX).
                if page.evaluate("id => !document.getElementById(id) && !document.getElementById("
                                 "decodeURIComponent(id))", fragment):
                    seen["broken_links"].append(f"{source} -> {href}")
        browser.close()
    return seen


def assert_reads_well(seen: dict, pages: list[Path]) -> None:
    """Every page opened, nothing fetched from outside, no broken image or link, no script error."""
    opened = {Path(url[len("file://"):]).resolve() for url in seen["pages"]}
    assert {page.resolve() for page in pages} <= opened, "a page is not reachable from the front page"
    assert seen["failed_requests"] == [] and seen["errors"] == []
    assert seen["broken_images"] == [] and seen["broken_links"] == []


def expected_images(root: Path) -> int:
    """Figures the book should show: the README's images and every image output of the executed notebooks."""
    count = (root / "README.md").read_text().count("![")
    for profile, _ in book.PARTS:
        for path in (root / "executed" / profile).glob("[0-9][0-9]_*.ipynb"):
            cells = nbformat.read(path, as_version=4).cells
            count += sum(any(kind.startswith("image/") for kind in output.get("data", {}))
                         for cell in cells if cell.cell_type == "code" for output in cell.outputs)
    return count


browser_test = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (make test installs Debian's)")


@browser_test
def test_book_in_chromium(project, tmp_path):
    pages = book.build_book(tmp_path / "site", root=project)
    seen = browse(tmp_path / "site")
    assert_reads_well(seen, pages)
    assert seen["images"] == expected_images(project) == 1 + 3  # the README's figure and one output figure a chapter
    assert seen["math"] >= 3  # MathJax from the book's own copy typeset every chapter's formula


@browser_test
def test_the_committed_study_in_chromium(tmp_path):
    """The real book, from the executed notebooks in the repository."""
    if not any(any((REPO / "executed" / profile).glob("[0-9][0-9]_*.ipynb")) for profile, _ in book.PARTS):
        pytest.skip("no executed notebooks committed yet (the reference run writes them)")
    pages = book.build_book(tmp_path / "site", root=REPO)
    screenshots = os.environ.get(SCREENSHOTS_ENV)
    seen = browse(tmp_path / "site", Path(screenshots) if screenshots else None)
    assert_reads_well(seen, pages)
    assert seen["images"] == expected_images(REPO), "a figure of a notebook or of the README is not in the book"
