//! Federation, the server side of the server-server API: this server's key document and
//! other servers' verify keys (`keys.rs`), discovery of where a server name is served
//! (`resolve.rs`), the outbound client that signs every request (`client.rs`), and the
//! policy of whom this server federates with.

pub mod auth;
pub mod backfill;
pub mod client;
pub mod devices;
pub mod invite;
pub mod join;
pub mod keys;
pub mod partial_state;
pub mod pdu;
pub mod resolve;
pub mod sender;
pub mod spaces;
pub mod state_at;

use std::sync::Arc;

use ruma::{OwnedServerName, ServerName, events::room::server_acl::RoomServerAclEventContent};

use crate::{config::Config, server_keys::ServerKeys, store::Store};

/// Why a federation operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is disabled on this server")]
    Disabled,
    #[error("federation with {0} is not allowed")]
    NotAllowed(String),
    #[error("cannot find where {0} is served: {1}")]
    Resolve(String, String),
    #[error("request to {0} failed: {1}")]
    Transport(String, String),
    #[error("{server} answered {status}")]
    Remote {
        server: String,
        status: u16,
        errcode: Option<String>,
        message: Option<String>,
        /// The room version named by an `M_INCOMPATIBLE_ROOM_VERSION` answer.
        room_version: Option<String>,
    },
    #[error("invalid answer from {0}: {1}")]
    InvalidResponse(String, String),
    /// A success whose body does not read as the endpoint's answer: the request was taken.
    #[error("unreadable answer from {0}: {1}")]
    UnreadableAnswer(String, String),
    #[error("no valid verify key {key_id} of {server}")]
    UnknownKey { server: String, key_id: String },
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// An event (not the request carrying it) whose signatures do not verify.
    #[error("event not signed as it must be: {0}")]
    BadEventSignature(String),
    #[error("bad X-Matrix authorization: {0}")]
    BadAuthorization(String),
    #[error("malformed X-Matrix authorization: {0}")]
    MalformedAuthorization(String),
    #[error("the body is not canonical JSON")]
    NotCanonical,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl FederationError {
    /// Whether the peer does not know the endpoint asked (a 404 or 400 without an errcode,
    /// or `M_UNRECOGNIZED`): an older version of it may be asked instead.
    pub fn is_unrecognized(&self) -> bool {
        matches!(self, FederationError::Remote { status: 404 | 400, errcode, .. }
            if errcode.as_deref().is_none_or(|c| c == "M_UNRECOGNIZED"))
    }
}

/// The federation service: who this server is, whom it talks to, and how.
pub struct Federation {
    pub server_name: OwnedServerName,
    pub keys: Arc<ServerKeys>,
    pub config: Arc<Config>,
    pub store: Store,
    pub client: client::Client,
    remote_keys: keys::KeyCache,
    policy: RoomServerAclEventContent,
    sender: std::sync::OnceLock<Arc<sender::Sender>>,
    /// Held while history is backfilled (see `backfill`).
    backfilling: tokio::sync::Mutex<()>,
    /// Per local user, the last `m.device_list_update` stream ID sent and the devices it
    /// named (see `devices`).
    device_list_ids: std::sync::Mutex<std::collections::HashMap<String, (i64, std::collections::BTreeSet<String>)>>,
}

impl Federation {
    /// Builds the service: the outbound client with its trust roots and resolver.
    pub fn new(
        server_name: OwnedServerName,
        keys: Arc<ServerKeys>,
        config: Arc<Config>,
        store: Store,
    ) -> Result<Self, crate::tls::TlsError> {
        let settings = &config.federation;
        let allow = settings.allow_list.clone().unwrap_or_else(|| vec!["*".to_owned()]);
        // Server names are matched like `m.room.server_acl` entries (globs on the host),
        // IP literals included: closed networks and test rigs name servers by address.
        let policy = RoomServerAclEventContent::new(true, allow, settings.deny_list.clone());
        let client = client::Client::new(&config)?;
        Ok(Self {
            server_name,
            keys,
            config,
            store,
            client,
            remote_keys: keys::KeyCache::default(),
            policy,
            sender: std::sync::OnceLock::new(),
            backfilling: tokio::sync::Mutex::new(()),
            device_list_ids: Default::default(),
        })
    }

    /// Sets the outbound queue (built after this service, on which it depends).
    pub fn set_sender(&self, sender: Arc<sender::Sender>) {
        let _ = self.sender.set(sender);
    }

    /// Queues an EDU for each of `destinations` other than this server.
    pub fn queue_edu(&self, destinations: &[String], edu_type: &str, content: serde_json::Value) {
        let Some(sender) = self.sender.get() else { return };
        let edu = serde_json::json!({ "edu_type": edu_type, "content": content });
        for destination in destinations.iter().filter(|d| **d != self.server_name.as_str()) {
            if let Ok(server) = ServerName::parse(destination)
                && self.is_allowed(&server)
            {
                sender.queue_edu(destination, edu.clone());
            }
        }
    }

    /// The outbound queue, once set.
    pub fn sender(&self) -> Option<&Arc<sender::Sender>> {
        self.sender.get()
    }

    /// Whether this server talks to `server` at all (the configured allow- and deny-lists).
    pub fn is_allowed(&self, server: &ServerName) -> bool {
        server == self.server_name || (self.config.federation.enabled && self.policy.is_allowed(server))
    }

    /// Refuses a server outside the configured lists.
    pub fn check_allowed(&self, server: &ServerName) -> Result<(), FederationError> {
        if !self.config.federation.enabled {
            return Err(FederationError::Disabled);
        }
        if !self.is_allowed(server) {
            return Err(FederationError::NotAllowed(server.to_string()));
        }
        Ok(())
    }

    /// Refuses a server that the room's `m.room.server_acl` denies.
    pub async fn check_room_acl(
        &self,
        rooms: &crate::rooms::Rooms,
        room_id: &ruma::RoomId,
        server: &ServerName,
    ) -> Result<(), crate::error::Error> {
        if let Some(content) = rooms.current_state_content(room_id, "m.room.server_acl", "").await?
            && let Ok(acl) = serde_json::from_value::<RoomServerAclEventContent>(content)
            && !acl.is_allowed(server)
        {
            return Err(crate::error::Error::forbidden(format!("{server} is denied by the room's server ACL")));
        }
        Ok(())
    }
}
