"""Discovery: find each institution's cases on disk from its declared file patterns.

A pattern such as ``{case}/{case}-t1c.nii.gz`` becomes a glob (``*/*-t1c.nii.gz``) and a regular
expression with a named group for the case id (repeated occurrences must agree). A case is any id
that matches at least one declared pattern, so a case with a missing file is still found, and
reported, rather than silently skipped.

Nothing outside an institution's image folder is read: a declared file or folder that is (or holds) a
symbolic link resolving outside ``images.root`` is listed in :attr:`CaseFiles.outside`; its bytes are never
digested or read, and the case is quarantined (``outside_source``). Links inside the folder are followed.

:class:`CaseFiles` holds the source identifier and raw paths, which can identify a patient: it stays
inside ingestion (never logged, never persisted by the orchestrator).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from survival_model.config import ImageSource, SequenceName
from survival_model.errors import DataSourceError
from survival_model.fingerprint import DigestMemo, file_digest

#: The digest recorded for a declared file that links outside the image folder (its bytes are not read).
OUTSIDE = "outside-the-image-folder"


@dataclass(frozen=True)
class CaseFiles:
    """The raw files of one case at one site (``None`` where a declared file is absent)."""

    site: str
    source_id: str
    sequences: dict[SequenceName, Path | None]
    mask: Path | None
    brain_mask: Path | None = None
    expected: dict[str, str] = field(default_factory=dict)  # name -> pattern, for messages
    #: Declared files (names as in ``expected``) that link outside the image folder: never read.
    outside: tuple[str, ...] = ()

    def present_paths(self) -> list[Path]:
        paths = [*self.sequences.values(), self.mask, self.brain_mask]
        return [p for p in paths if p is not None]

    def content_digests(self, memo: DigestMemo | None = None) -> dict[str, str | None]:
        """Digest of every declared file (``None`` if absent): the content part of cache keys."""
        named: dict[str, Path | None] = {str(k): v for k, v in self.sequences.items()}
        named["mask"] = self.mask
        if self.brain_mask is not None or "brain_mask" in self.expected:
            named["brain_mask"] = self.brain_mask
        return {k: (OUTSIDE if k in self.outside else
                    file_digest(p, memo) if p is not None and p.exists() else None)
                for k, p in sorted(named.items())}


def _pattern_regex(pattern: str, case_regex: str) -> re.Pattern[str]:
    parts = pattern.split("{case}")
    out = re.escape(parts[0])
    for i, part in enumerate(parts[1:]):
        out += (f"(?P<case>{case_regex})" if i == 0 else "(?P=case)") + re.escape(part)
    return re.compile(out)


def links_outside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` resolves outside ``real_root`` (a resolved folder), or, for a folder such as a DICOM
    series, any symbolic link below it does. Only links are resolved below a folder (one ``lstat`` per entry
    otherwise, read from the directory listing): a series is hundreds of files."""
    if not path.resolve().is_relative_to(real_root):
        return True
    if not path.is_dir():
        return False
    folders = [path]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    if not Path(entry.path).resolve().is_relative_to(real_root):
                        return True
                elif entry.is_dir():
                    folders.append(Path(entry.path))
    return False


def _match_pattern(root: Path, pattern: str, case_regex: str) -> dict[str, Path]:
    regex = _pattern_regex(pattern, case_regex)
    found: dict[str, Path] = {}
    for path in root.glob(pattern.replace("{case}", "*")):
        if path.name.startswith("."):
            continue
        match = regex.fullmatch(path.relative_to(root).as_posix())
        if match:
            found[match.group("case")] = path
    return found


def discover_cases(site: str, source: ImageSource) -> list[CaseFiles]:
    """All cases of one institution, sorted by source id."""
    root = source.root
    if not root.is_dir():  # not named: even its last part may be a person's id (docs/data.md, privacy)
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataSourceError(f"institution '{site}': the image folder <source> (images.root) {what}")
    named: dict[str, str] = {str(k): v for k, v in source.sequences.items()}
    if source.mask:
        named["mask"] = source.mask
    if source.brain_mask:
        named["brain_mask"] = source.brain_mask
    matches = {name: _match_pattern(root, pattern, source.case_regex) for name, pattern in named.items()}
    ids = sorted(set().union(*(m.keys() for m in matches.values())))
    real_root = root.resolve()
    cases = []
    for case in ids:
        outside = tuple(name for name in named if case in matches[name]
                        and links_outside(matches[name][case], real_root))
        cases.append(
            CaseFiles(
                site=site,
                source_id=case,
                sequences={s: matches[s].get(case) for s in source.sequences},
                mask=matches["mask"].get(case) if "mask" in matches else None,
                brain_mask=matches["brain_mask"].get(case) if "brain_mask" in matches else None,
                expected=dict(named),
                outside=outside,
            )
        )
    return cases
