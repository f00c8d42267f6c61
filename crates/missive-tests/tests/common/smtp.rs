//! A real SMTP server for the e-mail tests: `aiosmtpd` from PyPI (installed by
//! `scripts/test`, its Python named by `MISSIVE_TEST_AIOSMTPD`), offering STARTTLS with a
//! certificate of the test's own CA, storing what it receives in a maildir.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::peers::{TestCa, free_port};

/// A running SMTP server.
pub struct Smtp {
    pub port: u16,
    /// The CA that issued its certificate, for the server under test to trust.
    pub ca: PathBuf,
    dir: tempfile::TempDir,
    child: Child,
}

impl Smtp {
    /// Starts the server on loopback, with STARTTLS (certificate for `localhost`).
    pub fn start() -> Self {
        let python = std::env::var("MISSIVE_TEST_AIOSMTPD").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/missive-aiosmtpd-venv/bin/python")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(dir.path());
        let (cert, key) = ca.issue("localhost", &dir.path().join("smtp"));
        let port = free_port();
        let maildir = dir.path().join("maildir");
        let mut child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()])
            .args(["-c", "aiosmtpd.handlers.Mailbox", maildir.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start aiosmtpd with {python} (scripts/test installs it): {e}"));
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { port, ca: ca.path.clone(), dir, child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("aiosmtpd did not start");
    }

    /// The messages received so far, raw.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            for entry in std::fs::read_dir(self.dir.path().join("maildir").join(sub)).into_iter().flatten().flatten() {
                out.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
