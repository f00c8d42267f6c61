//! SCIM 2.0 provisioning (RFC 7643, RFC 7644): the `User` resource as the IAM's
//! provisioning clients (Keycloak, Entra ID) send it, mapped onto accounts and their
//! lifecycle. `externalId` is the identity's subject at the provider that `[scim]`
//! names; a resource's `id` is the Matrix user ID.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{SsoError, oidc::Claims};
use crate::error::Error;

/// Schema URNs of the messages.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// Why a provisioning request failed, as SCIM reports it.
#[derive(Debug, thiserror::Error)]
pub enum ScimError {
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("no such user")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sso(#[from] SsoError),
    #[error(transparent)]
    Server(#[from] Error),
}

impl ScimError {
    /// The HTTP status and the SCIM error type (RFC 7644 §3.12).
    pub fn status_and_type(&self) -> (u16, Option<&'static str>) {
        match self {
            ScimError::Unauthorized => (401, None),
            ScimError::NotFound => (404, None),
            ScimError::Conflict(_) => (409, Some("uniqueness")),
            ScimError::Invalid(_) => (400, Some("invalidValue")),
            ScimError::Sso(SsoError::Refused(_)) => (403, None),
            ScimError::Sso(_) | ScimError::Server(_) => (500, None),
        }
    }

    /// The error message body.
    pub fn body(&self) -> Value {
        let (status, scim_type) = self.status_and_type();
        let detail = match self {
            // A server fault's details are for the log.
            ScimError::Server(_) | ScimError::Sso(SsoError::Server(_) | SsoError::Config(_)) => {
                "the server could not complete the request".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({ "schemas": [ERROR_SCHEMA], "status": status.to_string(), "detail": detail });
        if let Some(kind) = scim_type {
            body["scimType"] = json!(kind);
        }
        body
    }
}

/// A boolean as SCIM clients send it: Entra ID sends `"True"` and `"False"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Flag {
    Bool(bool),
    Text(String),
}

impl Flag {
    fn value(&self) -> Result<bool, ScimError> {
        match self {
            Flag::Bool(b) => Ok(*b),
            Flag::Text(t) if t.eq_ignore_ascii_case("true") => Ok(true),
            Flag::Text(t) if t.eq_ignore_ascii_case("false") => Ok(false),
            Flag::Text(t) => Err(ScimError::Invalid(format!("{t:?} is not a boolean"))),
        }
    }
}

/// The attributes of a `User` resource that accounts are made of.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserResource {
    pub external_id: Option<String>,
    pub user_name: Option<String>,
    pub display_name: Option<String>,
    pub name: Option<Name>,
    #[serde(default)]
    pub emails: Vec<Email>,
    pub active: Option<Flag>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Name {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub formatted: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Email {
    pub value: String,
    pub primary: Option<Flag>,
}

impl UserResource {
    /// The claims a sign-in of this user would bring.
    pub fn claims(&self) -> Result<Claims, ScimError> {
        let subject = self
            .external_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ScimError::Invalid("externalId (the identity's subject) is required".into()))?;
        let primary = self.emails.iter().find(|e| e.primary.as_ref().is_some_and(|p| p.value().unwrap_or(false)));
        let email = primary
            .or(self.emails.first())
            .map(|e| e.value.clone())
            .or_else(|| self.user_name.clone().filter(|u| u.contains('@')))
            .map(|e| e.to_lowercase());
        let name = self.name.as_ref();
        Ok(Claims {
            subject,
            email,
            given_name: name.and_then(|n| n.given_name.clone()),
            family_name: name.and_then(|n| n.family_name.clone()),
            name: self.display_name.clone().or_else(|| name.and_then(|n| n.formatted.clone())),
            session_id: None,
        })
    }

    /// The `active` attribute, if given.
    pub fn active(&self) -> Result<Option<bool>, ScimError> {
        self.active.as_ref().map(Flag::value).transpose()
    }
}

/// A `PatchOp` message.
#[derive(Debug, Clone, Deserialize)]
pub struct Patch {
    #[serde(rename = "Operations")]
    pub operations: Vec<Operation>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Operation {
    pub op: String,
    pub path: Option<String>,
    pub value: Option<Value>,
}

impl Patch {
    /// The `active` value the operations set, if any. Other attributes are left alone:
    /// the profile follows the IAM's claims at each sign-in.
    pub fn active(&self) -> Result<Option<bool>, ScimError> {
        let mut active = None;
        for operation in &self.operations {
            if !matches!(operation.op.to_ascii_lowercase().as_str(), "replace" | "add") {
                continue;
            }
            let value = match operation.path.as_deref() {
                Some(path) if path.eq_ignore_ascii_case("active") => operation.value.clone(),
                None => operation.value.as_ref().and_then(|v| v.get("active")).cloned(),
                Some(_) => None,
            };
            if let Some(value) = value {
                let flag: Flag =
                    serde_json::from_value(value).map_err(|_| ScimError::Invalid("active must be a boolean".into()))?;
                active = Some(flag.value()?);
            }
        }
        Ok(active)
    }
}

/// The filters a provisioning client looks users up by: `externalId eq "…"` and
/// `userName eq "…"`.
pub fn parse_filter(filter: &str) -> Result<(&str, String), ScimError> {
    let mut parts = filter.trim().splitn(3, ' ');
    let (Some(attribute), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScimError::Invalid(format!("unsupported filter {filter:?}")));
    };
    let value = value.trim();
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    if !op.eq_ignore_ascii_case("eq") || !quoted {
        return Err(ScimError::Invalid(format!("unsupported filter {filter:?}")));
    }
    let value = value[1..value.len() - 1].replace("\\\"", "\"");
    match attribute {
        a if a.eq_ignore_ascii_case("externalId") => Ok(("externalId", value)),
        a if a.eq_ignore_ascii_case("userName") => Ok(("userName", value)),
        _ => Err(ScimError::Invalid(format!("unsupported filter attribute {attribute:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entra_id_patches_with_strings() {
        let patch: Patch = serde_json::from_value(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [
                { "op": "Replace", "path": "displayName", "value": "X" },
                { "op": "Replace", "path": "active", "value": "False" },
            ]
        }))
        .unwrap();
        assert_eq!(patch.active().unwrap(), Some(false));
        let keycloak: Patch =
            serde_json::from_value(json!({ "Operations": [{ "op": "replace", "value": { "active": true } }] }))
                .unwrap();
        assert_eq!(keycloak.active().unwrap(), Some(true));
    }

    #[test]
    fn filters_name_the_attributes_clients_look_users_up_by() {
        assert_eq!(parse_filter("externalId eq \"abc\"").unwrap(), ("externalId", "abc".to_owned()));
        assert_eq!(parse_filter("userName Eq \"a@b.c\"").unwrap(), ("userName", "a@b.c".to_owned()));
        assert!(parse_filter("userName co \"a\"").is_err());
        assert!(parse_filter("password eq \"a\"").is_err());
        assert!(parse_filter("nonsense").is_err());
    }
}
