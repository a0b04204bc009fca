//! Side rows in SQLite: the `aux` table, keyed by kind and key, with a version column.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;

use super::{from_ms, inserted, ms, unavailable, SqliteBackend};
use crate::store::{AuxKind, AuxRow, AuxRows, BoxFuture, StoreError, Version, Versioned};

fn read_aux(kind: AuxKind) -> impl Fn(&Row<'_>) -> Result<Versioned<AuxRow>, rusqlite::Error> {
    move |r| {
        Ok(Versioned {
            version: Version(r.get::<_, i64>(1)?.to_string()),
            value: AuxRow {
                kind,
                key: r.get(0)?,
                due_at: from_ms(r.get(2)?)?,
                body: r.get(3)?,
            },
        })
    }
}

impl AuxRows for SqliteBackend {
    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        self.run(move |db| {
            inserted(db.execute(
                "INSERT INTO aux (kind, key, version, due_at, body) VALUES (?1, ?2, 1, ?3, ?4)",
                params![r.kind.as_str(), r.key, ms(r.due_at), r.body],
            ))
            .map(|()| Version("1".into()))
        })
    }

    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        let k = key.to_owned();
        self.run(move |db| {
            db.query_row(
                "SELECT key, version, due_at, body FROM aux WHERE kind = ?1 AND key = ?2",
                params![kind.as_str(), k],
                read_aux(kind),
            )
            .optional()
            .map_err(unavailable)
        })
    }

    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        let r = row.clone();
        let expected: Option<i64> = version.0.parse().ok();
        self.run(move |db| {
            let Some(expected) = expected else {
                return Err(StoreError::Conflict);
            };
            let updated = db
                .query_row(
                    "UPDATE aux SET version = version + 1, due_at = ?3, body = ?4
                     WHERE kind = ?1 AND key = ?2 AND version = ?5 RETURNING version",
                    params![r.kind.as_str(), r.key, ms(r.due_at), r.body, expected],
                    |x| x.get::<_, i64>(0),
                )
                .optional()
                .map_err(unavailable)?;
            match updated {
                Some(v) => Ok(Version(v.to_string())),
                None => {
                    let exists = db
                        .query_row(
                            "SELECT 1 FROM aux WHERE kind = ?1 AND key = ?2",
                            params![r.kind.as_str(), r.key],
                            |_| Ok(()),
                        )
                        .optional()
                        .map_err(unavailable)?;
                    Err(if exists.is_some() {
                        StoreError::Conflict
                    } else {
                        StoreError::NotFound
                    })
                }
            }
        })
    }

    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let k = key.to_owned();
        let expected = version.map(|v| v.0.parse::<i64>().unwrap_or(-1));
        self.run(move |db| {
            let n = match expected {
                None => db.execute(
                    "DELETE FROM aux WHERE kind = ?1 AND key = ?2",
                    params![kind.as_str(), k],
                ),
                Some(v) => db.execute(
                    "DELETE FROM aux WHERE kind = ?1 AND key = ?2 AND version = ?3",
                    params![kind.as_str(), k, v],
                ),
            }
            .map_err(unavailable)?;
            if n > 0 || expected.is_none() {
                return Ok(n > 0);
            }
            let exists = db
                .query_row(
                    "SELECT 1 FROM aux WHERE kind = ?1 AND key = ?2",
                    params![kind.as_str(), k],
                    |_| Ok(()),
                )
                .optional()
                .map_err(unavailable)?;
            match exists {
                Some(()) => Err(StoreError::Conflict),
                None => Ok(false),
            }
        })
    }

    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        self.run(move |db| {
            let mut stmt = db
                .prepare_cached(
                    "SELECT key, version, due_at, body FROM aux
                     WHERE kind = ?1 AND due_at <= ?2 ORDER BY due_at LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![kind.as_str(), ms(before), limit], read_aux(kind))
                .map_err(unavailable)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            Ok(rows)
        })
    }
}
