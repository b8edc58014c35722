//! `resource.Quantity` parsing (syntax and value), enough to reject malformed
//! quantities like the decoder does, and to compare and add them for
//! request/limit checks and QoS classes.

use std::cmp::Ordering;

/// The decoder's message for a malformed quantity (`ErrFormatWrong`).
pub(crate) const FORMAT_WRONG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
/// The decoder's message for an unknown suffix (`ErrSuffix`).
pub(crate) const SUFFIX_WRONG: &str = "unable to parse quantity's suffix";

/// A parsed quantity: `mant * 10^exp` when exact, else only `approx`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quantity {
    exact: Option<(i128, i32)>,
    approx: f64,
}

impl Quantity {
    /// Parses a quantity string (`resource.ParseQuantity`); the error is the
    /// decoder's message.
    pub(crate) fn parse(s: &str) -> Result<Quantity, &'static str> {
        if s.is_empty() {
            return Err(FORMAT_WRONG);
        }
        let b = s.as_bytes();
        let mut pos = 0;
        let mut negative = false;
        match b[0] {
            b'-' => {
                negative = true;
                pos = 1;
            }
            b'+' => pos = 1,
            _ => {}
        }
        let digits_end = |from: usize| {
            let mut i = from;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            i
        };
        let num_end = digits_end(pos);
        let num = &s[pos..num_end];
        pos = num_end;
        let mut denom = "";
        if pos < b.len() && b[pos] == b'.' {
            let d_end = digits_end(pos + 1);
            denom = &s[pos + 1..d_end];
            pos = d_end;
        }
        let suffix_start = pos;
        while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
            pos += 1;
        }
        if pos < b.len() && (b[pos] == b'-' || b[pos] == b'+') {
            pos += 1;
        }
        pos = digits_end(pos);
        if pos != b.len() {
            return Err(FORMAT_WRONG);
        }
        let suffix = &s[suffix_start..];
        let (exp10_suffix, exp2) = match suffix {
            "" => (0, 0),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => {
                match s[1..].parse::<i32>() {
                    Ok(e) if (-1000..=1000).contains(&e) => (e, 0),
                    _ => return Err(SUFFIX_WRONG),
                }
            }
            _ => return Err(SUFFIX_WRONG),
        };
        let all_digits = format!("{num}{denom}");
        let trimmed = all_digits.trim_start_matches('0');
        let exp = exp10_suffix - denom.len() as i32;
        let approx_abs =
            all_digits.parse::<f64>().unwrap_or(0.0) * 10f64.powi(exp) * 2f64.powi(exp2);
        let approx = if negative { -approx_abs } else { approx_abs };
        let exact = if trimmed.is_empty() {
            Some((0, 0))
        } else if trimmed.len() <= 36 {
            trimmed
                .parse::<i128>()
                .ok()
                .and_then(|m| m.checked_mul(1i128.checked_shl(exp2 as u32)?))
                .map(|m| (if negative { -m } else { m }, exp))
        } else {
            None
        };
        Ok(Quantity { exact, approx })
    }

    /// Sign test: `Cmp(zero)`.
    pub(crate) fn is_negative(&self) -> bool {
        match self.exact {
            Some((m, _)) => m < 0,
            None => self.approx < 0.0,
        }
    }

    /// Whether the value is strictly positive.
    pub(crate) fn is_positive(&self) -> bool {
        match self.exact {
            Some((m, _)) => m > 0,
            None => self.approx > 0.0,
        }
    }

    fn align(a: (i128, i32), b: (i128, i32)) -> Option<(i128, i128, i32)> {
        let exp = a.1.min(b.1);
        let scale = |(m, e): (i128, i32)| -> Option<i128> {
            let diff = u32::try_from(e - exp).ok()?;
            m.checked_mul(10i128.checked_pow(diff)?)
        };
        Some((scale(a)?, scale(b)?, exp))
    }

    /// Numeric comparison (`Quantity.Cmp`).
    pub(crate) fn cmp(&self, other: &Quantity) -> Ordering {
        if let (Some(a), Some(b)) = (self.exact, other.exact) {
            if let Some((x, y, _)) = Quantity::align(a, b) {
                return x.cmp(&y);
            }
        }
        self.approx
            .partial_cmp(&other.approx)
            .unwrap_or(Ordering::Equal)
    }

    /// Sum (`Quantity.Add`).
    pub(crate) fn add(&self, other: &Quantity) -> Quantity {
        let exact = match (self.exact, other.exact) {
            (Some(a), Some(b)) => {
                Quantity::align(a, b).and_then(|(x, y, e)| x.checked_add(y).map(|m| (m, e)))
            }
            _ => None,
        };
        Quantity {
            exact,
            approx: self.approx + other.approx,
        }
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue`): `100m` → 100, `1` → 1000,
    /// `1Ki` → 1_024_000. Saturates at the i64 range.
    pub(crate) fn milli_value(&self) -> i64 {
        match self.exact {
            Some((m, e)) => {
                let e = e + 3;
                let v = if e >= 0 {
                    10i128
                        .checked_pow(e as u32)
                        .and_then(|p| m.checked_mul(p))
                        .unwrap_or(if m < 0 { i128::MIN } else { i128::MAX })
                } else {
                    match 10i128.checked_pow(e.unsigned_abs()) {
                        // Ceiling division, as upstream rounds up.
                        Some(p) => m.div_euclid(p) + i128::from(m.rem_euclid(p) != 0),
                        None => i128::from(m > 0),
                    }
                };
                v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
            }
            None => (self.approx * 1000.0).ceil() as i64,
        }
    }

    /// Whether the value is a whole number (extended resources must be).
    pub(crate) fn is_integer(&self) -> bool {
        match self.exact {
            Some((m, e)) => {
                if e >= 0 || m == 0 {
                    return true;
                }
                match 10i128.checked_pow(e.unsigned_abs()) {
                    Some(p) => m % p == 0,
                    None => false,
                }
            }
            None => self.approx.fract() == 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        match Quantity::parse(s) {
            Ok(q) => q,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_forms() {
        for s in [
            "1",
            "100m",
            "1.5",
            ".5",
            "5.",
            "1Gi",
            "1e3",
            "1E3",
            "-1",
            "+2k",
            "0",
            "1n",
            "128974848",
        ] {
            assert!(Quantity::parse(s).is_ok(), "{s}");
        }
        assert_eq!(Quantity::parse("abc").err(), Some(FORMAT_WRONG));
        assert_eq!(Quantity::parse("1Gb").err(), Some(FORMAT_WRONG));
        assert_eq!(Quantity::parse("1iG").err(), Some(SUFFIX_WRONG));
        assert_eq!(Quantity::parse("").err(), Some(FORMAT_WRONG));
        assert_eq!(Quantity::parse("1 Gi").err(), Some(FORMAT_WRONG));
    }

    #[test]
    fn milli_values_round_up() {
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("1Ki").milli_value(), 1_024_000);
        assert_eq!(q("1n").milli_value(), 1);
        assert_eq!(q("128Mi").milli_value(), 134_217_728_000);
        assert_eq!(q("-1n").milli_value(), 0);
    }

    #[test]
    fn compares() {
        assert_eq!(q("1").cmp(&q("1000m")), Ordering::Equal);
        assert_eq!(q("0.1").cmp(&q("100m")), Ordering::Equal);
        assert_eq!(q("1Gi").cmp(&q("1G")), Ordering::Greater);
        assert_eq!(q("1Ki").cmp(&q("1024")), Ordering::Equal);
        assert_eq!(q("500m").add(&q("500m")).cmp(&q("1")), Ordering::Equal);
        assert!(q("-1").is_negative());
        assert!(!q("0").is_positive());
        assert!(q("2").is_integer());
        assert!(!q("1500m").is_integer());
        assert!(q("2000m").is_integer());
    }
}
