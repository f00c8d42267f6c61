//! A real ClamAV daemon (Debian's `clamav-daemon`) for the antivirus tests, with a
//! signature database the test writes, as there is no internet to fetch one: the EICAR
//! test string, and a file of the test's own invention matched by its SHA-256.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use sha2::{Digest, Sha256};

/// The EICAR test string, which every antivirus reports.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// A file no antivirus knows but the test's database names `Missive.Test.Invented`.
pub const INVENTED: &[u8] = b"%MISSIVE-TEST% this document pretends to be a dangerous macro 4b1d";

/// A running `clamd` on its own socket.
pub struct Clamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Clamd {
    /// Writes the signatures and the configuration, and starts the daemon.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let eicar_body: String = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE".iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("missive.ndb"), format!("Missive.Test.EICAR:0:*:{eicar_body}\n")).unwrap();
        let invented = hex(&Sha256::digest(INVENTED));
        std::fs::write(db.join("missive.hsb"), format!("{invented}:{}:Missive.Test.Invented\n", INVENTED.len()))
            .unwrap();
        let conf = format!(
            "Foreground yes\nLocalSocket {socket}\nDatabaseDirectory {db}\nLogFile {log}\n\
             StreamMaxLength 200M\nTemporaryDirectory {tmp}\nMaxThreads 4\n",
            socket = dir.path().join("clamd.sock").display(),
            db = db.display(),
            log = dir.path().join("clamd.log").display(),
            tmp = dir.path().display(),
        );
        std::fs::write(dir.path().join("clamd.conf"), conf).unwrap();
        let mut clamd = Self { dir, child: None };
        clamd.start_again();
        clamd
    }

    /// The socket, as `[antivirus] clamd` names it.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("clamd.sock")
    }

    /// Stops the daemon (its socket goes).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts the daemon (again) and waits for its socket.
    pub fn start_again(&mut self) {
        let binary = ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("clamd is installed (scripts/test installs Debian's clamav-daemon)");
        let child = Command::new(binary)
            .arg(format!("--config-file={}", self.dir.path().join("clamd.conf").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        self.child = Some(child);
        for _ in 0..300 {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "clamd did not start: {}",
            std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
        );
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
