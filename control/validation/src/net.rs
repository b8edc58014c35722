//! IP and CIDR parsing the way `k8s.io/utils/net` does it ("sloppy": IPv4
//! octets may carry leading zeros, read as decimal), and the validators built
//! on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::field::{FieldError, Path};

/// `netutils.ParseIPSloppy`.
pub(crate) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        if s.contains('%') {
            return None;
        }
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    parse_ipv4_sloppy(s).map(IpAddr::V4)
}

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.split('.') {
        if n == 4 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut v: u32 = 0;
        for b in part.bytes() {
            v = v * 10 + u32::from(b - b'0');
            if v > 255 {
                return None;
            }
        }
        octets[n] = v as u8;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// The IPv4 view of an address, including IPv4-mapped IPv6 (Go's `To4`).
fn to4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// Whether `s` parses as an IPv6 address that is not an IPv4 one (`IsIPv6String`).
pub(crate) fn is_ipv6_string(s: &str) -> bool {
    parse_ip_sloppy(s).is_some_and(|ip| to4(&ip).is_none())
}

/// Whether `s` parses as an IPv4 address (`IsIPv4String`).
pub(crate) fn is_ipv4_string(s: &str) -> bool {
    parse_ip_sloppy(s).is_some_and(|ip| to4(&ip).is_some())
}

/// The IP family name ("IPv4"/"IPv6") of a parseable address.
pub(crate) fn family_of(s: &str) -> Option<&'static str> {
    let ip = parse_ip_sloppy(s)?;
    Some(if to4(&ip).is_some() { "IPv4" } else { "IPv6" })
}

/// `netutils.ParseCIDRSloppy`: address and prefix length.
pub(crate) fn parse_cidr_sloppy(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = s.split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
        return None;
    }
    let bits: u32 = prefix.parse().ok()?;
    let max = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (bits <= max).then_some((ip, bits as u8))
}

/// The IP family of a parseable CIDR.
pub(crate) fn cidr_family(s: &str) -> Option<&'static str> {
    let (ip, _) = parse_cidr_sloppy(s)?;
    Some(match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => "IPv4",
        IpAddr::V6(_) => "IPv6",
    })
}

/// `validation.IsValidIPForLegacyField` (non-strict mode, the default).
pub(crate) fn validate_ip(path: &Path, value: &str) -> Vec<FieldError> {
    if parse_ip_sloppy(value).is_some() {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            Value::from(value),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        )]
    }
}

/// `validation.IsValidCIDRForLegacyField` (non-strict mode, the default).
pub(crate) fn validate_cidr(path: &Path, value: &str) -> Vec<FieldError> {
    if parse_cidr_sloppy(value).is_some() {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            path,
            Value::from(value),
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        )]
    }
}

/// `ValidateEndpointIP` / `ValidateNonSpecialIP`: no unspecified, loopback or
/// link-local addresses. Unparseable input yields nothing (reported elsewhere).
pub(crate) fn validate_non_special_ip(path: &Path, value: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(ip) = parse_ip_sloppy(value) else {
        return errs;
    };
    let v4 = to4(&ip);
    let (unspecified, loopback, link_local, ll_multicast) = match (v4, ip) {
        (Some(v4), _) => {
            let o = v4.octets();
            (
                v4.is_unspecified(),
                o[0] == 127,
                o[0] == 169 && o[1] == 254,
                o[0] == 224 && o[1] == 0 && o[2] == 0,
            )
        }
        (None, IpAddr::V6(v6)) => {
            let s = v6.segments();
            (
                v6.is_unspecified(),
                v6 == Ipv6Addr::LOCALHOST,
                s[0] & 0xffc0 == 0xfe80,
                s[0] & 0xff0f == 0xff02,
            )
        }
        (None, IpAddr::V4(_)) => (false, false, false, false),
    };
    if unspecified {
        errs.push(FieldError::invalid(
            path,
            Value::from(value),
            format!("may not be unspecified ({value})"),
        ));
    }
    if loopback {
        errs.push(FieldError::invalid(
            path,
            Value::from(value),
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if link_local {
        errs.push(FieldError::invalid(
            path,
            Value::from(value),
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if ll_multicast {
        errs.push(FieldError::invalid(
            path,
            Value::from(value),
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
    errs
}

/// Whether a list of IP strings is at most one per family (`IsDualStackIPStrings`
/// for two entries): true when exactly one IPv4 and one IPv6 are present.
pub(crate) fn is_dual_stack(families: &[Option<&'static str>]) -> bool {
    families.len() == 2 && families.contains(&Some("IPv4")) && families.contains(&Some("IPv6"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_ipv4() {
        assert!(parse_ip_sloppy("10.0.0.1").is_some());
        assert_eq!(parse_ip_sloppy("010.000.0.01"), parse_ip_sloppy("10.0.0.1"));
        assert!(parse_ip_sloppy("256.0.0.1").is_none());
        assert!(parse_ip_sloppy("1.2.3").is_none());
        assert!(parse_ip_sloppy("1.2.3.4.5").is_none());
        assert!(parse_ip_sloppy("None").is_none());
        assert!(parse_ip_sloppy("").is_none());
    }

    #[test]
    fn ipv6_and_families() {
        assert!(is_ipv6_string("2001:db8::1"));
        assert!(!is_ipv6_string("::ffff:1.2.3.4"));
        assert!(is_ipv4_string("::ffff:1.2.3.4"));
        assert_eq!(family_of("fd00::1"), Some("IPv6"));
        assert_eq!(family_of("x"), None);
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr_sloppy("10.0.0.0/8").is_some());
        assert!(parse_cidr_sloppy("10.0.0.1/24").is_some());
        assert!(parse_cidr_sloppy("2001:db8::/64").is_some());
        assert!(parse_cidr_sloppy("10.0.0.0/33").is_none());
        assert!(parse_cidr_sloppy("10.0.0.0").is_none());
        assert!(parse_cidr_sloppy("10.0.0.0/").is_none());
        assert_eq!(cidr_family("fd00::/48"), Some("IPv6"));
    }

    #[test]
    fn special_ips() {
        let p = Path::new("x");
        assert_eq!(validate_non_special_ip(&p, "127.0.0.1").len(), 1);
        assert_eq!(validate_non_special_ip(&p, "0.0.0.0").len(), 1);
        assert_eq!(validate_non_special_ip(&p, "169.254.1.1").len(), 1);
        assert_eq!(validate_non_special_ip(&p, "fe80::1").len(), 1);
        assert_eq!(validate_non_special_ip(&p, "::1").len(), 1);
        assert!(validate_non_special_ip(&p, "10.1.2.3").is_empty());
    }
}
