"""RESULTS.md quotes figures/ exactly: every number in its tables matches the CSV it names."""

from pathlib import Path

import pytest

from t2istudy.reports.results_check import (
    CheckReport,
    ResultsCheckError,
    check_results,
    compare_cell,
    format_like,
    key_words,
    parse_tables,
    rewrite_cell,
    update_results,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "RESULTS.md"

ARM_ROW = "| Gemma-3 `last` | 3 | 0.281 | 0.216 | 0.066 [0.051, 0.081] |"
CLAIM_ROW = "| 1 | | SmolLM2 | 3 | **+0.013 [+0.004, +0.024] held** |"


def check_edited(tmp_path: Path, old: str, new: str) -> CheckReport:
    """Check a copy of RESULTS.md with one edit, against the real figures/."""
    text = RESULTS.read_text()
    assert text.count(old) == 1, f"the test expects {old!r} once in RESULTS.md"
    copy = tmp_path / "RESULTS.md"
    copy.write_text(text.replace(old, new))
    return check_results(copy, root=REPO)


def test_results_md_matches_figures() -> None:
    report = check_results(RESULTS)
    assert [str(mismatch) for mismatch in report.mismatches] == []
    # every table under a source comment was checked: one that silently checked nothing would show here
    text = RESULTS.read_text()
    declared = text.count("<!-- source:") - text.count("<!-- source: none")  # 'none': quotes no CSV
    assert report.tables_checked == declared >= 10
    assert report.numbers_checked >= 300


def test_a_changed_number_is_caught_naming_table_row_and_column(tmp_path: Path) -> None:
    report = check_edited(tmp_path, ARM_ROW, ARM_ROW.replace("0.066 [0.051", "0.067 [0.051"))
    assert len(report.mismatches) == 1
    mismatch = report.mismatches[0]
    assert mismatch.table.endswith("(Claims on `cpu-small`)")
    assert mismatch.row == "Gemma-3 last"
    assert mismatch.column == "above the floor [95% CI]"
    assert (mismatch.quoted, mismatch.csv_value) == ("0.067", "+0.066 (0.0659388888888889)")


def test_a_changed_ci_bound_and_verdict_are_caught(tmp_path: Path) -> None:
    edited = CLAIM_ROW.replace("+0.024] held", "+0.025] inconclusive")
    report = check_edited(tmp_path, CLAIM_ROW, edited)
    problems = sorted((m.row, m.column, m.quoted, m.problem) for m in report.mismatches)
    assert problems == [
        (
            "1 SmolLM2",
            "score [95% CI]",
            "**+0.013 [+0.004, +0.025] inconclusive**",
            "the CSV's word is missing from the cell",
        ),
        ("1 SmolLM2", "score [95% CI]", "+0.025", "number differs from the CSV"),
    ]


def test_a_table_without_a_source_comment_is_reported(tmp_path: Path) -> None:
    report = check_edited(tmp_path, "<!-- source: none (the protocol's settings, not results) -->\n", "")
    assert len(report.mismatches) == 1
    assert report.mismatches[0].table.startswith("table at line ")
    assert "Protocol" in report.mismatches[0].table
    assert "no source comment" in report.mismatches[0].problem


def test_a_missing_source_csv_names_the_path(tmp_path: Path) -> None:
    old = "<!-- source: figures/fraction/prompt_following.csv where skill=overall"
    with pytest.raises(FileNotFoundError, match=r"figures/fraction/gone\.csv does not exist"):
        check_edited(tmp_path, old, old.replace("prompt_following", "gone"))


def test_an_undeclared_column_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsCheckError, match=r"not declared: \['seeds'\]"):
        check_edited(
            tmp_path, "column: seeds = n_seeds\ncolumn: fraction = score", "column: fraction = score"
        )


def test_a_row_no_csv_row_matches_is_reported(tmp_path: Path) -> None:
    report = check_edited(tmp_path, ARM_ROW, ARM_ROW.replace("`last`", "`layer:4`"))
    assert [(m.row, m.column) for m in report.mismatches][:1] == [("Gemma-3 layer:4", "seeds")]
    assert "0 rows of figures/fraction/prompt_following.csv match" in report.mismatches[0].problem


def test_compare_cell_rounds_to_the_quoted_precision() -> None:
    assert compare_cell("+0.051 [+0.019, +0.082]", [0.05128, 0.01933, 0.08162]) == ([], 3)
    assert compare_cell("0.05 [0.02, 0.08]", [0.05128, 0.01933, 0.08162]) == ([], 3)
    assert compare_cell("-0.002", [-0.0021]) == ([], 1)
    assert compare_cell("+0.001", [-0.0021]) == (
        [("+0.001", "-0.002 (-0.0021)", "number differs from the CSV")],
        1,
    )
    assert compare_cell("0.066", [0.066, 0.05, 0.08]) == (
        [("0.066", "0.066, 0.05, 0.08", "quotes 1 numbers where the CSV gives 3")],
        0,
    )


def test_a_number_quoted_below_its_columns_precision_is_caught() -> None:
    # "0 [0, 0]" (a new row's placeholder) rounds right for any value under 0.5: its column says 3 decimals
    assert compare_cell("0 [0, 0]", [0.1314, 0.11, 0.152], column_decimals=3)[0] == [
        ("0", "0.131", "quoted at 0 decimals where its column uses 3"),
        ("0", "0.110", "quoted at 0 decimals where its column uses 3"),
        ("0", "0.152", "quoted at 0 decimals where its column uses 3"),
    ]
    # a verdict's remark quotes a count, which no column precision applies to
    remark = "-0.014 [-0.038, +0.010] inconclusive (preliminary: 1 seed)"
    assert compare_cell(remark, [-0.0141, -0.038, 0.0104, 1.0], column_decimals=3) == ([], 4)
    assert rewrite_cell("0 [0, 0]", ["0.1314", "0.11", "0.152"], column_decimals=3) == "0.131 [0.110, 0.152]"


def test_a_low_precision_cell_fails_the_check_naming_the_cell(tmp_path: Path) -> None:
    # "0 [0, 0]" rounds right for any value under 0.5: in a three-decimal column it must fail, by name
    report = check_edited(tmp_path, ARM_ROW, ARM_ROW.replace("0.066 [0.051, 0.081]", "0 [0, 0]"))
    cells = {(m.table.split("(")[-1], m.row, m.column, m.quoted, m.problem) for m in report.mismatches}
    assert cells == {
        (
            "Claims on `cpu-small`)",
            "Gemma-3 last",
            "above the floor [95% CI]",
            "0",
            "quoted at 0 decimals where its column uses 3",
        )
    }
    assert len(report.mismatches) == 3  # the mean and both bounds


def test_write_fills_a_placeholder_row_at_its_columns_precision(tmp_path: Path) -> None:
    copy = tmp_path / "RESULTS.md"
    copy.write_text(RESULTS.read_text().replace(ARM_ROW, ARM_ROW.replace("0.066 [0.051, 0.081]", "0 [0, 0]")))
    assert [m.quoted for m in check_results(copy, root=REPO).mismatches] == ["0", "0", "0"]
    changed, report = update_results(copy, root=REPO)
    assert (changed, report.mismatches) == (1, [])
    assert copy.read_text() == RESULTS.read_text()


def test_key_cells_become_csv_ids() -> None:
    assert key_words("Gemma-3 `layer:9`", 2) == ["gemma3-270m", "layer:9"]
    assert key_words("attribute (binding)", 1) == ["attribute"]
    assert key_words("**SmolLM2**", 1) == ["smollm2-135m"]


def test_parse_tables_keeps_the_comment_right_above_only() -> None:
    markdown = "# A\n\n<!-- source: x.csv -->\n| a |\n|---|\n| 1 |\n\nprose\n\n| b |\n|---|\n| 2 |\n"
    first, second = parse_tables(markdown)
    assert (first.line, first.heading, first.header, first.rows, first.comment) == (
        4,
        "A",
        ["a"],
        [["1"]],
        "source: x.csv",
    )
    assert (second.line, second.header, second.comment) == (10, ["b"], None)


def test_rewrite_cell_keeps_the_quoted_precision_and_rebuilds_the_verdict() -> None:
    held = "**+0.034 [+0.013, +0.055] held (preliminary: 2 seeds)**"
    assert (
        rewrite_cell(held, ["-0.0091", "-0.06", "0.0411", "inconclusive"])
        == "-0.009 [-0.060, +0.041] inconclusive"
    )
    level = "+0.025 [-0.037, +0.090] inconclusive"
    assert rewrite_cell(level, ["0.0361", "0.002", "0.073", "held (preliminary: 2 seeds)"]) == (
        "**+0.036 [+0.002, +0.073] held (preliminary: 2 seeds)**"
    )
    assert rewrite_cell("-0.02 [-0.05, +0.01] inconclusive", ["-0.061", "-0.08", "-0.04", "failed"]) == (
        "**-0.06 [-0.08, -0.04] failed**"
    )
    assert rewrite_cell("`0.097` [0.072, 0.121]", ["0.1304", "0.0916", "0.165"]) == "`0.130` [0.092, 0.165]"
    assert rewrite_cell("3", ["2"]) == "2"
    assert rewrite_cell("0.097", ["0.1", "0.05"]) is None  # quotes 1 number where the CSV gives 2
    assert rewrite_cell("0.1 [0.0, 0.2]", ["0.1", "0.0", "0.2", "held"]) is None  # no verdict to replace
    assert (format_like("\u22120.50", -0.251), format_like("+0.5", 0.0), format_like("12", 11.6)) == (
        "\u22120.25",
        "+0.0",
        "12",
    )


def test_write_restores_hand_edited_rows_from_the_csvs(tmp_path: Path) -> None:
    claim = CLAIM_ROW.replace("**+0.013 [+0.004, +0.024] held**", "+0.020 [-0.004, +0.030] inconclusive")
    arm = ARM_ROW.replace("0.066 [0.051, 0.081]", "0.071 [0.050, 0.081]")
    text = RESULTS.read_text()
    copy = tmp_path / "RESULTS.md"
    copy.write_text(text.replace(CLAIM_ROW, claim).replace(ARM_ROW, arm))
    assert len(check_results(copy, root=REPO).mismatches) == 6  # 2 numbers, then 3 numbers and a verdict
    changed, report = update_results(copy, root=REPO)
    assert (changed, report.mismatches) == (2, [])
    assert copy.read_text() == text  # byte for byte: the same rows, markup and precision as written


def test_write_leaves_what_it_cannot_rewrite_and_reports_it(tmp_path: Path) -> None:
    copy = tmp_path / "RESULTS.md"
    copy.write_text(RESULTS.read_text().replace(ARM_ROW, ARM_ROW.replace("0.066 [0.051, 0.081]", "0.066")))
    changed, report = update_results(copy, root=REPO)
    assert changed == 0
    assert [m.problem for m in report.mismatches] == ["quotes 1 numbers where the CSV gives 3"]
    assert ARM_ROW.replace("0.066 [0.051, 0.081]", "0.066") in copy.read_text()
