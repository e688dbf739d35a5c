"""Privacy scan: plant identifying values in the raw inputs, run the pipeline, find none of them anywhere it wrote.

    .venv/bin/python benchmarks/privacy_scan.py [--stages ingest-imaging|pipeline] [--keep DIR] [--no-record]

1. **Plant** (:func:`plant_cohort`): a tiny synthetic cohort (every kind of bad patient included, so the
   quarantine messages are exercised) whose case folders and file names are renamed to MRN-like numbers, whose
   clinical tables carry patient names, MRNs, birth dates, free-text notes and a treating physician's name (in
   undeclared columns, and a patient's name in the *declared* primary-site column, which cannot be mapped), whose
   DICOM series carry PatientName, PatientID, PatientBirthDate, OtherPatientIDs, PatientAddress, InstitutionName,
   InstitutionAddress, AccessionNumber, ReferringPhysicianName, PerformingPhysicianName, OperatorsName and
   StudyDescription, and whose NIfTI / NRRD headers carry a name in their free-text fields.
2. **Run** (``survival-model run --temporary-server`` in a subprocess, with its own Prefect home, hence its own
   Prefect database; MLflow's store is the embedded one under the work directory): the whole pipeline
   (``--stages pipeline``, the default) or ingestion and imaging with their MLflow logging and Prefect artifacts
   (``--stages ingest-imaging``: :func:`ingest_and_imaging`, what the test runs).
3. **Scan** (:func:`scan`): every file under the work directory (MLflow's database and artifacts, Prefect's
   results, the command's log) and under the Prefect home (Prefect's SQLite database and its WAL), each read
   raw and also decoded (gzip, zip members, Parquet cells, every SQLite table's cells, base64 runs such as
   Prefect's serialised results), for every planted value case-insensitively, in each written form (``Name
   Surname`` and DICOM's ``Surname^Name`` both contain the two tokens scanned; a date as ``1931-02-27``,
   ``27.02.1931`` and DICOM's ``19310227``).

The raw inputs (the data folder) are not scanned for leaks; they are scanned as the control: every planted value
must be found there (:func:`check_planted`), or the scan could not have found it anywhere else either.

Prints ``planted values: N, leaked: K, places scanned: ...``, exits 1 when K > 0, and writes its block into
``benchmarks/RESULTS.md`` (``--no-record``: print only).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import gzip
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The tiny cohort: 2 / 2 / 2 good patients and the 13 bad ones (one per quarantine reason bad input can produce),
#: small volumes. ``--stages pipeline`` uses 4 / 3 / 3 (the test suite's tiny cohort: enough to train and test).
SMALL = {"site_a": 2, "site_b": 2, "site_c": 2}
PIPELINE = {"site_a": 4, "site_b": 3, "site_c": 3}
SHAPE = (48, 48, 31)
SPACING_MM = 5.0
SEED = 7

# Distinctive values, so that a hit is a leak and not a coincidence (a generator's "Anna" is in "Annals").
FIRST_NAMES = ("Quintessa", "Bartholomew", "Ottoline", "Evander", "Philippa", "Leopoldine", "Cassius", "Wilhelmina",
               "Ferdinanda", "Ignatius", "Rosamund", "Thaddeus", "Clementine", "Anselm", "Henrietta", "Lysander",
               "Gwendolyn", "Maximilian", "Seraphina", "Octavius", "Perpetua", "Leocadia", "Barnabas")
SURNAMES = ("Vandermolen", "Okonkwo", "Zwolinski", "Marchetti", "Quackenbush", "Hargreaves", "Abernathy",
            "Kowalczyk", "Fitzwilliam", "Rautenberg", "Szczepanik", "Thistlewood", "Oyelaran", "Bellweather",
            "Castellanos", "Drummondsey", "Ekwueme", "Grimsditch", "Hollingworth", "Iwaszkiewicz", "Jablonowski",
            "Kettleborough", "Lindqvistad")
PHYSICIAN = ("Hortensia", "Blumenfeld")
OPERATOR = ("Crispin", "Wolstenholme")
INSTITUTION = "St Wendelin Klinikum Oberhausen"
ADDRESS = "Quellenweg 17 Gelsenkirchen"
NOTE = "seen with daughter Philomena Brackenridge, call 0171 5550199"


@dataclass(frozen=True)
class Planted:
    """One planted identifying value: what it is, and the texts a scan looks for (each case-insensitive)."""

    kind: str
    value: str
    needles: tuple[str, ...]


@dataclass(frozen=True)
class Identity:
    """The identifying values of one planted patient."""

    name: tuple[str, str]  # first name, surname
    mrn: str
    birth: dt.date
    accession: str

    @property
    def full_name(self) -> str:
        return f"{self.name[0]} {self.name[1]}"

    @property
    def dicom_name(self) -> str:
        return f"{self.name[1]}^{self.name[0]}"


def identity(number: int) -> Identity:
    """The ``number``-th planted patient's identity (deterministic, every value distinctive)."""
    return Identity(
        name=(FIRST_NAMES[number % len(FIRST_NAMES)], SURNAMES[number % len(SURNAMES)]),
        mrn=f"83{number:03d}41927",
        birth=dt.date(1931, 2, 3) + dt.timedelta(days=397 * number),
        accession=f"ACC9{number:03d}7731",
    )


def date_forms(date: dt.date) -> tuple[str, ...]:
    """A date as the inputs write it: ISO, ``dd.mm.yyyy`` (site C's table) and DICOM's ``yyyymmdd``."""
    return date.isoformat(), date.strftime("%d.%m.%Y"), date.strftime("%Y%m%d")


def mrn_folder(site: str, number: int) -> str:
    """A case folder / file-name id that looks like an MRN (digits only, so every site's id steps keep it)."""
    return f"{70 + ['site_a', 'site_b', 'site_c'].index(site)}{number:03d}55218"


# --------------------------------------------------------------------------------------------------
# Planting
# --------------------------------------------------------------------------------------------------


@dataclass
class PlantedCohort:
    """Where the planted cohort is, and what was planted in it."""

    data_dir: Path
    planted: list[Planted] = field(default_factory=list)
    ids: dict[tuple[str, str], str] = field(default_factory=dict)  # (site, generated source id) -> planted id
    in_tables: set[tuple[str, str]] = field(default_factory=set)  # patients with a clinical row
    in_dicom: set[tuple[str, str]] = field(default_factory=set)  # patients with a tagged DICOM series

    def add(self, kind: str, value: str, *needles: str) -> None:
        if all(p.value != value for p in self.planted):
            self.planted.append(Planted(kind, value, tuple(needles) or (value,)))


def plant_cohort(out_dir: Path, patients: Mapping[str, int] | None = None) -> PlantedCohort:
    """Generate the tiny cohort in ``out_dir`` and plant identifying values in every input (module docstring)."""
    from survival_model.synthetic.cohort import GeneratorConfig, generate_cohort

    generate_cohort(GeneratorConfig(out_dir=out_dir, seed=SEED, patients=dict(patients or SMALL), shape=SHAPE,
                                    spacing_mm=SPACING_MM))
    cohort = PlantedCohort(out_dir)
    truth = pd.read_csv(out_dir / "ground_truth" / "patients.csv", dtype={"source_id": str, "patient_key": str})
    people = {}
    for number, row in enumerate(truth.itertuples(index=False), start=1):
        site, source = str(row.site), str(row.source_id)
        cohort.ids[(site, source)] = mrn_folder(site, number)
        people[(site, source)] = identity(number)
    _rename_images(cohort)
    _rewrite_tables(cohort, people)
    _tag_dicom(cohort, people)
    _tag_headers(cohort, people)
    _rewrite_truth(cohort)
    for key, person in people.items():
        if key in cohort.in_tables:
            cohort.add("patient name", person.full_name, *person.name)
            cohort.add("MRN", person.mrn)
            cohort.add("birth date", person.birth.isoformat(), *date_forms(person.birth))
        if key in cohort.in_dicom:
            cohort.add("DICOM accession number", person.accession)
    for (site, _), folder in sorted(cohort.ids.items()):
        cohort.add(f"case folder / file id ({site})", folder)
    cohort.add("referring physician", " ".join(PHYSICIAN), *PHYSICIAN)
    cohort.add("operator", " ".join(OPERATOR), *OPERATOR)
    cohort.add("institution", INSTITUTION)
    cohort.add("address", ADDRESS)
    cohort.add("free-text note", NOTE, "Philomena", "Brackenridge", "0171 5550199")
    return cohort


def _rename_images(cohort: PlantedCohort) -> None:
    """Case folders and file names carry the MRN-like id instead of the generator's."""
    for (site, source), new in cohort.ids.items():
        root = cohort.data_dir / site / "images"
        for path in sorted(root.rglob(f"*{source}*"), key=lambda p: -len(p.parts)):  # files before their folders
            path.rename(path.with_name(path.name.replace(source, new)))


def _rewrite_tables(cohort: PlantedCohort, people: Mapping[tuple[str, str], Identity]) -> None:
    """Identifying columns (names, MRN, birth date, notes, physician) beside the declared ones; the first patient's
    name written in site A's declared ``primary`` column (a value that maps to nothing)."""
    a = cohort.data_dir / "site_a" / "clinical.csv"
    table = pd.read_csv(a, dtype=str, keep_default_na=False)
    ids = [cohort.ids[("site_a", s)] for s in table["case_id"]]
    cohort.in_tables |= {("site_a", s) for s in table["case_id"]}
    who = [people[("site_a", s)] for s in table["case_id"]]
    table = table.assign(case_id=ids, patient_name=[p.full_name for p in who], mrn=[p.mrn for p in who],
                         date_of_birth=[p.birth.isoformat() for p in who], notes=NOTE,
                         referring_physician=" ".join(PHYSICIAN))
    table.loc[0, "primary"] = who[0].full_name  # in a declared column: cannot be mapped, must not be echoed
    a.write_text(table.to_csv(index=False), encoding="utf-8")

    b = cohort.data_dir / "site_b" / "clinical.xlsx"
    table = pd.read_excel(b, sheet_name="Registry", header=2, dtype=object)
    by_number = {int(s.removeprefix("P")): s for (site, s) in cohort.ids if site == "site_b"}
    sources = [by_number[int(v)] for v in table["Patient ID"]]
    who = [people[("site_b", s)] for s in sources]
    cohort.in_tables |= {("site_b", s) for s in sources}
    table = table.assign(**{"Patient ID": [int(cohort.ids[("site_b", s)]) for s in sources],
                            "Name": [p.full_name for p in who], "MRN": [p.mrn for p in who],
                            "DOB": [p.birth.isoformat() for p in who], "Comment": NOTE})
    with pd.ExcelWriter(b, engine="openpyxl") as writer:
        table.to_excel(writer, sheet_name="Registry", index=False, startrow=2)
        writer.sheets["Registry"]["A1"] = f"Brain metastasis registry - {INSTITUTION}"

    c = cohort.data_dir / "site_c" / "clinical.csv"
    table = pd.read_csv(c, sep=";", dtype=str, keep_default_na=False)
    by_number = {int(s.removeprefix("C")): s for (site, s) in cohort.ids if site == "site_c"}
    sources = [by_number[int(v.removeprefix("C-"))] for v in table["pid"]]
    who = [people[("site_c", s)] for s in sources]
    cohort.in_tables |= {("site_c", s) for s in sources}
    table = table.assign(pid=[cohort.ids[("site_c", s)] for s in sources], surname=[p.name[1] for p in who],
                         first_name=[p.name[0] for p in who], birth_date=[p.birth.strftime("%d.%m.%Y") for p in who],
                         remarks=f"{NOTE}; {ADDRESS}")
    c.write_text(table.to_csv(index=False, sep=";"), encoding="utf-8")


#: DICOM tags written into every slice of site C's series (keyword -> tag).
DICOM_TAGS = {
    "PatientName": "0010|0010", "PatientID": "0010|0020", "PatientBirthDate": "0010|0030",
    "OtherPatientIDs": "0010|1000", "PatientAddress": "0010|1040", "InstitutionName": "0008|0080",
    "InstitutionAddress": "0008|0081", "AccessionNumber": "0008|0050", "ReferringPhysicianName": "0008|0090",
    "PerformingPhysicianName": "0008|1050", "OperatorsName": "0008|1070", "StudyDescription": "0008|1030",
}


def _tag_dicom(cohort: PlantedCohort, people: Mapping[tuple[str, str], Identity]) -> None:
    import SimpleITK as sitk

    for (site, source), folder_id in cohort.ids.items():
        folder = cohort.data_dir / site / "images" / folder_id
        if site != "site_c" or not folder.is_dir():
            continue
        person = people[(site, source)]
        values = {
            "PatientName": person.dicom_name, "PatientID": person.mrn,
            "PatientBirthDate": person.birth.strftime("%Y%m%d"), "OtherPatientIDs": folder_id,
            "PatientAddress": ADDRESS, "InstitutionName": INSTITUTION, "InstitutionAddress": ADDRESS,
            "AccessionNumber": person.accession, "ReferringPhysicianName": "^".join(reversed(PHYSICIAN)),
            "PerformingPhysicianName": "^".join(reversed(PHYSICIAN)), "OperatorsName": "^".join(reversed(OPERATOR)),
            "StudyDescription": f"MRI head {person.full_name}",
        }
        for path in sorted(folder.rglob("*.dcm")):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            try:
                image = reader.Execute()
            except RuntimeError:  # the deliberately unreadable series (truncated files) stays as it is
                continue
            for keyword, value in values.items():
                image.SetMetaData(DICOM_TAGS[keyword], value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(path))
            writer.Execute(image)
            cohort.in_dicom.add((site, source))


def _tag_headers(cohort: PlantedCohort, people: Mapping[tuple[str, str], Identity]) -> None:
    """A name in the NIfTI header's free-text fields (site A's and C's masks: rewriting an image through ITK would
    turn the non-finite patient's NaN into 0) and in NRRD keys (site B)."""
    import SimpleITK as sitk

    for (site, source), folder_id in cohort.ids.items():
        person = people[(site, source)]
        root = cohort.data_dir / site / "images"
        pattern = f"{folder_id}_*" if site == "site_b" else f"{folder_id}/*seg.nii.gz"
        files = sorted(root.glob(pattern))
        for path in files:
            try:
                image = sitk.ReadImage(str(path))
            except RuntimeError:
                continue
            if path.suffix == ".nrrd":
                image.SetMetaData("patient_name", person.full_name)
                image.SetMetaData("patient_id", person.mrn)
            else:
                image.SetMetaData("ITK_FileNotes", person.name[1])  # NIfTI descrip (80 characters)
                image.SetMetaData("aux_file", person.mrn)  # NIfTI aux_file (24 characters)
            sitk.WriteImage(image, str(path))


def _rewrite_truth(cohort: PlantedCohort) -> None:
    """The generator's ground truth with the planted ids (the evaluation's oracle matches on them)."""
    truth_dir = cohort.data_dir / "ground_truth"
    for name in ("patients.csv", "expected_quarantine.csv"):
        table = pd.read_csv(truth_dir / name, dtype={"source_id": str, "patient_key": str})
        new = [cohort.ids[(s, i)] for s, i in zip(table["site"], table["source_id"], strict=True)]
        table = table.assign(source_id=new, patient_key=new)
        (truth_dir / name).write_text(table.to_csv(index=False), encoding="utf-8")


def planted_overrides(data_dir: Path, work_dir: Path) -> dict[str, Any]:
    """params.yaml pointed at the planted cohort (site A's table has the planted columns beside the declared
    ones; nothing else changes)."""
    from survival_model.synthetic.cohort import layout_overrides  # with the generator, as above

    return {
        "work_dir": str(work_dir),
        "privacy.key_file": str(work_dir.parent / "pseudonym.key"),
        **layout_overrides(data_dir),
    }


# --------------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------------

_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{40,}={0,2}")
#: Files larger than this are read raw only (no decoded views): model weights and the like.
_DECODE_LIMIT = 64 << 20


@dataclass(frozen=True)
class Leak:
    """A planted value found where it must not be."""

    planted: Planted
    needle: str
    place: str
    file: Path
    view: str


@dataclass
class ScanResult:
    """What a scan looked at and what it found."""

    files: dict[str, int] = field(default_factory=dict)  # place -> files scanned
    views: int = 0
    leaks: list[Leak] = field(default_factory=list)

    def leaked_values(self) -> list[Planted]:
        seen: list[Planted] = []
        for leak in self.leaks:
            if leak.planted not in seen:
                seen.append(leak.planted)
        return seen


def _sqlite_views(path: Path) -> Iterator[tuple[str, bytes]]:
    """Every table's cells, read through SQLite (a page-split string is whole here, the WAL is included)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows = con.execute(f'SELECT * FROM "{table}"').fetchall()  # table names from sqlite_master
            cells = [c if isinstance(c, bytes) else str(c).encode() for row in rows for c in row if c is not None]
            data = b"\x00".join(cells)
            yield f"sqlite table {table}", data
            yield from _base64_views(data, f"sqlite table {table}")
    except sqlite3.Error as exc:
        yield f"sqlite error {exc}", b""
    finally:
        con.close()


def _base64_views(data: bytes, where: str) -> Iterator[tuple[str, bytes]]:
    """Long base64 runs decoded (Prefect stores pickled results and some payloads base64-encoded)."""
    decoded = []
    for match in _BASE64_RUN.finditer(data):
        run = match.group()
        try:
            decoded.append(base64.b64decode(run + b"=" * (-len(run) % 4)))
        except (binascii.Error, ValueError):
            continue
    if decoded:
        yield f"{where}, base64 decoded", b"\x00".join(decoded)


def views(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, and every decoded form of them a value could hide in."""
    data = path.read_bytes()
    yield "raw", data
    if len(data) > _DECODE_LIMIT:
        return
    if data[:2] == b"\x1f\x8b":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError):
            inner = b""
        yield "gzip", inner
        yield from _base64_views(inner, "gzip")
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield f"zip member {member}", member.encode() + b"\x00" + archive.read(member)
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        yield "parquet cells", str(table.to_pylist()).encode() + str(table.schema).encode()
    if data[:16] == b"SQLite format 3\x00":
        yield from _sqlite_views(path)
    yield from _base64_views(data, "raw")


def scan(places: Mapping[str, Sequence[Path]], planted: Sequence[Planted]) -> ScanResult:
    """Every file under each place's roots, its path below the root and its contents in every view, for every
    planted value (case-insensitive)."""
    result = ScanResult()
    needles = [(p, n, n.lower().encode()) for p in planted for n in p.needles]
    for place, roots in places.items():
        files = sorted({(root, f) for root in roots if root.exists()
                        for f in ([root] if root.is_file() else root.rglob("*")) if f.is_file() and not f.is_symlink()})
        result.files[place] = len(files)
        for root, file in files:
            named = ("file name", str(file.relative_to(root.parent)).encode())
            for view, data in [named, *views(file)]:
                result.views += 1
                low = data.lower()
                result.leaks += [Leak(p, n, place, file, view) for p, n, needle in needles if needle in low]
    return result


def check_planted(cohort: PlantedCohort) -> None:
    """The control: every planted value is in the raw inputs, as the scanner reads them (else it proves nothing)."""
    found = scan({"inputs": [cohort.data_dir / s for s in ("site_a", "site_b", "site_c")]}, cohort.planted)
    missing = [p for p in cohort.planted if p not in found.leaked_values()]
    if missing:
        raise AssertionError(f"planted but not found in the inputs: {[p.value for p in missing]}")
    in_dicom = {leak.planted.kind for leak in found.leaks if leak.file.suffix == ".dcm"}
    wanted = {"patient name", "MRN", "birth date", "DICOM accession number", "referring physician", "institution"}
    if not wanted <= in_dicom:
        raise AssertionError(f"not planted in the DICOM tags: {sorted(wanted - in_dicom)}")


def prefect_places(prefect_home: Path, database: Path | None) -> dict[str, list[Path]]:
    """Prefect's database (the file, its WAL and journal) and the rest of its home."""
    places: dict[str, list[Path]] = {}
    if database is not None:
        places["Prefect database"] = [database.with_name(database.name + s) for s in ("", "-wal", "-journal")]
    others = [p for p in prefect_home.iterdir() if database is None or not p.name.startswith(database.name)]
    places["Prefect home (results, logs, settings)"] = others
    return places


def work_places(work_dir: Path) -> dict[str, list[Path]]:
    """The work directory, MLflow's store (under it by default) counted as its own place."""
    mlflow = work_dir / "mlflow"
    rest = [p for p in work_dir.iterdir() if p != mlflow] if work_dir.is_dir() else []
    return {"MLflow database and artifacts": [mlflow], "work directory (stages, caches, logs, reports)": rest}


def report(cohort: PlantedCohort, result: ScanResult, what: str) -> str:
    """The RESULTS.md block: planted values, leaks (value kind, place, file, view), places scanned."""
    places = ", ".join(f"{place} ({n} files)" for place, n in result.files.items())
    lines = [f"Privacy scan after {what}: **planted values: {len(cohort.planted)}, leaked: "
             f"{len(result.leaked_values())}**, places scanned: {places}; {result.views} views read (raw, gzip, zip "
             "members, Parquet cells, SQLite tables, base64 runs).", "",
             "| planted | values |", "| --- | ---: |"]
    kinds: dict[str, int] = {}
    for p in cohort.planted:
        kind = p.kind.split(" (")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    lines += [f"| {kind} | {n} |" for kind, n in kinds.items()]
    if result.leaks:
        lines += ["", "| leaked (kind) | place | file | view |", "| --- | --- | --- | --- |"]
        shown = {(leak.planted.kind, leak.place, leak.file.name, leak.view) for leak in result.leaks}
        lines += [f"| {k} | {p} | `{f}` | {v} |" for k, p, f, v in sorted(shown)[:40]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def ingest_and_imaging(params_path: str, overrides: dict[str, Any]) -> Any:
    """The pipeline flow's first half, as a flow: ingestion and imaging, each logged on an MLflow run and
    published as Prefect artifacts (``flows.pipeline`` without training, evaluation and the registry)."""
    from prefect import flow

    from flows.imaging import imaging
    from flows.ingest import ingest
    from survival_model.config import load_params
    from tasks import tracking

    @flow(name="privacy-scan-ingest-imaging")
    def first_half(params_path: str, overrides: dict[str, Any]) -> Any:
        params = load_params(params_path, overrides)
        run_id = tracking.start_run(params, "privacy-scan", {"params_file": params_path})
        cohort = ingest(params)
        link = tracking.record(params, run_id, cohort, "")
        table = imaging(params, cohort)
        tracking.record(params, run_id, table, link)
        tracking.end_run(params, run_id, "FINISHED")
        return table

    return first_half(params_path, overrides)


def run_cli(data_dir: Path, work_dir: Path, servers_home: Path, stages: str) -> subprocess.CompletedProcess[str]:
    """``survival-model run`` on the planted cohort with Prefect's temporary server in its own home."""
    from tests.conftest import TRAIN_FAST, split_seed  # the suite's fast training and its split-seed rule

    overrides: dict[str, Any] = {**planted_overrides(data_dir, work_dir), **TRAIN_FAST,
                                 "servers.home": str(servers_home), "evaluation.gradcam": False,
                                 "registry.gate.first_model_baseline": "none", "training.splits.test_fraction": 0.45}
    seed = split_seed(data_dir, test_fraction=0.45, folds=2)
    if seed is not None:
        overrides["training.splits.seed"] = seed
    (servers_home / "prefect").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(servers_home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PREFECT_API_URL", None)
    if stages == "pipeline":
        command = [sys.executable, "-m", "flows.cli", "run", "--params", str(REPO / "params.yaml"), "--no-generate",
                   "--temporary-server", *(a for k, v in overrides.items() for a in ("--set", f"{k}={_yaml(v)}"))]
    else:
        code = ("import sys, json; sys.path.insert(0, sys.argv[1]); "
                "from benchmarks.privacy_scan import ingest_and_imaging; "
                "ingest_and_imaging(sys.argv[2], json.loads(sys.argv[3]))")
        import json

        env["PREFECT_LOGGING_EXTRA_LOGGERS"] = "survival_model"
        command = [sys.executable, "-c", code, str(REPO), str(REPO / "params.yaml"), json.dumps(overrides)]
    return subprocess.run(command, env=env, cwd=work_dir.parent, capture_output=True, text=True, encoding="utf-8",
                          errors="replace", check=False)


def _yaml(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", choices=["pipeline", "ingest-imaging"], default="pipeline")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not update RESULTS.md")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="privacy-scan-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cohort = plant_cohort(root / "data", PIPELINE if args.stages == "pipeline" else SMALL)
    check_planted(cohort)
    work, home = root / "run" / "work", root / "servers"
    work.parent.mkdir(parents=True, exist_ok=True)
    done = run_cli(cohort.data_dir, work, home, args.stages)
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"the run failed ({done.returncode})")
    time.sleep(5)  # the temporary server has stopped with the run; its database is complete
    database = home / "prefect" / "prefect.db"
    places = {**work_places(work), **prefect_places(home / "prefect", database if database.is_file() else None)}
    result = scan(places, cohort.planted)
    what = ("`survival-model run` (the whole pipeline)" if args.stages == "pipeline"
            else "ingestion and imaging with MLflow logging and Prefect artifacts")
    text = report(cohort, result, what) + (
        f"\n\nCommand: `.venv/bin/python benchmarks/privacy_scan.py {' '.join(sys.argv[1:])}`".rstrip()
        + f" ({time.perf_counter() - start:.0f} s).")
    print(text)
    for leak in result.leaks[:20]:
        print(f"LEAK {leak.planted.kind} {leak.needle!r} in {leak.place}: {leak.file} [{leak.view}]")
    print(f"planted values: {len(cohort.planted)}, leaked: {len(result.leaked_values())}, places scanned: "
          + ", ".join(result.files))
    if not args.no_record:
        from benchmarks.results import record_block

        record_block("privacy-scan", "## Privacy scan", text)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    raise SystemExit(1 if result.leaks else 0)


if __name__ == "__main__":
    main()
