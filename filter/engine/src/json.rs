//! JSON reading for the request path.

use serde::Deserialize;

/// `serde_json::from_slice`, with the bytes' UTF-8 checked once up front rather than string by
/// string: from a `&str`, serde_json reads strings without checking them again. A request or
/// an answer holds dozens of strings, and a check per string costs more than one pass over
/// the whole (which runs word by word over ASCII). Invalid UTF-8 goes through
/// `serde_json::from_slice`, so its error (and its position) is the one serde_json gives.
pub fn from_slice<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn reads_as_from_slice_does() {
        let cases: [&[u8]; 6] = [
            br#"{"a":"caf\u00e9","b":[1,2.5,null],"c":"\u00fcber"}"#,
            "{\"emoji\":\"😀\"}".as_bytes(),
            b"{\"bad\":\"\xff\"}",
            b"[1,2",
            b"",
            b"  {\"x\" : \"\\ud83d\\ude00\"}  ",
        ];
        for bytes in cases {
            let ours = from_slice::<Value>(bytes).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(bytes));
        }
        // Borrowed strings point into the bytes themselves.
        let bytes = br#"{"u":{"n":1}}"#;
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            u: &'a serde_json::value::RawValue,
        }
        let raw: Raw<'_> = from_slice(bytes).unwrap();
        assert_eq!(raw.u.get().as_ptr(), bytes[5..].as_ptr());
    }
}
