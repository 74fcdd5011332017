"""HTML handouts of the committed (executed) notebooks: one page each plus an index, figures embedded,
a table of contents, no error output; every page works offline (no script, stylesheet, image or frame
loaded from elsewhere) and shows maths as MathML, never as raw TeX; the index says what each chapter
teaches, its run time and its headline results."""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import make_handouts  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RESULTS_FOR = "02_quantization"  # the one chapter given a (made-up) results file in the index test

# elements and attributes through which a page loads something
RESOURCE_ATTRS = {"script": "src", "link": "href", "img": "src", "iframe": "src", "embed": "src",
                  "object": "data", "source": "src", "video": "src", "audio": "src", "track": "src",
                  "input": "src", "image": "href", "use": "href", "frame": "src"}
REMOTE = re.compile(r"^\s*(?:https?:)?//", re.I)
CSS_REMOTE = re.compile(r"@import|url\(\s*['\"]?\s*(?:https?:)?//", re.I)
RAW_TEX = re.compile(r"\$[^$\s][^$]*\$|\\(?:frac|sum|sqrt|alpha|beta|sigma|mathrm|text|operatorname|hat|top|"
                     r"left|right|begin|end|lVert|cdot|times|approx|le|ge|in)(?![A-Za-z])")


def _soup(page):
    return page if isinstance(page, BeautifulSoup) else BeautifulSoup(page, "html.parser")


def external_resources(page) -> list[str]:
    """Every resource the page (HTML text or parsed) would load from outside itself (plain hyperlinks
    <a href> are not loads)."""
    soup = _soup(page)
    found = []
    for tag in soup.find_all(True):
        remote = [f"<{tag.name} {attr}={tag.get(attr)!r}>"
                  for attr in {RESOURCE_ATTRS.get(tag.name), "srcset", "poster", "xlink:href"} - {None}
                  if tag.get(attr) and REMOTE.search(str(tag.get(attr)))]
        found += remote
        if not remote and tag.name == "link" and "stylesheet" in (tag.get("rel") or []) \
                and not tag.get("href", "").startswith("data:"):
            found.append(f"<link rel=stylesheet href={tag.get('href')!r}> (a file beside the page is not shipped)")
        if tag.name == "style" and CSS_REMOTE.search(tag.get_text()):
            found.append(f"<style> loads {CSS_REMOTE.search(tag.get_text()).group(0)!r}")
        if tag.get("style") and CSS_REMOTE.search(tag["style"]):
            found.append(f"<{tag.name} style={tag['style']!r}>")
    return found


def raw_tex(page) -> list[str]:
    """TeX left unrendered in the page's prose and rendered outputs (code and preformatted text excluded).
    A parsed page loses its code, maths and styles here."""
    soup = _soup(page)
    for tag in soup.find_all(["pre", "code", "script", "style", "math", "title"]):
        tag.decompose()
    for tag in soup.select(".jp-InputArea-editor, .highlight"):
        tag.decompose()
    return [m.group(0) for m in RAW_TEX.finditer(soup.get_text(" "))]


def markdown_has_maths(nb) -> bool:
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return bool(re.search(r"\$[^$\n]+\$", re.sub(r"`[^`]*`", "", text)))


@pytest.fixture(scope="module")
def handouts(tmp_path_factory):
    out = tmp_path_factory.mktemp("handouts")
    results = tmp_path_factory.mktemp("results")
    (results / f"{RESULTS_FOR}.json").write_text(json.dumps(_records()))
    assert make_handouts.main([str(ROOT / "notebooks"), str(out), "--results", str(results)]) == 0
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_handout_page(handouts, path):
    page = (handouts / f"{path.stem}.html").read_text(encoding="utf-8")
    nb = nbformat.read(path, as_version=4)
    n_images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert n_images >= 1, f"{path.name} has no figure"
    assert page.count("data:image/png;base64,") >= n_images
    assert 'class="toc"' in page
    assert not any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "jp-OutputArea-output" in page and "Traceback (most recent call last)" not in page


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_handout_page_works_offline_with_maths_rendered(handouts, path):
    page = (handouts / f"{path.stem}.html").read_text(encoding="utf-8")
    soup = BeautifulSoup(page, "html.parser")
    assert external_resources(soup) == []
    assert "<script" not in page  # nothing to run: no MathJax, require.js or widget loader
    if markdown_has_maths(nbformat.read(path, as_version=4)):
        assert "<math " in page
    # the table of contents links headings that exist
    ids = {t["id"] for t in soup.find_all(id=True)}
    links = [a["href"][1:] for a in soup.select("nav.toc a")]
    assert links and all(link in ids for link in links)
    # maths is plain HTML5 <math> (a namespace prefix such as <ns0:math> shows as text in a browser)
    assert not soup.find_all(lambda t: ":" in t.name)
    assert raw_tex(soup) == [], f"{path.stem}: TeX left unrendered"
    assert "@media print" in page and "nav.toc" in page


def test_index_links_every_page_with_goals_run_time_and_results(handouts):
    index = (handouts / "index.html").read_text(encoding="utf-8")
    assert external_resources(index) == [] and raw_tex(index) == [] and "<script" not in index
    assert "@media print" in index
    soup = BeautifulSoup(index, "html.parser")
    sections = soup.select("section.chapter")
    assert len(sections) == len(NOTEBOOKS)
    for path, sec in zip(NOTEBOOKS, sections):
        assert sec.select_one("h2 a")["href"] == f"{path.stem}.html"
        assert sec.select("ul li"), f"{path.stem}: no learning goals on the index"
        runtime = sec.select_one("p.runtime").get_text()
        assert re.search(r"Run time: (\d+ min \d\d s|\d+ s) \(measured when this notebook was executed\)",
                         runtime), runtime
        if path.stem == RESULTS_FOR:
            rows = [[td.get_text() for td in tr.find_all("td")] for tr in sec.select("table.results tr")[1:]]
            assert [r[:2] for r in rows] == [["baseline", "baseline"], ["int4", "smallest"],
                                             ["small-dense", "control of int4"], ["int8", "fastest"]]
            assert rows[1][4] == "4.0" and rows[3][6] == "2.00"  # x smaller, x faster against the baseline
        else:
            assert "No results file yet" in sec.get_text()


def _records():
    def rec(name, acc, ci, size, lat, **kw):
        return {"name": name, "metric": "accuracy", "accuracy": acc, "accuracy_std": 0.0, "accuracy_ci": ci,
                "seeds": 1, "n_test": 1000, "size_bytes": size, "params": 10, "nonzero": 10, "macs": 10,
                "latency_ms": lat, **kw}
    return [rec("baseline", 0.98, [0.97, 0.99], 4000, 4.0),
            rec("int8", 0.98, [0.97, 0.99], 1000, 2.0),
            rec("int4", 0.975, [0.965, 0.985], 999, None),
            rec("int2", 0.60, [0.57, 0.63], 500, 1.0),          # smaller and faster, but far less accurate
            rec("small-dense", 0.97, [0.96, 0.98], 900, 0.5, control_of="int4"),
            rec("tiny-control", 0.98, [0.97, 0.99], 100, 0.1, control_of="nothing-picked")]


def test_headline_picks_smallest_and_fastest_within_the_interval():
    recs = _records()
    rows = [(role, r["name"]) for role, r in make_handouts.headline(recs)]
    assert rows == [("baseline", "baseline"), ("smallest", "int4"), ("control", "small-dense"), ("fastest", "int8")]
    # one model both smallest and fastest is listed once
    recs[1]["size_bytes"] = 10
    rows = [(role, r["name"]) for role, r in make_handouts.headline(recs)]
    assert rows == [("baseline", "baseline"), ("smallest and fastest", "int8")]
    assert make_handouts.headline([r for r in recs if r["name"] != "baseline"]) == []


def test_run_time_from_execution_metadata():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")])
    assert make_handouts.run_seconds(nb) is None
    assert make_handouts.format_duration(None) == "not measured"
    nb.cells[0].metadata["execution"] = {"iopub.execute_input": "2026-12-02T19:09:25.375Z",
                                         "shell.execute_reply": "2026-12-02T19:09:26Z"}
    nb.cells[1].metadata["execution"] = {"iopub.execute_input": "2026-12-02T19:09:26.1Z",
                                         "shell.execute_reply": "2026-12-02T19:11:30.375Z"}
    assert make_handouts.run_seconds(nb) == pytest.approx(125.0)
    assert make_handouts.format_duration(125.0) == "2 min 05 s" and make_handouts.format_duration(42.4) == "42 s"


@pytest.mark.parametrize("tex", [r"\frac{1}{2}\sum_i w_i^2", r"\lVert W - \hat W \rVert_F^2",
                                 r"c(i) = \arg\min_k |w_i - \mu_k|", r"\operatorname{round}(x/s) + z",
                                 r"\underbrace{a+b}_{\text{two}}", r"\mathbb{E}[\,\mathcal{L}\,]"])
def test_course_tex_renders_to_mathml(tex):
    out = make_handouts.tex_to_mathml(tex)
    assert out.startswith("<math") and "\\" not in re.sub(r"<[^>]+>", "", out)


def test_styled_letters_use_unicode_since_browsers_ignore_mathvariant():
    out = make_handouts.tex_to_mathml(r"\mathbb{1}[x] + \mathcal{N}(0, 1) + \mathbf{v}")
    assert re.findall(r'mathvariant="([^"]+)"', out) in ([], ["normal"])
    assert "\U0001D7D9" in out or "&#x1D7D9;" in out  # double-struck digit one
    assert "\U0001D4A9" in out or "&#x1D4A9;" in out  # script capital N


def test_unrenderable_tex_fails_the_build_instead_of_showing_raw_tex():
    with pytest.raises(ValueError, match="cannot render"):
        make_handouts.tex_to_mathml(r"\notacommand{x}")


def test_latex_outputs_are_rendered_too(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", execution_count=1, outputs=[
        nbformat.v4.new_output("execute_result", {"text/latex": "$$\\frac{x}{2}$$", "text/plain": "x/2"},
                               execution_count=1)])])
    nbformat.write(nb, tmp_path / "97_latex.ipynb")
    page = make_handouts.convert(tmp_path / "97_latex.ipynb", tmp_path).read_text(encoding="utf-8")
    assert "<math" in page and raw_tex(page) == []


def test_saved_widget_state_is_not_embedded(tmp_path):
    """A notebook run where a library created widgets keeps their state in its metadata; nbconvert would put it
    in a <script> that nothing offline runs."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 96 · widgets")])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                           "version_minor": 0}}
    nbformat.write(nb, tmp_path / "96_widgets.ipynb")
    page = make_handouts.convert(tmp_path / "96_widgets.ipynb", tmp_path).read_text(encoding="utf-8")
    assert "<script" not in page and "widget-state" not in page


def test_markdown_maths_outside_code_only():
    out = make_handouts.markdown_to_html("Cost $O(n^2)$, display $$\\frac{a}{b}$$ and code `$HOME` and\n\n"
                                         "```\nprice = \"$5\"\n```\n")
    assert out.count("<math") == 2 and 'display="block"' in out
    assert "<code>$HOME</code>" in out and "$5" in out


def test_the_checks_catch_what_they_look_for():
    bad = ('<html><head><script src="https://cdn.example/mathjax.js"></script>'
           '<link rel="stylesheet" href="//cdn.example/a.css"><style>@import "x.css";</style></head>'
           '<body><img src="http://example.org/x.png"><p style="background:url(https://e.org/b.png)">'
           'Raw $x^2$ and \\frac{a}{b}</p><a href="https://arxiv.org/abs/1510.00149">paper</a>'
           '<pre>$kept in code$</pre><math><mi>x</mi></math></body></html>')
    found = external_resources(bad)
    assert len(found) == 5 and not any("arxiv" in f for f in found)
    assert raw_tex(bad) == ["$x^2$", "\\frac"]


def test_results_table_shows_a_second_metric_where_recorded():
    """Chapter 6's cosine (and chapter 7's perplexity) appear in the index beside the chapter's metric; a
    chapter without them gets no empty column."""
    from bs4 import BeautifulSoup
    recs = _records()
    plain = BeautifulSoup(make_handouts.results_table(recs), "html.parser")
    assert [th.get_text() for th in plain.select("th")][3] == "size"
    recs[0]["cosine"], recs[1]["cosine"] = 1.0, 0.99871234  # baseline and int8; int4 has none
    soup = BeautifulSoup(make_handouts.results_table(recs), "html.parser")
    assert [th.get_text() for th in soup.select("th")][3] == "cosine"
    rows = {tr.find_all("td")[0].get_text(): [td.get_text() for td in tr.find_all("td")]
            for tr in soup.select("tr")[1:]}
    assert rows["baseline"][3] == "1" and rows["int8"][3] == "0.9987" and rows["int4"][3] == "–"
    assert rows["int4"][4] == "1.0 KiB"  # the size column moved right, not lost
