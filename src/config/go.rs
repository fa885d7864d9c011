//! Go's value syntax, as kube-proxy's flags and file accept it: `strconv.ParseBool` booleans and
//! `time.ParseDuration` durations (and their canonical text, for messages).

use super::*;

/// Parses a boolean flag value the way Go's `strconv.ParseBool` does, because kube-proxy users
/// write `--masquerade-all=1` or `=True` as well as `=true`.
pub(super) fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (want true or false)")),
    }
}

/// Parse Go's time.Duration syntax (what kube-proxy's flags and config use). Negative durations are
/// an error.
///
/// Accepted: an optional sign, then one or more `<number><unit>` pairs where the number may have a
/// fraction (`1.5`, `.5`, `1.`) and the unit is `ns`, `us`/`µs`/`μs`, `ms`, `s`, `m` or `h`; or
/// the bare `0`. As in Go, the total must fit in an i64 of nanoseconds.
///
/// # Errors
/// A human-readable reason (without the value) for malformed, negative or too-large input.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DURATION_HINT.to_string());
    }
    let too_large = || "duration too large (Go's limit is 2562047h47m16.854775807s)".to_string();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        rest = after_int;
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_digits = &after_dot[..n];
            rest = &after_dot[n..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DURATION_HINT.to_string());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after_unit) = rest.split_at(unit_len);
        rest = after_unit;
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{DURATION_HINT}: missing unit")),
            _ => return Err(format!("{DURATION_HINT}: unknown unit {unit:?}")),
        };
        // 39 digits overflow u128; anything that long is far beyond Go's limit anyway.
        if int_digits.len() > 30 {
            return Err(too_large());
        }
        let int: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_large())?
        };
        total += int * unit_ns;
        if !frac_digits.is_empty() {
            // Digits beyond nanosecond resolution of the largest unit cannot matter.
            let kept = &frac_digits[..frac_digits.len().min(20)];
            let frac: u128 = kept.parse().map_err(|_| DURATION_HINT.to_string())?;
            total += frac * unit_ns / 10u128.pow(kept.len() as u32);
        }
        if total > i64::MAX as u128 {
            return Err(too_large());
        }
    }
    if negative && total != 0 {
        return Err("must not be negative".to_string());
    }
    // Cannot truncate: total <= i64::MAX was checked after every component.
    Ok(Duration::from_nanos(total as u64))
}

/// Render a Duration the way Go prints it ("1s", "1m30s", "300ms") for messages.
pub fn format_go_duration(d: Duration) -> String {
    let n = d.as_nanos();
    match n {
        0 => "0s".to_string(),
        1..=999 => format!("{n}ns"),
        1_000..=999_999 => format!("{}\u{b5}s", decimal(n, 3)),
        1_000_000..=999_999_999 => format!("{}ms", decimal(n, 6)),
        _ => {
            let secs = n / 1_000_000_000;
            let (h, m) = (secs / 3600, secs / 60 % 60);
            let mut out = String::new();
            if h > 0 {
                let _ = write!(out, "{h}h");
            }
            if h > 0 || m > 0 {
                let _ = write!(out, "{m}m");
            }
            let sub_minute = n % 60_000_000_000;
            let _ = write!(out, "{}s", decimal(sub_minute, 9));
            out
        }
    }
}

/// `n / 10^digits` as a decimal with trailing zeros (and a bare point) removed, like Go's fmtFrac.
pub(super) fn decimal(n: u128, digits: u32) -> String {
    let scale = 10u128.pow(digits);
    let (int, frac) = (n / scale, n % scale);
    if frac == 0 {
        return int.to_string();
    }
    let frac = format!("{frac:0width$}", width = digits as usize);
    format!("{int}.{}", frac.trim_end_matches('0'))
}
