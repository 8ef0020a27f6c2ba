//! What the per-attempt upstream filter changes on the way out: the provider's authority and
//! path (from its configurable base URL) and its credential header.

/// Wire API family of a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    Mistral,
    DeepSeek,
    Azure,
    OpenAiCompatible,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::OpenAi,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Mistral,
        ProviderKind::DeepSeek,
        ProviderKind::Azure,
        ProviderKind::OpenAiCompatible,
    ];

    pub fn parse(s: &str) -> Option<ProviderKind> {
        ProviderKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mistral => "mistral",
            ProviderKind::DeepSeek => "deepseek",
            ProviderKind::Azure => "azure",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }

    /// Kinds that speak OpenAI's Chat Completions wire format unchanged.
    pub fn speaks_openai_chat(self) -> bool {
        matches!(
            self,
            ProviderKind::OpenAi
                | ProviderKind::Mistral
                | ProviderKind::DeepSeek
                | ProviderKind::OpenAiCompatible
        )
    }

    /// Whether any model name is accepted, not only catalogued ones: self-hosted servers, and
    /// Azure, whose "models" are the operator's deployment names.
    pub fn accepts_any_model(self) -> bool {
        matches!(self, ProviderKind::OpenAiCompatible | ProviderKind::Azure)
    }

    /// Whose catalogue prices this kind's models: Azure deployments of OpenAI models are priced
    /// like OpenAI's when the deployment is named after the model.
    pub fn catalogue_kind(self) -> ProviderKind {
        match self {
            ProviderKind::Azure => ProviderKind::OpenAi,
            k => k,
        }
    }

    /// Header carrying the credential, and its value for a given secret.
    pub fn credential_header(self, secret: &str) -> (&'static str, String) {
        match self {
            ProviderKind::Anthropic => ("x-api-key", secret.to_string()),
            ProviderKind::Azure => ("api-key", secret.to_string()),
            ProviderKind::Gemini => ("x-goog-api-key", secret.to_string()),
            _ => ("authorization", ["Bearer ", secret].concat()),
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider's base URL, split once when the snapshot is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without trailing slash ("" or "/v1" or "/openai/v1").
    pub path: String,
    /// Query string without `?` (Azure's `api-version=…`); `None` when the URL has none.
    pub query: Option<String>,
}

impl BaseUrl {
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "base URL {url:?} must start with http:// or https://"
            ));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) if !q.is_empty() => (r, Some(q.to_string())),
            Some(_) => return Err(format!("base URL {url:?} has an empty query string")),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let query_ok = query.as_deref().is_none_or(|q| {
            q.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~=&%".contains(&b))
        });
        // The path goes into `:path` as it is: RFC 3986 path characters only (percent-encoded
        // otherwise), so no space, quote or control character reaches the request line.
        let path_ok = path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%/".contains(&b));
        if authority.is_empty() || authority.contains('@') || !path_ok || !query_ok {
            return Err(format!(
                "base URL {url:?} is not of the form scheme://host[:port][/path]"
            ));
        }
        let (host, port) = split_host_port(authority, if tls { 443 } else { 80 })
            .ok_or_else(|| format!("base URL {url:?} has an invalid host or port"))?;
        Ok(BaseUrl {
            tls,
            host,
            port,
            path: path.trim_end_matches('/').to_string(),
            query,
        })
    }

    /// The `:authority` to send: host, with the port when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            self.host_for_authority()
        } else {
            format!("{}:{}", self.host_for_authority(), self.port)
        }
    }

    fn host_for_authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        // Brackets hold an IPv6 address and nothing else (RFC 3986 IP-literal): any other text
        // would reach `:authority` unchecked.
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, default_port),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    ok.then(|| (host.to_string(), port))
}

/// The path to send upstream for an OpenAI-style client path (`/v1/chat/completions`):
/// the base URL's path replaces the client's `/v1`.
pub fn openai_style_path(base: &BaseUrl, client_path: &str) -> String {
    let tail = client_path.strip_prefix("/v1").unwrap_or(client_path);
    format!("{}{}", base.path, tail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let cases = [
            (
                "https://api.openai.com/v1",
                true,
                "api.openai.com",
                443,
                "/v1",
                "api.openai.com",
            ),
            (
                "http://127.0.0.1:9000/v1/",
                false,
                "127.0.0.1",
                9000,
                "/v1",
                "127.0.0.1:9000",
            ),
            (
                "https://api.anthropic.com",
                true,
                "api.anthropic.com",
                443,
                "",
                "api.anthropic.com",
            ),
            (
                "http://[::1]:8000/openai/v1",
                false,
                "::1",
                8000,
                "/openai/v1",
                "[::1]:8000",
            ),
            ("http://host:80", false, "host", 80, "", "host"),
        ];
        for (url, tls, host, port, path, authority) in cases {
            let b = BaseUrl::parse(url).unwrap();
            assert_eq!(
                (b.tls, b.host.as_str(), b.port, b.path.as_str()),
                (tls, host, port, path),
                "{url}"
            );
            assert_eq!(b.authority(), authority, "{url}");
        }
        // The path reaches `:path` as it is: nothing outside RFC 3986's path characters.
        for bad in [
            "http://h/a b",
            "http://h/a\"b",
            "http://h/a\r\nx: y",
            "http://h/a#frag",
            "http://h/<v1>",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad:?}");
        }
        let ok = BaseUrl::parse("http://h/openai/deployments/gpt-4o%2Dmini/v1;x=1").unwrap();
        assert_eq!(ok.path, "/openai/deployments/gpt-4o%2Dmini/v1;x=1");
    }

    #[test]
    fn bad_base_urls() {
        for url in [
            "ftp://x",
            "http://",
            "http://a b",
            "http://h:99999",
            "http://u@h",
            "http://h/?",
            "http://h/?q#f",
            "http://h/?a b",
            "api.openai.com",
            // Found by fuzzing (`fuzz/`, target small_parsers): bracketed hosts were taken
            // unchecked, and printed back without their brackets.
            "http://[]/v1",
            "http://[a b\r\n]:8080/v1",
            "http://[host]/v1",
            "http://[::1:80",
        ] {
            assert!(BaseUrl::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn base_url_query_is_kept_for_azure_api_version() {
        let b =
            BaseUrl::parse("https://r.openai.azure.com?api-version=2025-01-01-preview").unwrap();
        assert_eq!(
            (b.host.as_str(), b.path.as_str(), b.query.as_deref()),
            (
                "r.openai.azure.com",
                "",
                Some("api-version=2025-01-01-preview")
            )
        );
        assert_eq!(BaseUrl::parse("https://h/v1").unwrap().query, None);
    }

    #[test]
    fn paths_and_credentials() {
        let b = BaseUrl::parse("https://example.com/openai/v1").unwrap();
        assert_eq!(
            openai_style_path(&b, "/v1/chat/completions"),
            "/openai/v1/chat/completions"
        );
        assert_eq!(
            ProviderKind::OpenAi.credential_header("s"),
            ("authorization", "Bearer s".to_string())
        );
        assert_eq!(
            ProviderKind::Anthropic.credential_header("s").0,
            "x-api-key"
        );
        for k in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(k.as_str()), Some(k));
        }
    }
}
