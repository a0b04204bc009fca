//! Child processes: started with their output captured line by line (or written to a log file),
//! killed and reaped when dropped, and on a failing test the tail of what they wrote is printed.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// All stdout+stderr lines of a child, in arrival order (per stream).
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    fn capture(
        &self,
        stream: impl Read + Send + 'static,
        notify: Option<mpsc::Sender<String>>,
    ) -> JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_owned();
                        lines.lock().unwrap().push(line.clone());
                        if let Some(tx) = &notify {
                            let _ = tx.send(line);
                        }
                    }
                }
            }
        })
    }
}

/// A child process that is killed (and reaped) when dropped, with its output captured (or, started
/// with [`Proc::spawn_logged`], written to a log file).
pub struct Proc {
    name: String,
    child: Child,
    pub output: Output,
    readers: Vec<JoinHandle<()>>,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts `cmd` with its stdout and stderr captured into [`Proc::output`]; every stdout line is
    /// also sent to `notify_stdout` (to wait for a ready line). Panics when it cannot be started.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        notify_stdout: Option<mpsc::Sender<String>>,
    ) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let output = Output::default();
        let readers = vec![
            output.capture(child.stdout.take().unwrap(), notify_stdout),
            output.capture(child.stderr.take().unwrap(), None),
        ];
        Proc {
            name: name.to_owned(),
            child,
            output,
            readers,
            log: None,
        }
    }

    /// Starts `cmd` with its stdout and stderr written straight to the file `log` (nothing passes
    /// through this process, so a benchmark's client shares no CPU with its servers' logging).
    /// Panics when the file cannot be created or `cmd` cannot be started.
    pub fn spawn_logged(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot reopen {}: {e}", log.display()));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_owned(),
            child,
            output: Output::default(),
            readers: Vec::new(),
            log: Some(log.to_owned()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `VmRSS` and `VmHWM` (resident and peak resident memory) in KiB, from `/proc/<pid>/status`;
    /// 0 when unknown.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Everything it wrote: the captured lines, or the log file's content.
    pub fn text(&self) -> String {
        match &self.log {
            Some(log) => std::fs::read_to_string(log)
                .unwrap_or_else(|e| format!("(cannot read {}: {e})", log.display())),
            None => self.output.text(),
        }
    }

    /// Its output once `until` holds of it, or after 10 s whatever it is then. The output is read
    /// by a thread, so a line written just before an answer may arrive just after it.
    pub fn text_when(&self, until: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.text();
            if until(&text) || std::time::Instant::now() >= deadline {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with its output when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "{} exited early with {status}; output:\n{}",
                self.name,
                self.text()
            );
        }
    }

    /// Its exit status once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the process and waits until every line it wrote has been captured.
    pub fn stop(mut self) -> Output {
        self.kill_and_join();
        self.output.clone()
    }

    fn kill_and_join(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The failing test's context: the tail of what this process wrote.
            if let Some(log) = &self.log {
                eprintln!("----- {} output: {} -----", self.name, log.display());
                return;
            }
            let lines = self.output.lines();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "----- {} output (last {} of {} lines) -----\n{}",
                self.name,
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
    }
}
