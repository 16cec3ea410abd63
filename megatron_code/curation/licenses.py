"""License detection (a repository's LICENSE/COPYING text -> SPDX id) and the permissive / copyleft lists.

Detection matches the distinctive sentences of each license's text (e.g. MIT's "Permission is hereby granted, free
of charge", the Unlicense's "free and unencumbered software released into the public domain"). It recognises the
licenses that make up nearly all of GitHub's licensed repositories; anything else is "unknown" (kept or dropped by
the pipeline's flag), never guessed. A full scanner (ScanCode) would recognise more, at the cost of a heavy
dependency; see NOTES.md.
"""

from __future__ import annotations

import re

# PaLM: "filtered the files by the license included in the repository; copyleft licenses were excluded".
PERMISSIVE = frozenset({
    "MIT", "MIT-0", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "ISC", "Unlicense", "CC0-1.0", "Zlib",
    "BSL-1.0", "PSF-2.0", "Python-2.0", "WTFPL", "X11", "NCSA", "UPL-1.0", "PostgreSQL",
})
COPYLEFT = frozenset({
    "GPL-1.0", "GPL-2.0", "GPL-3.0", "LGPL-2.0", "LGPL-2.1", "LGPL-3.0", "AGPL-3.0", "MPL-1.1", "MPL-2.0",
    "EPL-1.0", "EPL-2.0", "CDDL-1.0", "EUPL-1.2", "OSL-3.0", "CC-BY-SA-4.0",
})

LICENSE_FILE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE.rst", "LICENCE", "LICENCE.txt", "COPYING",
                      "COPYING.txt", "COPYING.md", "LICENSE-MIT", "UNLICENSE")

# Ordered: the first match wins, so the more specific texts (AGPL, LGPL) come before GPL, BSD-3 before BSD-2.
_PATTERNS: list[tuple[str, tuple[str, ...]]] = [
    ("AGPL-3.0", (r"GNU AFFERO GENERAL PUBLIC LICENSE",)),
    ("LGPL-3.0", (r"GNU LESSER GENERAL PUBLIC LICENSE\s+Version 3",)),
    ("LGPL-2.1", (r"GNU LESSER GENERAL PUBLIC LICENSE\s+Version 2\.1",)),
    ("LGPL-2.0", (r"GNU LIBRARY GENERAL PUBLIC LICENSE",)),
    ("GPL-3.0", (r"GNU GENERAL PUBLIC LICENSE\s+Version 3",)),
    ("GPL-2.0", (r"GNU GENERAL PUBLIC LICENSE\s+Version 2",)),
    ("MPL-2.0", (r"Mozilla Public License,? (?:Version|v\.?) ?2\.0",)),
    ("EPL-2.0", (r"Eclipse Public License - v 2\.0",)),
    ("EPL-1.0", (r"Eclipse Public License - v 1\.0",)),
    ("Apache-2.0", (r"Apache License,?\s+Version 2\.0",)),
    ("Unlicense", (r"free and unencumbered software released into the public domain",)),
    ("CC0-1.0", (r"CC0 1\.0 Universal",)),
    ("BSL-1.0", (r"Boost Software License - Version 1\.0",)),
    ("ISC", (r"Permission to use, copy, modify, and(?:/or)? distribute this software for any purpose with or "
             r"without fee is hereby granted",)),
    ("BSD-3-Clause", (r"Redistribution and use in source and binary forms", r"Neither the name")),
    ("BSD-2-Clause", (r"Redistribution and use in source and binary forms",)),
    ("Zlib", (r"This software is provided 'as-is', without any express or implied\s+warranty",
              r"Altered source versions must be plainly marked")),
    ("MIT", (r"Permission is hereby granted, free of charge, to any person obtaining a copy",)),
    ("PSF-2.0", (r"PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2",)),
]
_COMPILED = [(spdx, [re.compile(p, re.IGNORECASE) for p in pats]) for spdx, pats in _PATTERNS]

_BY_LOWER = {s.lower(): s for s in PERMISSIVE | COPYLEFT}
_ALIASES = {"apache 2.0": "Apache-2.0", "apache-2": "Apache-2.0", "bsd-3": "BSD-3-Clause", "bsd-2": "BSD-2-Clause",
            "gpl-3.0-only": "GPL-3.0", "gpl-3.0-or-later": "GPL-3.0", "gpl-2.0-only": "GPL-2.0",
            "gpl-2.0-or-later": "GPL-2.0", "lgpl-2.1-only": "LGPL-2.1", "lgpl-3.0-only": "LGPL-3.0",
            "agpl-3.0-only": "AGPL-3.0", "agpl-3.0-or-later": "AGPL-3.0", "mit license": "MIT"}


def detect_license(text: str) -> str | None:
    """SPDX id of a license text, or None if it is not one we recognise."""
    head = " ".join(text[:20000].split())  # whitespace-insensitive: license files are re-wrapped freely
    for spdx, pats in _COMPILED:
        if all(p.search(head) for p in pats):
            return spdx
    return None


def normalize_spdx(value) -> str | None:
    """A record's ``license`` field -> canonical SPDX id (case-insensitive, common aliases); None if empty."""
    if value is None:
        return None
    s = str(value).strip()
    if not s or s.lower() in ("unknown", "none", "noassertion", "other"):
        return None
    low = s.lower()
    return _BY_LOWER.get(low) or _ALIASES.get(low) or s


def license_class(spdx: str | None) -> str:
    """"permissive", "copyleft", "other" (a known id on neither list) or "unknown" (no license)."""
    if spdx is None:
        return "unknown"
    if spdx in PERMISSIVE:
        return "permissive"
    if spdx in COPYLEFT or spdx.split("-")[0] in ("GPL", "LGPL", "AGPL"):
        return "copyleft"
    return "other"
