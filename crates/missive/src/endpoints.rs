//! Endpoints ruma does not describe (unstable MSCs), as ruma request and response types, so
//! that they are parsed, authenticated and sent like every other endpoint.

/// MSC3720 account status: whether accounts exist and are deactivated, asked by a client
/// (`POST` with a body, as Synapse serves it, or `GET` with repeated `user_id` as the MSC
/// writes it) and by another server for its users.
pub mod account_status {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    /// One account's status; `deactivated` is left out when the account does not exist.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    pub struct AccountStatus {
        /// Whether an account was ever registered under this ID.
        pub exists: bool,
        /// Whether it is deactivated, suspended or deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub deactivated: Option<bool>,
    }

    /// The client API, Synapse's form: `POST …/org.matrix.msc3720/account_status`.
    pub mod client_post {
        use ruma::{
            api::{auth_scheme::AccessToken, request, response},
            metadata,
        };

        use super::AccountStatus;

        metadata! {
            method: POST,
            rate_limited: false,
            authentication: AccessToken,
            history: {
                unstable => "/_matrix/client/unstable/org.matrix.msc3720/account_status",
            }
        }

        /// The accounts asked about.
        #[request]
        pub struct Request {
            /// User IDs, checked by the handler so that a bad one gets `M_INVALID_PARAM`.
            #[serde(default)]
            pub user_ids: Vec<String>,
        }

        /// Statuses found and users whose status could not be found.
        #[response]
        pub struct Response {
            /// The statuses found, by user ID.
            pub account_statuses: std::collections::BTreeMap<String, AccountStatus>,
            /// The users whose server did not answer.
            pub failures: Vec<String>,
        }
    }

    /// The client API, the MSC's form: `GET …/account_status?user_id=…&user_id=…`.
    pub mod client_get {
        use ruma::{
            api::{auth_scheme::AccessToken, request, response},
            metadata,
        };

        use super::AccountStatus;

        metadata! {
            method: GET,
            rate_limited: false,
            authentication: AccessToken,
            history: {
                unstable => "/_matrix/client/unstable/org.matrix.msc3720/account_status",
            }
        }

        /// The accounts asked about.
        #[request]
        pub struct Request {
            /// User IDs, repeated in the query.
            #[ruma_api(query)]
            #[serde(default)]
            pub user_id: Vec<String>,
        }

        /// Statuses found and users whose status could not be found.
        #[response]
        pub struct Response {
            /// The statuses found, by user ID.
            pub account_statuses: std::collections::BTreeMap<String, AccountStatus>,
            /// The users whose server did not answer.
            pub failures: Vec<String>,
        }
    }

    /// The federation API: another server asks about this server's users (Synapse's path
    /// and shape, so that either kind of server answers the other).
    pub mod federation {
        use ruma::{
            api::{federation::authentication::ServerSignatures, request, response},
            metadata,
        };

        use super::AccountStatus;

        metadata! {
            method: POST,
            rate_limited: false,
            authentication: ServerSignatures,
            path: "/_matrix/federation/unstable/org.matrix.msc3720/query/account_status",
        }

        /// The accounts asked about, all of the answering server.
        #[request]
        pub struct Request {
            /// User IDs.
            #[serde(default)]
            pub user_ids: Vec<String>,
        }

        /// The statuses, by user ID.
        #[response]
        pub struct Response {
            /// The statuses found, by user ID.
            #[serde(default)]
            pub account_statuses: std::collections::BTreeMap<String, AccountStatus>,
            /// The users the server could not answer for.
            #[serde(default)]
            pub failures: Vec<String>,
        }

        impl Request {
            /// Asks about these users.
            pub fn new(user_ids: Vec<String>) -> Self {
                Self { user_ids }
            }
        }
    }

    /// The path Synapse's own federation client asks (its server serves the one above), so
    /// that a Synapse peer's question is answered too; the same shapes.
    pub mod federation_synapse {
        use ruma::{
            api::{federation::authentication::ServerSignatures, request, response},
            metadata,
        };

        use super::AccountStatus;

        metadata! {
            method: POST,
            rate_limited: false,
            authentication: ServerSignatures,
            path: "/_matrix/federation/unstable/org.matrix.msc3720/account_status",
        }

        /// The accounts asked about, all of the answering server.
        #[request]
        pub struct Request {
            /// User IDs.
            #[serde(default)]
            pub user_ids: Vec<String>,
        }

        /// The statuses, by user ID.
        #[response]
        pub struct Response {
            /// The statuses found, by user ID.
            pub account_statuses: std::collections::BTreeMap<String, AccountStatus>,
            /// The users the server could not answer for.
            pub failures: Vec<String>,
        }
    }

    /// Statuses found and users whose status could not be found, as every form answers.
    #[derive(Debug, Default)]
    pub struct Statuses {
        /// The statuses found, by user ID.
        pub found: BTreeMap<String, AccountStatus>,
        /// The users whose server did not answer.
        pub failures: Vec<String>,
    }
}
