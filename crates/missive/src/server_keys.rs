//! The server's ed25519 signing key: generated on first start, persisted in the database.

use base64::{Engine, engine::general_purpose::STANDARD};
use ruma::signatures::Ed25519KeyPair;

use crate::store::{Store, StoreError};

/// Why the signing key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored signing key is unreadable: {0}")]
    Corrupt(String),
}

/// The key this server signs events (and later federation requests) with.
pub struct ServerKeys {
    pub key_pair: Ed25519KeyPair,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys").field("version", &self.key_pair.version()).finish_non_exhaustive()
    }
}

impl ServerKeys {
    /// Loads the current key, generating and persisting one on first start.
    pub async fn load_or_generate(store: &Store) -> Result<Self, KeyError> {
        let (version, der) = match store.signing_key().await? {
            Some((key_id, b64)) => {
                let version = key_id.strip_prefix("ed25519:").unwrap_or(&key_id).to_owned();
                let der = STANDARD.decode(b64).map_err(|e| KeyError::Corrupt(e.to_string()))?;
                (version, der)
            }
            None => {
                let der = Ed25519KeyPair::generate();
                let version = crate::accounts::random_string(6);
                store.insert_signing_key(&format!("ed25519:{version}"), &STANDARD.encode(&der)).await?;
                tracing::info!(key_id = %format!("ed25519:{version}"), "generated server signing key");
                (version, der.to_vec())
            }
        };
        let key_pair = Ed25519KeyPair::from_der(&der, version).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        Ok(Self { key_pair })
    }
}
