"""``tradegraph rotate-keys``: re-encrypt every vault ciphertext under the primary key.

Rotation is "add a new primary key, re-encrypt at leisure, then retire the old key". This
module does the middle step, and is built so that it can be run any number of times and
stopped at any moment:

* **idempotent** - a value already under the primary is left alone;
* **resumable** - work is committed batch by batch, so a rerun after an interruption
  only finds what is left;
* **loses nothing** - a value is written only after its new ciphertext was decrypted
  back to the same plaintext, with a compare-and-set UPDATE (``WHERE col = old``) so a
  concurrent change by the app is never overwritten; a value that cannot be decrypted is
  left untouched and reported (exit status 1), never replaced.

``ENCRYPTED_COLUMNS`` lists every encrypted column; a module adding one appends to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import column, select, table, update

from tradegraph.db import Database
from tradegraph.security.vault import Keyring, VaultError, aad_for


@dataclass(frozen=True)
class EncryptedColumn:
    """A text column holding vault tokens whose associated data is
    ``aad_for(table, <primary key>, aad_field)``.
    """

    table: str
    column: str
    aad_field: str
    pk: str = "id"


ENCRYPTED_COLUMNS: list[EncryptedColumn] = [
    EncryptedColumn("users", "totp_secret_enc", "totp_secret"),
    EncryptedColumn("broker_links", "credentials_enc", "credentials_enc"),
    EncryptedColumn("broker_link_states", "code_verifier_enc", "code_verifier_enc"),
]


@dataclass
class ColumnReport:
    table: str
    column: str
    scanned: int = 0
    current: int = 0
    rotated: int = 0
    changed_meanwhile: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class RotationReport:
    primary_kid: str
    dry_run: bool
    columns: list[ColumnReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(not c.failed for c in self.columns)

    @property
    def rotated(self) -> int:
        return sum(c.rotated for c in self.columns)

    def lines(self) -> list[str]:
        verb = "would rotate" if self.dry_run else "rotated"
        out = [f"primary key: {self.primary_kid}"]
        for c in self.columns:
            out.append(
                f"{c.table}.{c.column}: scanned {c.scanned}, already current {c.current}, "
                f"{verb} {c.rotated}, changed meanwhile {c.changed_meanwhile}, "
                f"failed {len(c.failed)}"
            )
            out.extend(f"  cannot decrypt {c.table} row {pk}" for pk in c.failed[:20])
        return out


BatchHook = Callable[[EncryptedColumn, int], Awaitable[None]]


async def rotate_keys(
    db: Database,
    keyring: Keyring,
    columns: list[EncryptedColumn] | None = None,
    *,
    batch_size: int = 200,
    dry_run: bool = False,
    after_batch: BatchHook | None = None,
) -> RotationReport:
    """Re-encrypt every value of ``columns`` that is not under ``keyring``'s primary key.

    ``after_batch`` runs after each committed batch (progress output; tests use it to
    interrupt a run half way).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    report = RotationReport(primary_kid=keyring.primary_kid, dry_run=dry_run)
    for spec in columns if columns is not None else ENCRYPTED_COLUMNS:
        result = ColumnReport(spec.table, spec.column)
        report.columns.append(result)
        tbl = table(spec.table, column(spec.pk), column(spec.column))
        pk_col, value_col = tbl.c[spec.pk], tbl.c[spec.column]
        last: Any = None
        batch_no = 0
        while True:
            stmt = (
                select(pk_col, value_col)
                .where(value_col.is_not(None))
                .order_by(pk_col)
                .limit(batch_size)
            )
            if last is not None:
                stmt = stmt.where(pk_col > last)
            async with db.session() as session:
                rows = (await session.execute(stmt)).all()
            if not rows:
                break
            last = rows[-1][0]
            writes: list[tuple[Any, str, str]] = []
            for pk, old in rows:
                result.scanned += 1
                aad = aad_for(spec.table, pk, spec.aad_field)
                try:
                    if not keyring.needs_rotation(old):
                        result.current += 1
                        continue
                    plaintext = keyring.decrypt(old, aad)
                    new = keyring.encrypt(plaintext, aad)
                    if keyring.decrypt(new, aad) != plaintext:  # belt and braces
                        raise VaultError("re-encrypted value does not read back")
                except VaultError:
                    result.failed.append(str(pk))
                    continue
                writes.append((pk, old, new))
            if dry_run:
                result.rotated += len(writes)
            elif writes:
                async with db.session() as session:
                    for pk, old, new in writes:
                        done = await session.execute(
                            update(tbl)
                            .where(pk_col == pk, value_col == old)
                            .values({spec.column: new})
                        )
                        if done.rowcount == 1:  # type: ignore[attr-defined]
                            result.rotated += 1
                        else:
                            result.changed_meanwhile += 1
                    await session.commit()
            batch_no += 1
            if after_batch is not None:
                await after_batch(spec, batch_no)
    return report
