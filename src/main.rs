use oauth_broker::config::Settings;
use oauth_broker::startup::Application;
use oauth_broker::telemetry;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    telemetry::init();
    // A panic is one JSON error event with its location, never its message:
    // a message could quote a value (tokens are `Secret`s, but third-party
    // code formats what it likes).
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            location,
            outcome = "panicked",
            "panic (its message is not logged)"
        );
    }));
    let settings = match Settings::load(&|k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let app = match Application::build(settings).await {
        Ok(a) => a,
        Err(e) => return fail(&e.to_string()),
    };
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&format!("server stopped: {e}")),
    }
}

fn fail(message: &str) -> std::process::ExitCode {
    tracing::error!(error = message, "cannot start");
    eprintln!("oauth-broker cannot start: {message}");
    std::process::ExitCode::FAILURE
}
