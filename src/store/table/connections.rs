//! Connections on Table Storage: PartitionKey = integration, RowKey =
//! connection id; the sweep and the listing are server-side filters.

use azure_data_tables::IfMatchCondition;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::credentials::BESIDE;
use super::{
    classify, etag_of, get_str, get_time, odata_datetime, opt_str, opt_time, put_str, put_time,
    TableBackend,
};
use crate::store::{BoxFuture, ConnectionRow, ConnectionRows, StoreError, Version, Versioned};

pub(crate) fn connection_entity(r: &ConnectionRow) -> Map<String, Value> {
    let mut m = Map::new();
    put_str(&mut m, "PartitionKey", Some(&r.integration));
    put_str(&mut m, "RowKey", Some(&r.connection));
    put_str(&mut m, "Status", Some(&r.status));
    put_str(&mut m, "KeyId", Some(&r.key_id));
    put_str(&mut m, "SealedTokens", Some(&r.sealed_tokens));
    put_str(&mut m, "TokenType", Some(&r.token_type));
    put_str(&mut m, "Scope", Some(&r.scope));
    put_time(&mut m, "ExpiresAt", Some(r.expires_at));
    put_time(&mut m, "CreatedAt", Some(r.created_at));
    put_time(&mut m, "RefreshedAt", Some(r.refreshed_at));
    put_str(&mut m, "LastError", r.last_error.as_deref());
    put_time(&mut m, "LastErrorAt", r.last_error_at);
    put_str(&mut m, "LastErrorKind", r.last_error_kind.as_deref());
    put_time(&mut m, "LeaseUntil", r.lease_until);
    put_str(&mut m, "LeaseOwner", r.lease_owner.as_deref());
    put_str(&mut m, "Metadata", Some(&r.metadata));
    put_str(&mut m, "Account", r.account.as_deref());
    m
}

pub(crate) fn connection_row(m: &Map<String, Value>) -> Result<ConnectionRow, StoreError> {
    Ok(ConnectionRow {
        integration: get_str(m, "PartitionKey")?,
        connection: get_str(m, "RowKey")?,
        status: get_str(m, "Status")?,
        key_id: get_str(m, "KeyId")?,
        sealed_tokens: get_str(m, "SealedTokens")?,
        token_type: get_str(m, "TokenType")?,
        scope: opt_str(m, "Scope").unwrap_or_default(),
        expires_at: get_time(m, "ExpiresAt")?,
        created_at: get_time(m, "CreatedAt")?,
        refreshed_at: get_time(m, "RefreshedAt")?,
        last_error: opt_str(m, "LastError"),
        last_error_at: opt_time(m, "LastErrorAt")?,
        last_error_kind: opt_str(m, "LastErrorKind"),
        lease_until: opt_time(m, "LeaseUntil")?,
        lease_owner: opt_str(m, "LeaseOwner"),
        metadata: opt_str(m, "Metadata").unwrap_or_else(|| "{}".into()),
        account: opt_str(m, "Account"),
    })
}

impl TableBackend {
    /// Connection rows matching an OData `$filter`; unreadable entities are logged and skipped.
    async fn query_connections(
        &self,
        filter: String,
    ) -> Result<Vec<Versioned<ConnectionRow>>, StoreError> {
        let mut out = Vec::new();
        for m in self.query_entities(filter).await? {
            if opt_str(&m, "RowKey").is_some_and(|k| k.contains(BESIDE)) {
                continue; // a credential beside its connection
            }
            match connection_row(&m) {
                Ok(value) => out.push(Versioned {
                    value,
                    version: etag_of(&m)?,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable connection entity")
                }
            }
        }
        Ok(out)
    }
}

impl ConnectionRows for TableBackend {
    fn get_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            match self.read_entity(integration, connection).await? {
                Some((m, version)) => Ok(Some(Versioned {
                    value: connection_row(&m)?,
                    version,
                })),
                None => Ok(None),
            }
        })
    }

    fn upsert_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let e = self.entity(&row.integration, &row.connection);
            let r = e
                .insert_or_replace(connection_entity(row))
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn replace_connection<'a>(
        &'a self,
        row: &'a ConnectionRow,
        version: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async move {
            let e = self.entity(&row.integration, &row.connection);
            let cond = IfMatchCondition::Etag(version.0.clone().into());
            let r = e
                .update(connection_entity(row), cond)
                .map_err(classify)?
                .await
                .map_err(classify)?;
            Ok(Version(r.etag.to_string()))
        })
    }

    fn list_due(
        &self,
        expires_before: OffsetDateTime,
        refreshed_before: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            let filter = format!(
                "Status eq 'active' and (ExpiresAt lt {} or RefreshedAt lt {})",
                odata_datetime(expires_before),
                odata_datetime(refreshed_before)
            );
            self.query_connections(filter).await
        })
    }

    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            // Every partition that is not an integration starts with `~`.
            let filter = "PartitionKey lt '~'".to_owned();
            self.query_connections(filter).await
        })
    }

    fn delete_connection<'a>(
        &'a self,
        integration: &'a str,
        connection: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self
                .entity(integration, connection)
                .delete()
                .await
                .map_err(classify)
            {
                Ok(_) => Ok(true),
                Err(StoreError::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}
