//! A real OpenID provider, the `oidc-provider` package from npm (installed by
//! `scripts/test` into `crates/missive-tests/oidc`), and a browser that signs in through it:
//! it follows redirects, keeps cookies and submits the provider's login and consent forms.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use serde_json::Value;

use super::peers::free_port;

/// A running provider.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// Starts a provider with these clients (client metadata) and accounts (login name to
    /// claims).
    pub fn start(clients: &Value, accounts: &Value) -> Self {
        Self::start_with(clients, accounts, &[])
    }

    /// The same, with extra settings of `provider.mjs` (`OIDC_TAMPER`).
    pub fn start_with(clients: &Value, accounts: &Value, env: &[(&str, &str)]) -> Self {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc");
        assert!(
            std::path::Path::new(dir).join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix {dir}` (scripts/test does)"
        );
        let port = free_port();
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(dir)
            .env("OIDC_PORT", port.to_string())
            .env("OIDC_CLIENTS", clients.to_string())
            .env("OIDC_ACCOUNTS", accounts.to_string())
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("provider output");
        // The provider writes notices as it goes: a closed pipe would kill it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let issuer = line
            .trim()
            .strip_prefix("oidc provider listening on ")
            .unwrap_or_else(|| panic!("provider did not start: {line:?}"))
            .to_owned();
        Self { child, issuer }
    }
}

/// Where a browser's sign-in ended.
#[derive(Debug)]
pub enum Outcome {
    /// Sent to a URL under the one the test waits for.
    Redirected(String),
    /// Stopped on a page (status and HTML) that holds no form to submit.
    Page(u16, String),
}

/// A browser with its own cookies.
pub struct Browser {
    http: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("browser");
        Self { http }
    }
}

impl Browser {
    /// A page, with the browser's cookies, redirects not followed: status and body.
    #[allow(dead_code)]
    pub async fn get(&self, url: &str) -> (u16, String) {
        let response = self.http.get(url).send().await.expect("browser request");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// A form posted with the browser's cookies: status and body.
    #[allow(dead_code)]
    pub async fn post_form(&self, url: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let response = self.http.post(url).form(fields).send().await.expect("browser request");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// Opens `url` and goes on, signing in as `login` at the provider's forms, until sent
    /// to a URL starting with `until` or stopped on a page.
    pub async fn sign_in(&self, url: &str, login: &str, until: &str) -> Outcome {
        let mut url = reqwest::Url::parse(url).expect("start URL");
        let mut form: Option<Vec<(String, String)>> = None;
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => self.http.post(url.clone()).form(&fields),
                None => self.http.get(url.clone()),
            };
            let response = request.send().await.expect("browser request");
            let status = response.status();
            if status.is_redirection() {
                let location = response.headers()["location"].to_str().expect("location").to_owned();
                let next = url.join(&location).expect("redirect URL");
                if next.as_str().starts_with(until) {
                    return Outcome::Redirected(next.to_string());
                }
                url = next;
                continue;
            }
            let body = response.text().await.unwrap_or_default();
            match parse_form(&body) {
                Some((action, mut fields)) => {
                    for (name, value) in fields.iter_mut() {
                        match name.as_str() {
                            "login" => *value = login.to_owned(),
                            "password" => *value = "any password".to_owned(),
                            _ => {}
                        }
                    }
                    url = url.join(&action).expect("form action");
                    form = Some(fields);
                }
                None => return Outcome::Page(status.as_u16(), body),
            }
        }
        panic!("the sign-in went on for more than 20 steps");
    }
}

/// The first form of a page: its action and its inputs' names and values.
fn parse_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let form = &html[start..html[start..].find("</form>").map_or(html.len(), |end| start + end)];
    let action = attribute(&form[..form.find('>')?], "action")?;
    let fields = form
        .split("<input")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            Some((attribute(tag, "name")?, attribute(tag, "value").unwrap_or_default()))
        })
        .collect();
    Some((action, fields))
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(unescape(&tag[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&#x2F;", "/")
        .replace("&#x3D;", "=")
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
