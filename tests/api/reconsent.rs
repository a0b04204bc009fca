//! Consenting again for an existing connection replaces its grant.

use crate::helpers::*;

#[tokio::test]
async fn reconsent_for_an_existing_connection_replaces_its_grant() {
    let app = TestApp::spawn(AppOptions::on(Store::Sqlite)).await;
    let conn = "contoso";

    app.connect(conn).await;
    let first = app.access_token(conn).await;

    app.connect(conn).await;
    let second = app.access_token(conn).await;
    assert_ne!(
        second, first,
        "the token route serves the new grant's token"
    );

    let stats = app.oidc().stats().await;
    assert_eq!(
        stats.authorization_codes(),
        2,
        "two code exchanges: {stats:?}"
    );
    assert_eq!(
        stats.refreshes(),
        0,
        "the new grant needed no refresh: {stats:?}"
    );

    // Other connections of the same integration are untouched by a reconsent.
    app.connect("fabrikam").await;
    let other = app.access_token("fabrikam").await;
    assert_ne!(other, second);
    assert_eq!(app.access_token(conn).await, second);
}
