//! Checks of a file's content before it may be served: its type, sniffed from the bytes
//! (never the declared type), against the operator's allow and deny lists, and ClamAV's
//! daemon spoken to over its socket protocol (`zINSTREAM`: length-prefixed chunks, then
//! one answer line).
//!
//! The protocol is a dozen lines, and the file may come from a decryptor that never
//! holds it whole, so a session takes chunks as they are produced rather than a file.

use std::{path::PathBuf, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{Antivirus as AntivirusConfig, Media as MediaConfig};

/// Bytes of a file's head read to sniff its type.
pub const SNIFF_LEN: usize = 8192;
/// Size of the chunks sent to clamd (it refuses none below its `StreamMaxLength`).
const CHUNK: usize = 64 * 1024;

/// Why a scan gave no verdict; the file then waits, unserved, until a scan succeeds.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the virus scanner cannot be reached: {0}")]
    Unavailable(String),
    #[error("the virus scanner did not answer in time")]
    Timeout,
    #[error("the virus scanner could not scan the file: {0}")]
    Failed(String),
}

/// What clamd found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Clean,
    /// The name of the signature that matched.
    Infected(String),
}

/// Where clamd listens.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

/// The connection to clamd.
#[derive(Debug, Clone)]
pub struct Clamd {
    endpoint: Endpoint,
    timeout: Duration,
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// A scan in progress: chunks are streamed to clamd as they come.
pub struct Session {
    socket: Box<dyn Socket>,
    deadline: tokio::time::Instant,
    /// clamd closed the stream early (a file past its size limit): its answer says why.
    closed: bool,
}

impl Clamd {
    /// The daemon of the `[antivirus]` table, if one is set.
    pub fn new(config: &AntivirusConfig) -> Option<Self> {
        let address = config.clamd.as_deref()?.trim();
        let endpoint = match address.strip_prefix("unix:") {
            Some(path) => Endpoint::Unix(path.into()),
            None if address.starts_with('/') => Endpoint::Unix(address.into()),
            None => Endpoint::Tcp(address.strip_prefix("tcp:").unwrap_or(address).to_owned()),
        };
        Some(Self { endpoint, timeout: Duration::from_secs(config.timeout_secs.max(1)) })
    }

    /// Opens a scan.
    pub async fn session(&self) -> Result<Session, ScanError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let connect = async {
            let socket: Box<dyn Socket> = match &self.endpoint {
                #[cfg(unix)]
                Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                #[cfg(not(unix))]
                Endpoint::Unix(_) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "no unix sockets here"));
                }
                Endpoint::Tcp(address) => Box::new(tokio::net::TcpStream::connect(address).await?),
            };
            Ok::<_, std::io::Error>(socket)
        };
        let mut socket = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| ScanError::Timeout)?
            .map_err(|e| ScanError::Unavailable(e.to_string()))?;
        tokio::time::timeout_at(deadline, socket.write_all(b"zINSTREAM\0"))
            .await
            .map_err(|_| ScanError::Timeout)?
            .map_err(|e| ScanError::Unavailable(e.to_string()))?;
        Ok(Session { socket, deadline, closed: false })
    }

    /// Scans what `reader` yields.
    pub async fn scan_reader(&self, mut reader: impl AsyncRead + Unpin) -> Result<Finding, ScanError> {
        let mut session = self.session().await?;
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n =
                reader.read(&mut buffer).await.map_err(|e| ScanError::Failed(format!("cannot read the file: {e}")))?;
            if n == 0 {
                break;
            }
            session.send(&buffer[..n]).await?;
        }
        session.finish().await
    }
}

impl Session {
    /// Sends one chunk of the file.
    pub async fn send(&mut self, chunk: &[u8]) -> Result<(), ScanError> {
        if self.closed {
            return Ok(());
        }
        for part in chunk.chunks(CHUNK) {
            let length = u32::try_from(part.len()).expect("chunks are small").to_be_bytes();
            let write = async {
                self.socket.write_all(&length).await?;
                self.socket.write_all(part).await
            };
            match tokio::time::timeout_at(self.deadline, write).await {
                Err(_) => return Err(ScanError::Timeout),
                // clamd stops reading past its limit and says so in its answer.
                Ok(Err(_)) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }

    /// Ends the file and reads the verdict.
    pub async fn finish(mut self) -> Result<Finding, ScanError> {
        let read = async {
            if !self.closed {
                let _ = self.socket.write_all(&0u32.to_be_bytes()).await;
            }
            let mut answer = Vec::new();
            let mut byte = [0u8; 256];
            loop {
                let n = self.socket.read(&mut byte).await?;
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&byte[..n]);
                if answer.contains(&0) || answer.len() > 4096 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout_at(self.deadline, read)
            .await
            .map_err(|_| ScanError::Timeout)?
            .map_err(|e| ScanError::Unavailable(e.to_string()))?;
        parse_answer(&answer)
    }
}

/// Reads clamd's answer: `stream: OK`, `stream: <signature> FOUND`, or an error.
fn parse_answer(answer: &[u8]) -> Result<Finding, ScanError> {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    let verdict = text.strip_prefix("stream:").map(str::trim);
    match verdict {
        Some("OK") => Ok(Finding::Clean),
        Some(found) if found.ends_with(" FOUND") => {
            Ok(Finding::Infected(found.trim_end_matches(" FOUND").trim().to_owned()))
        }
        _ if text.is_empty() => Err(ScanError::Unavailable("clamd closed the connection without a verdict".into())),
        _ => Err(ScanError::Failed(text.to_owned())),
    }
}

/// The type of a file from its first bytes: its magic number, else `text/plain` for
/// UTF-8 text, else `application/octet-stream` (what encrypted attachments are).
pub fn sniff(head: &[u8]) -> String {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_owned();
    }
    // A head cut inside a multi-byte character is still text.
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    };
    if text && !head.contains(&0) { "text/plain".to_owned() } else { "application/octet-stream".to_owned() }
}

/// Whether the operator's lists let a file of sniffed type `essence` in.
pub fn type_allowed(config: &MediaConfig, essence: &str) -> bool {
    let matches = |pattern: &String| {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.strip_suffix("/*") {
            Some(major) => essence.split('/').next() == Some(major),
            None => pattern == essence || pattern == "*",
        }
    };
    if config.denied_types.iter().any(matches) {
        return false;
    }
    config.allowed_types.is_empty() || config.allowed_types.iter().any(matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_answers_are_read() {
        assert_eq!(parse_answer(b"stream: OK\0").unwrap(), Finding::Clean);
        assert_eq!(
            parse_answer(b"stream: Eicar-Test-Signature FOUND\0").unwrap(),
            Finding::Infected("Eicar-Test-Signature".into())
        );
        assert!(matches!(parse_answer(b"INSTREAM size limit exceeded. ERROR\0"), Err(ScanError::Failed(_))));
        assert!(matches!(parse_answer(b""), Err(ScanError::Unavailable(_))));
    }

    #[test]
    fn types_are_sniffed_from_content() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff("plain text, été".as_bytes()), "text/plain");
        assert_eq!(sniff(&[0x8f, 0x00, 0x13, 0xfe, 0x77]), "application/octet-stream");
        // A head cut in the middle of "é" is still text.
        assert_eq!(sniff(&"abc é".as_bytes()[..5]), "text/plain");
    }

    #[test]
    fn type_lists_deny_first_then_allow() {
        let config = MediaConfig {
            allowed_types: vec!["image/*".into(), "application/pdf".into(), "application/octet-stream".into()],
            denied_types: vec!["image/svg+xml".into()],
            ..MediaConfig::default()
        };
        assert!(type_allowed(&config, "image/png"));
        assert!(type_allowed(&config, "application/pdf"));
        assert!(!type_allowed(&config, "image/svg+xml"));
        assert!(!type_allowed(&config, "application/x-msdownload"));
        assert!(type_allowed(&MediaConfig::default(), "application/x-msdownload"));
    }
}
