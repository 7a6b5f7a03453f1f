"""Each student's own numbers: the seed of the data, the split and the models, from a name.

Two students' workbooks then differ in metrics, digests and history, while the story holds
for every name (the baseline fails the gate, the sound candidate passes, ...). The seed is
a pure function of the name, so a grader can recompute what a student's data must be.
"""

from __future__ import annotations

import hashlib
import unicodedata

from churnlab.errors import InputError

#: seeds stay below this bound (numpy and scikit-learn accept any 32-bit unsigned seed)
SEED_BOUND = 2**31 - 1


def normal_name(name: str) -> str:
    """The name as given, in Unicode NFC and without surrounding white space.

    An empty or blank name is refused; any other name works, Unicode included.
    """
    text = unicodedata.normalize("NFC", str(name if name is not None else "")).strip()
    if not text:
        raise InputError("student name must not be empty or blank, got " + repr(name))
    return text


def seed_of(name: str) -> int:
    """The seed derived from a student's name (SHA-256 of its NFC UTF-8 bytes)."""
    digest = hashlib.sha256(normal_name(name).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % SEED_BOUND


def snapshot_digests(seed: int, rows: int) -> dict[str, str]:
    """The digests of the training, evaluation and reference snapshots of synthetic data.

    What ``train.train_candidate(seed=seed, rows=rows)`` records on a version trained on
    the seeded synthetic data (``tags.data_tag(kind)``).
    """
    from churnlab import data

    parts = data.split(data.generate(rows, seed), seed=seed)
    return {kind: data.digest_of(part) for kind, part in parts.items()}
