//! The engine's small parsers of untrusted strings: provider base URLs (`BaseUrl::parse`),
//! gateway keys in `Authorization` / `x-api-key` (`auth::presented_key`), the `x-tr-attempts`
//! header the upstream filter reads, request paths and `x-tr-client-api`, decimal USD prices,
//! the enum names of rules and configurations, firewall header values, and the catalogue JSON.
//!
//! Properties: no panic; a parsed base URL prints back to itself; an accepted price formats back
//! to itself; a header value is printable ASCII whose items decode back to the labels.
//!
//! Input: `[which] text…`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenrouter_engine::firewall::{self, Action, Check, MatchType, Scope};
use tokenrouter_engine::money::{format_micros_usd, parse_usd_to_micros};
use tokenrouter_engine::request::ClientApi;
use tokenrouter_engine::routing::config::Strategy;
use tokenrouter_engine::routing::{self, Mode, Tier, MAX_ATTEMPTS};
use tokenrouter_engine::upstream::{openai_style_path, BaseUrl, ProviderKind};
use tokenrouter_engine::{auth, catalogue, keys, snapshot};
use tokenrouter_fuzz::Reader;

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two ASCII hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let which = r.pick(6);
    let bytes = r.rest();
    let text = String::from_utf8_lossy(bytes);
    let text = text.as_ref();

    match which {
        0 => {
            if let Ok(url) = BaseUrl::parse(text) {
                let scheme = if url.tls { "https" } else { "http" };
                let query = url
                    .query
                    .as_deref()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let printed = format!("{scheme}://{}{}{query}", url.authority(), url.path);
                assert_eq!(BaseUrl::parse(&printed).as_ref(), Ok(&url), "{printed}");
                assert!(!url.path.ends_with('/'));
                let _ = openai_style_path(&url, "/v1/chat/completions");
            }
        }
        1 => {
            let (a, b) = text.split_once('\n').unwrap_or((text, ""));
            for (auth, key) in [(Some(a), Some(b)), (Some(a), None), (None, Some(b))] {
                if let Some(k) = auth::presented_key(auth, key) {
                    assert!(!k.is_empty() && k.trim() == k);
                }
            }
            let _ = keys::display_prefix(text);
            let _ = keys::hash_key(text);
            for kind in ProviderKind::ALL {
                let _ = kind.credential_header(text);
            }
        }
        2 => {
            let attempts = routing::parse_attempts_header(text);
            assert!(attempts.len() <= MAX_ATTEMPTS as usize);
            let _ = ClientApi::from_path(text);
            let _ = ClientApi::parse(text);
            let _ = snapshot::valid_name(text);
        }
        3 => {
            if let Some(micros) = parse_usd_to_micros(text) {
                assert!(micros >= 0);
                let printed = format_micros_usd(micros);
                assert_eq!(parse_usd_to_micros(&printed), Some(micros), "{printed}");
            }
            let _ = (
                Scope::parse(text),
                MatchType::parse(text),
                Action::parse(text),
            );
            let _ = (Check::parse(text), Strategy::parse(text), Mode::parse(text));
            let _ = (Tier::parse(text), ProviderKind::parse(text));
        }
        4 => {
            let items: Vec<String> = text.split('\n').map(str::to_string).collect();
            let header = firewall::header_value(&items);
            assert!(header.bytes().all(|b| (0x20..0x7f).contains(&b)));
            let decoded: Vec<Vec<u8>> = header.split(", ").map(percent_decode).collect();
            let want: Vec<Vec<u8>> = items.iter().map(|i| i.as_bytes().to_vec()).collect();
            assert_eq!(decoded, want);
        }
        _ => {
            let _ = catalogue::parse(text);
        }
    }
});
