//! The content scanner of encrypted attachments (the API of Element's Matrix Content
//! Scanner, which Tchap's clients call at the homeserver's base URL): the client gives an
//! attachment's key and IV, in clear or sealed to this server's curve25519 key; the stored
//! ciphertext's hash is checked, it is decrypted chunk by chunk in memory, its type sniffed
//! and the plaintext streamed to clamd. Neither the plaintext nor the key is written
//! anywhere: buffers are zeroed once used, and only an infected verdict is kept (per
//! ciphertext hash, quarantining the file). A clean verdict holds only for the key it was
//! reached with (a wrong key decrypts to harmless noise), so it is remembered in memory,
//! under a keyed hash whose secret lives and dies with the process.

use std::{collections::BTreeMap, path::Path, sync::Mutex};

use aes::cipher::{KeyIvInit, StreamCipher};
use base64::Engine;
use hashlink::LruCache;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::io::AsyncReadExt;
use vodozemac::{Curve25519SecretKey, pk_encryption::PkDecryption};
use zeroize::{Zeroize, Zeroizing};

use super::antivirus::{self, Clamd, Finding, SNIFF_LEN};
use crate::{
    config::Media as MediaConfig,
    error::{Error, Result, ScannerReason},
};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Clean verdicts remembered (per ciphertext, key and IV).
const CLEAN_CACHE: usize = 10_000;
/// Bytes decrypted and sent to clamd at a time.
const CHUNK: usize = 64 * 1024;

/// The scanner's key pair and its memory of clean attachments.
pub struct ContentScanner {
    decryption: PkDecryption,
    public_key: String,
    /// Secret of this process alone, under which clean verdicts are remembered.
    secret: Zeroizing<[u8; 32]>,
    clean: Mutex<LruCache<[u8; 32], ()>>,
}

/// An attachment as the `file` of an `m.room.message` describes it.
#[derive(Deserialize)]
pub struct EncryptedFile {
    pub url: String,
    key: Jwk,
    iv: String,
    hashes: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    k: String,
}

impl Drop for Jwk {
    fn drop(&mut self) {
        self.k.zeroize();
    }
}

/// The key material of an attachment, decoded.
pub struct AttachmentKey {
    key: Zeroizing<[u8; 32]>,
    iv: [u8; 16],
    /// SHA-256 of the ciphertext, as the event announces it.
    sha256: [u8; 32],
}

/// What a scan of an attachment concluded.
pub enum Outcome {
    Clean,
    Infected(String),
}

fn malformed(info: &str) -> Error {
    Error::ContentScanner { reason: ScannerReason::MalformedJson, info: info.to_owned() }
}

fn undecryptable(info: &str) -> Error {
    Error::ContentScanner { reason: ScannerReason::FailedToDecrypt, info: info.to_owned() }
}

impl ContentScanner {
    /// The scanner with the secret key of `key_file`, made there (mode 0600) on first start.
    pub fn load(key_file: &Path) -> std::io::Result<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        match std::fs::read(key_file) {
            Ok(mut bytes) if bytes.len() == 32 => {
                secret.copy_from_slice(&bytes);
                bytes.zeroize();
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a 32-byte key", key_file.display()),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, secret.as_mut());
                write_private(key_file, secret.as_ref())?;
            }
            Err(e) => return Err(e),
        }
        let decryption = PkDecryption::from_key(Curve25519SecretKey::from_slice(&secret));
        let public_key = decryption.public_key().to_base64();
        let mut process_secret = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, process_secret.as_mut());
        Ok(Self { decryption, public_key, secret: process_secret, clean: Mutex::new(LruCache::new(CLEAN_CACHE)) })
    }

    /// The curve25519 key clients seal request bodies to (unpadded base64).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The attachment a request body names: `{"file": …}`, or `{"encrypted_body": …}`
    /// sealed to this scanner's key.
    pub fn read_request(&self, body: &[u8]) -> Result<EncryptedFile> {
        #[derive(Deserialize)]
        struct Sealed {
            ciphertext: String,
            mac: String,
            ephemeral: String,
        }
        #[derive(Deserialize)]
        struct Request {
            encrypted_body: Option<Sealed>,
            file: Option<EncryptedFile>,
        }
        let request: Request = serde_json::from_slice(body)
            .map_err(|_| malformed("the body must be JSON with `file` or `encrypted_body`"))?;
        if let Some(sealed) = request.encrypted_body {
            let bad = || Error::ContentScanner {
                reason: ScannerReason::BadDecryption,
                info: "the encrypted body cannot be opened: fetch the public key again".into(),
            };
            let message =
                vodozemac::pk_encryption::Message::from_base64(&sealed.ciphertext, &sealed.mac, &sealed.ephemeral)
                    .map_err(|_| bad())?;
            let plaintext = Zeroizing::new(self.decryption.decrypt(&message).map_err(|_| bad())?);
            let inner: Request =
                serde_json::from_slice(&plaintext).map_err(|_| malformed("the encrypted body must hold `file`"))?;
            return inner.file.ok_or_else(|| malformed("the encrypted body must hold `file`"));
        }
        request.file.ok_or_else(|| malformed("the body must hold `file` or `encrypted_body`"))
    }

    /// Whether this attachment, with this key, was found clean already.
    pub fn known_clean(&self, key: &AttachmentKey) -> bool {
        let fingerprint = self.fingerprint(key);
        self.clean.lock().expect("cache lock").get(&fingerprint).is_some()
    }

    /// Remembers a clean verdict for this attachment and key.
    pub fn remember_clean(&self, key: &AttachmentKey) {
        let fingerprint = self.fingerprint(key);
        self.clean.lock().expect("cache lock").insert(fingerprint, ());
    }

    fn fingerprint(&self, key: &AttachmentKey) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_ref()).expect("HMAC takes any key");
        mac.update(&key.sha256);
        mac.update(key.key.as_ref());
        mac.update(&key.iv);
        mac.finalize().into_bytes().into()
    }
}

impl EncryptedFile {
    /// The key, IV and hash, checked for shape (the only check of a key CTR mode allows:
    /// a wrong key of the right size decrypts to noise).
    pub fn key(&self) -> Result<AttachmentKey> {
        if self.key.kty.as_deref().is_some_and(|kty| kty != "oct")
            || self.key.alg.as_deref().is_some_and(|alg| alg != "A256CTR")
        {
            return Err(undecryptable("the key must be an A256CTR octet key"));
        }
        let mut raw = Zeroizing::new(
            decode_any(self.key.k.trim_end_matches('=')).ok_or_else(|| undecryptable("the key is not base64"))?,
        );
        if raw.len() != 32 {
            raw.zeroize();
            return Err(undecryptable("the key must be 32 bytes"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&raw);
        let iv: [u8; 16] = decode_any(self.iv.trim_end_matches('='))
            .and_then(|iv| iv.try_into().ok())
            .ok_or_else(|| undecryptable("the IV must be 16 bytes of base64"))?;
        let sha256: [u8; 32] = self
            .hashes
            .get("sha256")
            .and_then(|h| decode_any(h.trim_end_matches('=')))
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| undecryptable("the file's SHA-256 hash is missing or malformed"))?;
        Ok(AttachmentKey { key, iv, sha256 })
    }
}

impl AttachmentKey {
    /// Whether the stored ciphertext (of hex hash `sha256_hex`) is the one announced.
    pub fn matches(&self, sha256_hex: &str) -> bool {
        hex::decode(sha256_hex).is_ok_and(|stored| stored == self.sha256)
    }
}

/// Decrypts the ciphertext at `path` chunk by chunk, checks the plaintext's sniffed type,
/// and streams it to clamd; every plaintext buffer is zeroed after use.
pub async fn scan_decrypted(clamd: &Clamd, config: &MediaConfig, path: &Path, key: &AttachmentKey) -> Result<Outcome> {
    let failed = |info: String| Error::ContentScanner { reason: ScannerReason::RequestFailed, info };
    let mut cipher = Aes256Ctr::new(key.key.as_ref().into(), (&key.iv).into());
    let mut file = tokio::fs::File::open(path).await.map_err(|e| failed(format!("cannot read the file: {e}")))?;
    let mut session = clamd.session().await.map_err(|e| failed(e.to_string()))?;
    let mut buffer = Zeroizing::new(vec![0u8; CHUNK]);
    let mut first = true;
    loop {
        // Filled whole (but at the end) so that the type is sniffed from a full head.
        let mut n = 0;
        while n < CHUNK {
            let read = file.read(&mut buffer[n..]).await.map_err(|e| failed(format!("cannot read the file: {e}")))?;
            if read == 0 {
                break;
            }
            n += read;
        }
        if n == 0 {
            break;
        }
        cipher.apply_keystream(&mut buffer[..n]);
        if first {
            first = false;
            let sniffed = antivirus::sniff(&buffer[..n.min(SNIFF_LEN)]);
            if !antivirus::type_allowed(config, &sniffed) {
                buffer.zeroize();
                return Err(Error::ContentScanner {
                    reason: ScannerReason::MimeTypeForbidden,
                    info: format!("files of type {sniffed} are not accepted on this server"),
                });
            }
        }
        let sent = session.send(&buffer[..n]).await;
        buffer[..n].zeroize();
        sent.map_err(|e| failed(e.to_string()))?;
    }
    match session.finish().await.map_err(|e| failed(e.to_string()))? {
        Finding::Clean => Ok(Outcome::Clean),
        Finding::Infected(signature) => Ok(Outcome::Infected(signature)),
    }
}

/// Base64 as clients write it: URL-safe for JWK keys, standard for IVs and hashes.
fn decode_any(text: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.decode(text).or_else(|_| STANDARD_NO_PAD.decode(text)).ok()
}

/// Writes a secret file readable by its owner alone.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bodies_open_and_keys_are_checked() {
        let dir = std::env::temp_dir().join(format!("missive-scanner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let scanner = ContentScanner::load(&dir.join("key")).unwrap();
        // The key survives a restart.
        assert_eq!(ContentScanner::load(&dir.join("key")).unwrap().public_key(), scanner.public_key());
        let file = serde_json::json!({ "file": {
            "url": "mxc://example.org/abc",
            "key": { "kty": "oct", "alg": "A256CTR", "k": URL_SAFE_KEY, "ext": true, "key_ops": ["encrypt", "decrypt"] },
            "iv": "X85+XgHN+HEAAAAAAAAAAA",
            "hashes": { "sha256": "5qG4fFnbbVdlAB1Q72JDKwCagV6Dbkx9uds4rSak37c" },
            "v": "v2",
        }});
        let public = vodozemac::Curve25519PublicKey::from_base64(scanner.public_key()).unwrap();
        let sealed = vodozemac::pk_encryption::PkEncryption::from_key(public)
            .encrypt(serde_json::to_vec(&file).unwrap().as_slice())
            .unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes);
        let (ciphertext, mac, ephemeral) =
            (b64(&sealed.ciphertext), b64(&sealed.mac), sealed.ephemeral_key.to_base64());
        let body =
            serde_json::json!({ "encrypted_body": { "ciphertext": ciphertext, "mac": mac, "ephemeral": ephemeral } });
        let opened = scanner.read_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(opened.url, "mxc://example.org/abc");
        let key = opened.key().unwrap();
        assert!(!scanner.known_clean(&key));
        scanner.remember_clean(&key);
        assert!(scanner.known_clean(&key));

        let tampered =
            serde_json::json!({ "encrypted_body": { "ciphertext": "AAAA", "mac": mac, "ephemeral": ephemeral } });
        let refused = scanner.read_request(&serde_json::to_vec(&tampered).unwrap()).err().unwrap();
        assert!(matches!(refused, Error::ContentScanner { reason: ScannerReason::BadDecryption, .. }));
        let short = serde_json::json!({ "url": "mxc://a/b", "key": { "k": "AAAA" }, "iv": "X85+XgHN+HEAAAAAAAAAAA", "hashes": {} });
        let short: EncryptedFile = serde_json::from_value(short).unwrap();
        assert!(matches!(short.key(), Err(Error::ContentScanner { reason: ScannerReason::FailedToDecrypt, .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    const URL_SAFE_KEY: &str = "qcHVMSgYg-71CauWBezXI5qkaRb0LuIy-Wx5kIaHMIA";
}
