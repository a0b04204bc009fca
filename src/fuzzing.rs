//! Entry points for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz`).
//!
//! Each feeds arbitrary input to one parser of outside input the way the
//! broker does, reaching code that is private to its module. They are not part
//! of the broker's API and nothing in the broker calls them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use actix_web::body::MessageBody;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::crypto::Keyring;
use crate::domain::{
    ConnectionId, ConnectionRecord, IntegrationName, PendingAuthorization, Secret,
};
use crate::oauth::{self, TokenError, TokenResponse};
use crate::store::{
    table, AuxKind, AuxRow, Backend, BoxFuture, ConnectionRow, ConsentLink, CredentialRow,
    PendingRow, Store, StoreError, Version, Versioned,
};

/// A token endpoint's answer (code exchange or refresh), as `oauth` reads it.
pub fn token_response(
    status: u16,
    is_form: bool,
    body: &[u8],
    metadata_fields: &[String],
) -> Result<TokenResponse, TokenError> {
    let shape = oauth::Shape {
        metadata: metadata_fields,
        expires_at_field: Some("expires_at"),
    };
    oauth::parse_token_response(status, is_form, body, &shape)
}

/// A query string as the handlers read it (`routes::query`); `None` when the
/// HTTP layer refuses such a request line before any handler runs.
pub fn query(query_string: &str) -> Option<HashMap<String, String>> {
    let uri = format!("/api/auth/callback?{query_string}");
    actix_web::http::Uri::try_from(uri.as_str()).ok()?;
    let req = actix_web::test::TestRequest::default()
        .uri(&uri)
        .to_http_request();
    Some(crate::routes::query(&req))
}

/// What the callback takes from the vendor's redirect, read as
/// `ConsentService::complete` reads it.
#[derive(Debug)]
pub struct CallbackQuery {
    /// The SHA-256 of `state`: the key of the pending row.
    pub state_hash: Option<String>,
    pub code: Option<Secret>,
    /// The vendor's error and description, as kept and shown (sanitized).
    pub error: Option<String>,
    pub description: Option<String>,
    /// The HTML page shown for the vendor's error.
    pub page: Option<String>,
}

pub fn callback(query_string: &str) -> Option<CallbackQuery> {
    let params = query(query_string)?;
    let state_hash = params
        .get("state")
        .filter(|s| !s.is_empty())
        .map(|s| crate::consent::hash(s));
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .map(|c| Secret::new(c.clone()));
    let error = params.get("error").map(|e| oauth::sanitize(e, 64));
    let description = params
        .get("error_description")
        .map(|d| oauth::sanitize(d, 300));
    let page = error
        .as_ref()
        .map(|e| refusal_page(e, description.as_deref()));
    Some(CallbackQuery {
        state_hash,
        code,
        error,
        description,
        page,
    })
}

/// The page the callback shows when the vendor sent an error (RFC 6749
/// §4.1.2.1), as HTML text.
pub fn refusal_page(error: &str, description: Option<&str>) -> String {
    let resp = crate::routes::html::access_not_granted(
        error,
        description,
        "https://broker.example/api/auth/callback",
    );
    let body = resp.into_body().try_into_bytes().unwrap_or_default();
    String::from_utf8_lossy(&body).into_owned()
}

/// The keyring the stored-row entry points seal and open with (a fixed test key).
pub fn test_keyring() -> Keyring {
    Keyring::parse(&Secret::new(
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ))
    .expect("a valid key spec")
}

/// A backend holding one entity as Table Storage would hand it back: the
/// broker's own entity decoding runs on every read.
struct OneEntity(Map<String, Value>);

fn decoded<T>(
    m: &Map<String, Value>,
    f: fn(&Map<String, Value>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    f(m).map(Some)
}

impl Backend for OneEntity {
    fn init(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
    fn get_connection<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            Ok(
                decoded(&self.0, table::connection_row)?.map(|value| Versioned {
                    value,
                    version: Version("1".into()),
                }),
            )
        })
    }
    fn upsert_connection<'a>(
        &'a self,
        _: &'a ConnectionRow,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn replace_connection<'a>(
        &'a self,
        _: &'a ConnectionRow,
        _: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn list_due(
        &self,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        self.list_connections()
    }
    fn insert_pending<'a>(&'a self, _: &'a PendingRow) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn take_pending<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move { decoded(&self.0, table::pending_row) })
    }
    fn pending_of_link<'a>(
        &'a self,
        link_hash: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PendingRow>, StoreError>> {
        Box::pin(async move {
            Ok(decoded(&self.0, table::pending_row)?
                .filter(|r| r.link_hash.as_deref() == Some(link_hash))
                .into_iter()
                .collect())
        })
    }
    fn purge_pending(&self, _: OffsetDateTime) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn peek_pending<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingRow>, StoreError>> {
        Box::pin(async move { decoded(&self.0, table::pending_row) })
    }
    fn list_connections(&self) -> BoxFuture<'_, Result<Vec<Versioned<ConnectionRow>>, StoreError>> {
        Box::pin(async move {
            Ok(table::connection_row(&self.0)
                .into_iter()
                .map(|value| Versioned {
                    value,
                    version: Version("1".into()),
                })
                .collect())
        })
    }
    fn insert_credential<'a>(
        &'a self,
        _: &'a CredentialRow,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn get_credential<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<CredentialRow>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn list_credentials<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CredentialRow>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn touch_credential<'a>(
        &'a self,
        _: &'a str,
        _: OffsetDateTime,
        _: Option<&'a crate::domain::SecretHash>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn delete_credential<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    fn delete_credentials_of<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    fn delete_connection<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    fn insert_aux<'a>(&'a self, _: &'a AuxRow) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn get_aux<'a>(
        &'a self,
        _: AuxKind,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async { Ok(None) })
    }
    fn replace_aux<'a>(
        &'a self,
        _: &'a AuxRow,
        _: &'a Version,
    ) -> BoxFuture<'a, Result<Version, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("read-only".into())) })
    }
    fn delete_aux<'a>(
        &'a self,
        _: AuxKind,
        _: &'a str,
        _: Option<&'a Version>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
    fn due_aux(
        &self,
        _: AuxKind,
        _: OffsetDateTime,
        _: u32,
    ) -> BoxFuture<'_, Result<Vec<Versioned<AuxRow>>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Replaces a text property set to `"seal"` with `plaintext` sealed as the
/// store writes it (format 2, bound to the row's fields, under the test key),
/// as a writer holding the key would: the decoding after decryption is then
/// reached too. `aad` sees the entity as decoded; `None` leaves it as it is.
fn seal_marked(
    entity: &mut Map<String, Value>,
    property: &str,
    plaintext: &[u8],
    aad: impl FnOnce(&Map<String, Value>) -> Option<Vec<u8>>,
) {
    if entity.get(property).and_then(Value::as_str) != Some("seal") {
        return;
    }
    let Some(aad) = aad(entity) else { return };
    let (key_id, sealed) = test_keyring().seal(plaintext, &aad);
    entity.insert("KeyId".into(), Value::String(key_id));
    entity.insert(
        property.into(),
        Value::String(format!("{}{sealed}", crate::store::SEALED_V2)),
    );
}

fn text<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// What the store makes of one stored entity, read every way the broker reads
/// rows: as a connection (point read and listing), as a pending authorization,
/// and as a consent link.
#[derive(Debug)]
pub struct StoredRow {
    pub connection: Result<Option<ConnectionRecord>, StoreError>,
    pub listed: Result<Vec<ConnectionRecord>, StoreError>,
    pub pending: Result<Option<PendingAuthorization>, StoreError>,
    pub link: Result<Option<ConsentLink>, StoreError>,
}

/// Reads `entity` back through the real [`Store`] (its unsealing and checks)
/// over a backend that holds only it. `SealedTokens` / `SealedVerifier` equal
/// to `"seal"` are replaced by `plaintext` sealed for the row's identity.
pub fn stored_row(entity: Map<String, Value>, plaintext: &[u8]) -> StoredRow {
    let mut as_connection = entity.clone();
    seal_marked(&mut as_connection, "SealedTokens", plaintext, |m| {
        table::connection_row(m)
            .ok()
            .map(|r| crate::store::aad_connection(&r))
    });
    let mut as_pending = entity;
    let is_link = text(&as_pending, "RowKey").starts_with("link-");
    let sealed = if is_link { &[][..] } else { plaintext };
    seal_marked(&mut as_pending, "SealedVerifier", sealed, |m| {
        table::pending_row(m).ok().map(|r| match is_link {
            true => crate::store::aad_link(&r),
            false => crate::store::aad_pending(&r),
        })
    });
    let state_hash = text(&as_pending, "RowKey").to_owned();
    let link_hash = state_hash.trim_start_matches("link-").to_owned();

    let connections = Store::new(Arc::new(OneEntity(as_connection)), test_keyring());
    let pendings = Store::new(Arc::new(OneEntity(as_pending)), test_keyring());
    let names = (
        IntegrationName::parse("fuzz").expect("a valid name"),
        ConnectionId::parse("fuzz").expect("a valid id"),
    );
    runtime().block_on(async {
        StoredRow {
            connection: connections
                .get(&names.0, &names.1)
                .await
                .map(|v| v.map(|v| v.value)),
            listed: connections.list().await,
            pending: pendings.take_pending(&state_hash).await,
            link: pendings.peek_link(&link_hash).await,
        }
    })
}

/// The row key a consent link's token is looked up by, as
/// `GET /api/auth/link?t=` reads it (`None`: unusable without a lookup).
pub fn consent_link(query_string: &str) -> Option<String> {
    let token = query(query_string)?.remove("t").unwrap_or_default();
    if token.is_empty() || token.len() > 128 {
        return None;
    }
    Some(crate::consent::hash(&token))
}

/// An `Authorization` header value as the Entra check reads it: the Bearer
/// token, split and decoded (`entra::jwt::parse`), then the claim checks
/// against a fixed tenant and audience at `now` (the signature cannot verify
/// on fuzzed input, so it is skipped to reach the claims). `None`: not Bearer.
pub fn entra_authorization(
    value: &str,
    now: i64,
) -> Option<Result<crate::entra::EntraCaller, crate::entra::VerifyError>> {
    use crate::entra::{Check, VerifyError};
    let token = match crate::entra::bearer(value)? {
        Ok(t) => t,
        Err(()) => {
            return Some(Err(VerifyError::Invalid(Check::Malformed(
                crate::entra::jwt::Malformed::Parts,
            ))))
        }
    };
    let u = match crate::entra::jwt::parse(token) {
        Ok(u) => u,
        Err(m) => return Some(Err(VerifyError::Invalid(Check::Malformed(m)))),
    };
    Some(crate::entra::check_claims(
        &entra_settings(),
        &u.claims,
        now,
    ))
}

/// The tenant and audiences [`entra_authorization`] checks against.
pub fn entra_settings() -> crate::config::EntraSettings {
    crate::config::EntraSettings {
        tenant: ENTRA_TENANT.into(),
        audiences: vec!["api://oauth-broker".into(), ENTRA_CLIENT.into()],
        authority: url::Url::parse("https://login.microsoftonline.com").expect("a fixed URL"),
    }
}

pub const ENTRA_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const ENTRA_CLIENT: &str = "0f1e2d3c-0000-4000-8000-000000000001";
