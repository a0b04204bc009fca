//! A stand-in for Microsoft Entra ID on loopback (an actix-web server on its own thread, stopped on
//! drop): the tenant's OpenID Connect metadata at `/<tenant>/v2.0/.well-known/openid-configuration`,
//! its signing keys at `/<tenant>/discovery/v2.0/keys`, and access tokens shaped like the ones Entra
//! issues to managed identities and service principals (v1.0 and v2.0; claims as in Microsoft's
//! "Access token claims reference", MicrosoftDocs/entra-docs `access-token-claims-reference.md`).
//!
//! No real Entra tenant is reachable from the test machines, and none would sign a token with
//! `alg: none` on cue, so this is a fake by necessity. Its keys are three fixed RSA 2048 test keys
//! (`tests/support/keys/`, generated with `openssl genpkey`, used nowhere else); which of them the
//! key set publishes can change at run time (key rotation), and tokens can be minted wrong on
//! purpose ([`Signer`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, RsaKeyPair};
use serde_json::{json, Value};

use crate::util::{random_hex, uuid_ish};

const KEY_FILES: [&str; 3] = [
    include_str!("../keys/entra-test-1.pk8.b64"),
    include_str!("../keys/entra-test-2.pk8.b64"),
    include_str!("../keys/entra-test-3.pk8.b64"),
];

/// The v1.0 issuer, which does not follow the authority (`https://sts.windows.net/<tenant>/`).
pub fn v1_issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// One signing key: a key id as Entra's (a base64url thumbprint-like string) and the key pair.
pub struct EntraKey {
    pub kid: String,
    pair: RsaKeyPair,
}

impl EntraKey {
    /// The key as a JWK, as Entra publishes it (`kty`, `use`, `kid`, `x5t`, `n`, `e`, `issuer`).
    pub fn jwk(&self, authority: &str) -> Value {
        let public: signature::RsaPublicKeyComponents<Vec<u8>> = self.pair.public().into();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&public.n),
            "e": URL_SAFE_NO_PAD.encode(&public.e),
            "issuer": format!("{authority}/{{tenantid}}/v2.0"),
        })
    }

    /// The public key as DER (PKCS#1 RSAPublicKey): what an HS256-with-the-public-key attacker
    /// uses as the HMAC secret.
    pub fn public_der(&self) -> Vec<u8> {
        self.pair.public().as_ref().to_vec()
    }
}

/// The version of the token, set in Entra by the resource app's `accessTokenAcceptedVersion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Who asks for the token: what differs between the two kinds of app-only callers.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A managed identity (Data Factory's): authenticated by a certificate the platform holds
    /// (`appidacr`/`azpacr` "2"), with `xms_mirid` naming its Azure resource.
    ManagedIdentity {
        object_id: String,
        client_id: String,
        resource_id: String,
    },
    /// A service principal with a client secret (`appidacr`/`azpacr` "1").
    ServicePrincipal {
        object_id: String,
        client_id: String,
    },
}

impl Principal {
    /// A managed identity with fresh ids, of a data factory called `name`.
    pub fn data_factory(name: &str) -> Principal {
        Principal::ManagedIdentity {
            object_id: uuid_ish(),
            client_id: uuid_ish(),
            resource_id: format!(
                "/subscriptions/{}/resourcegroups/rg-data/providers/Microsoft.DataFactory/factories/{name}",
                uuid_ish()
            ),
        }
    }

    pub fn service_principal() -> Principal {
        Principal::ServicePrincipal {
            object_id: uuid_ish(),
            client_id: uuid_ish(),
        }
    }

    pub fn object_id(&self) -> &str {
        match self {
            Principal::ManagedIdentity { object_id, .. }
            | Principal::ServicePrincipal { object_id, .. } => object_id,
        }
    }

    pub fn client_id(&self) -> &str {
        match self {
            Principal::ManagedIdentity { client_id, .. }
            | Principal::ServicePrincipal { client_id, .. } => client_id,
        }
    }
}

/// How a token is signed: right, or wrong in one of the ways an attacker or a misconfiguration would.
#[derive(Clone, Debug)]
pub enum Signer {
    /// RS256 with key `i` (published or not), its own `kid`.
    Key(usize),
    /// RS256 with key `i`, but the header names another `kid`.
    KeyWithKid(usize, String),
    /// RS256 with key `i` and no `kid` in the header.
    NoKid(usize),
    /// `alg: none`, an empty signature.
    None,
    /// `alg: HS256` keyed with key `i`'s public key (the RS/HS confusion attack), `kid` of key `i`.
    Hs256WithPublicKey(usize),
    /// Another `alg` (e.g. `PS256`, `ES256`), signed with key `i` as RS256 would be.
    Alg(&'static str, usize),
}

#[derive(Default)]
struct State {
    /// Indices of the keys the key set publishes, in order.
    published: Mutex<Vec<usize>>,
    /// JWKs published after the real keys (keys of other types, broken entries).
    extra: Mutex<Vec<Value>>,
    metadata_fetches: AtomicU32,
    jwks_fetches: AtomicU32,
}

pub struct Entra {
    /// `http://127.0.0.1:<port>`: the `BROKER_ENTRA_AUTHORITY` to give the broker.
    pub authority: String,
    pub tenant: String,
    keys: Arc<Vec<EntraKey>>,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Opaque-looking values, as Entra's `aio`, `rh` and `uti` are.
fn opaque(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(random_hex(bytes).as_bytes())
}

impl Entra {
    /// A tenant with a fresh id whose key set publishes key 0.
    pub fn start() -> Entra {
        let keys: Vec<EntraKey> = KEY_FILES
            .iter()
            .map(|b64| {
                let der = STANDARD.decode(b64.trim()).unwrap();
                let pair = RsaKeyPair::from_pkcs8(&der).unwrap();
                EntraKey {
                    kid: opaque(15)[..27].to_owned(),
                    pair,
                }
            })
            .collect();
        let keys = Arc::new(keys);
        let tenant = uuid_ish();
        let state = Arc::new(State::default());
        *state.published.lock().unwrap() = vec![0];
        let shared = Arc::clone(&state);
        let served_keys = Arc::clone(&keys);
        let served_tenant = tenant.clone();
        let (port, handle) = crate::util::serve_on_loopback(1, move |cfg| {
            cfg.app_data(web::Data::from(Arc::clone(&shared)))
                .app_data(web::Data::from(Arc::clone(&served_keys)))
                .app_data(web::Data::new(served_tenant.clone()))
                .route(
                    "/{tenant}/v2.0/.well-known/openid-configuration",
                    web::get().to(metadata),
                )
                .route("/{tenant}/discovery/v2.0/keys", web::get().to(jwks));
        });
        Entra {
            authority: format!("http://127.0.0.1:{port}"),
            tenant,
            keys,
            state,
            handle,
        }
    }

    /// The v2.0 issuer of this tenant (`<authority>/<tenant>/v2.0`).
    pub fn v2_issuer(&self) -> String {
        format!("{}/{}/v2.0", self.authority, self.tenant)
    }

    pub fn v1_issuer(&self) -> String {
        v1_issuer(&self.tenant)
    }

    pub fn key(&self, i: usize) -> &EntraKey {
        &self.keys[i]
    }

    /// Which keys the key set publishes from now on (key rotation: `publish(&[0, 1])`, then `&[1]`).
    pub fn publish(&self, keys: &[usize]) {
        *self.state.published.lock().unwrap() = keys.to_vec();
    }

    /// Further JWKs published after the keys (a key of another type, a broken entry).
    pub fn publish_extra(&self, jwk: Value) {
        self.state.extra.lock().unwrap().push(jwk);
    }

    pub fn jwks_fetches(&self) -> u32 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn metadata_fetches(&self) -> u32 {
        self.state.metadata_fetches.load(Ordering::SeqCst)
    }

    /// The claims Entra puts in an app-only access token for `principal` with audience `aud`,
    /// valid from now for an hour (as Entra's managed-identity tokens are, at least), with `roles`
    /// when any were granted. Change the result to mint a token that is wrong on purpose.
    pub fn claims(
        &self,
        version: Version,
        principal: &Principal,
        aud: &str,
        roles: &[&str],
    ) -> Value {
        let now = now();
        let mut c = json!({
            "aud": aud,
            "iat": now,
            "nbf": now,
            "exp": now + 3600 + 1800,
            "aio": opaque(40),
            "idtyp": "app",
            "oid": principal.object_id(),
            "rh": format!("0.{}.", opaque(30)),
            "sub": principal.object_id(),
            "tid": self.tenant,
            "uti": opaque(16)[..22].to_owned(),
        });
        let acr = match principal {
            Principal::ManagedIdentity { .. } => "2",
            Principal::ServicePrincipal { .. } => "1",
        };
        match version {
            Version::V1 => {
                c["iss"] = json!(self.v1_issuer());
                c["idp"] = json!(self.v1_issuer());
                c["appid"] = json!(principal.client_id());
                c["appidacr"] = json!(acr);
                c["ver"] = json!("1.0");
            }
            Version::V2 => {
                c["iss"] = json!(self.v2_issuer());
                c["azp"] = json!(principal.client_id());
                c["azpacr"] = json!(acr);
                c["ver"] = json!("2.0");
            }
        }
        if let Principal::ManagedIdentity { resource_id, .. } = principal {
            c["xms_mirid"] = json!(resource_id);
        }
        if !roles.is_empty() {
            c["roles"] = json!(roles);
        }
        c
    }

    /// A compact JWS of `claims`, signed as `signer` says; v1-shaped headers carry `x5t` too.
    pub fn sign(&self, claims: &Value, signer: &Signer) -> String {
        let v1 = claims["ver"] == json!("1.0");
        let (alg, key, kid): (&str, Option<usize>, Option<String>) = match signer {
            Signer::Key(i) => ("RS256", Some(*i), Some(self.keys[*i].kid.clone())),
            Signer::KeyWithKid(i, kid) => ("RS256", Some(*i), Some(kid.clone())),
            Signer::NoKid(i) => ("RS256", Some(*i), None),
            Signer::None => ("none", None, Some(self.keys[0].kid.clone())),
            Signer::Hs256WithPublicKey(i) => ("HS256", None, Some(self.keys[*i].kid.clone())),
            Signer::Alg(alg, i) => (alg, Some(*i), Some(self.keys[*i].kid.clone())),
        };
        let mut header = json!({"typ": "JWT", "alg": alg});
        if let Some(kid) = kid {
            if v1 {
                header["x5t"] = json!(kid);
            }
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = match (signer, key) {
            (Signer::None, _) => Vec::new(),
            (Signer::Hs256WithPublicKey(i), _) => {
                let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.keys[*i].public_der());
                ring::hmac::sign(&k, input.as_bytes()).as_ref().to_vec()
            }
            (_, Some(i)) => {
                let pair = &self.keys[i].pair;
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            (_, None) => unreachable!("every other signer names a key"),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// A good token: `claims(...)` signed with key 0.
    pub fn token(
        &self,
        version: Version,
        principal: &Principal,
        aud: &str,
        roles: &[&str],
    ) -> String {
        self.sign(
            &self.claims(version, principal, aud, roles),
            &Signer::Key(0),
        )
    }
}

impl Drop for Entra {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn metadata(
    path: web::Path<String>,
    req: actix_web::HttpRequest,
    state: web::Data<State>,
    tenant: web::Data<String>,
) -> HttpResponse {
    state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    if path.as_str() != tenant.as_str() {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_tenant"}));
    }
    let base = format!("http://{}", req.connection_info().host());
    let tenant = tenant.as_str();
    HttpResponse::Ok().json(json!({
        "token_endpoint": format!("{base}/{tenant}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        "end_session_endpoint": format!("{base}/{tenant}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "tid", "ver", "oid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
    }))
}

async fn jwks(
    path: web::Path<String>,
    req: actix_web::HttpRequest,
    state: web::Data<State>,
    keys: web::Data<Vec<EntraKey>>,
    tenant: web::Data<String>,
) -> HttpResponse {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if path.as_str() != tenant.as_str() {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_tenant"}));
    }
    let base = format!("http://{}", req.connection_info().host());
    let mut out: Vec<Value> = state
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|i| keys[*i].jwk(&base))
        .collect();
    out.extend(state.extra.lock().unwrap().iter().cloned());
    HttpResponse::Ok().json(json!({"keys": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(token: &str, i: usize) -> Value {
        let p = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn tokens_are_shaped_like_entra_app_only_tokens() {
        let entra = Entra::start();
        let mi = Principal::data_factory("adf-acme");
        let v1 = entra.token(Version::V1, &mi, "api://broker", &[]);
        let (h, c) = (part(&v1, 0), part(&v1, 1));
        assert_eq!(h["alg"], "RS256");
        assert_eq!(h["kid"], h["x5t"], "v1 headers carry x5t = kid");
        assert_eq!(
            c["iss"],
            json!(format!("https://sts.windows.net/{}/", entra.tenant))
        );
        assert_eq!(c["ver"], "1.0");
        assert_eq!(c["appid"], json!(mi.client_id()));
        assert_eq!(c["oid"], json!(mi.object_id()));
        assert_eq!(c["appidacr"], "2");
        assert!(c.get("azp").is_none() && c.get("roles").is_none());
        assert!(c["xms_mirid"]
            .as_str()
            .unwrap()
            .contains("Microsoft.DataFactory"));

        let sp = Principal::service_principal();
        let v2 = entra.token(
            Version::V2,
            &sp,
            "00000000-1111-2222-3333-444444444444",
            &["Broker.Admin"],
        );
        let (h, c) = (part(&v2, 0), part(&v2, 1));
        assert!(h.get("x5t").is_none());
        assert_eq!(c["iss"], json!(entra.v2_issuer()));
        assert_eq!(c["azp"], json!(sp.client_id()));
        assert_eq!(c["azpacr"], "1");
        assert_eq!(c["roles"], json!(["Broker.Admin"]));
        assert_eq!(c["idtyp"], "app");
        assert_eq!(c["tid"], json!(entra.tenant));
        assert!(c["exp"].as_i64().unwrap() > c["nbf"].as_i64().unwrap());

        let none = entra.sign(&c, &Signer::None);
        assert!(none.ends_with('.'), "alg none has an empty signature");
        assert_eq!(part(&none, 0)["alg"], "none");
        assert_eq!(
            part(&entra.sign(&c, &Signer::Hs256WithPublicKey(0)), 0)["alg"],
            "HS256"
        );
    }

    #[test]
    fn signatures_verify_with_the_published_key_and_rotation_changes_the_set() {
        let entra = Entra::start();
        let token = entra.token(Version::V2, &Principal::service_principal(), "aud", &[]);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let jwk = entra.key(0).jwk(&entra.authority);
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        let e = URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
        let key = signature::RsaPublicKeyComponents { n: &n, e: &e };
        key.verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
        .unwrap();
        assert_ne!(entra.key(0).kid, entra.key(1).kid);
        entra.publish(&[0, 1]);
        assert_eq!(entra.state.published.lock().unwrap().len(), 2);
    }
}
