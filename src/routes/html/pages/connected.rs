//! The success page of a consent: what was granted (scopes, any missing),
//! a warning when no refresh token came (with its likely causes), and how a
//! pipeline gets the token now.

use actix_web::HttpResponse;

use super::{shown, Html, Page};

/// Success: the grant is stored.
pub fn connected(
    public_url: &str,
    integration: &str,
    connection: &str,
    scope: &str,
) -> HttpResponse {
    connected_grant(
        public_url,
        &Granted {
            integration,
            connection,
            scope,
            requested: &[],
            missing_scopes: None,
            no_refresh_token: None,
        },
    )
}

/// What a completed consent obtained, for its page.
pub struct Granted<'a> {
    pub integration: &'a str,
    pub connection: &'a str,
    /// The stored scope: as granted, or as requested when the vendor did not say.
    pub scope: &'a str,
    pub requested: &'a [String],
    /// Requested scopes the vendor did not grant; `None` when it did not list what it granted.
    pub missing_scopes: Option<&'a [String]>,
    /// Set when the integration expects a refresh token and none came.
    pub no_refresh_token: Option<NoRefreshToken<'a>>,
}

/// Why a consent may have come back without a refresh token.
pub struct NoRefreshToken<'a> {
    /// When the access token expires (RFC 3339).
    pub expires_at: &'a str,
    /// The vendor template, if any.
    pub provider: Option<&'a str>,
    /// Scopes that were requested to get a refresh token (`offline_access`).
    pub offline_requested: &'a [String],
}

fn scope_list(scopes: &[&str]) -> Html {
    let mut list = Html::new().markup("<ul class=\"scopes\">");
    for s in scopes {
        list = list.markup("<li>").code(shown(s)).markup("</li>");
    }
    list.markup("</ul>")
}

/// Success (the grant is stored), with what was granted and any warning.
pub fn connected_grant(public_url: &str, g: &Granted<'_>) -> HttpResponse {
    let missing: &[String] = g.missing_scopes.unwrap_or(&[]);
    let page = match &g.no_refresh_token {
        Some(_) => Page::warning("Connected without a refresh token"),
        None if !missing.is_empty() => Page::warning("Connected with fewer scopes than requested"),
        None => Page::ok("Connected"),
    };
    let page = granted_lead(page, g);
    let page = granted_facts(page, g, missing);
    next_steps(page, public_url, g).into_response()
}

/// What the consent obtained, in a sentence; without a refresh token, also
/// its likely causes.
fn granted_lead(page: Page, g: &Granted<'_>) -> Page {
    let (integration, connection) = (g.integration, g.connection);
    if let Some(n) = &g.no_refresh_token {
        page.lead(
            Html::of("The vendor granted access for integration ")
                .strong(integration)
                .text(", connection ")
                .strong(connection)
                .text(", but sent no refresh token. Pipelines get the access token until it expires at ")
                .strong(shown(n.expires_at))
                .text("; after that the broker cannot renew it and someone must consent again."),
        )
        .heading("Likely cause")
        .list(false, no_refresh_token_causes(n))
    } else {
        page.lead(
            Html::of("The broker now holds a grant for integration ")
                .strong(integration)
                .text(", connection ")
                .strong(connection)
                .text(". It refreshes the access token by itself, so pipelines always get a valid one."),
        )
    }
}

/// The facts: integration, connection, the scopes granted and those
/// `missing` (with what that means).
fn granted_facts(mut page: Page, g: &Granted<'_>, missing: &[String]) -> Page {
    let (integration, connection) = (g.integration, g.connection);
    let scopes: Vec<&str> = g
        .scope
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .collect();
    let listed = g.missing_scopes.is_some() || g.requested.is_empty();
    let granted = if scopes.is_empty() {
        Html::of("The vendor did not list any scopes.")
    } else if !listed {
        Html::of("The vendor did not say which scopes it granted; requested:")
            .then(scope_list(&scopes))
    } else {
        scope_list(&scopes)
    };
    let mut facts = vec![
        ("Integration", Html::new().code(integration)),
        ("Connection", Html::new().code(connection)),
        ("Scopes granted", granted),
    ];
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        facts.push(("Not granted", scope_list(&missing)));
    }
    page = page.facts(facts);
    if !missing.is_empty() {
        page = page.para(Html::of(
            "The vendor granted fewer scopes than the integration requested: calls that need the missing ones will fail. The person who consented may have unticked them, or their account or the app registration may not allow them. Consent again with an account that may grant them, or remove them from the integration's scopes if they are not needed.",
        ));
    }
    page
}

/// How a pipeline gets the token now, and whether anything else is needed.
fn next_steps(page: Page, public_url: &str, g: &Granted<'_>) -> Page {
    let (integration, connection) = (g.integration, g.connection);
    let token_url = format!(
        "{}/api/token/{integration}/{connection}",
        public_url.trim_end_matches('/')
    );
    page.heading("What to do next")
        .list(
            true,
            vec![
                Html::of("In Azure Data Factory, get the access token with a Web activity that sends a function key in the ")
                    .code("x-functions-key")
                    .text(" header:")
                    .markup("<code class=\"request\">")
                    .text(format!("GET {token_url}"))
                    .markup("</code>"),
                Html::of("Or use an Azure Function activity with the function name ")
                    .code(format!("token/{integration}/{connection}"))
                    .text(" and method ")
                    .code("GET")
                    .text("."),
                Html::of("The answer is JSON; pass its ")
                    .code("access_token")
                    .text(" to the vendor's API as ")
                    .code("Authorization: Bearer \u{2026}")
                    .text("."),
            ],
        )
        .para(Html::of(if g.no_refresh_token.is_some() {
            "Tell whoever runs the broker about this page: the connection shows as no_refresh_token on its status page until a consent brings a refresh token."
        } else {
            "You can close this window. Consent is needed again only if the grant is revoked or expires at the vendor."
        }))
}

fn no_refresh_token_causes(n: &NoRefreshToken<'_>) -> Vec<Html> {
    let mut causes = Vec::new();
    if n.provider == Some("google") {
        causes.push(
            Html::of("Google sends a refresh token only on the first consent of an account unless the request carries ")
                .code("access_type=offline")
                .text(" and ")
                .code("prompt=consent")
                .text(" (the google template sets both: check that the integration's ")
                .code("authorization_params")
                .text(" does not override them)."),
        );
    }
    if n.offline_requested.is_empty() {
        causes.push(
            Html::of("The vendor issues a refresh token only when the ")
                .code("offline_access")
                .text(" scope is requested (Microsoft, Xero, Atlassian and most OpenID Connect providers): add it to the integration's ")
                .code("scopes")
                .text(" or ")
                .code("refresh_token_scopes")
                .text("."),
        );
    } else {
        let mut asked = Html::of("The broker requested ");
        for (i, s) in n.offline_requested.iter().enumerate() {
            if i > 0 {
                asked = asked.text(", ");
            }
            asked = asked.code(s);
        }
        causes.push(asked.text(", but the vendor did not honour it: check that the app registration at the vendor allows offline access (refresh tokens)."));
    }
    if n.provider != Some("google") {
        causes.push(
            Html::of("Google and some other vendors also need ")
                .code("access_type=offline")
                .text(" and ")
                .code("prompt=consent")
                .text(" in the integration's ")
                .code("authorization_params")
                .text("."),
        );
    }
    causes.push(
        Html::of("If this vendor's tokens never expire, set ")
            .code("\"expects_refresh_token\": false")
            .text(" on the integration and this warning goes away."),
    );
    causes
}
