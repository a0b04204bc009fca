//! Side rows on Table Storage: the `~outbox` and `~marker` partitions, RowKey
//! = the row's key; due rows are one page of a server-side filter.

use azure_data_tables::IfMatchCondition;
use futures::StreamExt;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{
    classify, etag_of, get_str, get_time, odata_datetime, opt_str, put_str, put_time, TableBackend,
};
use crate::store::{AuxKind, AuxRow, AuxRows, BoxFuture, StoreError, Version, Versioned};

/// Side rows (outbox, markers) live in partitions that sort after every
/// integration name (`[a-z0-9-]`), like `~pending`.
pub(crate) fn aux_partition(kind: AuxKind) -> &'static str {
    match kind {
        AuxKind::Outbox => "~outbox",
        AuxKind::Marker => "~marker",
    }
}

pub(crate) fn aux_entity(r: &AuxRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(aux_partition(r.kind)));
    put_str(&mut m, "RowKey", Some(&r.key));
    put_time(&mut m, "DueAt", Some(r.due_at));
    put_str(&mut m, "Body", Some(&r.body));
    m
}

pub(crate) fn aux_row(kind: AuxKind, m: &Map<String, Value>) -> Result<AuxRow, StoreError> {
    Ok(AuxRow {
        kind,
        key: get_str(m, "RowKey")?,
        due_at: get_time(m, "DueAt")?,
        body: get_str(m, "Body")?,
    })
}

/// One page of side rows as a query answers them (each entity with its
/// `odata.etag`), earliest first; and the key and version of each entity that
/// cannot be read as a side row. One such entity must not stop every later
/// drain: the caller removes it (it can never be used, and would otherwise
/// come back in every page).
pub(crate) fn due_page(
    kind: AuxKind,
    entities: Vec<Map<String, Value>>,
) -> (Vec<Versioned<AuxRow>>, Vec<(String, Version)>) {
    let mut out = Vec::with_capacity(entities.len());
    let mut unreadable = Vec::new();
    for m in entities {
        match (aux_row(kind, &m), etag_of(&m)) {
            (Ok(value), Ok(version)) => out.push(Versioned { value, version }),
            (Err(e), version) => {
                let key = opt_str(&m, "RowKey");
                tracing::error!(error = %e, kind = kind.as_str(), key = key.as_deref().unwrap_or_default(), "removing a side row that cannot be read");
                if let (Some(key), Ok(version)) = (key, version) {
                    unreadable.push((key, version));
                }
            }
            (Ok(_), Err(e)) => {
                tracing::error!(error = %e, kind = kind.as_str(), "skipping a side row without a version")
            }
        }
    }
    out.sort_by_key(|v| v.value.due_at);
    (out, unreadable)
}

impl AuxRows for TableBackend {
    fn insert_aux<'a>(&'a self, row: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let r = self
                .table
                .insert::<_, Map<String, Value>>(aux_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn get_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async move {
            match self.read_entity(aux_partition(kind), key).await? {
                Some((m, version)) => Ok(Some(Versioned {
                    value: aux_row(kind, &m)?,
                    version,
                })),
                None => Ok(None),
            }
        })
    }

    fn replace_aux<'a>(
        &'a self,
        row: &'a AuxRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let cond = IfMatchCondition::Etag(version.0.clone().into());
            let r = self
                .entity(aux_partition(row.kind), &row.key)
                .update(aux_entity(row), cond)
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn delete_aux<'a>(
        &'a self,
        kind: AuxKind,
        key: &'a str,
        version: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut delete = self.entity(aux_partition(kind), key).delete();
            if let Some(v) = version {
                delete = delete.if_match(IfMatchCondition::Etag(v.0.clone().into()));
            }
            match delete.await.map_err(classify) {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn due_aux(
        &self,
        kind: AuxKind,
        before: OffsetDateTime,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{}' and DueAt le {}",
                aux_partition(kind),
                odata_datetime(before)
            );
            let mut pages = self
                .table
                .query()
                .filter(filter)
                .top(limit.max(1))
                .into_stream::<Map<String, Value>>();
            // One page: the rest waits for the next drain.
            let Some(page) = pages.next().await else {
                return Ok(Vec::new());
            };
            let (due, unreadable) = due_page(kind, page.map_err(classify)?.entities);
            for (key, version) in unreadable {
                // Best effort (at its version): the next drain tries again.
                let _ = self.delete_aux(kind, &key, Some(&version)).await;
            }
            Ok(due)
        })
    }
}
