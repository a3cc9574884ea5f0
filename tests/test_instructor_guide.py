"""The instructor guide quotes chapter 11's run, so it must follow that run.

``book/instructor_guide.md`` is a plain Markdown page (no slots): its answer key copies numbers
from chapter 11's stored outputs. The rule checked here:

1. Every phrase in ``CHECKED`` below is a sentence fragment of the guide written as a template
   with ``{{slots}}``; it is rendered (``frcnn_lite.book.bind.render``) from chapter 11's
   stored values -- what its cells bind, plus the tables its cells print -- and from the
   paper registry (``frcnn_lite.paper``), and must occur in the guide (whitespace ignored).
   Re-executing chapter 11 with different results changes the rendered phrase, and this test
   fails until the guide is updated.
2. From "## Assigning the ablations" to the end of the page, every number that looks like a
   result (a decimal, a percentage, seconds, points, "N times") must lie inside one of those
   checked phrases, in ``ALLOWED`` (definitions), or in a phrase quoted from a repository file
   (``QUOTED``). A new, unchecked result in the answer key fails.
3. The page uses the arXiv v3 arabic table numbers only (no "Table VIII").
"""

import re
from pathlib import Path

import nbformat
import pytest

from frcnn_lite import paper
from frcnn_lite.book import bind

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "book" / "instructor_guide.md"
CHAPTER = ROOT / "book" / "11_ablations.ipynb"

# Numbers that are definitions, not results.
ALLOWED = ["IoU 0.5"]
# Phrases of the guide copied from a file of the repository (file, phrase).
QUOTED = [("frcnn_lite/book/ablations.py",
           "20 RPN iterations took 17 s with two threads and 1 s with one")]

CHECKED = [
    # what the run used
    "inputs {{input_size}}, anchor scales {{small_scale:g}}, {{three}}",
    "{{iterations}} iterations, {{num_train}} training and {{num_test}} test images per dataset",
    "# ({{three}}) and {{small_scale:g}} here",
    # anchor coverage (ch11-ex1's stored output; tests/test_exercises.py)
    "at least {{cov_required:.0%}} of the boxes under {{cov_max_side:g}} px in the small-objects "
    "data have an anchor with IoU ≥ {{cov_iou:g}}, with at most {{cov_max_anchors}} anchors",
    "boxes under {{cov_max_side:g}} px, IoU ≥ {{cov_iou:g}}",
    "prints {{cov_paper}} for the paper's scales (128, 256, 512) and {{cov_16}} for (16, 32, 64)",
    "`tests/test_exercises.py` asserts {{cov_test}} for (32, 64, 128)",
    # small-object anchors
    "AP_small {{small_ap_without}} (seeds {{small_seeds}}) with scales ({{three}}) and "
    "{{small_ap_with}} with ({{small_scale:g}}, {{three}}), means {{small_without:.1f}}% and "
    "{{small_with:.1f}}%: a gain of {{small_gain:+.1f}} points",
    "a seed-to-seed spread of at most {{seed_noise:.1f}} points",
    # Table 8
    "(paper: {{paper8}} for one 256² anchor",
    "one {{t8_one_scale:g}} px anchor {{t8_one:.1f}}% mAP; one scale, three ratios "
    "{{t8_one_ratios:.1f}}%; three scales, one ratio {{t8_three_one:.1f}}%; three by three "
    "{{t8_full:.1f}}%",
    "with three scales, {{ratio_summary}}",
    "The chapter's verdict on that row: {{ratio_verdict}}",
    # Table 9
    "**Table 9** (paper: {{paper9}}): {{t9}}, best at λ = {{t9_best:g}}; λ = 0.1 is the lowest",
    "mAP moves by {{lambda_spread_1_100:.1f}} points against the paper's "
    "{{their_spread_1_100:.1f}}",
    # proposals (Table 2)
    "{{topn}} proposals → mAP {{topn_map}}%, recall {{topn_recall}}%",
    "From {{flat_from}} proposals up, mAP stays within {{flat_range:.1f}} points",
    "{{paper2}} at {{paper2_n}}",
    # Table 10
    "{{stage_iterations}} iterations each: one stage {{one_map:.1f}}% mAP, two stages "
    "{{two_map:.1f}}%, a gap of {{stage_gap:.1f}} points against the paper's "
    "{{their_stage_gap:.1f}} ({{paper10_one}} against {{paper10_two}}, ZF)",
    "AP drops by {{lost_small:.1f}} points on small, {{lost_medium:.1f}} on medium and "
    "{{lost_large:.1f}} on large objects",
    "at {{scratch_iterations}} iterations, small-object AP came out near zero",
    # what it costs
    "{{n_fresh}} of its {{n_rows}} rows were computed",
    "| the chapter up to its cost section, clean run | {{chapter_s:.0f}} s |",
    "| reading all its rows back from the cache | {{read_s:.2f}} s |",
    "(all images of both datasets, once) | {{features_s:.1f}} s |",
    "({{iterations}} iterations, evaluation not included) | {{rpn_min:.1f}} to {{rpn_max:.1f}} s |",
    "/ the one-stage head | {{two_train_s:.1f}} s / {{one_train_s:.1f}} s |",
    "| {{topn_s_first}} s ({{topn_first}} proposals) to {{topn_s_last}} s ({{topn_last}}) |",
]

RESULT = re.compile(r"(?<![§\d.])[-+]?\d+(?:\.\d+)?\s*(?:%|s\b|points?\b|times\b)|(?<![§\d.])\d+\.\d+")


def _norm(text):
    return " ".join(text.split())


def printed_tables(nb):
    """Every table ``experiments.table`` printed in the chapter, keyed by the configuration
    columns before "mAP"; each row a dict {column: text} (columns found by header position)."""
    tables = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "stream":
                continue
            for block in re.split(r"\n\s*\n", out["text"]):
                lines = [line for line in block.splitlines() if line.strip()]
                if not lines or "mAP" not in lines[0].split() or "seconds" not in lines[0]:
                    continue
                heads = [(m.start(), m.group()) for m in re.finditer(r"\S+", lines[0])]
                names = [name for _, name in heads]
                rows = []
                for line in lines[1:]:
                    cells = {}
                    for j, (start, name) in enumerate(heads):
                        end = heads[j + 1][0] if j + 1 < len(heads) else None
                        cells[name] = line[start:end].strip()
                    rows.append(cells)
                tables[tuple(names[:names.index("mAP")])] = rows
    return tables


def chapter_values():
    nb = nbformat.read(CHAPTER, as_version=4)
    values = dict(bind.stored_values(nb))
    tables = printed_tables(nb)
    values["input_size"] = values["settings"]["input size"]
    values["num_train"] = int(re.search(r"(\d+) training", values["settings"]["schedule"])[1])

    three = f"({values['three']})"
    small = [r for r in tables[("scales", "seed")] if r["scales"] == three]
    small_plus = [r for r in tables[("scales", "seed")] if r["scales"] != three]
    values["small_ap_without"] = " / ".join(r["AP_small"] + "%" for r in small)
    values["small_ap_with"] = " / ".join(r["AP_small"] + "%" for r in small_plus)
    values["small_seeds"] = " / ".join(r["seed"] for r in small)
    assert [r["seed"] for r in small] == [r["seed"] for r in small_plus]

    lam = tables[("lambda_reg",)]
    values["t9"] = ", ".join(f"λ = {r['lambda_reg']} → {r['mAP']}%" for r in lam)
    values["t9_best"] = float(max(lam, key=lambda r: float(r["mAP"]))["lambda_reg"])

    topn = tables[("post_nms_top_n_test",)]
    values["topn"] = " / ".join(r["post_nms_top_n_test"] for r in topn)
    values["topn_map"] = " / ".join(r["mAP"] for r in topn)
    values["topn_recall"] = " / ".join(r["recall"] for r in topn)
    values["topn_first"], values["topn_last"] = (topn[0]["post_nms_top_n_test"],
                                                 topn[-1]["post_nms_top_n_test"])
    values["topn_s_first"], values["topn_s_last"] = topn[0]["seconds"], topn[-1]["seconds"]

    coverage = next(c for c in nb.cells if c.cell_type == "code"
                    and "grade_anchor_coverage((16, 32, 64))" in c.source)
    printed = "".join(o.get("text", "") for o in coverage.outputs)
    paper_scales = re.search(r"only (\d+% \(\d+/\d+\)).*scales \[128\.0, 256\.0, 512\.0\]", printed)
    values["cov_paper"] = paper_scales[1]
    values["cov_16"] = re.search(r"correct: (\d+% \(\d+/\d+\))", printed)[1]
    tests = (ROOT / "tests" / "test_exercises.py").read_text()
    values["cov_test"] = re.search(r'\(32, 64, 128\), "only (\d+%)"', tests)[1]

    one_1, one_3 = paper.value("table8_1x1"), paper.value("table8_1x3")
    values["paper8"] = " / ".join(f"{v:g}" for v in (one_1[1], one_3[1], paper.value("table8_3x1"),
                                                     paper.value("table8_3x3")))
    values["paper9"] = " / ".join(f"{v:g}" for v in paper.value("table9_map"))
    values["paper2"] = " / ".join(f"{v:g}" for v in paper.value("table2_map"))
    values["paper2_n"] = " / ".join(f"{v:g}" for v in paper.value("table2_proposals"))
    values["paper10_one"] = f"{paper.value('table10_one_stage_map'):g}"
    values["paper10_two"] = f"{paper.value('table10_two_stage_map'):g}"
    return values


@pytest.fixture(scope="module")
def rendered():
    values = chapter_values()
    return [_norm(bind.render(template, values)) for template in CHECKED]


def test_guide_quotes_chapter_11_as_stored(rendered):
    guide = _norm(GUIDE.read_text())
    missing = [phrase for phrase in rendered if phrase not in guide]
    assert not missing, ("the instructor guide no longer matches chapter 11's stored run; "
                         "update these phrases in book/instructor_guide.md:\n"
                         + "\n".join(missing))


def test_quoted_phrases_are_in_their_files():
    for path, phrase in QUOTED:
        assert phrase in _norm((ROOT / path).read_text()), (path, phrase)
        assert phrase in _norm(GUIDE.read_text()), phrase


def test_answer_key_has_no_unchecked_results(rendered):
    guide = _norm(GUIDE.read_text())
    text = guide[guide.index("## Assigning the ablations"):]
    for phrase in sorted(rendered + ALLOWED + [p for _, p in QUOTED], key=len, reverse=True):
        text = text.replace(phrase, " <checked> ")
    assert not RESULT.findall(text), (
        "numbers in the instructor guide's answer key that no test ties to a source; bind them "
        f"to chapter 11 in CHECKED or remove them: {RESULT.findall(text)}")


def test_arabic_table_numbers_only():
    guide = GUIDE.read_text()
    assert not re.findall(r"\bTables?\s+[IVXLC]+\b", guide)
    assert "issue tracker" not in guide
