//! Account status (MSC3720): a conversation partner, here or on another server, learns
//! whether an account exists and whether it is deactivated. A suspended account shows as
//! deactivated, as the IAM's temporary deactivation should look to others; restoring it
//! shows it active again.

use std::collections::BTreeMap;

use ruma::{OwnedServerName, OwnedUserId, UserId};

use crate::{
    accounts::Accounts,
    endpoints::account_status::{AccountStatus, Statuses, federation as remote},
    error::{Error, Result},
    federation::Federation,
};

/// Most user IDs one request may ask about, so that one request cannot make this server
/// query thousands of accounts or servers.
const MAX_USERS: usize = 100;

/// The statuses of `user_ids`: this server's accounts from the store, other servers'
/// accounts asked of those servers (a server that fails leaves its users in `failures`).
pub async fn statuses(accounts: &Accounts, federation: &Federation, user_ids: &[String]) -> Result<Statuses> {
    let users = parse(user_ids)?;
    let mut out = Statuses::default();
    let mut remote: BTreeMap<OwnedServerName, Vec<String>> = BTreeMap::new();
    for user in users {
        if user.server_name() == federation.server_name {
            out.found.insert(user.to_string(), local(accounts, &user).await?);
        } else {
            remote.entry(user.server_name().to_owned()).or_default().push(user.to_string());
        }
    }
    // Each server is asked once, all of them at the same time.
    let answers = futures_util::future::join_all(remote.into_iter().map(|(server, users)| async move {
        let answer = federation.send(&server, remote::Request::new(users.clone())).await;
        (server, users, answer)
    }))
    .await;
    for (server, users, answer) in answers {
        match answer {
            Ok(answer) => {
                for user in users {
                    match answer.account_statuses.get(&user) {
                        Some(status) => {
                            out.found.insert(user, *status);
                        }
                        None => out.failures.push(user),
                    }
                }
            }
            Err(e) => {
                tracing::info!(%server, error = %e, "account status not answered");
                out.failures.extend(users);
            }
        }
    }
    Ok(out)
}

/// The statuses of this server's accounts asked by another server; a user of another
/// server is refused, as the MSC says.
pub async fn local_statuses(accounts: &Accounts, federation: &Federation, user_ids: &[String]) -> Result<Statuses> {
    let users = parse(user_ids)?;
    if users.iter().any(|u| u.server_name() != federation.server_name) {
        return Err(Error::invalid_param("not every user ID is of this server"));
    }
    let mut out = Statuses::default();
    for user in users {
        out.found.insert(user.to_string(), local(accounts, &user).await?);
    }
    Ok(out)
}

async fn local(accounts: &Accounts, user_id: &UserId) -> Result<AccountStatus> {
    Ok(match accounts.account(user_id).await? {
        None => AccountStatus { exists: false, deactivated: None },
        Some(account) => AccountStatus { exists: true, deactivated: Some(account.deactivated || account.locked) },
    })
}

fn parse(user_ids: &[String]) -> Result<Vec<OwnedUserId>> {
    if user_ids.is_empty() {
        return Err(Error::MissingParam("no user ID given".into()));
    }
    if user_ids.len() > MAX_USERS {
        return Err(Error::invalid_param(format!("at most {MAX_USERS} user IDs per request")));
    }
    let mut users: Vec<OwnedUserId> = user_ids
        .iter()
        .map(|id| UserId::parse(id.as_str()).map_err(|e| Error::invalid_param(format!("{id}: {e}"))))
        .collect::<Result<_>>()?;
    users.sort();
    users.dedup();
    Ok(users)
}
