use clap::Parser;
use oauth_broker::cli::{self, Cli, Command};
use oauth_broker::config::Settings;
use oauth_broker::startup::Application;
use oauth_broker::telemetry;

fn main() -> std::process::ExitCode {
    // Before anything else: --help and --version print and exit here, and a
    // mistyped command is refused, without reading or creating anything.
    let cli = Cli::parse();
    match cli.command {
        // The same runtime as `#[actix_web::main]`.
        None => actix_web::rt::System::new().block_on(serve()),
        Some(command) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(operator(command)),
            Err(e) => {
                eprintln!("oauth-broker: cannot start the async runtime: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// An operator's command: its output on stdout, problems on stderr.
async fn operator(command: Command) -> std::process::ExitCode {
    let mut out = std::io::stdout();
    let done = match command {
        Command::Check { discover } => cli::check(discover, &mut out).await,
        Command::Connections { json } => cli::connections(json, &mut out).await,
        Command::ConsentLink {
            integration,
            connection,
            expires_in,
            allow_account_change,
        } => {
            cli::consent_link(
                &integration,
                &connection,
                expires_in,
                allow_account_change,
                &mut out,
            )
            .await
        }
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("oauth-broker: {}", f.message);
            std::process::ExitCode::FAILURE
        }
    }
}

/// No command: serve, exactly as the Functions host expects.
async fn serve() -> std::process::ExitCode {
    let format = match telemetry::Format::from_env() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("oauth-broker cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    telemetry::init(format);
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
