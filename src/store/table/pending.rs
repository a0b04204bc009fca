//! Pending authorizations and consent links on Table Storage: PartitionKey =
//! `~pending`, RowKey = SHA-256 of the state (`link-<hash>` for a link).

use azure_data_tables::IfMatchCondition;
use futures::StreamExt;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{
    classify, get_str, get_time, odata_datetime, odata_string, opt_str, put_str, put_time,
    TableBackend,
};
use crate::store::{BoxFuture, PendingRow, PendingRows, StoreError};

pub(crate) const PENDING_PARTITION: &str = "~pending";

pub(crate) fn pending_entity(r: &PendingRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(PENDING_PARTITION));
    put_str(&mut m, "RowKey", Some(&r.state_hash));
    put_str(&mut m, "Integration", Some(&r.integration));
    put_str(&mut m, "Connection", Some(&r.connection));
    put_str(&mut m, "KeyId", Some(&r.key_id));
    put_str(&mut m, "SealedVerifier", Some(&r.sealed_verifier));
    put_str(&mut m, "BindingHash", Some(&r.binding_hash));
    put_time(&mut m, "ExpiresAt", Some(r.expires_at));
    put_str(&mut m, "LinkHash", r.link_hash.as_deref());
    m
}

pub(crate) fn pending_row(m: &Map<String, Value>) -> Result<PendingRow, StoreError> {
    Ok(PendingRow {
        state_hash: get_str(m, "RowKey")?,
        integration: get_str(m, "Integration")?,
        connection: get_str(m, "Connection")?,
        key_id: get_str(m, "KeyId")?,
        sealed_verifier: get_str(m, "SealedVerifier")?,
        binding_hash: get_str(m, "BindingHash")?,
        expires_at: get_time(m, "ExpiresAt")?,
        link_hash: opt_str(m, "LinkHash"),
    })
}

impl PendingRows for TableBackend {
    fn insert_pending<'a>(&'a self, row: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.table
                .insert::<_, Map<String, Value>>(pending_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(())
        })
    }

    fn take_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move {
            let e = self.entity(PENDING_PARTITION, state_hash);
            let got = match e.get::<Map<String, Value>>().await.map_err(classify) {
                Ok(r) => r,
                Err(StoreError::NotFound) => return Ok(None),
                Err(err) => return Err(err),
            };
            // Deleting at the ETag we read makes the take single-use under races.
            match e
                .delete()
                .if_match(IfMatchCondition::Etag(got.etag))
                .await
                .map_err(classify)
            {
                Ok(_) => Ok(Some(pending_row(&got.entity)?)),
                Err(StoreError::NotFound | StoreError::Conflict) => Ok(None),
                Err(err) => Err(err),
            }
        })
    }

    fn purge_pending(&self, before: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and ExpiresAt lt {}",
                odata_datetime(before)
            );
            let mut pages = self
                .table
                .query()
                .filter(filter)
                .into_stream::<Map<String, Value>>();
            let mut purged = 0;
            while let Some(page) = pages.next().await {
                for m in page.map_err(classify)?.entities {
                    let Some(rk) = opt_str(&m, "RowKey") else {
                        continue;
                    };
                    match self
                        .entity(PENDING_PARTITION, &rk)
                        .delete()
                        .await
                        .map_err(classify)
                    {
                        Ok(_) => purged += 1,
                        Err(StoreError::NotFound) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(purged)
        })
    }

    fn peek_pending<'a>(
        &'a self,
        state_hash: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move {
            self.read_entity(PENDING_PARTITION, state_hash)
                .await?
                .map(|(m, _)| pending_row(&m))
                .transpose()
        })
    }

    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and LinkHash eq '{}'",
                link_hash.replace('\'', "''")
            );
            self.query_entities(filter)
                .await?
                .iter()
                .map(pending_row)
                .collect()
        })
    }

    fn pending_of_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "PartitionKey eq '{PENDING_PARTITION}' and Integration eq {} and Connection eq {}",
                odata_string(integration),
                odata_string(connection)
            );
            self.query_entities(filter)
                .await?
                .iter()
                .map(pending_row)
                .collect()
        })
    }
}
