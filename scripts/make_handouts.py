"""Turn executed notebooks into HTML handouts that work offline, plus an index page.

    python scripts/make_handouts.py build/executed build/handouts [--results build/results]

Every page stands alone with no network: maths is rendered to MathML when the page is built (latex2mathml;
browsers display MathML natively), figures are embedded as base64 images, styles are inline, and no script
or stylesheet is loaded from anywhere (nbconvert's MathJax, require.js and widget scripts are left out).
Each page opens with a table of contents built from its headings. A print stylesheet makes a browser's
"Print" give clean pages.

The index says, for each chapter, what it teaches (the learning goals of its first cell), its run time (as
measured when the notebook was executed, from the cells' execution timestamps; "not measured" otherwise) and
its headline results from the chapter's results file (<results>/<stem>.json, written by the notebook;
course_lib.records): the baseline, the smallest and the fastest model whose 95% interval overlaps the
baseline's, each with the controls recorded against it.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import sys
import unicodedata
from datetime import datetime
from pathlib import Path

import jinja2
import nbformat
from bs4 import BeautifulSoup
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from nbconvert.exporters.html import contextfilter
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

ROOT = Path(__file__).resolve().parent.parent

# TeX that latex2mathml does not know, rewritten to TeX it does
TEX_REWRITES = [(re.compile(r"\\arg(?![A-Za-z])"), r"\\operatorname{arg}")]


_VARIANT_NAMES = {"double-struck": ("DOUBLE-STRUCK", "DOUBLE-STRUCK"), "script": ("SCRIPT", "SCRIPT"),
                  "bold": ("BOLD", None), "fraktur": ("FRAKTUR", "BLACK-LETTER"), "bold-italic": ("BOLD ITALIC", None),
                  "sans-serif": ("SANS-SERIF", None), "monospace": ("MONOSPACE", None)}
_DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()


def _styled(char: str, variant: str) -> str:
    """``char`` as a Unicode mathematical alphanumeric symbol of ``variant`` (e.g. E -> U+1D53C for
    double-struck), or ``char`` itself where Unicode has none."""
    math_name, legacy_name = _VARIANT_NAMES[variant]
    if char.isascii() and char.isdigit():
        names = [f"MATHEMATICAL {math_name} DIGIT {_DIGITS[int(char)]}"]
    elif char.isascii() and char.isalpha():
        case = "CAPITAL" if char.isupper() else "SMALL"
        names = [f"MATHEMATICAL {math_name} {case} {char.upper()}"]
        if legacy_name:  # letters Unicode had before the mathematical block (C, H, N, P, Q, R, Z, ...)
            names.append(f"{legacy_name} {case} {char.upper()}")
    else:
        return char
    for name in names:
        try:
            return unicodedata.lookup(name)
        except KeyError:
            pass
    return char


def _unicode_variants(mathml: str) -> str:
    """Browsers implementing MathML Core ignore mathvariant (except "normal"): \\mathbb{E}, \\mathcal{N},
    \\mathbf{x} are written with the Unicode characters that carry the style instead."""
    def repl(m):
        tag, before, variant, after, text = m.groups()
        if variant not in _VARIANT_NAMES:
            return m.group(0)
        return f"<{tag}{before}{after}>{''.join(_styled(c, variant) for c in text)}<"
    return re.sub(r'<(mi|mn|mtext)([^>]*?) mathvariant="([^"]+)"([^>]*)>([^<]*)<', repl, mathml)


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """MathML for one formula (TeX without its $ delimiters); raises ValueError naming the formula."""
    src = tex.strip()
    for pattern, repl in TEX_REWRITES:
        src = pattern.sub(repl, src)
    try:
        out = latex_to_mathml(src, display="block" if display else "inline")
    except Exception as e:  # latex2mathml raises several exception types
        raise ValueError(f"cannot render ${tex}$ as MathML: {type(e).__name__}: {e}") from e
    # an unknown command comes out as text ("\foo"): a handout must not show raw TeX
    if "\\" in re.sub(r"<[^>]+>", "", out):
        raise ValueError(f"cannot render ${tex}$ as MathML: an unknown command stays as text in {out}")
    # HTML puts <math> in the MathML namespace by itself; an explicit xmlns would make nbconvert's heading
    # anchors (ElementTree) write <ns0:math>, which browsers show as plain text
    return _unicode_variants(out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', ""))


class MathMLRenderer(IPythonRenderer):
    """nbconvert's Markdown renderer, with every formula rendered to MathML instead of left for MathJax."""

    def block_math(self, body: str) -> str:
        return tex_to_mathml(body, display=True)

    def inline_math(self, body: str) -> str:
        return tex_to_mathml(body)

    def latex_environment(self, name: str, body: str) -> str:
        return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)


def markdown_to_html(source: str, **kw) -> str:
    """Markdown (with $...$ and $$...$$ maths) to HTML with MathML."""
    return MarkdownWithMath(renderer=MathMLRenderer(escape=False, **kw)).render(source)


class OfflineHTMLExporter(HTMLExporter):
    """The lab template without any remote script, Markdown maths as MathML."""

    @contextfilter
    def markdown2html(self, context, source):
        cell = context.get("cell", {})
        return markdown_to_html(source, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
                                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                                anchor_link_text=self.anchor_link_text,
                                exclude_anchor_links=self.exclude_anchor_links, **self.lexer_options)


STYLE = """
nav.toc { border: 1px solid #ccc; background: #fafafa; padding: .5em 1em; margin: 1em 0 2em;
          font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px; line-height: 1.5; }
nav.toc ul { list-style: none; padding-left: 0; margin: .3em 0; }
nav.toc li.level-2 { margin-left: 1.2em; } nav.toc li.level-3 { margin-left: 2.4em; }
math { font-family: "STIX Two Math", "Latin Modern Math", "Cambria Math", math; font-size: 1.05em; }
math[display="block"] { margin: .6em 0; }
table.results { border-collapse: collapse; margin: .5em 0; font-size: .95em; }
table.results th, table.results td { border-bottom: 1px solid #ddd; padding: .2em .6em; text-align: right; }
table.results th:nth-child(-n+2), table.results td:nth-child(-n+2) { text-align: left; }
table.results td:nth-child(n+3) { white-space: nowrap; }
table.results tr.control td { color: #555; font-style: italic; }
body.index { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60em;
             margin: 2em auto; padding: 0 1em; line-height: 1.45; }
section.chapter { border-top: 1px solid #ccc; padding-top: .5em; margin-top: 1.5em; }
"""

PRINT_STYLE = """
@page { size: auto; margin: 15mm 12mm; }
@media print {
  html, body { background: #fff !important; }
  body, main { margin: 0 !important; padding: 0 !important; max-width: none !important; }
  .jp-InputPrompt, .jp-OutputPrompt, a.anchor-link, .jp-Collapser { display: none !important; }
  .jp-Cell { padding: 0 !important; }
  h1, h2, h3, h4 { break-after: avoid; page-break-after: avoid; }
  .jp-InputArea, .jp-OutputArea-output, img, figure, table, math[display="block"] {
    break-inside: avoid; page-break-inside: avoid; }
  img { max-width: 100% !important; height: auto !important; }
  pre { white-space: pre-wrap !important; overflow-wrap: anywhere; }
  .jp-InputArea-editor, .jp-InputArea-editor pre { background: #f6f6f6 !important; border: 1px solid #ddd; }
  nav.toc { break-after: page; page-break-after: always; }
  a { color: inherit; text-decoration: none; }
  main a[href^="http"]::after, body.index a[href^="http"]::after { content: " (" attr(href) ")";
    font-size: .85em; color: #555; }
}
"""

TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">""" + STYLE + PRINT_STYLE + """</style>{%- endblock extra_css -%}
"""


def exporter() -> OfflineHTMLExporter:
    return OfflineHTMLExporter(template_name="lab", template_file="handout.html.j2",
                               extra_loaders=[jinja2.DictLoader({"handout.html.j2": TEMPLATE})])


def toc(body: str) -> str:
    """A table of contents of the page's h1-h3 headings, linking the ids nbconvert gave them."""
    soup = BeautifulSoup(body, "html.parser")
    items = []
    for h in soup.find_all(["h1", "h2", "h3"]):
        if not h.get("id"):
            continue
        for a in h.find_all("a", class_="anchor-link"):
            a.decompose()
        items.append(f'<li class="level-{h.name[1]}"><a href="#{html.escape(h["id"])}">{h.decode_contents()}</a></li>')
    return '<nav class="toc"><b>Contents</b><ul>' + "".join(items) + "</ul></nav>"


def convert(src: Path, dest_dir: Path) -> Path:
    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)  # saved widget state: nbconvert would embed it in a <script>; nothing runs here
    for cell in nb.cells:  # a LaTeX output (e.g. sympy's) is shown through the Markdown renderer, as MathML
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "text/latex" in data and not {"text/html", "text/markdown"} & set(data):
                data["text/markdown"] = data.pop("text/latex")
    title = chapter_title(nb)
    name = title if title and "$" not in title else src.stem
    body, _ = exporter().from_notebook_node(nb, resources={"metadata": {"name": name}})
    body = body.replace("<main>", "<main>" + toc(body), 1)
    out = dest_dir / (src.stem + ".html")
    out.write_text(body, encoding="utf-8")
    return out


# ---- the index page -------------------------------------------------------------------------------------

def _first_markdown(nb) -> str:
    return next((c.source for c in nb.cells if c.cell_type == "markdown" and c.source.strip()), "")


def chapter_title(nb) -> str:
    first = _first_markdown(nb).strip().splitlines()
    return re.sub(r"^#+\s*", "", first[0]).strip() if first else ""


def chapter_goals(nb) -> str:
    """The Markdown of what the chapter teaches: its "Learning goals" (or "you will") list, else the first
    paragraph after the title."""
    text = _first_markdown(nb)
    m = re.search(r"^.*(?:learning goals|you will).*\n((?:[-*] .*\n?(?:[ \t]+\S.*\n?)*)+)", text,
                  re.IGNORECASE | re.MULTILINE)
    if m:
        return m.group(1)
    paras = [p for p in re.split(r"\n\s*\n", text) if p.strip() and not p.lstrip().startswith("#")]
    return paras[0] if paras else ""


def run_seconds(nb) -> float | None:
    """Seconds from the first cell's start to the last cell's end in the stored run (nbclient's execution
    timestamps); None when the notebook holds none."""
    starts, ends = [], []
    for c in nb.cells:
        ex = c.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex:
            starts.append(ex["iopub.execute_input"])
        end = ex.get("shell.execute_reply") or ex.get("iopub.status.idle")
        if end:
            ends.append(end)
    if not starts or not ends:
        return None
    t = [datetime.fromisoformat(s.replace("Z", "+00:00")) for s in (min(starts), max(ends))]
    return max(0.0, (t[1] - t[0]).total_seconds())


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s"


def _overlaps(r, base) -> bool:
    lo, hi = r["accuracy_ci"]
    blo, bhi = base["accuracy_ci"]
    return lo <= bhi and blo <= hi


def headline(records: list[dict]) -> list[tuple[str, dict]]:
    """(role, record) rows: the baseline; the smallest and the fastest model whose 95% interval overlaps the
    baseline's (controls excluded), each followed by the controls recorded against it."""
    base = next((r for r in records if r["name"] == "baseline"), None)
    if base is None:
        return []
    rows = [("baseline", base)]
    candidates = [r for r in records if r is not base and not r.get("control_of") and _overlaps(r, base)]
    picks = []
    if candidates:
        picks.append(("smallest", min(candidates, key=lambda r: r["size_bytes"])))
        timed = [r for r in candidates if r.get("latency_ms")]
        if timed:
            picks.append(("fastest", min(timed, key=lambda r: r["latency_ms"])))
    seen = {id(base)}
    for role, r in picks:
        if id(r) in seen:
            rows = [(f"{old} and {role}" if x is r else old, x) for old, x in rows]
            continue
        seen.add(id(r))
        rows.append((role, r))
        rows += [("control", c) for c in records if c.get("control_of") == r["name"] and id(c) not in seen]
        seen.update(id(c) for c in records if c.get("control_of") == r["name"])
    return rows


def _second(v) -> str:
    """A second metric's cell: a float to 4 significant digits, "–" where the record has none."""
    return "–" if v is None else f"{v:.4g}" if isinstance(v, (int, float)) else html.escape(str(v))


def results_table(records: list[dict]) -> str:
    from course_lib.records import SECOND_METRICS, format_accuracy  # imports torch: only with results to show

    rows = headline(records)
    if not rows:
        return "<p>The results file has no <code>baseline</code> record.</p>"
    base = rows[0][1]
    metric = html.escape(base.get("metric", "accuracy"))
    # a chapter's second metric (chapter 6's cosine to fp32, chapter 7's perplexity) is shown where it was recorded
    second = [k for k in SECOND_METRICS if any(r.get(k) is not None for _, r in rows)]
    out = [f'<table class="results"><tr><th>model</th><th>role</th><th>{metric} (mean ± sd [95% interval])</th>'
           + "".join(f"<th>{k}</th>" for k in second)
           + "<th>size</th><th>× smaller</th><th>latency</th><th>× faster</th></tr>"]
    for role, r in rows:
        smaller = f"{base['size_bytes'] / r['size_bytes']:.1f}" if r.get("size_bytes") else "–"
        lat = f"{r['latency_ms']:.2f} ms" if r.get("latency_ms") else "not measured"
        faster = (f"{base['latency_ms'] / r['latency_ms']:.2f}" if r.get("latency_ms") and base.get("latency_ms")
                  else "–")
        role_txt = f"control of {r['control_of']}" if role == "control" else role
        out.append(f'<tr class="{"control" if role == "control" else "model"}"><td>{html.escape(r["name"])}</td>'
                   f"<td>{html.escape(role_txt)}</td><td>{html.escape(format_accuracy(r))}</td>"
                   + "".join(f"<td>{_second(r.get(k))}</td>" for k in second) +
                   f"<td>{r['size_bytes'] / 1024:,.1f} KiB</td><td>{smaller}</td><td>{lat}</td><td>{faster}</td></tr>")
    out.append("</table>")
    n = len(records)
    out.append(f"<p><small>{n} models recorded; \"smallest\" and \"fastest\" are among those whose 95% interval "
               "overlaps the baseline's, next to the controls recorded against them; latency is single-thread, "
               "batch 64, and × faster is against the baseline's fastest fp32 configuration. Every model: "
               "<code>build/results.md</code> (<code>make results</code>).</small></p>")
    return "".join(out)


def index_page(entries: list[dict]) -> str:
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1.0'>",
             "<title>Neural-network compression: handouts</title>",
             f"<style>{STYLE}{PRINT_STYLE}</style></head><body class='index'>",
             "<h1>Neural-network compression: handouts</h1>",
             "<p>One page per chapter, each readable offline and printable. Run times are measured, from the "
             "execution timestamps of the notebook each page was made from; results come from the chapter's "
             "own results file (<code>build/results/</code>).</p>"]
    for e in entries:
        parts.append(f'<section class="chapter"><h2><a href="{e["href"]}">{e["title"]}</a></h2>')
        parts.append(f'<p class="runtime"><b>Run time:</b> {e["runtime"]}</p>')
        if e["goals"]:
            parts.append(f'<h3>What it teaches</h3>{e["goals"]}')
        parts.append(f'<h3>Headline results</h3>{e["results"]}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline(markdown: str) -> str:
    out = markdown_to_html(markdown, exclude_anchor_links=True).strip()
    return re.sub(r"^<p>(.*)</p>$", r"\1", out, flags=re.S)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executed", type=Path, help="folder of executed NN_*.ipynb")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--results", type=Path, default=None,
                        help="folder of <stem>.json results (default: $COURSE_RESULTS or build/results)")
    args = parser.parse_args(argv)
    results = args.results
    if results is None:
        import os
        results = Path(os.environ.get("COURSE_RESULTS", ROOT / "build" / "results"))
    args.out.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(args.executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        print(f"no executed notebooks in {args.executed}: run `make run` first", file=sys.stderr)
        return 1
    entries = []
    for path in notebooks:
        out = convert(path, args.out)
        nb = nbformat.read(path, as_version=4)
        seconds = run_seconds(nb)
        runtime = format_duration(seconds)
        if seconds is not None:
            runtime += " (measured when this notebook was executed)"
        res = results / f"{path.stem}.json"
        if res.exists():
            table = results_table(json.loads(res.read_text(encoding="utf-8")))
        else:
            table = (f"<p>No results file yet (<code>{html.escape(res.name)}</code>): run the chapter "
                     "(<code>make run</code>).</p>")
        goals = chapter_goals(nb)
        entries.append({"href": out.name, "title": _inline(chapter_title(nb) or path.stem), "runtime": runtime,
                        "goals": markdown_to_html(goals, exclude_anchor_links=True) if goals else "",
                        "results": table})
        print(f"handout: {out}")
    index = args.out / "index.html"
    index.write_text(index_page(entries), encoding="utf-8")
    print(f"index: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
