//! The one error type of the services and its single mapping to Matrix errors.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use ruma::api::client::uiaa::UiaaInfo;
use serde_json::json;

use crate::store::StoreError;

/// Result of a service call.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything a request can fail with; [`Error::status_and_code`] maps it to the spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing access token")]
    MissingToken,
    #[error("unknown or expired access token")]
    UnknownToken { soft_logout: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadJson(String),
    #[error("{0}")]
    NotJson(String),
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    MissingParam(String),
    #[error("unknown sliding sync position: start the connection again")]
    UnknownPos,
    #[error("this media was uploaded already")]
    CannotOverwriteMedia,
    #[error("this media has not been uploaded yet")]
    NotYetUploaded,
    /// A file not served before the antivirus has seen it (the scanner is down or slow).
    #[error("this file has not been checked for viruses yet ({0}); try again later")]
    NotScanned(String),
    /// A refusal of the content scanner API, in its own shape (`reason`, `info`).
    #[error("{info}")]
    ContentScanner { reason: ScannerReason, info: String },
    #[error("unrecognized request")]
    Unrecognized { method_not_allowed: bool },
    #[error("user ID already taken")]
    UserInUse,
    #[error("{0}")]
    InvalidUsername(String),
    #[error("room alias already taken")]
    RoomInUse,
    #[error("{0}")]
    BadAlias(String),
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    #[error("too many requests")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("user-interactive authentication required")]
    Uia(Box<UiaaInfo>),
    #[error("request too large")]
    TooLarge,
    #[error("this account has been deactivated")]
    UserDeactivated,
    #[error("this account has been suspended by the server's administrators")]
    UserLocked,
    #[error("guest accounts cannot use this endpoint")]
    GuestAccessForbidden,
    #[error("{0}")]
    Unknown(String),
    #[error("backup version is not the current one")]
    WrongRoomKeysVersion { current_version: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    MalformedAuthorization(String),
    #[error("the room's version {0} is not one the joining server supports")]
    IncompatibleRoomVersion(String),
    #[error("{0}")]
    Remote(String),
    /// Another server's refusal (a 4xx with an `errcode`), passed on to the client as it was.
    #[error("{message}")]
    Relayed { status: u16, errcode: String, message: String },
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status and `errcode` the spec gives this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Error::MissingToken => (S::UNAUTHORIZED, "M_MISSING_TOKEN"),
            Error::UnknownToken { .. } => (S::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            Error::Forbidden(_) => (S::FORBIDDEN, "M_FORBIDDEN"),
            Error::NotFound(_) => (S::NOT_FOUND, "M_NOT_FOUND"),
            Error::BadJson(_) => (S::BAD_REQUEST, "M_BAD_JSON"),
            Error::NotJson(_) => (S::BAD_REQUEST, "M_NOT_JSON"),
            Error::InvalidParam(_) => (S::BAD_REQUEST, "M_INVALID_PARAM"),
            Error::MissingParam(_) => (S::BAD_REQUEST, "M_MISSING_PARAM"),
            Error::UnknownPos => (S::BAD_REQUEST, "M_UNKNOWN_POS"),
            Error::CannotOverwriteMedia => (S::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
            Error::NotYetUploaded => (S::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
            Error::NotScanned(_) => (S::SERVICE_UNAVAILABLE, "M_UNKNOWN"),
            Error::ContentScanner { reason, .. } => reason.status_and_code(),
            Error::Unrecognized { method_not_allowed: true } => (S::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED"),
            Error::Unrecognized { .. } => (S::NOT_FOUND, "M_UNRECOGNIZED"),
            Error::UserInUse => (S::BAD_REQUEST, "M_USER_IN_USE"),
            Error::InvalidUsername(_) => (S::BAD_REQUEST, "M_INVALID_USERNAME"),
            Error::RoomInUse => (S::BAD_REQUEST, "M_ROOM_IN_USE"),
            Error::BadAlias(_) => (S::BAD_REQUEST, "M_BAD_ALIAS"),
            Error::UnsupportedRoomVersion(_) => (S::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
            Error::LimitExceeded { .. } => (S::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED"),
            Error::Uia(_) => (S::UNAUTHORIZED, "M_FORBIDDEN"),
            Error::TooLarge => (S::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            Error::UserDeactivated => (S::FORBIDDEN, "M_USER_DEACTIVATED"),
            Error::UserLocked => (S::UNAUTHORIZED, "M_USER_LOCKED"),
            Error::GuestAccessForbidden => (S::FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN"),
            Error::Unknown(_) => (S::BAD_REQUEST, "M_UNKNOWN"),
            Error::WrongRoomKeysVersion { .. } => (S::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
            Error::Unauthorized(_) => (S::UNAUTHORIZED, "M_UNAUTHORIZED"),
            Error::MalformedAuthorization(_) => (S::BAD_REQUEST, "M_UNAUTHORIZED"),
            Error::IncompatibleRoomVersion(_) => (S::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
            Error::Remote(_) => (S::BAD_GATEWAY, "M_UNKNOWN"),
            // The body carries the other server's own errcode (see `into_response`).
            Error::Relayed { status, .. } => (S::from_u16(*status).unwrap_or(S::BAD_REQUEST), "M_UNKNOWN"),
            Error::Store(_) | Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }

    /// Shorthand for a 403 with a message.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }

    /// Shorthand for a 404 with a message.
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    /// Shorthand for a 400 `M_INVALID_PARAM`.
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Error::InvalidParam(msg.into())
    }

    /// Shorthand for a 400 `M_BAD_JSON`.
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Error::BadJson(msg.into())
    }
}

/// The content scanner API's reasons of refusal (Element's Matrix Content Scanner API,
/// which Tchap's clients speak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScannerReason {
    /// The body is no JSON or lacks the file.
    MalformedJson,
    /// The file cannot be decrypted with what was given (bad key, IV, or hash).
    FailedToDecrypt,
    /// The sealed body cannot be opened: the client should fetch the public key again.
    BadDecryption,
    /// The antivirus found the file infected.
    NotClean,
    /// The file's type is refused.
    MimeTypeForbidden,
    /// The file could not be fetched or scanned now.
    RequestFailed,
}

impl ScannerReason {
    fn status_and_code(self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Self::MalformedJson => (S::BAD_REQUEST, "MCS_MALFORMED_JSON"),
            Self::FailedToDecrypt => (S::BAD_REQUEST, "MCS_MEDIA_FAILED_TO_DECRYPT"),
            Self::BadDecryption => (S::FORBIDDEN, "MCS_BAD_DECRYPTION"),
            Self::NotClean => (S::FORBIDDEN, "MCS_MEDIA_NOT_CLEAN"),
            Self::MimeTypeForbidden => (S::FORBIDDEN, "MCS_MIME_TYPE_FORBIDDEN"),
            Self::RequestFailed => (S::BAD_GATEWAY, "MCS_MEDIA_REQUEST_FAILED"),
        }
    }
}

impl From<crate::federation::FederationError> for Error {
    fn from(e: crate::federation::FederationError) -> Self {
        use crate::federation::FederationError as F;
        match e {
            F::Disabled | F::NotAllowed(_) | F::BadEventSignature(_) => Error::Forbidden(e.to_string()),
            F::MalformedAuthorization(_) => Error::MalformedAuthorization(e.to_string()),
            F::NotCanonical => Error::BadJson(e.to_string()),
            F::UnknownKey { .. } | F::BadSignature(_) | F::BadAuthorization(_) => Error::Unauthorized(e.to_string()),
            F::Store(e) => Error::Store(e),
            F::Remote { status: 404, .. } => Error::NotFound(e.to_string()),
            // What the other server refused for a reason the client can act on is passed on.
            F::Remote { status: 400, errcode: Some(ref code), ref room_version, .. }
                if code == "M_INCOMPATIBLE_ROOM_VERSION" =>
            {
                Error::IncompatibleRoomVersion(room_version.clone().unwrap_or_default())
            }
            F::Remote { status: status @ 400..=499, errcode: Some(ref code), ref message, .. }
                if status != 401 && status != 429 && code.starts_with("M_") =>
            {
                Error::Relayed {
                    status,
                    errcode: code.clone(),
                    message: message.clone().unwrap_or_else(|| e.to_string()),
                }
            }
            F::Remote { status: 403, ref message, .. } => {
                Error::Forbidden(message.clone().unwrap_or_else(|| e.to_string()))
            }
            F::Resolve(..) | F::Transport(..) | F::Remote { .. } | F::InvalidResponse(..) | F::UnreadableAnswer(..) => {
                tracing::warn!(error = %e, "federation request failed");
                Error::Remote(e.to_string())
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, errcode) = self.status_and_code();
        let body = match &self {
            // The UIA body carries its own `errcode` (flattened `auth_error`) when a stage failed.
            Error::Uia(info) => {
                let mut body = serde_json::to_value(info).unwrap_or_else(|_| json!({}));
                // ruma leaves out an empty `completed`; clients (and SyTest) expect the key.
                if let Some(object) = body.as_object_mut() {
                    object.entry("completed").or_insert_with(|| json!([]));
                    object.entry("params").or_insert_with(|| json!({}));
                }
                body
            }
            Error::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                json!({ "errcode": errcode, "error": "internal storage error" })
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                json!({ "errcode": errcode, "error": "internal server error" })
            }
            Error::LimitExceeded { retry_after_ms } => json!({
                "errcode": errcode,
                "error": self.to_string(),
                "retry_after_ms": retry_after_ms,
            }),
            Error::WrongRoomKeysVersion { current_version } => json!({
                "errcode": errcode,
                "error": self.to_string(),
                "current_version": current_version,
            }),
            Error::Relayed { errcode, message, .. } => json!({ "errcode": errcode, "error": message }),
            Error::IncompatibleRoomVersion(version) => json!({
                "errcode": errcode,
                "error": self.to_string(),
                "room_version": version,
            }),
            Error::UnknownToken { soft_logout } => json!({
                "errcode": errcode,
                "error": self.to_string(),
                "soft_logout": soft_logout,
            }),
            // The spec's locked account: the client logs out for good.
            Error::UserLocked => json!({ "errcode": errcode, "error": self.to_string(), "soft_logout": false }),
            // The content scanner's clients read `reason` and `info`; Matrix clients the rest.
            Error::ContentScanner { info, .. } => {
                json!({ "reason": errcode, "info": info, "errcode": errcode, "error": info })
            }
            _ => json!({ "errcode": errcode, "error": self.to_string() }),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::NotScanned(_) = self {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("30"));
        }
        if let Error::LimitExceeded { retry_after_ms } = self {
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(value) = http::HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, value);
            }
        }
        response
    }
}
