//! Azurite, the Table Storage emulator (table service only, from `tests/support/node_modules`): in
//! memory over HTTP with the well-known development key, or over HTTPS with `--oauth basic` and a
//! throwaway CA made with `openssl` (for identity-based storage); plus clients that read the raw
//! table as someone holding the storage key would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::Proc;
use crate::util::{free_port, node_modules, random_hex};
use crate::STARTUP_TIMEOUT;

/// Azurite's well-known account and key (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub async fn start() -> Azurite {
        Azurite::start_on(free_port()).await
    }

    /// Starts Azurite on a port chosen beforehand (e.g. one a broker already points at).
    pub async fn start_on(port: u16) -> Azurite {
        let nm = node_modules();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("node");
        cmd.arg(nm.join("azurite/dist/src/table/main.js"))
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(port.to_string())
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .current_dir(dir.path());
        let mut proc = Proc::spawn("azurite", cmd, None);
        let probe = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}/Tables");
        let client = poll_client();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if client.get(&probe).send().await.is_ok() {
                break;
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "Azurite did not answer on {probe}; output:\n{}",
                proc.output.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Azurite {
            port,
            proc,
            _dir: dir,
        }
    }

    /// Starts Azurite over HTTPS (the certificate of `pki`) with `--oauth basic`: it then accepts
    /// bearer tokens (checking issuer, audience and lifetime, not the signature) and nothing over
    /// HTTP. Blocks until the port accepts connections.
    pub fn start_https_oauth(pki: &TestPki) -> Azurite {
        let nm = node_modules();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(nm.join("azurite/dist/src/table/main.js"))
            .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--silent"])
            .args(["--oauth", "basic"])
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .current_dir(dir.path());
        let mut proc = Proc::spawn("azurite (https, oauth)", cmd, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "Azurite did not start on port {port}; output:\n{}",
                proc.output.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Azurite {
            port,
            proc,
            _dir: dir,
        }
    }

    pub fn connection_string(&self) -> String {
        table_connection_string(self.port)
    }

    /// A client that reads the raw table the way an attacker with the storage key would.
    pub fn service_client(&self) -> azure_data_tables::clients::TableServiceClient {
        azure_data_tables::clients::TableServiceClientBuilder::with_location(
            azure_storage::CloudLocation::Emulator {
                address: "127.0.0.1".to_owned(),
                port: self.port,
            },
            azure_storage::StorageCredentials::emulator(),
        )
        .build()
    }

    /// Every entity of every table in the account, all properties, as JSON.
    pub async fn dump_all_tables(&self) -> Vec<(String, Value)> {
        use futures::StreamExt as _;
        let service = self.service_client();
        let mut names = Vec::new();
        let mut pages = service.list().into_stream();
        while let Some(page) = pages.next().await {
            let page = page.unwrap_or_else(|e| {
                panic!(
                    "list tables in Azurite: {e}; Azurite output:\n{}",
                    self.output()
                )
            });
            names.extend(page.tables.into_iter().map(|t| t.name));
        }
        let mut out = Vec::new();
        for name in names {
            let mut pages = service
                .table_client(name.clone())
                .query()
                .into_stream::<serde_json::Map<String, Value>>();
            while let Some(page) = pages.next().await {
                let page = page.unwrap_or_else(|e| {
                    panic!(
                        "query {name} in Azurite: {e}; Azurite output:\n{}",
                        self.output()
                    )
                });
                out.extend(
                    page.entities
                        .into_iter()
                        .map(|e| (name.clone(), Value::Object(e))),
                );
            }
        }
        out
    }

    pub fn output(&self) -> String {
        self.proc.output.text()
    }
}

/// The account-key connection string for a Table endpoint on 127.0.0.1:`port`.
pub fn table_connection_string(port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};TableEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )
}

/// A fresh table name: alphanumeric, starting with a letter.
pub fn fresh_table_name() -> String {
    format!("t{}", random_hex(8))
}

fn poll_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it (rustls accepts no self-signed
/// leaf as its own anchor, so two certificates), made with the `openssl` command.
pub struct TestPki {
    _dir: tempfile::TempDir,
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed to make a test certificate (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=oauth-broker test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca);
        let mut csr = vec!["req"];
        csr.extend_from_slice(&ec);
        csr.extend_from_slice(&[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(d, &csr);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "leaf.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "leaf.pem",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ],
        );
        TestPki {
            ca_pem: std::fs::read(d.join("ca.pem")).unwrap(),
            cert: d.join("leaf.pem"),
            key: d.join("leaf.key"),
            _dir: dir,
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
