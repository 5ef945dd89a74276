//! Parsers for the command line's durations, rates and queue limits, in the
//! spirit of tc's units (`20ms`, `1gbit`, `1000` packets or `4mb`).

use std::time::Duration;

/// A bounded queue's limit: a packet count, or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Packets(usize),
    Bytes(usize),
    /// One bandwidth-delay product of the link (rate × 2 × delay), in
    /// bytes: resolved once both are known.
    Bdp,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Packets(n) => write!(f, "{n} packets"),
            Limit::Bytes(n) => write!(f, "{n} bytes"),
            Limit::Bdp => f.write_str("one bandwidth-delay product"),
        }
    }
}

/// Splits "20ms" into (20.0, "ms").
fn split_number(s: &str) -> Result<(f64, String), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number followed by a unit"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{s}`: must be a finite, non-negative number"));
    }
    Ok((value, unit.trim().to_ascii_lowercase()))
}

/// `20ms`, `1.5s`, `500us`, `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_number(s)?;
    let secs = match unit.as_str() {
        "" if value == 0.0 => 0.0,
        "ns" => value / 1e9,
        "us" | "usec" => value / 1e6,
        "ms" | "msec" => value / 1e3,
        "s" | "sec" | "secs" => value,
        _ => return Err(format!("`{s}`: unit must be one of ns, us, ms, s")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

/// A rate in bits per second, tc style: `1gbit`, `100mbit`, `64kbit`,
/// `125mbps` (bytes per second); `0` means unlimited.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (value, unit) = split_number(s)?;
    let bits_per_unit = match unit.as_str() {
        "" if value == 0.0 => 0.0,
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => {
            return Err(format!(
                "`{s}`: unit must be one of bit, kbit, mbit, gbit (bits/s) or bps, kbps, mbps, gbps (bytes/s)"
            ))
        }
    };
    Ok((value * bits_per_unit).round() as u64)
}

/// `1000` or `1000p` (packets); `64kb`, `4mb`, `4mib`, `9000b` (bytes; k
/// and m are 1024 as in tc); `bdp`.
pub fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.trim().eq_ignore_ascii_case("bdp") {
        return Ok(Limit::Bdp);
    }
    let (value, unit) = split_number(s)?;
    if value.fract() != 0.0 && matches!(unit.as_str(), "" | "p" | "pkt" | "packets" | "b") {
        return Err(format!("`{s}`: must be a whole number"));
    }
    let bytes = |mult: f64| Limit::Bytes((value * mult) as usize);
    let limit = match unit.as_str() {
        "" | "p" | "pkt" | "packets" => Limit::Packets(value as usize),
        "b" => bytes(1.0),
        "k" | "kb" | "kib" => bytes(1024.0),
        "m" | "mb" | "mib" => bytes(1024.0 * 1024.0),
        _ => return Err(format!("`{s}`: a packet count, bytes with b, kb, mb, or bdp")),
    };
    match limit {
        Limit::Packets(0) | Limit::Bytes(0) => Err(format!("`{s}`: must be above zero")),
        l => Ok(l),
    }
}

/// `1 Gbit/s`, `250 Mbit/s`, `unlimited`.
pub fn format_rate(bps: u64) -> String {
    match bps {
        0 => "unlimited".to_string(),
        b if b % 1_000_000_000 == 0 => format!("{} Gbit/s", b / 1_000_000_000),
        b if b % 1_000_000 == 0 => format!("{} Mbit/s", b / 1_000_000),
        b if b % 1_000 == 0 => format!("{} kbit/s", b / 1_000),
        b => format!("{b} bit/s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("20").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1ms").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100Mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("125mbps"), Ok(1_000_000_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("1000").is_err());
        assert_eq!(format_rate(1_000_000_000), "1 Gbit/s");
        assert_eq!(format_rate(250_000_000), "250 Mbit/s");
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("1000"), Ok(Limit::Packets(1000)));
        assert_eq!(parse_limit("50p"), Ok(Limit::Packets(50)));
        assert_eq!(parse_limit("4mb"), Ok(Limit::Bytes(4 << 20)));
        assert_eq!(parse_limit("64kb"), Ok(Limit::Bytes(64 << 10)));
        assert_eq!(parse_limit("bdp"), Ok(Limit::Bdp));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("1.5").is_err());
        assert!(parse_limit("3parsecs").is_err());
    }
}
