//! The API tests' fixtures: Azurite, oidc-provider, the real `oauth-broker` binary, the fake vendor,
//! browsers and the whole application under test live in the `broker-testkit` crate
//! (`tests/support`), shared with the benchmark; this module re-exports them under the names the test
//! files use.

pub use broker_testkit::fake_vendor::{Answer, FakeVendor};
pub use broker_testkit::*;

/// A new pipeline credential for `conn` through the admin route: (client_id, client_secret).
pub async fn credential(app: &TestApp, conn: &str) -> (String, String) {
    let r = app
        .call(
            reqwest::Method::POST,
            &format!("/api/connections/{INTEGRATION}/{conn}/credentials"),
            None,
            Key::Configured,
        )
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    let v = r.json();
    (
        v["client_id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_fixtures_start_the_broker_cargo_built_for_these_tests() {
    let expected = std::path::Path::new(env!("CARGO_BIN_EXE_oauth-broker"));
    assert_eq!(
        broker_exe().canonicalize().unwrap(),
        expected.canonicalize().unwrap()
    );
}
