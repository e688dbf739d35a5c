"""Clinical harmonisation (survival_model.ingest.clinical) on small tables written by the tests."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from pydantic import ValidationError

from survival_model.config import ClinicalSource, IngestParams, Institution, parse_params
from survival_model.errors import ConfigError, DataSourceError
from survival_model.ingest import clinical as clinical_module
from survival_model.ingest.clinical import CLINICAL_DTYPES, ClinicalResult, HarmoniseClinical, harmonise_table
from survival_model.ingest.privacy import Pseudonymiser
from survival_model.quarantine import QuarantineRecord
from survival_model.stage import run, short

SITE = "site_x"
PSEUDONYMISER = Pseudonymiser(b"k" * 32)
DURATION = {"kind": "duration", "time_column": "time", "event_column": "event"}
DATES = {"kind": "dates", "start_column": "start", "last_contact_column": "last", "death_column": "death"}

Harmonised = tuple[pd.DataFrame, list[QuarantineRecord], dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[Any]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter=delimiter).writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list[Any]], merge: tuple[str, ...] = ()) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    for row in rows:
        sheet.append(row)
    for cells in merge:
        sheet.merge_cells(cells)
    book.save(path)
    return path


def source(path: Path, **fields: Any) -> ClinicalSource:
    return ClinicalSource.model_validate({"path": str(path), "id_column": "id", "survival": DURATION, **fields})


def harmonise(src: ClinicalSource, params: IngestParams | None = None) -> Harmonised:
    return harmonise_table(SITE, src, params or IngestParams(), PSEUDONYMISER)


def harmonised_site(site: str, inst: Institution, params: IngestParams, pseudonymiser: Pseudonymiser,
                    work: Path) -> ClinicalResult:
    """The site's clinical table through its stage (computed, or read back when its folder exists)."""
    return run(HarmoniseClinical(site, inst, params, pseudonymiser, work))


def cid(source_id: str) -> str:
    return PSEUDONYMISER.case_id(SITE, source_id)


def reasons(quarantine: list[QuarantineRecord]) -> dict[str, str]:
    return {q.case_id: q.reason for q in quarantine}


def row_of(frame: pd.DataFrame, source_id: str) -> pd.Series:
    rows = frame[frame["case_id"] == cid(source_id)]
    assert len(rows) == 1, f"{source_id} is not harmonised exactly once"
    return rows.iloc[0]


def table(tmp_path: Path, header: list[str], *rows: list[Any], name: str = "clinical.csv") -> Path:
    return write_csv(tmp_path / name, [header, *[list(r) for r in rows]])


# --------------------------------------------------------------------------------------------------
# Survival as a duration
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "raw", "days"),
    [
        ("days", "100", 100.0),
        ("weeks", "4", 28.0),
        ("months", "12", 365.25),
        ("months", "1", 365.25 / 12),
        ("years", "2", 730.5),
        ("years", "0.5", 182.625),
    ],
)
def test_duration_is_converted_to_days(tmp_path: Path, unit: str, raw: str, days: float) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["p1", raw, "1"])
    frame, quarantine, _ = harmonise(source(path, survival={**DURATION, "time_unit": unit}))
    assert quarantine == []
    assert row_of(frame, "p1")["time_days"] == pytest.approx(days)


def test_default_event_words_map_to_death_and_censoring(tmp_path: Path) -> None:
    words = {
        "a": "Dead",
        "b": "alive",
        "c": "1",
        "d": "0",
        "e": "Censored",
        "f": "DECEASED",
        "g": "yes",
        "h": "false",
        "i": "1.0",
        "j": " died ",
    }
    expected = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 0, "f": 1, "g": 1, "h": 0, "i": 1, "j": 1}
    path = table(tmp_path, ["id", "time", "event"], *[[k, "10", v] for k, v in words.items()])
    frame, quarantine, _ = harmonise(source(path))
    assert quarantine == []
    assert {k: int(row_of(frame, k)["event"]) for k in words} == expected


def test_declared_event_values_replace_the_defaults(tmp_path: Path) -> None:
    path = table(
        tmp_path, ["id", "time", "event"], ["a", "10", "Verstorben"], ["b", "20", "lebend"], ["c", "30", "dead"]
    )
    survival = {**DURATION, "event_values": {"verstorben": 1, "Lebend": 0}}
    frame, quarantine, _ = harmonise(source(path, survival=survival))
    assert int(row_of(frame, "a")["event"]) == 1
    assert int(row_of(frame, "b")["event"]) == 0
    # "dead" is a default word, but the declared map replaces the defaults
    assert reasons(quarantine) == {cid("c"): "invalid_clinical_value"}
    assert "event" in quarantine[0].message


def test_an_unknown_event_value_is_quarantined(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["a", "10", "1"], ["b", "10", "maybe"])
    frame, quarantine, report = harmonise(source(path))
    assert list(frame["case_id"]) == [cid("a")]
    assert reasons(quarantine) == {cid("b"): "invalid_clinical_value"}
    assert "survival.event_values" in quarantine[0].message
    assert report["harmonised"] == 1 and report["quarantined"] == 1 and report["patients"] == 2


def test_missing_time_or_event_is_missing_survival(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", "age"],
        ["ok", "10", "1", "60"],
        ["no_time", "", "1", "60"],
        ["no_event", "10", "NA", "60"],
        ["neither", "n/a", "", "60"],
    )
    frame, quarantine, _ = harmonise(source(path, columns={"age": "age"}))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {cid(k): "missing_survival" for k in ("no_time", "no_event", "neither")}


@pytest.mark.parametrize("raw", ["0", "-5", "0.0", "\u221212", "\u201312", "\uff0d3"])
def test_a_time_that_is_not_positive_is_invalid(tmp_path: Path, raw: str) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["ok", "10", "1"], ["bad", raw, "1"])
    frame, quarantine, _ = harmonise(source(path))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {cid("bad"): "invalid_survival_time"}


@pytest.mark.parametrize("raw", ["3 months", "12 weeks", "about 30", "30d"])
def test_a_time_with_words_around_it_is_refused_never_reinterpreted(tmp_path: Path, raw: str) -> None:
    """``3 months`` in a column of days is neither 3 days nor 91: the unit is the column's, declared once."""
    path = table(tmp_path, ["id", "time", "event"], ["ok", "10", "1"], ["words", raw, "1"])
    frame, quarantine, _ = harmonise(source(path))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {cid("words"): "invalid_clinical_value"}
    assert "not a plain number in the declared unit (days)" in quarantine[0].message


def test_a_time_that_is_not_a_number_or_too_long_is_quarantined(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["ok", "10", "1"], ["text", "soon", "1"], ["long", "40000", "0"])
    frame, quarantine, _ = harmonise(source(path))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {cid("text"): "invalid_clinical_value", cid("long"): "clinical_out_of_range"}


# --------------------------------------------------------------------------------------------------
# Survival from dates, age from dates
# --------------------------------------------------------------------------------------------------


def test_dates_with_a_declared_format(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "start", "last", "death"],
        ["alive", "01.02.2020", "02.03.2020", ""],
        ["dead", "01.02.2020", "01.06.2020", "15.02.2020"],
    )
    frame, quarantine, _ = harmonise(source(path, survival=DATES, date_format="%d.%m.%Y"))
    assert quarantine == []
    alive, dead = row_of(frame, "alive"), row_of(frame, "dead")
    assert (alive["time_days"], int(alive["event"])) == (30.0, 0)
    # a recorded death ends follow-up even when a later last-contact date is given
    assert (dead["time_days"], int(dead["event"])) == (14.0, 1)


@pytest.mark.parametrize(("dayfirst", "days"), [(True, 2.0), (False, 61.0)])
def test_dayfirst_decides_ambiguous_dates(tmp_path: Path, dayfirst: bool, days: float) -> None:
    # 03/04 -> 05/04: two days (3 and 5 April) day-first, 61 days (4 March to 4 May) month-first
    path = table(tmp_path, ["id", "start", "last", "death"], ["p", "03/04/2020", "", "05/04/2020"])
    frame, quarantine, _ = harmonise(source(path, survival=DATES, dayfirst=dayfirst))
    assert quarantine == []
    assert row_of(frame, "p")["time_days"] == days


def test_excel_datetime_cells_in_an_xlsx(tmp_path: Path) -> None:
    path = write_xlsx(
        tmp_path / "clinical.xlsx",
        [
            ["id", "start", "last", "death"],
            ["dead", dt.datetime(2020, 1, 1), dt.datetime(2020, 6, 1), dt.datetime(2020, 3, 1)],
            ["alive", dt.datetime(2019, 12, 31, 14, 30), dt.datetime(2020, 12, 31), None],
            ["alive_date", dt.date(2021, 1, 1), dt.date(2021, 1, 11), None],
        ],
    )
    frame, quarantine, _ = harmonise(source(path, survival=DATES))
    assert quarantine == []
    assert (row_of(frame, "dead")["time_days"], int(row_of(frame, "dead")["event"])) == (60.0, 1)
    assert (row_of(frame, "alive")["time_days"], int(row_of(frame, "alive")["event"])) == (365.0, 0)
    assert row_of(frame, "alive_date")["time_days"] == 10.0


def test_excel_serial_numbers_as_dates(tmp_path: Path) -> None:
    # 43831 is 2020-01-01 and 43862 is 2020-02-01 in Excel's 1900 date system
    path = table(tmp_path, ["id", "start", "last", "death"], ["a", "43831", "43862", ""], ["b", "43831", "", "43862.0"])
    frame, quarantine, _ = harmonise(source(path, survival=DATES, date_format="excel_serial"))
    assert quarantine == []
    assert (row_of(frame, "a")["time_days"], int(row_of(frame, "a")["event"])) == (31.0, 0)
    assert (row_of(frame, "b")["time_days"], int(row_of(frame, "b")["event"])) == (31.0, 1)


def test_an_unparseable_date_is_quarantined_without_echoing_it(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "start", "last", "death"], ["p", "31.02.2020", "01.06.2020", ""])
    frame, quarantine, _ = harmonise(source(path, survival=DATES, date_format="%d.%m.%Y"))
    assert frame.empty
    assert reasons(quarantine) == {cid("p"): "invalid_clinical_value"}
    assert "date_format" in quarantine[0].message and "31.02" not in quarantine[0].message


def test_death_or_last_contact_before_the_start_date(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "start", "last", "death"],
        ["ok", "01.02.2020", "01.03.2020", ""],
        ["early_death", "01.02.2020", "01.03.2020", "01.01.2020"],
        ["early_contact", "01.02.2020", "15.01.2020", ""],
    )
    frame, quarantine, _ = harmonise(source(path, survival=DATES, date_format="%d.%m.%Y"))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {
        cid("early_death"): "death_before_diagnosis",
        cid("early_contact"): "death_before_diagnosis",
    }
    messages = {q.case_id: q.message for q in quarantine}
    assert "death date" in messages[cid("early_death")]
    assert "last-contact date" in messages[cid("early_contact")]
    assert not any("2020" in m for m in messages.values())


def test_dates_without_start_or_end_are_missing_survival(tmp_path: Path) -> None:
    path = table(
        tmp_path, ["id", "start", "last", "death"], ["no_start", "", "01.03.2020", ""], ["no_end", "01.02.2020", "", ""]
    )
    frame, quarantine, _ = harmonise(source(path, survival=DATES, date_format="%d.%m.%Y"))
    assert frame.empty
    assert reasons(quarantine) == {cid("no_start"): "missing_survival", cid("no_end"): "missing_survival"}


def test_age_from_birth_and_reference_dates(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "dob", "start", "last", "death"],
        ["p", "15.06.1960", "01.01.2020", "01.02.2020", ""],
        ["no_dob", "", "01.01.2020", "01.02.2020", ""],
    )
    src = source(
        path,
        survival=DATES,
        date_format="%d.%m.%Y",
        age_from_dates={"birth_column": "dob", "reference_column": "start"},
    )
    frame, quarantine, _ = harmonise(src)
    assert quarantine == []
    expected = round((dt.date(2020, 1, 1) - dt.date(1960, 6, 15)).days / 365.25, 2)
    assert row_of(frame, "p")["age"] == pytest.approx(expected) and 59.5 < expected < 59.6
    assert pd.isna(row_of(frame, "no_dob")["age"])
    # neither the birth date nor the raw dates are in the output
    assert "dob" not in frame.columns and "1960" not in frame.to_csv()


def test_a_birth_date_after_the_reference_date_is_out_of_range(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "dob", "start", "last", "death"], ["p", "01.01.2030", "01.01.2020", "01.02.2020", ""])
    src = source(
        path,
        survival=DATES,
        date_format="%d.%m.%Y",
        age_from_dates={"birth_column": "dob", "reference_column": "start"},
    )
    _, quarantine, _ = harmonise(src)
    assert reasons(quarantine) == {cid("p"): "clinical_out_of_range"}
    assert quarantine[0].message.split(": ", 1)[1].startswith("age ")


# --------------------------------------------------------------------------------------------------
# Clinical fields
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "params"),
    [
        ("age", "15", IngestParams()),
        ("age", "111", IngestParams()),
        ("kps", "120", IngestParams()),
        ("kps", "-10", IngestParams()),
        ("gpa", "4.5", IngestParams()),
        ("age", "70", IngestParams(age_range=(18, 65))),
    ],
)
def test_out_of_range_values_are_quarantined_naming_the_field(
    tmp_path: Path, field: str, raw: str, params: IngestParams
) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", field],
        ["ok", "10", "1", "50" if field == "age" else "2"],
        ["bad", "10", "1", raw],
    )
    frame, quarantine, _ = harmonise(source(path, columns={field: field}), params)
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {cid("bad"): "clinical_out_of_range"}
    assert f"{field} {float(raw):g} is outside" in quarantine[0].message


@pytest.mark.parametrize(
    ("raw", "kps"), [("KPS 80", 80.0), ("80%", 80.0), ("90", 90.0), (" 70.0 ", 70.0), ("kps: 60", 60.0)]
)
def test_numbers_are_read_out_of_text(tmp_path: Path, raw: str, kps: float) -> None:
    path = table(tmp_path, ["id", "time", "event", "kps"], ["p", "10", "1", raw])
    frame, quarantine, _ = harmonise(source(path, columns={"kps": "kps"}))
    assert quarantine == []
    assert row_of(frame, "p")["kps"] == kps


def test_a_value_that_cannot_be_parsed_is_invalid(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", "age", "sex", "nmets"],
        ["ok", "10", "1", "60", "F", "2"],
        ["bad_age", "10", "1", "old", "F", "2"],
        ["bad_sex", "10", "1", "60", "x", "2"],
        ["bad_count", "10", "1", "60", "F", "2.5"],
    )
    frame, quarantine, _ = harmonise(source(path, columns={"age": "age", "sex": "sex", "n_brain_mets": "nmets"}))
    assert list(frame["case_id"]) == [cid("ok")]
    assert reasons(quarantine) == {
        cid("bad_age"): "invalid_clinical_value",
        cid("bad_sex"): "invalid_clinical_value",
        cid("bad_count"): "invalid_clinical_value",
    }
    messages = {q.case_id: q.message for q in quarantine}
    assert "age is not a number" in messages[cid("bad_age")]
    assert "sex value" in messages[cid("bad_sex")]
    assert "n_brain_mets is not a whole number" in messages[cid("bad_count")]


def test_sex_synonyms_and_a_declared_value_map(tmp_path: Path) -> None:
    raw = {"a": "F", "b": "female", "c": "W", "d": "m", "e": "Male", "f": "MAN", "g": "1", "h": "2"}
    expected = {
        "a": "female",
        "b": "female",
        "c": "female",
        "d": "male",
        "e": "male",
        "f": "male",
        "g": "female",
        "h": "male",
    }
    path = table(tmp_path, ["id", "time", "event", "sex"], *[[k, "10", "1", v] for k, v in raw.items()])
    frame, quarantine, _ = harmonise(source(path, columns={"sex": "sex"}, values={"sex": {1: "female", "2": "male"}}))
    assert quarantine == []
    assert {k: row_of(frame, k)["sex"] for k in raw} == expected

    # without the map, codes 1/2 are not a sex
    frame, quarantine, _ = harmonise(source(path, columns={"sex": "sex"}))
    assert reasons(quarantine) == {cid("g"): "invalid_clinical_value", cid("h"): "invalid_clinical_value"}


def test_a_value_map_to_none_makes_the_value_missing(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event", "sex"], ["p", "10", "1", "3"])
    frame, quarantine, _ = harmonise(source(path, columns={"sex": "sex"}, values={"sex": {"3": None}}))
    assert quarantine == []
    assert pd.isna(row_of(frame, "p")["sex"])


def test_primary_synonyms_and_the_other_fallback(tmp_path: Path) -> None:
    raw = {
        "a": "NSCLC",
        "b": "RCC",
        "c": "Breast Ca",
        "d": "Colorectal",
        "e": "melanoma",
        "f": "Thyroid",
        "g": "Ovary",
        "h": "SCLC",
        "i": "Other",
    }
    expected = {
        "a": "lung",
        "b": "renal",
        "c": "breast",
        "d": "gi",
        "e": "melanoma",
        "f": "other",
        "g": "other",
        "h": "lung",
        "i": "other",
    }
    path = table(tmp_path, ["id", "time", "event", "primary"], *[[k, "10", "1", v] for k, v in raw.items()])
    frame, quarantine, report = harmonise(
        source(path, columns={"primary": "primary"}, values={"primary": {"ovary": "other"}})
    )
    assert quarantine == []
    assert {k: row_of(frame, k)["primary"] for k in raw} == expected
    # only the undeclared fallback is reported ("Ovary" is declared, "Other" is literally other), by the patient's
    # pseudonymous id, never by its text (a free-text cell may hold a name: tests/reliability/test_privacy.py)
    assert report["primary_mapped_to_other"] == {cid("f"): 1}


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("yes", True),
        ("no", False),
        ("Y", True),
        ("N", False),
        ("1", True),
        ("0", False),
        ("Pos", True),
        ("Neg", False),
        ("Mut", True),
        ("WT", False),
        ("positive", True),
        ("wild-type", False),
        ("TRUE", True),
    ],
)
def test_booleans(tmp_path: Path, raw: str, value: bool) -> None:
    path = table(tmp_path, ["id", "time", "event", "egfr"], ["p", "10", "1", raw])
    frame, quarantine, _ = harmonise(source(path, columns={"egfr_mutant": "egfr"}))
    assert quarantine == []
    assert bool(row_of(frame, "p")["egfr_mutant"]) is value


def test_a_boolean_that_is_not_yes_or_no_is_invalid(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event", "egfr"], ["p", "10", "1", "maybe"])
    _, quarantine, _ = harmonise(source(path, columns={"egfr_mutant": "egfr"}))
    assert reasons(quarantine) == {cid("p"): "invalid_clinical_value"}
    assert "egfr_mutant" in quarantine[0].message


def test_missing_value_strings_become_missing(tmp_path: Path) -> None:
    missing = {"a": "NA", "b": "Not Available", "c": "n/a", "d": "", "e": "  ", "f": "unknown"}
    path = table(
        tmp_path,
        ["id", "time", "event", "kps", "egfr", "sex"],
        *[[k, "10", "1", v, v, v] for k, v in missing.items()],
        ["known", "10", "1", "80", "no", "F"],
    )
    frame, quarantine, report = harmonise(source(path, columns={"kps": "kps", "egfr_mutant": "egfr", "sex": "sex"}))
    assert quarantine == []
    assert len(frame) == len(missing) + 1
    for key in missing:
        row = row_of(frame, key)
        assert pd.isna(row["kps"]) and pd.isna(row["egfr_mutant"]) and pd.isna(row["sex"]), key
    known = row_of(frame, "known")
    assert (known["kps"], bool(known["egfr_mutant"]), known["sex"]) == (80.0, False, "female")
    assert report["missing_per_field"]["kps"] == len(missing)


def test_declared_missing_values_replace_the_defaults(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event", "kps"], ["a", "10", "1", "999"], ["b", "10", "1", "80"])
    frame, quarantine, _ = harmonise(source(path, columns={"kps": "kps"}, missing_values=["999", ""]))
    assert quarantine == []
    assert pd.isna(row_of(frame, "a")["kps"]) and row_of(frame, "b")["kps"] == 80.0


# --------------------------------------------------------------------------------------------------
# Headers and columns
# --------------------------------------------------------------------------------------------------


def multirow_table(tmp_path: Path, *, second_time: bool = False) -> Path:
    top = ["", "Patient", "", "Survival", ""]
    bottom = ["ID", "Age", "Sex", "Time", "Status"]
    data = [["p1", "61", "F", "100", "dead"], ["p2", "55", "M", "200", "alive"]]
    if second_time:
        top, bottom = [*top, "Follow-up"], [*bottom, "Time"]
        data = [[*r, "5"] for r in data]
    return write_csv(tmp_path / "multi.csv", [top, bottom, *data])


@pytest.mark.parametrize("time_ref", ["Survival / Time", "survival / time", "Time", 3])
def test_multirow_header_columns_by_full_name_lower_part_or_position(tmp_path: Path, time_ref: str | int) -> None:
    path = multirow_table(tmp_path)
    src = source(
        path,
        header_rows=[0, 1],
        id_column="ID",
        columns={"age": "Patient / Age", "sex": "Sex"},
        survival={**DURATION, "time_column": time_ref, "event_column": "Survival / Status"},
    )
    frame, quarantine, _ = harmonise(src)
    assert quarantine == []
    assert [row_of(frame, "p1")[c] for c in ("age", "sex", "time_days", "event")] == [61.0, "female", 100.0, 1]
    assert [row_of(frame, "p2")[c] for c in ("age", "sex", "time_days", "event")] == [55.0, "male", 200.0, 0]


def test_an_ambiguous_column_reference_is_an_error(tmp_path: Path) -> None:
    path = multirow_table(tmp_path, second_time=True)
    src = source(
        path, header_rows=[0, 1], id_column="ID", survival={**DURATION, "time_column": "Time", "event_column": "Status"}
    )
    with pytest.raises(DataSourceError, match=r"column 'Time' is ambiguous \('Survival / Time', 'Follow-up / Time'\)"):
        harmonise(src)
    # more of the name resolves it
    src = source(
        path,
        header_rows=[0, 1],
        id_column="ID",
        survival={**DURATION, "time_column": "Follow-up / Time", "event_column": "Status"},
    )
    frame, _, _ = harmonise(src)
    assert list(frame["time_days"]) == [5.0, 5.0]


def test_multirow_header_with_merged_cells_in_an_xlsx(tmp_path: Path) -> None:
    path = write_xlsx(
        tmp_path / "merged.xlsx",
        [
            ["Registry export"],
            [None, "Patient", None, "Survival", None],
            ["ID", "Age", "Sex", "Time", "Status"],
            ["p1", 61, "F", 100, "dead"],
            ["p2", 55, "M", 200.0, "alive"],
        ],
        merge=("B2:C2", "D2:E2"),
    )
    src = source(
        path,
        header_rows=[1, 2],
        id_column="ID",
        columns={"age": "Patient / Age", "sex": "Patient / Sex"},
        survival={**DURATION, "time_column": "Survival / Time", "event_column": "Survival / Status"},
    )
    frame, quarantine, _ = harmonise(src)
    assert quarantine == []
    assert [row_of(frame, "p2")[c] for c in ("age", "sex", "time_days", "event")] == [55.0, "male", 200.0, 0]


def test_first_data_row_skips_rows_between_header_and_data(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["", "days", "0/1"], ["p1", "10", "1"])
    frame, quarantine, _ = harmonise(source(path))
    # without it, the units row is read as a patient without id (spreadsheet row 2)
    assert reasons(quarantine) == {f"{SITE}-row2": "missing_id"}
    frame, quarantine, report = harmonise(source(path, first_data_row=2))
    assert quarantine == [] and list(frame["case_id"]) == [cid("p1")] and report["rows_read"] == 1


def test_a_missing_column_lists_the_available_ones(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event", "age"], ["p1", "10", "1", "50"])
    src = source(path, survival={**DURATION, "time_column": "os_days"})
    with pytest.raises(
        DataSourceError,
        match=r"site_x.*no column named 'os_days'; the table has: 'id', 'time', "
        r"'event', 'age'",
    ):
        harmonise(src)
    with pytest.raises(DataSourceError, match=r"column position 7 is outside the table's 4 columns"):
        harmonise(source(path, columns={"age": 7}))


def test_a_missing_file_is_a_data_source_error(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"clinical table .*nowhere\.csv not found"):
        harmonise(source(tmp_path / "nowhere.csv"))


def test_a_declared_delimiter(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "semi.csv", [["id", "time", "event", "kps"], ["p1", "10,5", "1", "KPS 80"]], ";")
    frame, quarantine, _ = harmonise(source(path, delimiter=";", decimal=",", columns={"kps": "kps"}))
    assert quarantine == []
    assert (row_of(frame, "p1")["time_days"], row_of(frame, "p1")["kps"]) == (10.5, 80.0)


@pytest.mark.parametrize(
    ("decimal", "raw", "expected"),
    [(".", "1,084", 1084.0), (".", "1,084.5", 1084.5), (",", "1.084", 1084.0), (",", "10,5", 10.5),
     (".", "10.5", 10.5), (".", "3,5", None), (".", "2 - 3", None)],
)
def test_decimal_marks_and_thousands(tmp_path: Path, decimal: str, raw: str, expected: float | None) -> None:
    path = write_csv(tmp_path / "n.csv", [["id", "time", "event"], ["p1", raw, "1"]], ";")
    frame, quarantine, _ = harmonise(source(path, delimiter=";", decimal=decimal))
    if expected is None:
        assert [q.reason for q in quarantine] == ["invalid_clinical_value"] and frame.empty
    else:
        assert quarantine == [] and row_of(frame, "p1")["time_days"] == expected


def test_rows_not_matching_the_id_pattern_are_skipped_not_quarantined(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "n.csv", [["id", "time", "event"], ["10005", "100", "1"], ["20007", "50", "0"],
                                          ["Times are days since MR1", "", ""]], ",")
    frame, quarantine, report = harmonise(source(path, id_pattern=r"\d+"))
    assert quarantine == [] and len(frame) == 2 and report["rows_skipped_by_id_pattern"] == 1
    _, quarantine, _ = harmonise(source(path))
    assert [q.reason for q in quarantine] == ["missing_survival"]


# --------------------------------------------------------------------------------------------------
# Rows per patient
# --------------------------------------------------------------------------------------------------


def test_many_rows_per_patient_counted_as_brain_metastases(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "lesion", "time", "event", "sex"],
        ["a", "1", "100", "1", "F"],
        ["a", "2", "100", "1", "F"],
        ["b", "1", "50", "0", "M"],
        ["a", "3", "100", "1", ""],
    )
    src = source(path, rows_per_patient="many", count_rows_as="n_brain_mets", columns={"sex": "sex"})
    frame, quarantine, report = harmonise(src)
    assert quarantine == []
    assert int(row_of(frame, "a")["n_brain_mets"]) == 3 and int(row_of(frame, "b")["n_brain_mets"]) == 1
    assert row_of(frame, "a")["sex"] == "female"  # a missing value in one row does not disagree
    assert (report["rows_read"], report["patients"], report["harmonised"]) == (4, 2, 2)


def test_rows_that_disagree_are_inconsistent(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", "sex"],
        ["a", "100", "1", "F"],
        ["a", "100", "1", "M"],
        ["b", "50", "0", "M"],
        ["c", "10", "1", "F"],
        ["c", "20", "1", "F"],
    )
    frame, quarantine, _ = harmonise(source(path, rows_per_patient="many", columns={"sex": "sex"}))
    assert list(frame["case_id"]) == [cid("b")]
    assert reasons(quarantine) == {cid("a"): "inconsistent_rows", cid("c"): "inconsistent_rows"}
    messages = {q.case_id: q.message for q in quarantine}
    assert "2 rows disagree on sex" in messages[cid("a")] and "merge_rules" in messages[cid("a")]
    assert "disagree on time_days" in messages[cid("c")]


@pytest.mark.parametrize(("rule", "age"), [("min", 58.0), ("max", 61.0), ("first", 60.0)])
def test_merge_rules(tmp_path: Path, rule: str, age: float) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", "age"],
        ["a", "100", "1", "60"],
        ["a", "100", "1", "58"],
        ["a", "100", "1", "61"],
        ["a", "100", "1", ""],
    )
    frame, quarantine, _ = harmonise(
        source(path, rows_per_patient="many", columns={"age": "age"}, merge_rules={"age": rule})
    )
    assert quarantine == []
    assert row_of(frame, "a")["age"] == age


def test_a_bad_row_quarantines_the_whole_patient(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event", "age"], ["a", "100", "1", "60"], ["a", "100", "1", "200"])
    frame, quarantine, _ = harmonise(
        source(path, rows_per_patient="many", columns={"age": "age"}, merge_rules={"age": "min"})
    )
    assert frame.empty
    assert reasons(quarantine) == {cid("a"): "clinical_out_of_range"}


def test_duplicate_rows_in_a_one_row_table(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["a", "100", "1"], ["a", "100", "1"], ["b", "5", "0"])
    frame, quarantine, _ = harmonise(source(path))
    assert list(frame["case_id"]) == [cid("b")]
    assert reasons(quarantine) == {cid("a"): "duplicate_clinical_row"}
    assert "2 rows" in quarantine[0].message


def test_a_row_without_id_is_quarantined_by_row_number(tmp_path: Path) -> None:
    path = table(
        tmp_path, ["id", "time", "event"], ["a", "100", "1"], ["  ", "100", "1"], ["", "", ""], ["b", "5", "0"]
    )
    frame, quarantine, report = harmonise(source(path))
    assert sorted(frame["case_id"]) == sorted([cid("a"), cid("b")])
    # the blank row (spreadsheet row 4) is skipped, not quarantined
    assert reasons(quarantine) == {f"{SITE}-row3": "missing_id"}
    assert "row 3" in quarantine[0].message and report["rows_read"] == 3


# --------------------------------------------------------------------------------------------------
# Identifiers and privacy
# --------------------------------------------------------------------------------------------------


def test_id_normalisation_makes_one_patient_of_differently_written_ids(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event"],
        ["010005", "100", "1"],
        ["10005", "100", "1"],
        ["10005.0", "100", "1"],
        [" P-010005 ", "100", "1"],
    )
    steps = ["strip", "digits_only", "int_like", "strip_leading_zeros"]
    src = source(path, id_normalise=steps, rows_per_patient="many", count_rows_as="n_brain_mets")
    # digits_only would turn "10005.0" into "100050": int_like must come first
    frame, quarantine, _ = harmonise(
        src.model_copy(update={"id_normalise": ["strip", "int_like", "digits_only", "strip_leading_zeros"]})
    )
    assert quarantine == []
    assert list(frame["case_id"]) == [cid("10005")]
    assert int(frame["n_brain_mets"].iloc[0]) == 4

    frame, _, _ = harmonise(src)  # the declared order matters
    assert sorted(frame["case_id"]) == sorted([cid("10005"), cid("100050")])

    # in a one-row table the spellings collide; without normalisation they are different patients
    frame, quarantine, _ = harmonise(source(path, id_normalise=["int_like", "strip_leading_zeros"]))
    assert reasons(quarantine) == {cid("10005"): "duplicate_clinical_row"}
    assert frame["case_id"].tolist() == [cid("P-010005")]
    frame, quarantine, _ = harmonise(source(path))
    assert quarantine == [] and len(frame) == 4


def test_a_numeric_xlsx_id_matches_its_text_spelling(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "ids.xlsx", [["id", "time", "event"], [10005.0, 10, 1], ["010007", 20, 0]])
    frame, quarantine, _ = harmonise(source(path, id_normalise=["strip", "int_like", "strip_leading_zeros"]))
    assert quarantine == []
    assert sorted(frame["case_id"]) == sorted([cid("10005"), cid("10007")])


def test_identifying_columns_never_reach_the_output(tmp_path: Path) -> None:
    secrets = ["Jane Doe-Smithson", "MRN-77341", "1957-03-14", "PAT-ALPHA-001", "PAT-BRAVO-002", "PAT-CHARLIE-3"]
    path = table(
        tmp_path,
        ["id", "name", "mrn", "dob", "time", "event", "age", "kps"],
        ["PAT-ALPHA-001", "Jane Doe-Smithson", "MRN-77341", "1957-03-14", "100", "1", "63", "80"],
        ["PAT-BRAVO-002", "John Roe-Whitfield", "MRN-88412", "1960-01-01", "100", "1", "200", "80"],
        ["PAT-CHARLIE-3", "Ann Poe-Lindqvist", "MRN-99123", "1961-02-02", "100", "maybe", "60", "KPS x"],
        ["PAT-CHARLIE-3", "Ann Poe-Lindqvist", "MRN-99123", "1961-02-02", "100", "1", "60", "90"],
    )
    frame, quarantine, report = harmonise(source(path, columns={"age": "age", "kps": "kps"}))
    assert len(frame) == 1 and len(quarantine) == 2
    assert not {"name", "mrn", "dob", "id"} & set(frame.columns)
    text = frame.to_csv() + "\n".join(q.message + q.case_id for q in quarantine) + json.dumps(report)
    for value in [*secrets, "John Roe-Whitfield", "MRN-88412", "1960-01-01", "Ann Poe-Lindqvist", "MRN-99123"]:
        assert value not in text, value


def test_pseudonymous_ids_depend_on_site_and_key(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["p1", "10", "1"])
    frame_a, _, _ = harmonise_table("site_a", source(path), IngestParams(), PSEUDONYMISER)
    frame_b, _, _ = harmonise_table("site_b", source(path), IngestParams(), PSEUDONYMISER)
    frame_k, _, _ = harmonise_table("site_a", source(path), IngestParams(), Pseudonymiser(b"q" * 32))
    ids = [frame_a["case_id"].iloc[0], frame_b["case_id"].iloc[0], frame_k["case_id"].iloc[0]]
    assert len(set(ids)) == 3
    assert ids[0].startswith("site_a-") and ids[1].startswith("site_b-") and "p1" not in "".join(ids)


# --------------------------------------------------------------------------------------------------
# Output schema
# --------------------------------------------------------------------------------------------------


def test_extra_columns_and_nullable_dtypes(tmp_path: Path) -> None:
    path = table(
        tmp_path,
        ["id", "time", "event", "WHO grade", "IDH", "age", "sex", "nmets", "egfr"],
        ["a", "10", "1", "4", "wildtype", "60", "F", "2", "yes"],
        ["b", "20", "0", "3.0", "mutant", "", "", "", ""],
        ["c", "30", "1", "NA", "", "70", "M", "1", "no"],
    )
    src = source(
        path,
        columns={"age": "age", "sex": "sex", "n_brain_mets": "nmets", "egfr_mutant": "egfr"},
        extra_columns={"who_grade": "WHO grade", "idh": 4},
    )
    frame, quarantine, _ = harmonise(src)
    assert quarantine == []
    expected = {
        "site": "string",
        "case_id": "string",
        **CLINICAL_DTYPES,
        "extra_who_grade": "Float64",
        "extra_idh": "string",
    }
    assert list(frame.columns) == list(expected)
    for column, dtype in expected.items():
        assert frame[column].dtype == pd.api.types.pandas_dtype(dtype), column
    assert row_of(frame, "a")["extra_who_grade"] == 4.0 and row_of(frame, "b")["extra_who_grade"] == 3.0
    assert pd.isna(row_of(frame, "c")["extra_who_grade"]) and pd.isna(row_of(frame, "c")["extra_idh"])
    assert row_of(frame, "b")["extra_idh"] == "mutant"
    assert pd.isna(row_of(frame, "b")["n_brain_mets"]) and pd.isna(row_of(frame, "b")["egfr_mutant"])
    assert frame["site"].unique().tolist() == [SITE]
    assert frame["case_id"].is_monotonic_increasing


def test_an_all_quarantined_table_gives_an_empty_typed_frame(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "time", "event"], ["a", "", "1"])
    frame, quarantine, report = harmonise(source(path))
    assert frame.empty and len(quarantine) == 1 and report["harmonised"] == 0
    assert frame["time_days"].dtype == pd.api.types.pandas_dtype("Float64")
    assert frame["event"].dtype == pd.api.types.pandas_dtype("Int64")


# --------------------------------------------------------------------------------------------------
# The persisted, content-keyed variant
# --------------------------------------------------------------------------------------------------


def institution(path: Path, **clinical: Any) -> Institution:
    return Institution.model_validate(
        {
            "images": {"layout": "brats", "root": str(path.parent)},
            "clinical": {"path": str(path), "id_column": "id", "survival": DURATION, **clinical},
        }
    )


def test_harmonise_site_is_content_keyed_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = table(tmp_path, ["id", "time", "event", "kps"], ["a", "10", "1", "80"], ["b", "20", "0", "200"])
    inst = institution(path, columns={"kps": "kps"})
    work = tmp_path / "work"
    first = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, work)
    assert first.error is None and first.table_path is not None
    folder = first.table_path.parent
    assert folder == work / "ingest" / "clinical" / SITE / short(first.key)
    assert list(first.table()["case_id"]) == [cid("a")]
    assert [(q.case_id, q.reason) for q in first.quarantine] == [(cid("b"), "clinical_out_of_range")]
    assert first.report["harmonised"] == 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"clinical.parquet", "quarantine.parquet", "report.json"} <= set(mtimes)

    def no_recompute(*args: Any, **kwargs: Any) -> Harmonised:
        raise AssertionError("the table was harmonised again although its folder exists")

    with monkeypatch.context() as patch:
        patch.setattr(clinical_module, "harmonise_table", no_recompute)
        second = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, work)
    assert (second.key, second.table_path) == (first.key, first.table_path)
    assert second.quarantine == first.quarantine
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert len(list((work / "ingest" / "clinical" / SITE).iterdir())) == 1

    # one changed byte in the table: a new key and a new folder, the old one untouched
    path.write_bytes(path.read_bytes().replace(b"a,10,1", b"a,11,1"))
    third = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, work)
    assert third.key != first.key and third.table_path is not None and third.table_path.parent != folder
    assert third.table()["time_days"].tolist() == [11.0]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes

    # changed params or key also change the key
    assert harmonised_site(SITE, inst, IngestParams(kps_range=(0, 300)), PSEUDONYMISER, work).key != third.key
    assert harmonised_site(SITE, inst, IngestParams(), Pseudonymiser(b"z" * 32), work).key != third.key
    stage = HarmoniseClinical(SITE, inst, IngestParams(), PSEUDONYMISER, work)
    assert stage.label() == f"clinical-{SITE}" and stage.key() == third.key
    assert stage.outputs(stage.folder()) == [third.table_path.parent / "report.json"]


def test_harmonise_site_persists_the_documented_dtypes(tmp_path: Path) -> None:
    path = table(
        tmp_path, ["id", "time", "event", "sex", "egfr"], ["a", "10", "1", "F", "yes"], ["b", "20", "0", "", ""]
    )
    result = harmonised_site(
        SITE,
        institution(path, columns={"sex": "sex", "egfr_mutant": "egfr"}),
        IngestParams(),
        PSEUDONYMISER,
        tmp_path / "work",
    )
    frame = result.table()
    for column, dtype in {"site": "string", "case_id": "string", **CLINICAL_DTYPES}.items():
        assert frame[column].dtype == pd.api.types.pandas_dtype(dtype), column
    assert pd.isna(row_of(frame, "b")["egfr_mutant"]) and bool(row_of(frame, "a")["egfr_mutant"]) is True


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: institution(tmp / "absent.csv"), r"absent\.csv not found"),
        (lambda tmp: institution(table(tmp, ["id", "t", "event"], ["a", "1", "1"])), r"no column named 'time'"),
        (
            lambda tmp: institution(write_xlsx(tmp / "c.xlsx", [["id", "time", "event"]]), sheet="Registry"),
            r"Worksheet named 'Registry' not found",
        ),
    ],
)
def test_an_unusable_table_gives_a_result_with_an_error(tmp_path: Path, make: Any, message: str) -> None:
    inst = make(tmp_path)
    result = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, tmp_path / "work")
    assert result.error is not None and result.table_path is None
    assert result.table().empty
    assert re.search(message, result.error), result.error
    assert list(result.table().columns[:2]) == ["site", "case_id"]
    # the error is cached too: a second call reads it back
    again = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, tmp_path / "work")
    assert (again.key, again.error) == (result.key, result.error)
    stage = HarmoniseClinical(SITE, inst, IngestParams(), PSEUDONYMISER, tmp_path / "work")
    assert [p.name for p in stage.outputs(stage.folder())] == ["error.json"]


# --------------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------------


def params_with(clinical: dict[str, Any]) -> dict[str, Any]:
    base = {"path": "c.csv", "id_column": "id", "survival": dict(DURATION)}
    return {
        "institutions": {"site_x": {"images": {"layout": "brats", "root": "images"}, "clinical": {**base, **clinical}}}
    }


@pytest.mark.parametrize(
    ("clinical", "match"),
    [
        (
            {"values": {"sex": {"1": "female"}}},
            r"institutions\.site_x\.clinical: .*'values' maps fields that are not "
            r"in 'columns': \['sex'\]",
        ),
        (
            {"count_rows_as": "n_brain_mets"},
            r"institutions\.site_x\.clinical: .*count_rows_as needs "
            r"rows_per_patient: many",
        ),
        ({"merge_rules": {"age": "min"}}, r"merge_rules needs rows_per_patient: many"),
        (
            {"rows_per_patient": "many", "count_rows_as": "n_brain_mets", "columns": {"n_brain_mets": "n"}},
            r"'n_brain_mets' is both a column and count_rows_as",
        ),
        ({"bogus": 1}, r"institutions\.site_x\.clinical\.bogus: unknown key"),
        (
            {"survival": {**DURATION, "time_unit": "fortnights"}},
            r"institutions\.site_x\.clinical\.survival\.duration"
            r"\.time_unit: .*\(got 'fortnights'\)",
        ),
        ({"id_normalise": ["strip", "zap"]}, r"institutions\.site_x\.clinical\.id_normalise\.1: .*\(got 'zap'\)"),
        ({"columns": {"weight": "w"}}, r"institutions\.site_x\.clinical\.columns\.weight"),
        ({"header_rows": [2, 1]}, r"header_rows must be a non-empty increasing list"),
        ({"header_rows": [2], "first_data_row": 2}, r"first_data_row must come after the last header row"),
        ({"extra_columns": {"WHO Grade": "g"}}, r"extra column name 'WHO Grade' must be lower_snake_case"),
        (
            {"columns": {"age": "a"}, "age_from_dates": {"birth_column": "b", "reference_column": "r"}},
            r"declare age either in 'columns' or in 'age_from_dates'",
        ),
        ({"merge_rules": {"age": "mean"}, "rows_per_patient": "many"}, r"clinical\.merge_rules\.age"),
    ],
)
def test_configuration_errors_name_the_key(clinical: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_params(params_with(clinical), base_dir=Path("/tmp"))


def test_a_valid_configuration_resolves_relative_paths(tmp_path: Path) -> None:
    params = parse_params(params_with({"values": {"sex": {1: "female"}}, "columns": {"sex": "Sex"}}), base_dir=tmp_path)
    clinical = params.institutions["site_x"].clinical
    assert clinical.path == (tmp_path / "c.csv").resolve()
    assert clinical.values == {"sex": {"1": "female"}}  # keys are normalised strings


def test_clinical_source_rejects_unknown_keys_directly(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"time_colum\b"):
        ClinicalSource.model_validate(
            {
                "path": str(tmp_path),
                "id_column": "id",
                "survival": {"kind": "duration", "time_colum": "t", "event_column": "e"},
            }
        )


# --------------------------------------------------------------------------------------------------
# Regressions: a byte-order mark, unreadable files, ISO dates with dayfirst
# --------------------------------------------------------------------------------------------------


def test_a_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("id,time,event\np1,10,1\n".encode("utf-8-sig"))
    frame, quarantine, _ = harmonise(source(path))
    assert quarantine == [] and list(frame["case_id"]) == [cid("p1")]


@pytest.mark.parametrize("kind", ["corrupt_xlsx", "csv_not_in_its_declared_encoding"])
def test_an_unreadable_table_gives_an_error_result_not_an_exception(tmp_path: Path, kind: str) -> None:
    if kind == "corrupt_xlsx":
        path = tmp_path / "clinical.xlsx"
        path.write_text("id,time,event\np1,10,1\n")  # e.g. a CSV saved under an .xlsx name
        inst = institution(path)
    else:
        path = tmp_path / "clinical.csv"
        path.write_bytes("id,name,time,event\np1,Zoë,10,1\n".encode("latin-1"))
        inst = institution(path)
    result = harmonised_site(SITE, inst, IngestParams(), PSEUDONYMISER, tmp_path / "work")
    assert result.error is not None and "cannot be read" in result.error and "clinical." in result.error
    assert str(tmp_path) not in result.error  # the file by its name, not its path


def test_a_blank_line_counts_as_a_row_as_in_a_spreadsheet(tmp_path: Path) -> None:
    path = tmp_path / "clinical.csv"
    path.write_text("\nid,time,event\np1,10,1\n")
    frame, quarantine, _ = harmonise(source(path, header_rows=[1]))
    assert quarantine == [] and list(frame["case_id"]) == [cid("p1")]


def test_dayfirst_does_not_swap_unambiguous_iso_dates(tmp_path: Path) -> None:
    path = table(tmp_path, ["id", "start", "last", "death"], ["p", "2020-01-03", "2020-02-03", ""])
    frame, quarantine, _ = harmonise(source(path, survival=DATES, dayfirst=True))
    assert quarantine == []
    assert row_of(frame, "p")["time_days"] == 31.0
