//! Exact money arithmetic. Prices are integer micro-dollars per million tokens, so the cost of
//! `n` tokens is `n × price` pico-dollars (1e-12 USD) with no rounding at all.

use crate::usage::Usage;

/// Prices of one model, micro-dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input: i64,
    pub output: i64,
    /// Price of cached prompt tokens; 0 means "same as input".
    pub cached_input: i64,
}

/// Pico-dollars in one US dollar.
pub const PICOS_PER_USD: i128 = 1_000_000_000_000;

/// Cost of `usage` at `price`, in pico-dollars. Cached tokens are part of `input` (as every
/// provider reports them) and are charged at the cached price. Saturates instead of overflowing.
pub fn cost_picos(usage: &Usage, price: &Price) -> i64 {
    let cached = usage.cached_input.min(usage.input);
    let fresh = usage.input - cached;
    let cached_price = if price.cached_input > 0 {
        price.cached_input
    } else {
        price.input
    };
    // Each product fits an i128, but their sum may not (token counts near u64::MAX, prices
    // near i64::MAX): saturate there too.
    let total = (i128::from(fresh) * i128::from(price.input))
        .saturating_add(i128::from(cached) * i128::from(cached_price))
        .saturating_add(i128::from(usage.output) * i128::from(price.output));
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// Decimal USD string of a pico-dollar amount, exact, without trailing zeros (`"0.00015"`, `"2"`).
pub fn format_picos_usd(picos: i128) -> String {
    let sign = if picos < 0 { "-" } else { "" };
    let abs = picos.unsigned_abs();
    let per = PICOS_PER_USD.unsigned_abs();
    let whole = abs / per;
    let frac = abs % per;
    if frac == 0 {
        return format!("{sign}{whole}");
    }
    let frac = format!("{frac:012}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// Parses a decimal USD per million tokens (e.g. `"0.15"`) into micro-dollars per million.
pub fn parse_usd_to_micros(s: &str) -> Option<i64> {
    let s = s.trim();
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.len() > 6 || s.starts_with('-') {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut frac_micros: i64 = 0;
    if !frac.is_empty() {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        frac_micros = format!("{frac:0<6}").parse().ok()?;
    }
    whole.checked_mul(1_000_000)?.checked_add(frac_micros)
}

/// Micro-dollars per million tokens as a decimal USD string.
pub fn format_micros_usd(micros: i64) -> String {
    format_picos_usd(i128::from(micros) * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: Price = Price {
        input: 150_000,
        output: 600_000,
        cached_input: 75_000,
    };

    #[test]
    fn cost_table() {
        let cases = [
            // (input, cached, output, expected picos)
            (0, 0, 0, 0),
            (1, 0, 0, 150_000),
            (10, 0, 5, 10 * 150_000 + 5 * 600_000),
            (10, 4, 5, 6 * 150_000 + 4 * 75_000 + 5 * 600_000),
            (10, 40, 0, 10 * 75_000), // cached can never exceed input
        ];
        for (input, cached, output, want) in cases {
            let u = Usage {
                input,
                cached_input: cached,
                output,
                reasoning: 0,
            };
            assert_eq!(cost_picos(&u, &MINI), want, "{input}/{cached}/{output}");
        }
    }

    #[test]
    fn cached_price_defaults_to_input_price() {
        let p = Price {
            input: 10,
            output: 0,
            cached_input: 0,
        };
        let u = Usage {
            input: 3,
            cached_input: 3,
            ..Usage::default()
        };
        assert_eq!(cost_picos(&u, &p), 30);
    }

    #[test]
    fn cost_saturates() {
        let u = Usage {
            input: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(cost_picos(&u, &MINI), i64::MAX);
    }

    /// Found by fuzzing (`fuzz/`, target `usage`): the i128 sum of three products overflowed
    /// (a panic in debug builds) before the saturation to i64.
    #[test]
    fn cost_saturates_at_the_largest_counts_and_prices() {
        let u = Usage {
            input: u64::MAX,
            output: u64::MAX,
            ..Usage::default()
        };
        let p = Price {
            input: i64::MAX,
            output: i64::MAX,
            cached_input: i64::MAX,
        };
        assert_eq!(cost_picos(&u, &p), i64::MAX);
    }

    #[test]
    fn formatting() {
        assert_eq!(format_picos_usd(0), "0");
        assert_eq!(format_picos_usd(150_000), "0.00000015");
        assert_eq!(format_picos_usd(2_000_000_000_000), "2");
        assert_eq!(format_picos_usd(1_500_000_000_000), "1.5");
        assert_eq!(format_picos_usd(-1), "-0.000000000001");
        assert_eq!(format_micros_usd(150_000), "0.15");
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_usd_to_micros("0.15"), Some(150_000));
        assert_eq!(parse_usd_to_micros("2.5"), Some(2_500_000));
        assert_eq!(parse_usd_to_micros("10"), Some(10_000_000));
        assert_eq!(parse_usd_to_micros(".5"), Some(500_000));
        assert_eq!(parse_usd_to_micros("0.0000001"), None);
        assert_eq!(parse_usd_to_micros("-1"), None);
        assert_eq!(parse_usd_to_micros("x"), None);
        assert_eq!(parse_usd_to_micros(""), None);
    }
}
