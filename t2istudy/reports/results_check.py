"""Check every number RESULTS.md quotes in its tables against the CSV under figures/ it came from.

RESULTS.md is written by hand while the analysis notebooks rewrite figures/ as runs land, so the two drift
apart unless something compares them. Each markdown table in RESULTS.md carries an HTML comment right above
it that names where its numbers come from:

    <!-- source: figures/fraction/prompt_following.csv where skill=overall
    rows: arm = encoder strategy
    column: seeds = n_seeds
    column: above the floor [95% CI] = above_floor ci_low ci_high
    column: score [95% CI] = figures/claims.csv: diff ci_low ci_high verdict
    column: MiniLM `last` = accuracy where encoder=minilm-l6, representation=last
    text: the paper's claim -->

- ``source:`` the CSV every column reads unless it names its own, and an optional ``where`` filter
  (``col=value, ...``); ``source: none (why)`` marks a table that quotes no CSV (the protocol table).
- ``rows:`` the key columns, ``header = csv_col ...; ...``. A key cell is split into one word per CSV
  column (``Gemma-3 `last``` -> encoder, strategy); markup and ``(remarks)`` are dropped and the
  display names in ``ENCODER_LABELS`` become encoder ids. A key matches a CSV value equal to it or starting
  with it then a non-alphanumeric character (``1`` matches ``1: last < norm_mean``); exactly one CSV row
  must match.
- ``column:`` one checked column, ``header = [path.csv:] csv_col ... [where col=value, ...]``. The numbers
  in the cell, in order, must equal the numbers of those CSV cells rounded to the quoted precision
  (``+0.051``, ``[lo, hi]``), and no number may be quoted with fewer decimals than the column's most (a
  placeholder ``0 [0, 0]`` would round right for any value under 0.5); a CSV cell that holds a word (a
  verdict) must appear in the cell.
- ``text:`` columns that are prose, not checked (``header; header``).

Every column of a sourced table must be a key, a checked column or text. Run it as
``python -m t2istudy.reports.results_check`` (exit status 1 on any mismatch); tests/test_results_md.py
runs it in the test suite. ``--write`` first rewrites every checked cell that disagrees from its CSV
(numbers at the quoted precision, or the column's where that is more; a verdict cell rebuilt as numbers then
verdict, bold if held or failed), so that landing runs update the tables without hand edits, and a new
row can be added with placeholders at any precision; rows and prose are still the author's.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Display names RESULTS.md uses in key cells, and the encoder ids the CSVs use.
ENCODER_LABELS = {
    "Gemma-3": "gemma3-270m",
    "SmolLM2": "smollm2-135m",
    "MiniLM": "minilm-l6",
    "Qwen2.5": "qwen2.5-0.5b",
}

NUMBER = re.compile(r"(?<![\w.])[+\-\u2212]?\d+(?:\.\d+)?(?![\w.])")
WHERE = re.compile(r"\s+where\s+")
OWN_CSV = re.compile(r"^(\S+\.csv):\s*")
# A claim's verdict as the analysis writes it: "held", "failed" or "inconclusive", maybe with a remark after.
VERDICT = re.compile(r"(?:held|failed|inconclusive)(?!\w)", re.IGNORECASE)
# RESULTS.md's rule: a claim that held or failed is bold, an inconclusive one is not.
BOLD_VERDICTS = ("held", "failed")


class ResultsCheckError(ValueError):
    """A source comment that cannot be followed: malformed, naming an unknown column or a missing file."""


@dataclass(frozen=True)
class Mismatch:
    """One quoted number (or a whole table) that does not agree with its CSV."""

    table: str
    row: str
    column: str
    quoted: str
    csv_value: str
    problem: str

    def __str__(self) -> str:
        where = " / ".join(part for part in (self.table, self.row, self.column) if part)
        values = f": quoted {self.quoted!r}, CSV {self.csv_value!r}" if self.quoted or self.csv_value else ""
        return f"{where}: {self.problem}{values}"


@dataclass(frozen=True)
class ColumnSource:
    """Where one checked column's numbers come from."""

    csv: str
    columns: tuple[str, ...]
    where: dict[str, str]


@dataclass
class TableSource:
    """A parsed source comment: how a table's rows and columns map onto CSV rows and columns."""

    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns: dict[str, ColumnSource] = field(default_factory=dict)
    text: tuple[str, ...] = ()
    none_reason: str | None = None


@dataclass(frozen=True)
class Table:
    """A markdown table of RESULTS.md, with the source comment right above it (None if there is none)."""

    line: int
    heading: str
    header: list[str]
    rows: list[list[str]]
    comment: str | None

    @property
    def name(self) -> str:
        return f"table at line {self.line} ({self.heading or 'no heading'})"


@dataclass
class CheckReport:
    """What the check compared and what disagreed."""

    mismatches: list[Mismatch] = field(default_factory=list)
    tables_checked: int = 0
    numbers_checked: int = 0


def clean(cell: str) -> str:
    """A cell's text without markdown emphasis, backticks and extra spaces."""
    return " ".join(cell.replace("**", "").replace("`", "").replace("*", "").split())


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_tables(markdown: str) -> list[Table]:
    """Every markdown table, with its nearest heading and the HTML comment directly above it."""
    lines = markdown.splitlines()
    tables: list[Table] = []
    heading = ""
    comment: str | None = None  # the last HTML comment, until a non-blank line other than a table follows
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("<!--"):
            start = i
            while "-->" not in lines[i]:
                i += 1
                if i == len(lines):
                    raise ResultsCheckError(f"line {start + 1}: an HTML comment is never closed with -->")
            comment = "\n".join(lines[start : i + 1]).strip()[4:-3].strip()
        elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].strip()) <= set("|-: "):
            body_start = i + 2
            end = body_start
            while end < len(lines) and lines[end].strip().startswith("|"):
                end += 1
            rows = [split_row(row) for row in lines[body_start:end]]
            tables.append(Table(i + 1, heading, split_row(line), rows, comment))
            comment = None
            i = end
            continue
        elif line:
            comment = None
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
        i += 1
    return tables


def split_where(spec: str, context: str) -> tuple[str, dict[str, str]]:
    """'what where col=value, col=value' as ('what', {col: value})."""
    what, *where = WHERE.split(spec.strip(), maxsplit=1)
    return what.strip(), parse_where(where[0], context) if where else {}


def parse_where(text: str, context: str) -> dict[str, str]:
    where = {}
    for condition in text.split(","):
        column, equals, value = condition.partition("=")
        if not equals or not column.strip() or not value.strip():
            raise ResultsCheckError(f"{context}: 'where {text}' needs col=value, col=value")
        where[column.strip()] = value.strip()
    return where


def parse_source(comment: str, context: str) -> TableSource:
    """The mapping a source comment declares (see the module docstring for its grammar)."""
    source = TableSource()
    default_csv, default_where = "", {}
    for raw in comment.splitlines():
        if not raw.strip():
            continue
        keyword, colon, rest = raw.strip().partition(":")
        keyword, rest = keyword.strip(), rest.strip()
        if not colon or keyword not in ("source", "rows", "column", "text"):
            raise ResultsCheckError(
                f"{context}: cannot read {raw.strip()!r}; each line of a source comment starts with "
                "source:, rows:, column: or text:"
            )
        if keyword == "source":
            if rest.startswith("none"):
                source.none_reason = rest[4:].strip(" ()") or "no reason given"
                return source
            default_csv, default_where = split_where(rest, context)
        elif keyword == "rows":
            for key in rest.split(";"):
                header, equals, columns = key.partition("=")
                if not equals or not columns.split():
                    raise ResultsCheckError(f"{context}: 'rows: {rest}' needs header = csv_col ...; ...")
                source.keys[clean(header)] = tuple(columns.split())
        elif keyword == "column":
            header, equals, spec = rest.partition(" = ")
            if not equals:
                raise ResultsCheckError(f"{context}: 'column: {rest}' needs header = [file.csv:] csv_col ...")
            spec, where = split_where(spec, context)
            own_csv = OWN_CSV.match(spec)
            csv = own_csv.group(1) if own_csv else default_csv
            columns = tuple(spec[own_csv.end() :].split() if own_csv else spec.split())
            if not csv or not columns:
                raise ResultsCheckError(
                    f"{context}: column {header.strip()!r} names no CSV or no CSV column; give "
                    "'source: figures/....csv' or 'column: header = figures/....csv: csv_col'"
                )
            source.columns[clean(header)] = ColumnSource(csv, columns, {**default_where, **where})
        else:
            source.text += tuple(clean(header) for header in rest.split(";") if header.strip())
    return source


def key_words(cell: str, n_columns: int) -> list[str]:
    """A key cell as one value per CSV column: markup and (remarks) dropped, display names made ids."""
    text = clean(re.sub(r"\([^)]*\)", "", cell))
    words = [text] if n_columns == 1 else text.split()
    return [ENCODER_LABELS.get(word, word) for word in words]


def key_matches(csv_value: str, key: str) -> bool:
    csv_value, key = csv_value.strip().lower(), key.strip().lower()
    return csv_value == key or (csv_value.startswith(key) and not csv_value[len(key)].isalnum())


def csv_items(cell: str) -> list[float | str]:
    """What one CSV cell says: its numbers (also inside a formatted string), else its word, else nothing."""
    cell = cell.strip()
    if not cell or cell.lower() == "nan":
        return []
    try:
        return [float(cell)]
    except ValueError:
        numbers: list[float | str] = [float(n.replace("\u2212", "-")) for n in NUMBER.findall(cell)]
        verdict = VERDICT.match(cell)
        return numbers + [verdict.group(0)] if verdict else numbers or [cell]


class CsvCache:
    """Reads each source CSV once, as strings, relative to the repository root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.frames: dict[str, pd.DataFrame] = {}

    def get(self, csv: str, context: str) -> pd.DataFrame:
        if csv not in self.frames:
            path = self.root / csv
            if not path.is_file():
                raise FileNotFoundError(
                    f"{context}: source CSV {csv} does not exist (looked for {path}); regenerate it with the "
                    "analysis notebooks or fix the path in the source comment"
                )
            self.frames[csv] = pd.read_csv(path, dtype=str, keep_default_na=False)
        return self.frames[csv]


def compare_cell(
    cell: str, expected: list[float | str], column_decimals: int = 0
) -> tuple[list[tuple[str, str, str]], int]:
    """(quoted, CSV value, problem) for each disagreement of one cell with its CSV values; numbers compared.

    ``column_decimals``: the most decimals any cell of the cell's column quotes. A number quoted with fewer
    is a problem even when it rounds right: "0 [0, 0]" in a column of "0.131 [0.110, 0.152]" is a placeholder
    that any value under 0.5 would pass, and ``--write`` keeps a cell's own precision."""
    quoted = NUMBER.findall(cell)
    numbers = [item for item in expected if isinstance(item, float)]
    words = [item for item in expected if isinstance(item, str)]
    if len(quoted) != len(numbers):
        shown = ", ".join(f"{number:.4g}" for number in numbers)
        return [(cell, shown, f"quotes {len(quoted)} numbers where the CSV gives {len(numbers)}")], 0
    problems = []
    n_measured = len(NUMBER.findall(before_verdict(cell)))  # "(preliminary: 1 seed)" is a count, not a value
    for index, (text, value) in enumerate(zip(quoted, numbers, strict=True)):
        decimals = len(text.partition(".")[2])
        if abs(float(text.replace("\u2212", "-")) - value) > 0.5 * 10**-decimals + 1e-9:
            problems.append((text, f"{value:+.{decimals}f} ({value!r})", "number differs from the CSV"))
        elif decimals < column_decimals and index < n_measured:
            problems.append(
                (
                    text,
                    f"{value:.{column_decimals}f}",
                    f"quoted at {decimals} decimals where its column uses {column_decimals}",
                )
            )
    for word in words:
        if not re.search(rf"(?<!\w){re.escape(word.lower())}(?!\w)", cell.lower()):
            problems.append((cell, word, "the CSV's word is missing from the cell"))
    return problems, len(quoted)


def check_declared(table: Table, source: TableSource) -> None:
    """Every column of the table is a key, a checked column or text, and the comment names no other."""
    headers = [clean(header) for header in table.header]
    declared = set(source.keys) | set(source.columns) | set(source.text)
    undeclared = [header for header in headers if header not in declared]
    unknown = sorted(declared - set(headers))
    if undeclared or unknown:
        raise ResultsCheckError(
            f"{table.name}: the source comment must declare every column as rows:, column: or text: "
            f"(not declared: {undeclared}; declared but not in the table: {unknown})"
        )


def row_keys(row: dict[str, str], source: TableSource) -> dict[str, str] | None:
    """The CSV key values a table row names ({csv column: value}), or None if a key cell has too few words."""
    keys: dict[str, str] = {}
    for header, columns in source.keys.items():
        words = key_words(row.get(header, ""), len(columns))
        if len(words) != len(columns):
            return None
        keys.update(zip(columns, words, strict=True))
    return keys


def matching_rows(frame: pd.DataFrame, keys: dict[str, str], where: dict[str, str]) -> pd.DataFrame:
    """The CSV rows a table row quotes: the where filter, then the keys (an exact match wins over a prefix)."""
    for name, value in where.items():
        frame = frame[frame[name].str.strip() == value]
    for name, value in keys.items():
        frame = frame[frame[name].map(lambda cell, key=value: key_matches(cell, key))]
    if len(frame) > 1:
        exact = frame
        for name, value in keys.items():
            exact = exact[exact[name].str.strip().str.lower() == value.lower()]
        if len(exact) == 1:
            return exact
    return frame


def format_like(quoted: str, value: float, min_decimals: int = 0) -> str:
    """value written as quoted was: the same decimals (at least min_decimals), a sign if it had one, the same
    minus character."""
    decimals = max(len(quoted.partition(".")[2]), min_decimals)
    if quoted[0] not in "+-\u2212":
        return f"{value:.{decimals}f}"
    text = f"{value:+.{decimals}f}"
    return text.replace("-", "\u2212") if "\u2212" in quoted else text


def rewrite_cell(cell: str, raw_values: list[str], column_decimals: int = 0) -> str | None:
    """The cell quoting raw_values (its CSV cells) instead: numbers at the quoted precision (at least
    ``column_decimals``, its column's), the CSV's verdict.

    A verdict cell (``+0.034 [+0.013, +0.055] held``) is rebuilt as numbers then verdict, bold when the claim
    held or failed. Any other cell keeps its text and markup and gets new numbers in place. None when the
    cell cannot be rewritten: it quotes a different count of numbers, or lacks a word the CSV gives.
    """
    numbers: list[float] = []
    verdict: str | None = None
    for raw in raw_values:
        if VERDICT.match(raw.strip()) and verdict is None:
            verdict = raw.strip()
            continue
        for item in csv_items(raw):
            if isinstance(item, float):
                numbers.append(item)
            elif item.lower() not in cell.lower():
                return None
    body = cell
    if verdict is not None:
        found = VERDICT.search(cell)
        if found is None:
            return None
        body = cell[: found.start()].replace("**", "").rstrip()
    quoted = list(NUMBER.finditer(body))
    if len(quoted) != len(numbers):
        return None
    pieces, end = [], 0
    for match, value in zip(quoted, numbers, strict=True):
        pieces += [body[end : match.start()], format_like(match.group(0), value, column_decimals)]
        end = match.end()
    body = "".join(pieces) + body[end:]
    if verdict is None:
        return body
    text = f"{body} {verdict}".strip()
    return f"**{text}**" if verdict.lower().startswith(BOLD_VERDICTS) else text


def column_precision(table: Table, headers: list[str], header: str) -> int:
    """The most decimals any number in the table's column ``header`` is quoted with (0 for counts)."""
    column = headers.index(header)
    cells = [cells[column] for cells in table.rows if column < len(cells)]
    quoted = [text for cell in cells for text in NUMBER.findall(before_verdict(cell))]
    return max((len(text.partition(".")[2]) for text in quoted), default=0)


def before_verdict(cell: str) -> str:
    """The cell up to its verdict word, if any: the numbers a verdict cell quotes, not its remark's counts."""
    found = VERDICT.search(cell)
    return cell if found is None else cell[: found.start()]


def check_table(
    table: Table, source: TableSource, csvs: CsvCache, rewrites: dict[tuple[int, str], str] | None = None
) -> tuple[list[Mismatch], int]:
    """Compare every checked cell of one sourced table with its CSV; also how many numbers it compared.

    With rewrites, also collect {(row index, header): the cell rewritten from its CSV} for the cells that
    differ and can be rewritten (``rewrite_cell``).
    """
    check_declared(table, source)
    headers = [clean(header) for header in table.header]
    precision = {header: column_precision(table, headers, header) for header in source.columns}
    found: list[Mismatch] = []
    n_numbers = 0
    for index, cells in enumerate(table.rows):
        row = dict(zip(headers, cells, strict=False))
        label = " ".join(clean(row.get(header, "")) for header in source.keys)
        keys = row_keys(row, source)
        if keys is None:
            found.append(Mismatch(table.name, label, "", "", "", "a key cell needs one word per CSV column"))
            continue
        for header, column in source.columns.items():
            context = f"{table.name}, column {header!r}"
            frame = csvs.get(column.csv, context)
            missing = [name for name in (*column.columns, *column.where, *keys) if name not in frame.columns]
            if missing:
                raise ResultsCheckError(
                    f"{context}: {column.csv} has no column {missing}; it has {list(frame.columns)}"
                )
            selected = matching_rows(frame, keys, column.where)
            cell = row.get(header, "")
            if len(selected) != 1:
                problem = (
                    f"{len(selected)} rows of {column.csv} match {keys} where {column.where} (need exactly 1)"
                )
                found.append(Mismatch(table.name, label, header, cell, "", problem))
                continue
            raw_values = [selected.iloc[0][name] for name in column.columns]
            expected = [item for raw in raw_values for item in csv_items(raw)]
            problems, n = compare_cell(cell, expected, precision[header])
            if problems and rewrites is not None:
                rewritten = rewrite_cell(cell, raw_values, precision[header])
                if rewritten is not None and rewritten != cell:
                    rewrites[(index, header)] = rewritten
            found += [Mismatch(table.name, label, header, *problem) for problem in problems]
            n_numbers += n
    return found, n_numbers


def check_results(results_md: Path, root: Path | None = None) -> CheckReport:
    """Check every table of RESULTS.md against its source CSVs (paths relative to root, default its folder)."""
    return check_markdown(results_md.read_text(), results_md.parent if root is None else root)


def check_markdown(
    markdown: str, root: Path, rewrites: dict[tuple[int, int, str], str] | None = None
) -> CheckReport:
    """check_results on text; with rewrites, also collect {(table line, row index, header): new cell}."""
    csvs = CsvCache(root)
    report = CheckReport()
    for table in parse_tables(markdown):
        if table.comment is None or not table.comment.startswith("source:"):
            report.mismatches.append(
                Mismatch(
                    table.name,
                    "",
                    "",
                    "",
                    "",
                    "no source comment; put '<!-- source: figures/....csv ... -->' right above it "
                    "(or 'source: none (why)' if it quotes no CSV)",
                )
            )
            continue
        source = parse_source(table.comment, table.name)
        if source.none_reason is not None:
            continue
        table_rewrites: dict[tuple[int, str], str] | None = {} if rewrites is not None else None
        mismatches, n_numbers = check_table(table, source, csvs, table_rewrites)
        report.mismatches += mismatches
        report.tables_checked += 1
        report.numbers_checked += n_numbers
        if rewrites is not None and table_rewrites:
            rewrites.update(
                {(table.line, row, header): cell for (row, header), cell in table_rewrites.items()}
            )
    return report


def update_results(results_md: Path, root: Path | None = None) -> tuple[int, CheckReport]:
    """Rewrite RESULTS.md's checked cells from their CSVs, so that tables follow the runs without hand edits.

    Only numbers and verdicts change, in the rows the tables already have; prose is left to the author.
    Returns how many cells changed and the check of the file as written (what could not be rewritten: a
    row no CSV row matches, a cell quoting a different count of numbers).
    """
    root = results_md.parent if root is None else root
    markdown = results_md.read_text()
    rewrites: dict[tuple[int, int, str], str] = {}
    check_markdown(markdown, root, rewrites)
    if rewrites:
        lines = markdown.splitlines(keepends=True)
        for table in parse_tables(markdown):
            headers = [clean(header) for header in table.header]
            for index, cells in enumerate(table.rows):
                new_cells = [
                    rewrites.get((table.line, index, clean(header)), cell)
                    for header, cell in zip(headers, cells, strict=False)
                ] + cells[len(headers) :]
                if new_cells != cells:
                    at = table.line + 1 + index  # 0-based: header line, separator, then the rows
                    ending = "\n" if lines[at].endswith("\n") else ""
                    lines[at] = (
                        "|" + "|".join(f" {cell} " if cell else " " for cell in new_cells) + "|" + ending
                    )
        markdown = "".join(lines)
        results_md.write_text(markdown)
    return len(rewrites), check_markdown(markdown, root)


def main(argv: list[str] | None = None) -> int:
    """Print every mismatch between RESULTS.md and figures/; exit status 1 if there is any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results_md",
        nargs="?",
        default="RESULTS.md",
        type=Path,
        help="the RESULTS.md to check; its folder holds figures/",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="rewrite the tables' numbers and verdicts from their CSVs first (rows and prose stay as written)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path: Path = args.results_md
    if args.write:
        changed, report = update_results(path)
        print(f"{path}: {changed} cells rewritten from their CSVs")
    else:
        report = check_results(path)
    for mismatch in report.mismatches:
        print(mismatch)
    print(
        f"{path}: {report.numbers_checked} numbers in {report.tables_checked} tables checked, "
        f"{len(report.mismatches)} mismatches"
    )
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
