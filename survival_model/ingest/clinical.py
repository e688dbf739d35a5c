"""Clinical harmonisation: one institution's CSV/XLSX into the canonical clinical schema.

What it does, in order:

1. Reads the table as raw cells (no type guessing), builds column names from one or more header rows
   (multi-row headers are joined with `` / ``, merged cells spanning to the right). A column is named
   by its full name, case-insensitively, by the lower part of a multi-row name when that is
   unambiguous (``Time`` or ``Death / Time`` for ``Death / Time``), or by its 0-based position.
2. Keeps only the declared columns (an allow-list: names, MRNs, dates of birth and free text never
   enter the cohort), normalises ids, and parses each canonical field: declared value maps first,
   then built-in synonyms (``"F"``/``"female"``, ``"NSCLC"``/``"lung"``, ``"yes"``/``1``, the first
   number in ``"KPS 80"``).
3. Derives survival: a duration in a declared unit (months are 365.25/12 days) with an event flag, or
   dates (start, last contact, death) to a duration in days with the event = death recorded. Age may
   come from a date of birth and a reference date; the dates themselves are dropped. A table that
   declares no survival (``clinical.survival`` null: new patients to predict) gives every row a missing
   ``time_days`` and ``event``; where survival is declared, a row without it is ``missing_survival``.
4. Validates ranges (age, KPS, GPA, time > 0, event 0/1, death not before the start date), merges
   many-rows-per-patient tables (e.g. one row per lesion) and checks they agree, pseudonymises ids.

A row or patient that fails becomes a quarantine record; the rest of the table proceeds. Messages
name the field, never an identifying value (dates are never echoed). Nothing but pseudonyms, column names,
reason codes and counts leaves this module: a primary site that maps to no category is reported by the
pseudonymous ids of its patients, never by its text (a free-text cell can hold a name), and a table that cannot
be used names its folder ``<source>`` (``survival_model.ingest.privacy.Redactor``).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import logging
import math
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from survival_model.config import (
    AgeFromDates,
    ClinicalSource,
    ColumnRef,
    DatesSurvival,
    DurationSurvival,
    IngestParams,
    Institution,
)
from survival_model.errors import DataSourceError, PatientDataError
from survival_model.fingerprint import DigestMemo, code_version, digest_memo_path, file_digest, stable_hash
from survival_model.imageio import read_json, write_json, write_parquet
from survival_model.ingest.ids import normalise_id
from survival_model.ingest.privacy import Pseudonymiser, Redactor
from survival_model.quarantine import QuarantineRecord, quarantine_frame
from survival_model.stage import Stage

log = logging.getLogger(__name__)

STAGE = "ingest_clinical"

#: Canonical clinical fields and how each is parsed.
FIELD_KINDS: dict[str, str] = {
    "age": "number",
    "sex": "category",
    "kps": "number",
    "primary": "category",
    "extracranial": "bool",
    "n_brain_mets": "integer",
    "gpa": "number",
    "egfr_mutant": "bool",
    "alk_positive": "bool",
    "her2_positive": "bool",
    "hr_positive": "bool",
    "braf_mutant": "bool",
}
CLINICAL_FIELDS: tuple[str, ...] = tuple(FIELD_KINDS)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "primary": ("lung", "breast", "melanoma", "gi", "renal", "other"),
}
#: Built-in synonyms (lower-case) for categorical fields; declared ``values`` maps take precedence.
SYNONYMS: dict[str, dict[str, str]] = {
    "sex": {
        "f": "female", "female": "female", "w": "female", "woman": "female", "women": "female",
        "m": "male", "male": "male", "man": "male", "men": "male",
    },
    "primary": {
        "lung": "lung", "nsclc": "lung", "sclc": "lung", "non-small cell lung cancer": "lung",
        "small cell lung cancer": "lung", "lung cancer": "lung", "lung adenocarcinoma": "lung",
        "breast": "breast", "breast cancer": "breast", "breast ca": "breast",
        "melanoma": "melanoma", "mel": "melanoma", "cutaneous melanoma": "melanoma",
        "gi": "gi", "gastrointestinal": "gi", "colon": "gi", "colorectal": "gi", "crc": "gi",
        "rectal": "gi", "rectum": "gi", "gastric": "gi", "stomach": "gi", "esophageal": "gi",
        "oesophageal": "gi", "esophagus": "gi", "pancreas": "gi", "pancreatic": "gi", "liver": "gi",
        "renal": "renal", "kidney": "renal", "rcc": "renal", "renal cell carcinoma": "renal",
        "other": "other",
    },
}
BOOL_WORDS: dict[str, bool] = {
    "1": True, "yes": True, "y": True, "true": True, "present": True, "positive": True, "pos": True,
    "+": True, "mutant": True, "mutated": True, "mut": True,
    "0": False, "no": False, "n": False, "false": False, "absent": False, "negative": False,
    "neg": False, "-": False, "wildtype": False, "wild-type": False, "wt": False,
}
DAYS_PER_UNIT: dict[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12.0, "years": 365.25}
_EXCEL_EPOCH = dt.datetime(1899, 12, 30)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

CLINICAL_DTYPES: dict[str, str] = {
    "age": "Float64", "sex": "string", "kps": "Float64", "primary": "string", "extracranial": "boolean",
    "n_brain_mets": "Int64", "gpa": "Float64", "egfr_mutant": "boolean", "alk_positive": "boolean",
    "her2_positive": "boolean", "hr_positive": "boolean", "braf_mutant": "boolean",
    "time_days": "Float64", "event": "Int64",
}


@dataclass(frozen=True)
class ClinicalResult:
    """A site's harmonised clinical rows (pseudonymous), what was quarantined, and a mapping report."""

    site: str
    key: str
    table_path: Path | None
    quarantine: tuple[QuarantineRecord, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def table(self) -> pd.DataFrame:
        if self.table_path is None:
            return empty_clinical_table()
        return pd.read_parquet(self.table_path)


def empty_clinical_table() -> pd.DataFrame:
    cols = {"site": "string", "case_id": "string", **CLINICAL_DTYPES}
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in cols.items()})


def has_outcome(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether the patient has both ``time_days`` and ``event`` (False for a patient to predict,
    whose site declares no survival)."""
    if not {"time_days", "event"} <= set(frame.columns):
        return pd.Series(False, index=frame.index, dtype=bool)
    return (frame["time_days"].notna() & frame["event"].notna()).astype(bool)


# --------------------------------------------------------------------------------------------------
# Reading the raw table
# --------------------------------------------------------------------------------------------------


def _clean_header(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"\s+", " ", str(value).replace("\xa0", " ")).strip()


@dataclass(frozen=True)
class RawTable:
    """Raw cells (object dtype) with column names (multi-row headers joined with `` / ``).

    ``malformed`` maps the index (in ``cells``) of a CSV row whose cells do not line up with the header to its
    number of cells and the header's: a ragged row (an unquoted delimiter in free text, a cell left out) whose
    values cannot be assigned to columns with certainty. Its cells are kept only to find its patient id."""

    cells: pd.DataFrame
    names: list[str]
    first_row_number: int  # 1-based spreadsheet row number of cells.iloc[0]
    file_name: str = ""
    malformed: dict[int, tuple[int, int]] = field(default_factory=dict)  # row -> (its cells, the header's)

    def resolve(self, ref: ColumnRef, what: str) -> int:
        """The position of a declared column, or a DataSourceError listing what exists."""
        if isinstance(ref, int):
            if 0 <= ref < len(self.names):
                return ref
            raise DataSourceError(f"{what}: column position {ref} is outside the table's {len(self.names)} columns")
        target = _clean_header(ref)
        lowered = [n.lower() for n in self.names]
        wanted = target.lower()
        rules: tuple[Callable[[str, str], bool], ...] = (
            lambda low, raw: raw == target,  # exact
            lambda low, raw: low == wanted,  # case-insensitive
            # the lower part of a multi-row name: "Time" or "Death / Time" for "Death / Time"
            lambda low, raw: low.endswith(" / " + wanted),
        )
        for rule in rules:
            hits = [i for i, (low, raw) in enumerate(zip(lowered, self.names, strict=True)) if rule(low, raw)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                shown = ", ".join(repr(self.names[i]) for i in hits[:5])
                raise DataSourceError(f"{what}: column {ref!r} is ambiguous ({shown}); "
                                      "use more of its multi-row name or its 0-based position")
        shown = ", ".join(repr(n) for n in self.names[:40] if n)
        raise DataSourceError(f"{what}: no column named {ref!r}; the table has: {shown}")


#: Byte-order marks that state a file's encoding whatever was declared (UTF-32 before UTF-16: FF FE 00 00).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _decode(data: bytes, declared: str, name: str) -> str:
    """A CSV's text. A byte-order mark decides the encoding (Excel's "Unicode text" is UTF-16 with one; its
    "CSV UTF-8" UTF-8 with one, which must not stick to the first header); otherwise the declared encoding.
    Bytes that are not text in it refuse the table, naming the byte and line, never guessed."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), None)
    if encoding is None:
        encoding = "utf-8-sig" if declared.lower().replace("_", "-") in {"utf-8", "utf8"} else declared
    try:
        return data.decode(encoding)
    except LookupError:
        raise DataSourceError(f"clinical table {name}: unknown encoding {declared!r} (clinical.encoding)") from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataSourceError(
            f"clinical table {name} cannot be read: it is not {encoding.removesuffix('-sig')} text (byte "
            f"0x{data[exc.start]:02x} on line "
            f"{line}); declare its encoding in clinical.encoding (e.g. latin-1 or cp1252)") from None


def _csv_records(text: str, delimiter: str | None) -> list[list[str]]:
    """Every record of a CSV, blank lines included as ``[]`` (so row numbers are the file's, as in a
    spreadsheet). The delimiter, when not declared, is sniffed from the first non-blank line (as pandas does)."""
    if delimiter is None:
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            delimiter = csv.Sniffer().sniff(first).delimiter
        except csv.Error:  # one column, or no text: the header check says what is missing
            delimiter = ","
    # the stdlib reader, not pandas: pandas pads short rows silently and refuses the whole table for one long row
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def _excel_signature(path: Path) -> None:
    """Refuse, with what the file is instead, a declared workbook that is not an .xlsx (a ZIP archive)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        return
    if not head:
        what = "it is empty (0 bytes)"
    elif head.startswith(b"\xd0\xcf\x11\xe0"):
        what = "it is an old binary Excel workbook (.xls): save it as .xlsx or CSV"
    elif b"\x00" not in head:
        what = "it is not an Excel workbook but text (a CSV saved under an Excel name?): name it .csv"
    else:
        what = "it is not an Excel workbook (.xlsx)"
    raise DataSourceError(f"clinical table {path.name} cannot be read: {what}")


def _raw_csv(src: ClinicalSource) -> tuple[pd.DataFrame, dict[int, tuple[int, int]]]:
    """All records as object cells padded to the header's width, and the ragged records' lengths."""
    data = src.path.read_bytes()
    if not data.strip():
        raise DataSourceError(f"clinical table {src.path.name} cannot be read: it is empty")
    try:
        records = _csv_records(_decode(data, src.encoding, src.path.name), src.delimiter)
    except csv.Error as exc:
        raise DataSourceError(f"clinical table {src.path.name} cannot be read: {exc}") from None
    header = [records[r] for r in src.header_rows if r < len(records)]
    named = max((len(_trim(r)) for r in header), default=0)  # up to the last named column
    width = max((len(r) for r in header), default=0)
    # A row is ragged when it lacks a cell under a named column (a cell left out shifts the rest) or has a value
    # past the header's last cell (an unquoted delimiter); trailing empty cells either way are harmless.
    ragged = {i: (len(_trim(r)) if len(_trim(r)) > width else len(r), width) for i, r in enumerate(records)
              if i > src.header_rows[-1] and any(c.strip() for c in r)
              and (len(r) < named or len(_trim(r)) > width)}
    columns = max((len(r) for r in records), default=0)
    frame = pd.DataFrame([r + [""] * (columns - len(r)) for r in records], dtype=object)
    return frame, ragged


def _trim(record: list[str]) -> list[str]:
    """A record without its trailing empty cells."""
    end = len(record)
    while end and not record[end - 1].strip():
        end -= 1
    return record[:end]


def read_raw_table(src: ClinicalSource) -> RawTable:
    """Read every cell of the declared CSV/XLSX sheet as raw values and build the header.

    Messages name the file by its name only (a full path may name a person)."""
    path, name = src.path, src.path.name
    if not path.is_file():
        raise DataSourceError(f"clinical table {name} not found (clinical.path)")
    suffix = path.suffix.lower()
    ragged: dict[int, tuple[int, int]] = {}
    try:
        if suffix in {".xlsx", ".xlsm", ".xls"}:
            _excel_signature(path)
            raw = pd.read_excel(path, sheet_name=src.sheet, header=None, dtype=object, engine="openpyxl")
        else:
            raw, ragged = _raw_csv(src)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DataSourceError(f"clinical table {name} cannot be read: {exc}") from None
    if len(raw) <= src.header_rows[-1]:
        raise DataSourceError(f"clinical table {name} has {len(raw)} rows; the header ends at row "
                              f"{src.header_rows[-1] + 1}")
    header_rows = [[_clean_header(v) for v in raw.iloc[r].tolist()] for r in src.header_rows]
    for row in header_rows[:-1]:  # merged cells in upper header rows span to the right
        for i in range(1, len(row)):
            if not row[i]:
                row[i] = row[i - 1]
    names = [" / ".join(part for part in parts if part) for parts in zip(*header_rows, strict=True)]
    first = src.first_data_row if src.first_data_row is not None else src.header_rows[-1] + 1
    cells = raw.iloc[first:].reset_index(drop=True)
    cells.columns = pd.RangeIndex(cells.shape[1])
    if not any(_text(v, src.missing_values) is not None for v in cells.to_numpy().ravel()):
        raise DataSourceError(f"clinical table {name} has no data rows below its header (row "
                              f"{src.header_rows[-1] + 1})")
    malformed = {i - first: n for i, n in ragged.items() if i >= first}
    return RawTable(cells=cells, names=names, first_row_number=first + 1, file_name=name, malformed=malformed)


# --------------------------------------------------------------------------------------------------
# Cell parsing
# --------------------------------------------------------------------------------------------------


def _text(value: Any, missing: Sequence[str]) -> str | None:
    """A cell as stripped text, or None when missing."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    text = str(value).replace("\xa0", " ").strip()
    return None if text.lower() in missing else text


#: Characters that write a minus sign in tables (Unicode minus, dashes, the full-width hyphen-minus).
_MINUS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\ufe63": "-", "\uff0d": "-"})


def _parse_number(text: str, decimal: str = ".", *, strict: bool = False) -> float:
    """A number from a cell: ``1,084`` (thousands) and ``3,5`` (decimal comma, when declared), a minus sign
    written as any dash, or (unless ``strict``) the single number inside text such as ``KPS 80`` or ``80%``.
    Text with several numbers is refused rather than guessed (``3,5`` with a decimal point declared could be
    3.5 or 35); ``strict`` refuses any text around the number (``3 months`` in a column of weeks)."""
    text = text.translate(_MINUS)
    if decimal == ".":
        cleaned = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text.strip())
    else:
        cleaned = re.sub(r"(?<=\d)\.(?=\d{3}(?!\d))", "", text.strip()).replace(",", ".")
    try:
        return float(cleaned)
    except ValueError:
        if strict:
            raise ValueError(f"not a plain number: {text[:20]!r}") from None
        numbers = _NUMBER.findall(cleaned)
        if len(numbers) != 1:
            raise ValueError(f"not a single number: {text[:20]!r}") from None
        return float(numbers[0])


def parse_field(name: str, value: Any, src: ClinicalSource) -> Any:
    """Parse one raw cell into the canonical value of field ``name`` (None when missing).

    Raises ``ValueError`` with a short description when the value cannot be parsed.
    """
    text = _text(value, src.missing_values)
    if text is None:
        return None
    mapping = src.values.get(name)  # type: ignore[call-overload]
    if mapping is not None and text.lower() in mapping:
        mapped = mapping[text.lower()]
        if mapped is None:
            return None
        text = str(mapped)
    kind = FIELD_KINDS[name]
    if kind in {"number", "integer"}:
        try:
            number = _parse_number(text, src.decimal)
        except ValueError:
            raise ValueError(f"{name} is not a number") from None
        if kind == "integer":
            if not float(number).is_integer():
                raise ValueError(f"{name} is not a whole number")
            return int(number)
        return float(number)
    if kind == "bool":
        word = text.lower()
        if word in BOOL_WORDS:
            return BOOL_WORDS[word]
        raise ValueError(f"{name} value is not yes/no (declare a values map)")
    word = text.lower()
    if word in CATEGORIES[name]:
        return word
    if word in SYNONYMS[name]:
        return SYNONYMS[name][word]
    if name == "primary":
        return "other"  # counted in the report as a fallback, see _fallbacks
    raise ValueError(f"{name} value is not one of {', '.join(CATEGORIES[name])} (declare a values map)")


def parse_date(value: Any, src: ClinicalSource) -> dt.datetime | None:
    """A date cell as a datetime (Excel dates, Excel serial numbers, or text in ``date_format``)."""
    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.to_pydatetime()
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    text = _text(value, src.missing_values)
    if text is None:
        return None
    if src.date_format == "excel_serial" or (src.date_format is None and re.fullmatch(r"\d{4,5}(\.\d+)?", text)):
        return _EXCEL_EPOCH + dt.timedelta(days=float(text))
    try:
        # ISO dates (2020-01-03) are unambiguous: dayfirst must not turn them into year-day-month
        iso = src.date_format is None and re.fullmatch(r"\d{4}-\d{1,2}-\d{1,2}([ T].*)?", text) is not None
        stamp = pd.to_datetime(text, format="ISO8601" if iso else src.date_format, dayfirst=src.dayfirst and not iso)
    except (ValueError, TypeError):
        raise ValueError("a date cannot be parsed (declare date_format)") from None
    return stamp.to_pydatetime()


def _event(value: Any, survival: DurationSurvival, src: ClinicalSource) -> int | None:
    text = _text(value, src.missing_values)
    if text is None:
        return None
    key = text.lower()
    mapping = {str(k).strip().lower(): v for k, v in survival.event_values.items()}
    if key in mapping:
        return int(mapping[key])
    raise ValueError("event status is not a declared value (see survival.event_values)")


# --------------------------------------------------------------------------------------------------
# Harmonisation
# --------------------------------------------------------------------------------------------------


def _row_record(
    row: pd.Series, src: ClinicalSource, cols: dict[str, int], params: IngestParams
) -> dict[str, Any]:
    """Parse one row into canonical values; raises PatientDataError for invalid content."""
    out: dict[str, Any] = {}
    for name in CLINICAL_FIELDS:
        if name in cols:
            try:
                out[name] = parse_field(name, row[cols[name]], src)
            except ValueError as exc:
                raise PatientDataError("invalid_clinical_value", str(exc)) from None
        else:
            out[name] = None
    out.update(_survival(row, src, cols))
    if src.age_from_dates is not None:
        out["age"] = _age_from_dates(row, cols, src)
    for name in src.extra_columns:
        out[f"extra_{name}"] = _text(row[cols[f"__extra_{name}"]], src.missing_values)
    _check_ranges(out, params)
    return out


def _survival(row: pd.Series, src: ClinicalSource, cols: dict[str, int]) -> dict[str, Any]:
    """``time_days`` and ``event`` of one row; both None when the table declares no outcome."""
    survival = src.survival
    if survival is None:
        return {"time_days": None, "event": None}
    if isinstance(survival, DatesSurvival):
        return _survival_from_dates(row, cols, src)
    return _survival_from_duration(row, cols, src, survival)


def _survival_from_duration(
    row: pd.Series, cols: dict[str, int], src: ClinicalSource, survival: DurationSurvival
) -> dict[str, Any]:
    try:
        time_text = _text(row[cols["__time"]], src.missing_values)
        # strict: a time with words around it (``3 months`` in a column of weeks) is refused, never reinterpreted
        time = None if time_text is None else _parse_number(time_text, src.decimal, strict=True)
    except ValueError:
        raise PatientDataError("invalid_clinical_value", "survival time is not a plain number in the declared "
                               f"unit ({survival.time_unit})") from None
    try:
        event = _event(row[cols["__event"]], survival, src)
    except ValueError as exc:
        raise PatientDataError("invalid_clinical_value", str(exc)) from None
    if time is None or event is None:
        raise PatientDataError("missing_survival", "survival time or event is missing")
    return {"time_days": float(time) * DAYS_PER_UNIT[survival.time_unit], "event": event}


def _survival_from_dates(row: pd.Series, cols: dict[str, int], src: ClinicalSource) -> dict[str, Any]:
    try:
        start = parse_date(row[cols["__start"]], src)
        last = parse_date(row[cols["__last"]], src)
        death = parse_date(row[cols["__death"]], src)
    except ValueError as exc:
        raise PatientDataError("invalid_clinical_value", f"survival dates: {exc}") from None
    if start is None or (last is None and death is None):
        raise PatientDataError("missing_survival", "the start date, or both last-contact and death dates, are missing")
    end = death if death is not None else last
    if end is None:  # pragma: no cover - excluded above
        raise PatientDataError("missing_survival", "no end date")
    if end < start:
        which = "death" if death is not None else "last-contact"
        raise PatientDataError("death_before_diagnosis", f"the {which} date precedes the start date")
    return {"time_days": float((end - start).days), "event": int(death is not None)}


def _age_from_dates(row: pd.Series, cols: dict[str, int], src: ClinicalSource) -> float | None:
    try:
        birth = parse_date(row[cols["__birth"]], src)
        reference = parse_date(row[cols["__age_ref"]], src)
    except ValueError as exc:
        raise PatientDataError("invalid_clinical_value", f"age dates: {exc}") from None
    if birth is None or reference is None:
        return None
    return round((reference - birth).days / 365.25, 2)


def _check_ranges(out: dict[str, Any], params: IngestParams) -> None:
    checks = {"age": params.age_range, "kps": params.kps_range, "gpa": params.gpa_range}
    for name, (lo, hi) in checks.items():
        value = out.get(name)
        if value is not None and not lo <= value <= hi:
            raise PatientDataError("clinical_out_of_range", f"{name} {value:g} is outside {lo:g}-{hi:g}")
    n = out.get("n_brain_mets")
    if n is not None and n < 1:
        raise PatientDataError("clinical_out_of_range", f"n_brain_mets {n} is below 1")
    time = out["time_days"]
    if time is None:  # the table declares no outcome (patients to predict)
        return
    if not math.isfinite(time) or time <= 0:
        raise PatientDataError("invalid_survival_time", f"survival time {time:g} days is not positive")
    if time > params.max_time_days:
        raise PatientDataError("clinical_out_of_range", f"survival time {time:g} days exceeds {params.max_time_days:g}")
    if out["event"] not in (0, 1):  # pragma: no cover - _event only returns 0/1
        raise PatientDataError("invalid_clinical_value", "event must be 0 or 1")


def _resolve_columns(table: RawTable, src: ClinicalSource, site: str) -> dict[str, int]:
    what = f"institution '{site}' clinical table {table.file_name}"
    cols: dict[str, int] = {"__id": table.resolve(src.id_column, what)}
    for field_name, ref in src.columns.items():
        cols[field_name] = table.resolve(ref, what)
    survival = src.survival
    if isinstance(survival, DurationSurvival):
        cols["__time"] = table.resolve(survival.time_column, what)
        cols["__event"] = table.resolve(survival.event_column, what)
    elif isinstance(survival, DatesSurvival):
        cols["__start"] = table.resolve(survival.start_column, what)
        cols["__last"] = table.resolve(survival.last_contact_column, what)
        cols["__death"] = table.resolve(survival.death_column, what)
    if isinstance(src.age_from_dates, AgeFromDates):
        cols["__birth"] = table.resolve(src.age_from_dates.birth_column, what)
        cols["__age_ref"] = table.resolve(src.age_from_dates.reference_column, what)
    for name, ref in src.extra_columns.items():
        cols[f"__extra_{name}"] = table.resolve(ref, what)
    return cols


def _merge_patient_rows(
    records: list[dict[str, Any]], src: ClinicalSource
) -> dict[str, Any]:
    """One patient from several rows (e.g. one per lesion): fields must agree; rows may be counted."""
    merged: dict[str, Any] = {}
    for name in records[0]:
        present = [r[name] for r in records if r[name] is not None]
        rule = src.merge_rules.get(name, "agree")  # type: ignore[call-overload]
        if not present:
            merged[name] = None
        elif rule == "first":
            merged[name] = present[0]
        elif rule in ("min", "max"):
            merged[name] = min(present) if rule == "min" else max(present)
        elif len(set(present)) > 1:
            field_name = name.removeprefix("extra_")
            raise PatientDataError("inconsistent_rows", f"{len(records)} rows disagree on {field_name} "
                                                        "(declare a merge rule in clinical.merge_rules)")
        else:
            merged[name] = present[0]
    if src.count_rows_as is not None:
        merged[src.count_rows_as] = len(records)
    return merged


def _malformed(table: RawTable, index: int, row_number: int) -> PatientDataError:
    """A ragged row: the row-level error that quarantines its patient (``malformed_row``); the rest of the table
    proceeds. Its patient is the one its id cell names (what else could be: a shift after the id column is the
    usual case, an unquoted delimiter in free text)."""
    cells, header = table.malformed[index]
    return PatientDataError("malformed_row", f"row {row_number} of {table.file_name} has {cells} cells where the "
                                             f"header has {header}; "
                                             "its values cannot be assigned to columns (quote cells holding the "
                                             "delimiter)")


def harmonise_table(
    site: str,
    src: ClinicalSource,
    params: IngestParams,
    pseudonymiser: Pseudonymiser,
) -> tuple[pd.DataFrame, list[QuarantineRecord], dict[str, Any]]:
    """Harmonise a site's clinical table in memory: (canonical rows, quarantine, mapping report)."""
    table = read_raw_table(src)
    cols = _resolve_columns(table, src, site)
    quarantine: list[QuarantineRecord] = []
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: dict[str, PatientDataError] = {}
    rows_read = 0
    skipped_by_pattern = 0
    fallbacks: Counter[str] = Counter()  # case id -> rows whose primary site mapped to "other" by fallback
    for index, row in table.cells.iterrows():
        if all(_text(v, src.missing_values) is None for v in row.tolist()):
            continue
        rows_read += 1
        row_number = table.first_row_number + int(str(index))
        source_id = normalise_id(_text(row[cols["__id"]], []), src.id_normalise)
        if source_id is not None and src.id_pattern is not None and not re.fullmatch(src.id_pattern, source_id):
            skipped_by_pattern += 1  # e.g. a footnote under the table
            continue
        if source_id is None:
            reason, message = ("missing_id", f"row {row_number} of the clinical table has no patient id")
            if int(str(index)) in table.malformed:
                reason, message = "malformed_row", _malformed(table, int(str(index)), row_number).message
            quarantine.append(QuarantineRecord(site, f"{site}-row{row_number}", "clinical", reason, message))
            continue
        case_id = pseudonymiser.case_id(site, source_id)
        if int(str(index)) in table.malformed:  # none of its values is used: they may sit under the wrong columns
            failed.setdefault(case_id, _malformed(table, int(str(index)), row_number))
            by_patient[case_id]
            continue
        try:
            record = _row_record(row, src, cols, params)
        except PatientDataError as exc:
            failed.setdefault(case_id, exc)
            by_patient[case_id]
            continue
        if "primary" in cols:
            raw_primary = _text(row[cols["primary"]], src.missing_values)
            declared = src.values.get("primary", {})
            if record["primary"] == "other" and raw_primary is not None \
                    and raw_primary.lower() not in {"other", *declared}:
                fallbacks[case_id] += 1  # never the text: a free-text cell may hold a name
        by_patient[case_id].append(record)

    rows = []
    for case_id, records in by_patient.items():
        if case_id in failed:
            error = failed[case_id]
            quarantine.append(QuarantineRecord(site, case_id, "clinical", error.reason, f"{case_id}: {error.message}"))
            continue
        if len(records) > 1 and src.rows_per_patient == "one":
            quarantine.append(QuarantineRecord(site, case_id, "clinical", "duplicate_clinical_row",
                                               f"{case_id}: {len(records)} rows in a one-row-per-patient table"))
            continue
        try:
            merged = _merge_patient_rows(records, src)
        except PatientDataError as exc:
            quarantine.append(QuarantineRecord(site, case_id, "clinical", exc.reason, f"{case_id}: {exc.message}"))
            continue
        rows.append({"site": site, "case_id": case_id, **merged})
    frame = _typed_frame(rows, src)
    report = {
        "rows_read": rows_read,
        "rows_skipped_by_id_pattern": skipped_by_pattern,
        "patients": len(by_patient),
        "harmonised": len(frame),
        "quarantined": len({q.case_id for q in quarantine}),
        "fields_declared": sorted(k for k in cols if not k.startswith("__")),
        "missing_per_field": {c: int(frame[c].isna().sum()) for c in CLINICAL_FIELDS if c in frame},
        "primary_mapped_to_other": dict(sorted(fallbacks.items())),
    }
    return frame, quarantine, report


def _typed_frame(rows: list[dict[str, Any]], src: ClinicalSource) -> pd.DataFrame:
    base = empty_clinical_table()
    extra = [f"extra_{n}" for n in src.extra_columns]
    frame = pd.DataFrame(rows, columns=[*base.columns, *extra])
    for column, dtype in {"site": "string", "case_id": "string", **CLINICAL_DTYPES}.items():
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None).astype(dtype)  # type: ignore[call-overload]
    for column in extra:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        all_numeric = numeric.notna().sum() == frame[column].notna().sum()
        frame[column] = numeric.astype("Float64") if all_numeric else frame[column].astype("string")
    return frame.sort_values("case_id").reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Content-keyed, persisted result
# --------------------------------------------------------------------------------------------------


def clinical_code_version() -> str:
    return code_version("survival_model.ingest.clinical", "survival_model.ingest.ids",
                        "survival_model.quarantine")


@dataclass(frozen=True)
class HarmoniseClinical(Stage[ClinicalResult]):
    """One site's clinical table harmonised into ``<work_dir>/ingest/clinical/<site>/<key[:16]>/``.

    The key is made of the table's bytes (memoised in the work directory,
    ``survival_model.fingerprint.digest_memo_path``), its declaration (without the path), the ``ingest``
    params, the pseudonymisation key's fingerprint and this module's code version. A table that cannot be
    used at all (missing file, undeclared column) gives a result with ``error`` set (``error.json``, reused
    like a table); cohort assembly then quarantines that site's patients with the message.
    """

    name: ClassVar[str] = "harmonise-clinical"
    site: str
    institution: Institution
    params: IngestParams
    pseudonymiser: Pseudonymiser
    work_dir: Path

    def label(self) -> str:
        return f"clinical-{self.site}"

    def redactor(self) -> Redactor:
        """The table's folder as ``<source>`` in any message that leaves the stage."""
        return Redactor((self.institution.clinical.path.parent,))

    def make_key(self) -> str:
        src = self.institution.clinical
        digest = None
        if src.path.is_file():
            memo = DigestMemo(digest_memo_path(self.work_dir), self.pseudonymiser.memo_key)
            try:
                with self.redactor().errors():
                    digest = file_digest(src.path, memo)
            finally:
                memo.close()
        return stable_hash(
            STAGE, clinical_code_version(), self.site, digest, src.model_dump(mode="json", exclude={"path"}),
            self.params.model_dump(mode="json"), self.pseudonymiser.fingerprint,
        )

    def place(self) -> tuple[str, ...]:
        return ("ingest", "clinical", self.site)

    def outputs(self, folder: Path) -> list[Path]:
        return [folder / "error.json"] if (folder / "error.json").exists() else [folder / "report.json"]

    def compute(self, tmp: Path) -> None:
        redact = self.redactor()
        try:
            with redact.errors():
                frame, quarantine, report = harmonise_table(self.site, self.institution.clinical, self.params,
                                                            self.pseudonymiser)
        except DataSourceError as exc:
            message = redact(str(exc))
            log.error("institution %s: clinical table unusable: %s", self.site, message)
            write_json({"error": message}, tmp / "error.json")
        else:
            write_parquet(frame, tmp / "clinical.parquet")
            write_parquet(quarantine_frame(quarantine), tmp / "quarantine.parquet")
            write_json(report, tmp / "report.json")

    def load(self, folder: Path) -> ClinicalResult | None:
        site, key = self.site, self.key()
        if (folder / "error.json").is_file():
            return ClinicalResult(site, key, None, (), {}, read_json(folder / "error.json")["error"])
        if not (folder / "report.json").is_file():
            return None
        qframe = pd.read_parquet(folder / "quarantine.parquet")
        records = tuple(
            QuarantineRecord(str(r.site), str(r.case_id), str(r.stage), str(r.reason), str(r.message))
            for r in qframe.itertuples(index=False)
        )
        return ClinicalResult(site, key, folder / "clinical.parquet", records, read_json(folder / "report.json"))
