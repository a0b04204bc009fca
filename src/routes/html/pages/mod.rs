//! The page copy: what the person who consents reads in each situation,
//! built with the escaping builder in the parent module. Here: every page but
//! the success page, which is in `connected`.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use super::{Html, Page};

mod connected;
pub use connected::{connected, connected_grant, Granted, NoRefreshToken};

/// Names and codes from the request or the vendor are cut to this many characters when shown.
pub(super) const SHOWN_MAX: usize = 80;
/// Sentences from the vendor (error descriptions) are cut to this many.
const SHOWN_LONG_MAX: usize = 500;

/// A name or code from the request or the vendor, as shown: no control characters, cut short.
pub(super) fn shown(raw: &str) -> String {
    cut(raw, SHOWN_MAX)
}

/// A sentence from the vendor, as shown.
fn shown_long(raw: &str) -> String {
    cut(raw, SHOWN_LONG_MAX)
}

fn cut(raw: &str, max: usize) -> String {
    let mut out: String = raw.chars().filter(|c| !c.is_control()).take(max).collect();
    if raw.chars().filter(|c| !c.is_control()).count() > max {
        out.push('\u{2026}');
    }
    out
}

fn start_again() -> Html {
    Html::of("Open the consent link again (or ask whoever sent it for a new one) and approve access at the vendor.")
}

fn redirect_uri_check(redirect_uri: &str) -> Html {
    Html::of("Check that the redirect URI registered for this app at the vendor is exactly ")
        .code(redirect_uri)
        .text(" (same scheme, host, path, no trailing slash).")
}

/// The integration name in a start link does not parse.
pub fn invalid_integration_name(raw: &str, reason: impl fmt::Display) -> HttpResponse {
    invalid_link_part("integration ", raw, "an integration name", reason)
}

/// The `connection` parameter of a start link does not parse.
pub fn invalid_connection(raw: &str, reason: impl fmt::Display) -> HttpResponse {
    invalid_link_part("connection ", raw, "a connection id", reason)
}

/// A start link's `allow_account_change` is neither `true` nor `false`.
pub fn invalid_parameter(name: &'static str, reason: &'static str) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent link is not valid")
        .lead(
            Html::of("The link's ")
                .code(name)
                .text(" parameter cannot be used: ")
                .text(reason)
                .text("."),
        )
        .into_response()
}

fn invalid_link_part(
    what: &'static str,
    raw: &str,
    kind: &'static str,
    reason: impl fmt::Display,
) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent link is not valid")
        .lead(
            Html::of("The link names the ")
                .text(what)
                .code(shown(raw))
                .text(", which cannot be ")
                .text(kind)
                .text(": ")
                .text(reason)
                .text("."),
        )
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Check that the whole link was copied, or ask whoever sent it for a new one.",
            )],
        )
        .into_response()
}

/// A start link (or a pending consent) names an integration this broker does not have.
pub fn unknown_integration(name: &str) -> HttpResponse {
    Page::problem(StatusCode::NOT_FOUND, "Unknown integration")
        .lead(
            Html::of("This broker has no integration named ")
                .code(shown(name))
                .text("."),
        )
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("Check the link, or ask whoever sent it for a new one."),
                Html::of("If you run the broker: add the integration to ")
                    .code("integrations.json")
                    .text(" and deploy it, then start the consent again."),
            ],
        )
        .into_response()
}

/// The integration's endpoints come from its issuer, whose metadata has not been fetched yet.
pub fn integration_unavailable(name: &str) -> HttpResponse {
    Page::problem(StatusCode::SERVICE_UNAVAILABLE, "Please try again shortly")
        .lead(
            Html::of("The broker could not yet reach the vendor's sign-in service for ")
                .code(shown(name))
                .text("."),
        )
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("Wait a minute, then open the link again."),
                Html::of("If this keeps happening, tell whoever runs the broker: its health route names the integration and the reason."),
            ],
        )
        .into_response()
}

/// RFC 9207: the authorization response did not come from the integration's issuer.
pub fn issuer_mismatch() -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This sign-in cannot be trusted")
        .lead(Html::of(
            "The answer that brought you here did not come from the sign-in service this connection uses, so the broker did not use it. Nothing was connected.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![
                start_again(),
                Html::of("If it happens again, tell whoever runs the broker: the vendor's issuer does not match the integration's configured issuer."),
            ],
        )
        .into_response()
}

/// The store did not answer.
pub fn storage_unavailable(grant_lost: bool) -> HttpResponse {
    let what = if grant_lost {
        "The vendor granted access, but the broker's storage did not answer, so the grant was not saved."
    } else {
        "The broker's storage did not answer, so the consent could not go on."
    };
    Page::problem(StatusCode::SERVICE_UNAVAILABLE, "Please try again")
        .lead(Html::of(what))
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("Wait a minute, then open the consent link again."),
                Html::of("If this keeps happening, tell whoever runs the broker: its storage is unreachable."),
            ],
        )
        .into_response()
}

/// The vendor sent the person back with an `error` (RFC 6749 section 4.1.2.1).
pub fn access_not_granted(
    error: &str,
    description: Option<&str>,
    redirect_uri: &str,
) -> HttpResponse {
    let mut facts = vec![("Error", Html::new().code(shown(error)))];
    if let Some(d) = description.filter(|d| !d.trim().is_empty()) {
        facts.push(("The vendor said", Html::of(shown_long(d))));
    }
    let (lead, todo) = match error {
        "access_denied" => (
            Html::of("The vendor did not grant access: consent was declined or cancelled at the vendor's site."),
            vec![
                start_again(),
                Html::of("If you were not allowed to approve it, ask the vendor account's administrator to approve this app or grant you the needed permissions."),
            ],
        ),
        "temporarily_unavailable" | "server_error" => (
            Html::of("The vendor could not handle the request just now."),
            vec![Html::of("Wait a few minutes, then open the consent link again.")],
        ),
        _ => (
            Html::of("The vendor refused the request, so no access was granted."),
            vec![
                start_again(),
                Html::of("If it happens again, ask the vendor account's administrator whether this app may be authorised, and ask whoever runs the broker to check the integration's client id and scopes."),
                redirect_uri_check(redirect_uri),
            ],
        ),
    };
    Page::problem(StatusCode::BAD_REQUEST, "Access was not granted")
        .lead(lead)
        .facts(facts)
        .heading("What to do")
        .list(false, todo)
        .into_response()
}

/// The callback came without a code or state.
pub fn callback_incomplete(redirect_uri: &str) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent cannot be completed")
        .lead(Html::of(
            "The vendor sent you back here without an authorization code or without the consent's state, so there is nothing to complete.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![start_again(), redirect_uri_check(redirect_uri)],
        )
        .into_response()
}

/// A consent link that is unknown, expired or already used.
pub fn link_unusable() -> HttpResponse {
    Page::problem(StatusCode::GONE, "This consent link cannot be used")
        .lead(Html::of(
            "The link is not valid any more: it has expired, or a consent through it was already completed.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Ask the person who sent you the link for a new one.",
            )],
        )
        .into_response()
}

/// No pending consent for this state: expired and swept, or already completed.
pub fn consent_not_found() -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent has already ended")
        .lead(Html::of(
            "This consent has expired or was already completed (a page reloaded after connecting lands here too).",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "If the connection is not working yet, open the consent link again and approve access.",
            )],
        )
        .into_response()
}

/// The consent took longer than it may.
pub fn consent_expired(minutes: i64) -> HttpResponse {
    Page::problem(StatusCode::BAD_REQUEST, "This consent has expired")
        .lead(
            Html::of("A consent must be completed within ")
                .text(minutes)
                .text(" minutes of opening the link; this one took longer."),
        )
        .heading("What to do")
        .list(false, vec![start_again()])
        .into_response()
}

/// The callback arrived without the cookie set by the start route.
pub fn other_browser(hosts: Option<(&str, &str)>) -> HttpResponse {
    let page = Page::problem(StatusCode::BAD_REQUEST, "Please finish in the same browser");
    match hosts {
        // The same browser, but two names of the broker: the cookie stayed on the first.
        Some((started, ended)) => page
            .lead(
                Html::of("This consent was started on ")
                    .code(shown(started))
                    .text(" and came back to ")
                    .code(shown(ended))
                    .text(". A browser keeps the broker's cookie for the host it was set on, so it did not send it here."),
            )
            .heading("What to do")
            .list(
                false,
                vec![
                    Html::of("Start the consent again at ")
                        .code(shown(ended))
                        .text(" (the broker's public URL), not at ")
                        .code(shown(started))
                        .text("."),
                    Html::of("Or set BROKER_PUBLIC_URL to the address you open the broker at, and register that redirect URI at the vendor."),
                ],
            )
            .into_response(),
        None => page
            .lead(Html::of(
                "This consent was started in a different browser, or this browser blocked the broker's cookie, so the broker cannot tell that it is yours.",
            ))
            .heading("What to do")
            .list(
                false,
                vec![Html::of(
                    "Open the consent link again in this browser, allow cookies for this site, and complete the consent here without switching browsers.",
                )],
            )
            .into_response(),
    }
}

/// The pending consent names an integration that was removed meanwhile.
pub fn integration_gone(name: &str) -> HttpResponse {
    Page::problem(StatusCode::NOT_FOUND, "Unknown integration")
        .lead(
            Html::of("The integration ")
                .code(shown(name))
                .text(" was removed from this broker while the consent was in progress."),
        )
        .heading("What to do")
        .list(
            false,
            vec![Html::of(
                "Ask whoever runs the broker whether the integration still exists, then start the consent again from a new link.",
            )],
        )
        .into_response()
}

/// The code exchange failed: `oauth_error` is the vendor's error code, if it sent one.
/// `vendor_said`: the vendor's `error_description`; `detail`: the broker's own words.
pub fn exchange_failed(
    oauth_error: Option<&str>,
    vendor_said: Option<&str>,
    detail: Option<&str>,
    redirect_uri: &str,
) -> HttpResponse {
    let mut facts = Vec::new();
    if let Some(code) = oauth_error {
        facts.push(("Error", Html::new().code(shown(code))));
    }
    if let Some(d) = vendor_said.filter(|d| !d.trim().is_empty()) {
        facts.push(("The vendor said", Html::of(shown_long(d))));
    }
    if let Some(d) = detail {
        facts.push(("Details", Html::of(shown_long(d))));
    }
    let what = match oauth_error {
        Some(_) => "You approved access, but the vendor refused to exchange the authorization code for tokens.",
        None => "You approved access, but the vendor's token endpoint failed, so the broker got no tokens.",
    };
    Page::problem(StatusCode::BAD_GATEWAY, "The connection could not be completed")
        .lead(Html::of(what))
        .facts(facts)
        .heading("What to do")
        .list(
            false,
            vec![
                start_again(),
                Html::of("If it fails again, ask whoever runs the broker to check the integration's client id and client secret."),
                redirect_uri_check(redirect_uri),
            ],
        )
        .into_response()
}

/// A consent by another vendor account than the one the connection belongs to
/// (or, for a connection whose account is not known, one that would replace a
/// working grant): nothing was changed (409).
pub fn account_mismatch(integration: &str, connection: &str, unknown: bool) -> HttpResponse {
    let lead = Html::of("The connection ")
        .code(shown(connection))
        .text(" of ")
        .code(shown(integration))
        .text(if unknown {
            " is already connected, and the broker cannot tell whether the account you signed in with is the one it is connected to. Nothing was changed: the connection keeps its current grant."
        } else {
            " is connected to another account at the vendor than the one you signed in with. Nothing was changed: the connection keeps its current grant, and the access you just gave was withdrawn."
        });
    Page::problem(StatusCode::CONFLICT, "This connection belongs to another account")
        .lead(lead)
        .heading("What to do")
        .list(
            false,
            vec![
                Html::of("If you signed in with the wrong account, sign out at the vendor, open the link again and sign in with the account this connection uses."),
                Html::of("If the connection should now use your account, ask whoever runs the broker for a consent link that allows an account change."),
            ],
        )
        .into_response()
}

/// The id_token in the vendor's answer was not issued for this app by its
/// issuer: nothing was connected (502).
pub fn account_unverifiable(reason: &str) -> HttpResponse {
    Page::problem(StatusCode::BAD_GATEWAY, "The vendor's answer could not be checked")
        .lead(Html::of(
            "The vendor's answer says who signed in, but not in a way this broker can accept, so nothing was connected and the access was withdrawn.",
        ))
        .heading("What to do")
        .list(
            false,
            vec![Html::of("Tell whoever runs the broker: ").text(shown(reason)).text(".")],
        )
        .into_response()
}
