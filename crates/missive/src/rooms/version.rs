//! Supported room versions and their rules.

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::error::{Error, Result};

/// Room versions this server creates and joins.
pub const SUPPORTED: &[&str] = &["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Parses a supported room version and returns it with its rules.
pub fn rules_for(version: &str) -> Result<(RoomVersionId, RoomVersionRules)> {
    if !SUPPORTED.contains(&version) {
        return Err(Error::UnsupportedRoomVersion(format!("room version {version} is not supported")));
    }
    let id = RoomVersionId::try_from(version)
        .map_err(|_| Error::UnsupportedRoomVersion(format!("invalid room version {version}")))?;
    let rules = id
        .rules()
        .ok_or_else(|| Error::UnsupportedRoomVersion(format!("room version {version} has no known rules")))?;
    Ok((id, rules))
}
