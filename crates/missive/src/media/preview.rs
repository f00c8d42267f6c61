//! URL previews: off unless the operator lists the sites that may be previewed, since each
//! preview is a request from this server to the site. Private, loopback and link-local
//! addresses are never fetched (but for the operator's intranet ranges), whether a name
//! resolves to them, a URL names one, or a redirect leads there; redirects are followed
//! one by one, each hop checked again. Only the page's text metadata (OpenGraph, title,
//! description) is kept, in memory, for an hour; images are not fetched.

use std::{
    cell::RefCell,
    sync::Mutex,
    time::{Duration, Instant},
};

use hashlink::LruCache;
use html5ever::tokenizer::{BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer};
use serde_json::{Map, Value};

use crate::{
    config::Media as MediaConfig,
    error::{Error, Result},
    outbound,
};

/// Bytes of a page read for its metadata.
const MAX_PAGE: usize = 1024 * 1024;
/// Redirects followed.
const MAX_REDIRECTS: usize = 5;
/// How long a preview is reused.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Characters kept of each text.
const MAX_TEXT: usize = 500;

/// The preview service.
pub struct Previews {
    http: reqwest::Client,
    domains: Vec<String>,
    allowed_ranges: Vec<ipnet::IpNet>,
    cache: Mutex<LruCache<String, (Instant, Value)>>,
}

fn blocked(why: &str) -> Error {
    Error::forbidden(format!("this URL cannot be previewed: {why}"))
}

impl Previews {
    /// The service, when the operator lists sites to preview.
    pub fn new(config: &MediaConfig, trusted_ca_files: &[std::path::PathBuf]) -> Option<Self> {
        if config.url_preview_domains.is_empty() {
            return None;
        }
        let allowed_ranges = config.url_preview_allowed_ranges.clone();
        let http = outbound::client(&allowed_ranges, trusted_ca_files, Duration::from_secs(10), "URL preview").ok()?;
        let domains = config.url_preview_domains.iter().map(|d| d.trim().to_ascii_lowercase()).collect();
        Some(Self { http, domains, allowed_ranges, cache: Mutex::new(LruCache::new(1000)) })
    }

    /// Whether a host is one of the listed sites (`*.example.org` also names subdomains).
    fn site_listed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => host == suffix || host.ends_with(&format!(".{suffix}")),
            None => host == *pattern,
        })
    }

    /// Checks a URL before it is fetched: scheme, listed site, address.
    fn check(&self, url: &url::Url) -> Result<()> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param("only http and https URLs are previewed"));
        }
        let host = match url.host() {
            Some(url::Host::Domain(domain)) => domain.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(Error::invalid_param("the URL has no host")),
        };
        if !self.site_listed(&host) {
            return Err(blocked("this site is not one this server previews"));
        }
        if !outbound::literal_reachable(url, &self.allowed_ranges) {
            return Err(blocked("private address"));
        }
        Ok(())
    }

    /// The preview of a page: its OpenGraph properties, or title and description.
    pub async fn preview(&self, url: &str) -> Result<Value> {
        let mut url = url::Url::parse(url).map_err(|_| Error::invalid_param("url is not a URL"))?;
        url.set_fragment(None);
        let key = url.to_string();
        if let Some((at, preview)) = self.cache.lock().expect("preview cache").get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(preview.clone());
        }
        let mut response = None;
        for _ in 0..=MAX_REDIRECTS {
            self.check(&url)?;
            let answer = self.http.get(url.clone()).send().await.map_err(|e| {
                tracing::info!(error = %e, "URL preview fetch failed");
                blocked("the site cannot be reached")
            })?;
            if answer.status().is_redirection() {
                let location = answer
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| blocked("a redirect without a location"))?;
                url = url.join(location).map_err(|_| blocked("a redirect to no URL"))?;
                continue;
            }
            response = Some(answer);
            break;
        }
        let Some(mut response) = response else { return Err(blocked("too many redirects")) };
        if !response.status().is_success() {
            return Err(blocked(&format!("the site answered {}", response.status().as_u16())));
        }
        let html = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/html") || t.starts_with("application/xhtml"));
        let mut preview = Map::new();
        if html {
            let mut page = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                page.extend_from_slice(&chunk);
                if page.len() >= MAX_PAGE {
                    page.truncate(MAX_PAGE);
                    break;
                }
            }
            preview = metadata(&String::from_utf8_lossy(&page));
        }
        let preview = Value::Object(preview);
        self.cache.lock().expect("preview cache").insert(key, (Instant::now(), preview.clone()));
        Ok(preview)
    }
}

/// Collects a page's meta tags and title as the tokenizer meets them.
#[derive(Default)]
struct MetaSink {
    properties: RefCell<Map<String, Value>>,
    description: RefCell<Option<String>>,
    title: RefCell<Option<String>>,
    in_title: RefCell<bool>,
}

impl TokenSink for MetaSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) if tag.kind == TagKind::StartTag && &*tag.name == "meta" => {
                let attr = |name: &str| tag.attrs.iter().find(|a| &*a.name.local == name).map(|a| a.value.to_string());
                let Some(content) = attr("content") else { return TokenSinkResult::Continue };
                let content = clip(&content);
                if let Some(property) = attr("property").or_else(|| attr("name"))
                    && let Some(og) = property.strip_prefix("og:")
                    && matches!(og, "title" | "description" | "site_name" | "type" | "url" | "locale")
                {
                    self.properties.borrow_mut().entry(format!("og:{og}")).or_insert(Value::String(content));
                } else if attr("name").is_some_and(|n| n.eq_ignore_ascii_case("description")) {
                    self.description.borrow_mut().get_or_insert(content);
                }
            }
            Token::TagToken(tag) if &*tag.name == "title" => {
                *self.in_title.borrow_mut() = tag.kind == TagKind::StartTag;
            }
            Token::CharacterTokens(text) if *self.in_title.borrow() => {
                self.title.borrow_mut().get_or_insert_with(String::new).push_str(&text);
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

fn clip(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.chars().take(MAX_TEXT).collect()
}

/// The preview of an HTML page: OpenGraph properties, with the title and description
/// tags standing in for missing ones.
fn metadata(page: &str) -> Map<String, Value> {
    let input = BufferQueue::default();
    input.push_back(page.into());
    let tokenizer = Tokenizer::new(MetaSink::default(), Default::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let sink = tokenizer.sink;
    let mut preview = sink.properties.into_inner();
    if let Some(title) = sink.title.into_inner().map(|t| clip(&t)).filter(|t| !t.is_empty()) {
        preview.entry("og:title").or_insert(Value::String(title));
    }
    if let Some(description) = sink.description.into_inner() {
        preview.entry("og:description").or_insert(Value::String(description));
    }
    preview
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_give_their_open_graph_or_title() {
        let page = r#"<html><head><title>Portail   de l'État</title>
            <meta property="og:description" content="Les démarches &amp; services">
            <meta name="description" content="ignored, og wins">
            <meta property="og:image" content="https://example.org/tracker.png">
            </head><body><p>text</p></body></html>"#;
        let preview = metadata(page);
        assert_eq!(preview["og:title"], "Portail de l'État");
        assert_eq!(preview["og:description"], "Les démarches & services");
        assert!(!preview.contains_key("og:image"), "images are not fetched");
        assert!(metadata("<p>no metadata</p>").is_empty());
    }

    #[test]
    fn listed_sites_and_private_addresses() {
        let config = MediaConfig {
            url_preview_domains: vec!["*.gouv.fr".into(), "gouvernement.lu".into()],
            ..MediaConfig::default()
        };
        let previews = Previews::new(&config, &[]).unwrap();
        let check = |url: &str| previews.check(&url::Url::parse(url).unwrap());
        assert!(check("https://www.interieur.gouv.fr/page").is_ok());
        assert!(check("https://gouv.fr/").is_ok());
        assert!(check("https://gouvernement.lu/fr.html").is_ok());
        assert!(check("https://evilgouv.fr/").is_err());
        assert!(check("https://sub.gouvernement.lu/").is_err());
        assert!(check("ftp://www.interieur.gouv.fr/").is_err());
        assert!(Previews::new(&MediaConfig::default(), &[]).is_none(), "off by default");
        let config = MediaConfig { url_preview_domains: vec!["10.1.2.3".into()], ..MediaConfig::default() };
        assert!(Previews::new(&config, &[]).unwrap().check(&url::Url::parse("http://10.1.2.3/").unwrap()).is_err());
    }
}
